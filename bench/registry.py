"""A throwaway loopback registry for the push rows of bench.py.

Debian's `docker-registry serve` (distribution 2.8) on 127.0.0.1:<free port>, plain HTTP, filesystem
storage in a fresh directory, an info-level access log (parsed into per-push request counts), as
tests/integration/registry/registry_lib.sh starts it. Every registry is stopped by stop() and, as a
safety net, by stop_all() (bench.py calls it in a `finally`, at exit and on SIGTERM/SIGHUP); it
also runs under `timeout`, so it dies on its own should the harness be SIGKILLed.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

_LIVE = []  # every Registry started and not stopped yet

_ACCESS = re.compile(r'^[0-9.]+ - [^\[]*\[[^\]]*\] "([A-Z]+) ([^ ]+) HTTP/[0-9.]+" ([0-9]{3}) ')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Registry:
    LIFETIME_S = 3600  # `timeout` bound: a registry lives one push block (seconds to minutes)

    def __init__(self, parent_dir):
        self.dir = tempfile.mkdtemp(prefix="registry-", dir=parent_dir)
        self.storage = os.path.join(self.dir, "storage")
        self.log_path = os.path.join(self.dir, "registry.log")
        self.proc = None
        self.addr = None
        os.makedirs(self.storage)

    def start(self):
        for _ in range(3):  # the port is picked before the registry binds it: retry on the (rare) race
            self.addr = f"127.0.0.1:{free_port()}"
            cfg = os.path.join(self.dir, "config.yml")
            with open(cfg, "w") as f:
                f.write(f"""version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {self.addr}
  secret: kiln-bench-secret
""")
            log = open(self.log_path, "w")
            self.proc = subprocess.Popen(["timeout", "--kill-after=5", str(self.LIFETIME_S), "docker-registry", "serve", cfg],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # ^C in the terminal is the harness's to handle
            log.close()
            _LIVE.append(self)
            if self._wait_up():
                return self
            self.stop(remove=False)
        with open(self.log_path, errors="replace") as f:
            raise RuntimeError("docker-registry did not start:\n" + f.read()[-2000:])

    def _wait_up(self):
        for _ in range(200):
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2)
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self, remove=True):
        p = self.proc
        if p is not None:
            self.proc = None
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `timeout` passes it on to the registry
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: only the registry and its `timeout`
                    p.wait()
        if self in _LIVE:
            _LIVE.remove(self)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ observing it

    def server_pid(self):
        """The docker-registry process (the child of `timeout`)."""
        if self.proc is None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None

    def cpu(self):
        """CPU seconds (user + system) the registry has used so far (0.0 if unknown)."""
        pid = self.server_pid()
        if pid is None:
            return 0.0
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def mark(self):
        """The current length of the access log, for requests()."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def requests(self, since=0):
        """(method, path, status) of every request answered since mark() returned `since`. Waits a
        moment first: the registry writes an access line just after the response."""
        time.sleep(0.3)
        out = []
        with open(self.log_path, "rb") as f:
            f.seek(since)
            for line in f.read().decode(errors="replace").splitlines():
                m = _ACCESS.match(line)
                if m:
                    out.append((m.group(1), m.group(2), int(m.group(3))))
        return out

    def storage_bytes(self):
        n = 0
        for root, _, files in os.walk(self.storage):
            for f in files:
                n += os.lstat(os.path.join(root, f)).st_size
        return n


def summarize(reqs):
    """Request counts by kind: HEAD blob, POST (upload start / mount), PATCH, PUT blob, PUT manifest…"""
    c = {}
    for method, path, status in reqs:
        path = path.split("?", 1)[0]
        if "/blobs/uploads/" in path:
            kind = {"POST": "POST upload", "PATCH": "PATCH", "PUT": "PUT blob", "DELETE": "DELETE upload"}.get(method, method + " upload")
        elif "/blobs/" in path:
            kind = method + " blob"
        elif "/manifests/" in path:
            kind = method + " manifest"
        elif path.endswith("/tags/list"):
            kind = method + " tags/list"
        elif path.rstrip("/") == "/v2":
            kind = method + " /v2/"
        else:
            kind = method + " other"
        c[kind] = c.get(kind, 0) + 1
    c["total"] = len(reqs)
    return c


def stop_all():
    for r in list(_LIVE):
        try:
            r.stop()
        except Exception:  # cleanup goes on whatever fails
            pass
