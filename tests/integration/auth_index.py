#!/usr/bin/env python3
"""auth_index.py ROOT TOKEN_FILE PORT_FILE LOG: a package index on 127.0.0.1 that wants HTTP basic
auth. Serves ROOT (directory listings are PEP 503 pages: ROOT/simple/NAME/NAME-1.0-py3-none-any.whl
answers /simple/NAME/) to requests whose password is the first line of TOKEN_FILE (read on each
request, so a test can rotate it), answers 401 to others, writes the port it got to PORT_FILE and
one line per request to LOG: "PATH ok" or "PATH denied". It never writes the token anywhere.
For pip tests with credentials in index URLs; runs until killed."""
import base64
import functools
import http.server
import os
import sys

root, token_file, port_file, log_file = sys.argv[1:5]


class Handler(http.server.SimpleHTTPRequestHandler):
    def _authorized(self):
        with open(token_file) as f:
            token = f.readline().strip()
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return password == token

    def _check(self):
        ok = self._authorized()
        with open(log_file, "a") as f:
            f.write(f"{self.path} {'ok' if ok else 'denied'}\n")
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="kiln-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        return ok

    def do_GET(self):
        if self._check():
            super().do_GET()

    def do_HEAD(self):
        if self._check():
            super().do_HEAD()

    def log_message(self, *args):
        pass  # the request line would be all; LOG has what tests need


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
