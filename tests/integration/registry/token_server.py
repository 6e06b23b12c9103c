#!/usr/bin/env python3
"""A small Bearer token server for distribution 2.8 (registry:2) in kiln's integration tests.

    token_server.py --key KEY.pem --cert CERT.pem --users USERS.json --service S --issuer I
                    [--port-file FILE] [--log FILE] [--time-limit SECONDS] [--expires-in SECONDS]
                    [--refresh-only]

Listens on 127.0.0.1 (port 0: the kernel picks one; it is written to --port-file once the server
accepts connections) and answers GET /token?service=…&scope=repository:NAME:ACTIONS&… with
{"token", "access_token", "expires_in", "issued_at"}: a JWT the registry accepts, RS256-signed with
KEY (through `openssl dgst -sha256 -sign`, as python's stdlib has no RSA), whose header carries the
certificate in "x5c" (the registry's auth.token.rootcertbundle is that certificate).

USERS.json:
    {"users": {"pusher": {"password": "pw", "access": {"*": ["pull", "push"]}},
               "reader": {"password": "pw", "access": {"*": ["pull"]}}},
     "anonymous": {"*": ["pull"]}}
"access" maps repository globs (fnmatch) to the actions granted; a token grants, per requested
scope, the requested actions that are also granted (the registry then refuses what is missing,
as real token servers do). A wrong password or an unknown user → 401. No Authorization header →
the "anonymous" grants (none when absent).

An identity token (docker's "identitytoken") is an OAuth2 refresh token: POST /token with the form
grant_type=refresh_token&refresh_token=T&service=S&scope=… (scopes space-separated)&client_id=…
gets the grants of the user USERS.json's "refresh_tokens" maps T to ({"T": "pusher"}); an unknown
token → 401. With --refresh-only, that is the only grant accepted: every GET /token → 401, as a
registry that only takes identity tokens (Azure ACR with a token login) answers.

Every token request is logged to --log as one JSON line: {"user", "ok", "scopes", "granted"}
(never a password), with "grant" ("refresh_token" for a POST) and "client_id" for POSTs.
"""
import argparse
import base64
import fnmatch
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    def __init__(self, key: str, cert: str):
        self.key = key
        der = ssl.PEM_cert_to_DER_cert(open(cert).read())
        self.x5c = base64.b64encode(der).decode()  # standard base64 in x5c (RFC 7515 4.1.6)
        self.lock = threading.Lock()

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, check=True).stdout
        return signing_input + "." + b64url(sig)


def parse_scope(s: str):
    # repository:NAME:ACTIONS (NAME may hold a ':' only in "host:port/…" forms, which a
    # repository name never has; registry-wide scopes like "registry:catalog:*" are kept too).
    parts = s.split(":")
    if len(parts) < 3:
        return None
    return parts[0], ":".join(parts[1:-1]), [a for a in parts[-1].split(",") if a]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-test-token/1"

    def log_message(self, fmt, *args):  # quiet: our own log is the JSON lines
        pass

    def _send(self, status: int, body: dict, extra=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _log(self, entry: dict):
        cfg = self.server.cfg
        if cfg.log:
            with cfg.log_lock, open(cfg.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def do_POST(self):
        cfg = self.server.cfg
        url = urlparse(self.path)
        if url.path != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        length = int(self.headers.get("Content-Length", "0") or 0)
        form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        one = lambda k: form.get(k, [""])[0]
        ctype = self.headers.get("Content-Type", "")
        user = cfg.users.get("refresh_tokens", {}).get(one("refresh_token"))
        entry = {"user": user, "grant": one("grant_type"), "client_id": one("client_id"),
                 "scopes": form.get("scope", [])}
        if (one("grant_type") != "refresh_token" or user is None or
                not ctype.startswith("application/x-www-form-urlencoded")):
            self._log(dict(entry, ok=False, granted=[]))
            self._send(401, {"error": "invalid_grant"})
            return
        grants = cfg.users.get("users", {}).get(user, {}).get("access", {})
        self._grant(user, grants, form, dict(entry, ok=True))

    def do_GET(self):
        cfg = self.server.cfg
        url = urlparse(self.path)
        if url.path != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        q = parse_qs(url.query)
        if cfg.refresh_only:
            self._log({"user": None, "grant": "get", "ok": False, "scopes": q.get("scope", []), "granted": []})
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "only the refresh_token grant"}]})
            return
        user, grants = None, cfg.users.get("anonymous", {})
        auth = self.headers.get("Authorization", "")
        if auth:
            ok = False
            if auth.lower().startswith("basic "):
                try:
                    u, _, p = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except Exception:
                    u, p = "", None
                entry = cfg.users.get("users", {}).get(u)
                if entry is not None and entry.get("password") == p:
                    ok, user, grants = True, u, entry.get("access", {})
                else:
                    user = u
            if not ok:
                self._log({"user": user, "ok": False, "scopes": q.get("scope", []), "granted": []})
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                           [("WWW-Authenticate", 'Basic realm="kiln-test-token"')])
                return
        self._grant(user, grants, q, {"user": user, "ok": True, "scopes": q.get("scope", [])})

    def _grant(self, user, grants, q, log_entry):
        cfg = self.server.cfg
        if q.get("service", [cfg.service])[0] != cfg.service:
            self._send(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
            return
        access = []
        for s in q.get("scope", []):
            # Several scopes may come space-separated in one parameter.
            for one in s.split(" "):
                parsed = parse_scope(one)
                if not parsed:
                    continue
                typ, name, actions = parsed
                allowed = set()
                for pattern, acts in grants.items():
                    if fnmatch.fnmatchcase(name, pattern):
                        allowed.update(acts)
                got = [a for a in actions if a in allowed or "*" in allowed]
                access.append({"type": typ, "name": name, "actions": got})
        now = int(time.time())
        claims = {"iss": cfg.issuer, "sub": user or "", "aud": cfg.service, "exp": now + cfg.expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        token = cfg.signer.sign(claims)
        self._log(dict(log_entry, granted=access))
        self._send(200, {"token": token, "access_token": token, "expires_in": cfg.expires_in,
                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--users", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--expires-in", type=int, default=300)
    ap.add_argument("--refresh-only", action="store_true", help="accept only POSTed refresh-token grants")
    ap.add_argument("--time-limit", type=float, default=900, help="exit after this many seconds")
    a = ap.parse_args()

    class Cfg:
        pass

    cfg = Cfg()
    cfg.users = json.load(open(a.users))
    cfg.service, cfg.issuer, cfg.expires_in = a.service, a.issuer, a.expires_in
    cfg.refresh_only = a.refresh_only
    cfg.signer = Signer(a.key, a.cert)
    cfg.log, cfg.log_lock = a.log, threading.Lock()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.cfg = cfg
    threading.Timer(a.time_limit, lambda: os._exit(3)).start()
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.replace(tmp, a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
