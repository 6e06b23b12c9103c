#!/usr/bin/env python3
"""A loopback HTTP proxy in front of a plain-HTTP registry that injects faults by rule.

    fault_proxy.py --upstream 127.0.0.1:PORT [--rule RULE]... [--port-file FILE] [--log FILE]
                   [--time-limit SECONDS] [--drop-reused] [--auth-log FILE]
    fault_proxy.py --record-only [--blob-root DIR] [--auth-log FILE] [--port-file FILE] [--log FILE]

Listens on 127.0.0.1 (a kernel-picked port, written to --port-file once it accepts connections)
and forwards every request to the upstream registry faithfully (method, path, query, headers,
streamed bodies), rewriting the upstream's address to the proxy's in Location headers. Rules
(each `key=value,key=value`) pick requests by method and a regular expression on the path (with
the query), and act on the first `count` of them (default 1; 0 = every one):

    status=500,method=PATCH,path=/blobs/uploads/,count=2      answer 500 (body: an error JSON)
    status=429,retry_after=1,method=PUT,path=/blobs/uploads/  answer 429 with Retry-After: 1
    drop=1,method=PATCH,path=/blobs/uploads/,after=1048576    read up to `after` bytes of the
                                                              body, then close the connection
    name_unknown=REPO                                         answer 404 NAME_UNKNOWN to
                                                              POST /v2/REPO/blobs/uploads/ (always)
    relocate=HOST:PORT,method=POST,path=/blobs/uploads/       forward, then point the answer's
                                                              Location at http://HOST:PORT instead
    redirect=HOST:PORT,method=GET,path=/blobs/sha256:         answer 307 to http://HOST:PORT/<same
                                                              path> (a CDN serving blobs)
    stall=30,method=PATCH,path=/blobs/uploads/                read nothing for 30 s, then forward
                                                              (an upload hanging on a slow link)

Options beyond the rules:
    --drop-reused      every connection serves one request; the next request on it is read (headers
                       and body) and the connection closed without an answer, as a server does that
                       closes idle kept-alive connections (the client must re-send the request).
    --auth-log FILE    one line per request: "METHOD PATH auth=<scheme>|none" (the Authorization
                       header's scheme, never its value).
    --record-only      no upstream: answer every request itself, logging it. Blob GETs are served
                       from --blob-root (a distribution storage root: .../docker/registry/v2) when
                       the blob is there; everything else gets 401 with a Basic challenge, the
                       bait a credential leak would take.

A faulted request is not forwarded. Each request is logged to --log as one line:
"UNIXTIME METHOD PATH -> STATUS|drop … [rule N]", so tests can check that a fault did fire. The proxy exits
by itself after --time-limit seconds.
"""
import argparse
import http.client
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}


class Rule:
    def __init__(self, text: str, idx: int):
        self.idx = idx
        kv = dict(p.split("=", 1) for p in text.split(",") if p)
        self.method = kv.get("method", "").upper()
        self.path = re.compile(kv.get("path", ""))
        self.count = int(kv.get("count", "1"))
        self.status = int(kv["status"]) if "status" in kv else None
        self.retry_after = kv.get("retry_after")
        self.drop = kv.get("drop") == "1"
        self.after = int(kv.get("after", "65536"))
        self.name_unknown = kv.get("name_unknown")
        self.relocate = kv.get("relocate")
        self.redirect = kv.get("redirect")
        self.stall = float(kv["stall"]) if "stall" in kv else None
        if self.name_unknown:
            self.method = "POST"
            self.path = re.compile("^/v2/" + re.escape(self.name_unknown) + "/blobs/uploads/?(\\?|$)")
            self.count = 0
            self.status = 404
        if not (self.status or self.drop or self.relocate or self.redirect or self.stall):
            raise SystemExit("rule %r: needs status=, drop=1, name_unknown=, relocate=, redirect= or stall=" % text)
        self.fired = 0
        self.lock = threading.Lock()

    def take(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if not self.path.search(path):
            return False
        with self.lock:
            if self.count and self.fired >= self.count:
                return False
            self.fired += 1
            return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-test-fault-proxy/1"

    def log_message(self, fmt, *args):
        pass

    def _log(self, what: str):
        cfg = self.server.cfg
        if cfg.log:
            with cfg.log_lock, open(cfg.log, "a") as f:
                f.write("%.3f %s %s -> %s\n" % (time.time(), self.command, self.path, what))

    def _body_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _read_body_chunks(self):
        """Yields the request body (Content-Length or chunked) in pieces."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 20))
                    if not piece:
                        raise ConnectionError("client went away")
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = self._body_length()
            while left > 0:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    raise ConnectionError("client went away")
                left -= len(piece)
                yield piece

    def _fault(self, rule: Rule):
        if rule.drop:
            got = 0
            for piece in self._read_body_chunks():
                got += len(piece)
                if got >= rule.after:
                    break
            self._log("drop after %d bytes [rule %d]" % (got, rule.idx))
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
            return
        for _ in self._read_body_chunks():  # consume the body so the connection stays usable
            pass
        if rule.name_unknown:
            body = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry",
                                "detail": {"name": rule.name_unknown}}]}
        elif rule.status == 429:
            body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down (injected)"}]}
        else:
            body = {"errors": [{"code": "UNKNOWN", "message": "injected failure %d" % rule.status}]}
        data = json.dumps(body).encode()
        # Logged before the answer goes out: once the client has it, the log line is there.
        self._log("%d [rule %d]" % (rule.status, rule.idx))
        self.send_response(rule.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        if rule.retry_after:
            self.send_header("Retry-After", rule.retry_after)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _log_auth(self):
        cfg = self.server.cfg
        if cfg.auth_log:
            auth = self.headers.get("Authorization")
            scheme = auth.split(" ", 1)[0] if auth else "none"
            with cfg.log_lock, open(cfg.auth_log, "a") as f:
                f.write("%s %s auth=%s\n" % (self.command, self.path, scheme))

    def _drop_reused(self) -> bool:
        """--drop-reused: the second request on a connection is read, then the connection closed."""
        self.served = getattr(self, "served", 0) + 1
        if not self.server.cfg.drop_reused or self.served == 1:
            return False
        for _ in self._read_body_chunks():
            pass
        self._log("drop reused connection")
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True
        return True

    def _record(self):
        """--record-only: serve blobs from the blob root, tempt everything else with a 401."""
        cfg = self.server.cfg
        for _ in self._read_body_chunks():
            pass
        m = re.search(r"/blobs/sha256:([0-9a-f]{64})$", self.path.split("?")[0])
        data = None
        if m and cfg.blob_root and self.command in ("GET", "HEAD"):
            hexd = m.group(1)
            f = os.path.join(cfg.blob_root, "blobs", "sha256", hexd[:2], hexd, "data")
            if os.path.exists(f):
                with open(f, "rb") as fh:
                    data = fh.read()
        if data is not None:
            self._log("200")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)
            return
        body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "credentials, please"}]}'
        self._log("401")
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="recorder"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, rule: Rule):
        for _ in self._read_body_chunks():
            pass
        self._log("307 [rule %d]" % rule.idx)
        self.send_response(307)
        self.send_header("Location", "http://%s%s" % (rule.redirect, self.path))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _handle(self):
        cfg = self.server.cfg
        self._log_auth()
        if self._drop_reused():
            return
        if cfg.record_only:
            self._record()
            return
        for rule in cfg.rules:
            if rule.take(self.command, self.path):
                if rule.stall:
                    self._log("stall %gs [rule %d]" % (rule.stall, rule.idx))
                    time.sleep(rule.stall)
                    self._forward()
                elif rule.redirect:
                    self._redirect(rule)
                elif rule.relocate:
                    self._forward(relocate=rule)
                else:
                    self._fault(rule)
                return
        self._forward()

    def _forward(self, relocate=None):
        cfg = self.server.cfg
        up = http.client.HTTPConnection(cfg.upstream_host, cfg.upstream_port, timeout=120)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            chunked_in = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            for k, v in self.headers.items():
                lk = k.lower()
                if lk in HOP_BY_HOP or lk == "host":
                    continue
                up.putheader(k, v)
            up.putheader("Host", cfg.upstream)
            if chunked_in:  # re-framed with a length: read it all first (small bodies only)
                body = b"".join(self._read_body_chunks())
                up.putheader("Content-Length", str(len(body)))
                up.endheaders()
                up.send(body)
            else:
                up.endheaders()
                for piece in self._read_body_chunks():
                    up.send(piece)
            resp = up.getresponse()
            self._log(str(resp.status))
            bodyless = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            length = resp.getheader("Content-Length")
            data = None
            if not bodyless and length is None:
                data = resp.read()  # de-chunked by http.client; resent with a length
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                lk = k.lower()
                if lk in HOP_BY_HOP:
                    continue
                if lk == "content-length" and data is not None:
                    continue
                if lk == "location":
                    v = v.replace("http://" + cfg.upstream, "http://" + cfg.self_addr)
                    if relocate is not None:
                        path = v.split("://", 1)[1].split("/", 1)[1] if "://" in v else v.lstrip("/")
                        v = "http://%s/%s" % (relocate.relocate, path)
                        self._log("relocated [rule %d]" % relocate.idx)
                self.send_header(k, v)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data is not None:
                self.wfile.write(data)
            elif not bodyless:
                while True:
                    piece = resp.read(1 << 20)
                    if not piece:
                        break
                    self.wfile.write(piece)
        except (ConnectionError, socket.timeout, http.client.HTTPException) as e:
            self._log("proxy error: %s" % e)
            self.close_connection = True
        finally:
            up.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", help="HOST:PORT of a plain-HTTP registry")
    ap.add_argument("--drop-reused", action="store_true")
    ap.add_argument("--auth-log")
    ap.add_argument("--record-only", action="store_true")
    ap.add_argument("--blob-root")
    ap.add_argument("--rule", action="append", default=[])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--time-limit", type=float, default=300)
    a = ap.parse_args()

    class Cfg:
        pass

    cfg = Cfg()
    if not a.upstream and not a.record_only:
        raise SystemExit("--upstream is needed (unless --record-only)")
    cfg.upstream = a.upstream or "127.0.0.1:9"
    cfg.upstream_host, _, port = cfg.upstream.rpartition(":")
    cfg.upstream_port = int(port)
    cfg.drop_reused, cfg.auth_log = a.drop_reused, a.auth_log
    cfg.record_only, cfg.blob_root = a.record_only, a.blob_root
    cfg.rules = [Rule(r, i) for i, r in enumerate(a.rule)]
    cfg.log, cfg.log_lock = a.log, threading.Lock()
    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # a client gone mid-request (or a dropped connection) is expected here

    srv = Server(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.cfg = cfg
    cfg.self_addr = "127.0.0.1:%d" % srv.server_address[1]
    threading.Timer(a.time_limit, lambda: os._exit(3)).start()
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
