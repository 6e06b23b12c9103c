#!/usr/bin/env python3
"""A loopback HTTP proxy in front of a plain-HTTP registry that injects faults by rule.

    fault_proxy.py --upstream 127.0.0.1:PORT [--rule RULE]... [--port-file FILE] [--log FILE]
                   [--time-limit SECONDS]

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
        if self.name_unknown:
            self.method = "POST"
            self.path = re.compile("^/v2/" + re.escape(self.name_unknown) + "/blobs/uploads/?(\\?|$)")
            self.count = 0
            self.status = 404
        if not (self.status or self.drop):
            raise SystemExit("rule %r: needs status=, drop=1 or name_unknown=" % text)
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

    def _handle(self):
        cfg = self.server.cfg
        for rule in cfg.rules:
            if rule.take(self.command, self.path):
                self._fault(rule)
                return
        self._forward()

    def _forward(self):
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
    ap.add_argument("--upstream", required=True, help="HOST:PORT of a plain-HTTP registry")
    ap.add_argument("--rule", action="append", default=[])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--time-limit", type=float, default=300)
    a = ap.parse_args()

    class Cfg:
        pass

    cfg = Cfg()
    cfg.upstream = a.upstream
    cfg.upstream_host, _, port = a.upstream.rpartition(":")
    cfg.upstream_port = int(port)
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
