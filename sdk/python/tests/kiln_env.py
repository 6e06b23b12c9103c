"""Shared helpers for the plugin's tests: the kiln binary, temporary directories, a kiln with its
own store."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest


def kiln_binary():
    return os.environ.get("KILN") or shutil.which("kiln")


def require_kiln(test: unittest.TestCase) -> str:
    b = kiln_binary()
    if not b:
        test.skipTest("no kiln binary: set $KILN")
    return b


class TempDirTest(unittest.TestCase):
    """A fresh temporary directory per test (self.tmp), and a kiln store inside it."""

    def setUp(self):
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="kiln-sdk-test."))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cache = os.path.join(self.tmp, "cache")

    def put(self, rel: str, content: str = "") -> str:
        p = os.path.join(self.tmp, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(content)
        return p

    def kiln(self, *args, stdin=None, cwd=None):
        """Runs the kiln binary directly (not through the plugin)."""
        env = dict(os.environ, KILN_CACHE=self.cache, KILN_STATE_DIR=os.path.join(self.tmp, "state"))
        return subprocess.run(
            [kiln_binary()] + list(args),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
        )

    def read_json(self, path: str):
        with open(path) as f:
            return json.load(f)
