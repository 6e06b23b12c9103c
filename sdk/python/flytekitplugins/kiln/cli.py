"""Running the kiln binary: every call is a subprocess with JSON in and out, no Docker daemon.

The binary is ``$KILN``, else ``kiln`` on ``PATH``. Specs and plans go to kiln on stdin, so the
relative paths in them (``copy`` entries) resolve against the working directory, as flytekit
resolves them. Exit codes are kiln's stable ones (README, "Exit codes").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# kiln's exit codes (README, "Exit codes").
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_STEP = 3
EXIT_AUTH = 4
EXIT_NOT_FOUND = 5
EXIT_TRANSIENT = 6
EXIT_PERMISSION = 7
EXIT_REGISTRY = 8
EXIT_SIGINT = 130  # interrupted: 128 + the signal
EXIT_SIGTERM = 143


class KilnRun:
    """The outcome of one kiln call: exit code, stdout parsed as JSON when it is JSON, stderr text."""

    def __init__(self, argv: List[str], code: int, stdout: str, stderr: str):
        self.argv = argv
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        try:
            self.json = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            self.json = None

    def failure(self) -> dict:
        """kiln's failure object ({status, exit_code, message, ...}), or one made from stderr."""
        if isinstance(self.json, dict) and self.json.get("status") == "failed" and "message" in self.json:
            return self.json
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        message = lines[-1] if lines else "kiln exited with code %d" % self.code
        if message.startswith("kiln: error: "):
            message = message[len("kiln: error: ") :]
        return {"status": "failed", "exit_code": self.code, "message": message}


class Kiln:
    """A kiln binary and the arguments every call gets (registry options, --cache)."""

    def __init__(
        self,
        binary: Optional[str] = None,
        common_args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
    ):
        self._binary = binary
        self.common_args = list(common_args)
        self.env = env
        self.cwd = cwd
        self._fields: Dict[str, bool] = {}

    @property
    def binary(self) -> str:
        b = self._binary or os.environ.get("KILN") or shutil.which("kiln")
        if not b:
            from .builder import KilnError

            raise KilnError("kiln not found: install it, put it on PATH, or set $KILN to the binary")
        return b

    def run(self, args: Sequence[str], stdin: Optional[str] = None, stream_stderr: bool = False) -> KilnRun:
        """Runs `kiln ARGS`; stderr goes to this process's stderr too when stream_stderr."""
        argv = [self.binary] + list(args)
        env = None
        if self.env is not None:
            env = dict(os.environ)
            env.update(self.env)
        try:
            proc = subprocess.run(
                argv,
                input=stdin if stdin is not None else "",
                stdout=subprocess.PIPE,
                stderr=None if stream_stderr else subprocess.PIPE,
                text=True,
                env=env,
                cwd=self.cwd,
            )
        except OSError as e:
            from .builder import KilnError

            raise KilnError("cannot run kiln (%s): %s; set $KILN to the kiln binary" % (argv[0], e)) from e
        return KilnRun(argv, proc.returncode, proc.stdout or "", proc.stderr or "")

    # ---- the calls the plugin makes ----

    def build(
        self,
        spec: dict,
        outputs: Sequence[str] = (),
        push: Optional[bool] = None,
        force: bool = False,
        extra_args: Sequence[str] = (),
        stream_stderr: bool = True,
    ) -> KilnRun:
        """`kiln build - --json`: one spec on stdin."""
        args = ["build", "-", "--json"]
        for o in outputs:
            args += ["-o", o]
        if push is True:
            args.append("--push")
        elif push is False:
            args.append("--no-push")
        if force:
            args.append("--force")
        args += list(extra_args) + self.common_args
        return self.run(args, stdin=json.dumps(spec), stream_stderr=stream_stderr)

    def tag(self, spec: dict) -> KilnRun:
        """`kiln tag - --json`: {image, repository, tag, spec_hash}, nothing built."""
        return self.run(["tag", "-", "--json"] + self.common_args, stdin=json.dumps(spec))

    def inspect(self, ref: str) -> KilnRun:
        """`kiln inspect REF` (oci:DIR[:TAG] or a registry reference); exit 5 when it is not there."""
        return self.run(["inspect", ref] + self.common_args)

    def plan(self, plan: dict) -> KilnRun:
        """`kiln plan -`: the plan JSON on stdout (exit 0, or 2 when the plan has errors)."""
        return self.run(["plan", "-", "--json"] + self.common_args, stdin=json.dumps(plan))

    def supports_field(self, field: str) -> bool:
        """Does this kiln accept spec field `field`? (One `kiln tag` of a minimal spec, cached.)"""
        if field not in self._fields:
            r = self.run(["tag", "-", "--json"], stdin=json.dumps({"name": "kiln-field-probe", field: "probe"}))
            self._fields[field] = r.code == EXIT_OK
        return self._fields[field]


def split_args(value: Optional[str]) -> List[str]:
    """Shell-like split of an environment variable's value ("" or None → [])."""
    import shlex

    return shlex.split(value) if value else []


def eprint(*args) -> None:
    print(*args, file=sys.stderr)
