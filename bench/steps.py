#!/usr/bin/env python3
"""RUN-step benchmark: kiln against buildah (`buildah bud`, chroot isolation, --layers) on the same
three RUN commands over the same busybox base, each ending in an OCI layout.

    bench/steps.py --kiln build-bench/kiln [--reps 5] [--work bench/work/steps]

Scenarios (medians of --reps runs, round-robin across tools so drift on a noisy machine spreads
evenly; every run writes a fresh OCI layout):
  cold          empty cache / storage: unpack the base, run the three steps, write the layers
  no change     the same build again (kiln: no step runs; buildah --layers: its layer cache)
  last edited   the last command changed: only it runs again

Peers: buildah with the vfs and the overlay storage drivers (chroot isolation: crun and runc do not
run on these machines), each followed by `buildah push` to an OCI layout so both sides finish
with the same artefact. kiln runs with overlay capture (root) and snapshot capture.
Writes bench/results-steps-latest.md (or --results).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

STEPS = [
    # 2,000 small files and 16 MiB of incompressible data
    "mkdir -p /data && for i in $(seq 1 2000); do echo \"file $i\" > /data/f$i; done && "
    "dd if=/dev/urandom of=/data/blob bs=1M count=16 2>/dev/null",
    # delete 1,111 files (f1*), change one, chmod another
    "rm /data/f1* && echo changed > /data/f2 && chmod 600 /data/f3",
    "echo done > /done",
]


def log(msg):
    print(f"[steps-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rm(p):
    if os.path.lexists(p):
        if os.path.isdir(p) and not os.path.islink(p):
            subprocess.run(["rm", "-rf", p], check=True)
        else:
            os.unlink(p)


def run(argv, **kw):
    t = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-800:]}")
    return dt


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        self.kiln = os.path.abspath(a.kiln)
        rm(self.work)
        os.makedirs(self.work)
        self.env = dict(os.environ, KILN_STATE_DIR=os.path.join(self.work, "state"))
        self.layout = os.path.join(self.work, "layout")
        self.results = {}  # (scenario, tool) -> [seconds]

    def setup(self):
        root = os.path.join(self.work, "bbroot")
        os.makedirs(os.path.join(root, "bin"))
        os.makedirs(os.path.join(root, "dev"))
        shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
        for a in ["sh", "echo", "mkdir", "rm", "seq", "dd", "chmod"]:
            os.symlink("busybox", os.path.join(root, "bin", a))
        spec = os.path.join(self.work, "base.json")
        with open(spec, "w") as f:
            f.write('{"name": "busybox", "source_root": "bbroot", "source_dest": "/", "source_copy_mode": "all"}')
        run([self.kiln, "build", spec, "--progress", "quiet", "--cache", os.path.join(self.work, "base-cache"),
             "-o", f"oci:{self.layout}:busybox"], env=self.env)
        for variant, last in (("a", STEPS[2]), ("b", "echo edited > /done")):
            steps = STEPS[:2] + [last]
            import json
            with open(os.path.join(self.work, f"spec-{variant}.json"), "w") as f:
                json.dump({"name": "steps", "base_image": "oci:layout:busybox", "commands": steps}, f)
            with open(os.path.join(self.work, f"Dockerfile.{variant}"), "w") as f:
                f.write(f"FROM oci:{self.layout}:busybox\n")
                for s in steps:
                    f.write(f"RUN {s}\n")

    # ---- tools: (name, fn(state_dir, variant) -> seconds) --------------------------------------
    def kiln_fn(self, capture):
        def fn(state, variant):
            out = os.path.join(self.work, "out-kiln")
            rm(out)
            return run([self.kiln, "build", os.path.join(self.work, f"spec-{variant}.json"), "--progress", "quiet",
                        "--cache", state, "--capture", capture, "-o", f"oci:{out}:steps"], env=self.env)
        return fn

    def buildah_fn(self, driver):
        def fn(state, variant):
            out = os.path.join(self.work, "out-buildah")
            rm(out)
            b = ["buildah", "--storage-driver", driver, "--root", os.path.join(state, "root"),
                 "--runroot", os.path.join(state, "run")]
            t = run(b + ["bud", "--isolation", "chroot", "--layers", "-f", os.path.join(self.work, f"Dockerfile.{variant}"),
                         "-t", "steps", self.work])
            t += run(b + ["push", "steps", f"oci:{out}:steps"])
            return t
        return fn

    def tools(self):
        t = [("kiln (overlay capture)", self.kiln_fn("overlay")), ("kiln (snapshot capture)", self.kiln_fn("snapshot"))]
        if shutil.which("buildah"):
            t += [("buildah bud (overlay driver)", self.buildah_fn("overlay")),
                  ("buildah bud (vfs driver)", self.buildah_fn("vfs"))]
        else:
            log("buildah is not installed: kiln only")
        return t

    def clean_state(self, name):
        p = os.path.join(self.work, "state-" + name.split()[0] + "-" + str(abs(hash(name)) % 10000))
        if os.path.exists(p):
            # buildah's overlay storage leaves mounts only while a container runs; none remain here
            rm(p)
        os.makedirs(p)
        return p

    def record(self, scenario, tool, secs):
        self.results.setdefault((scenario, tool), []).append(secs)

    def run_all(self):
        tools = self.tools()
        for rep in range(self.a.reps + 1):  # rep 0 warms the page cache and is not recorded
            for name, fn in tools:
                state = self.clean_state(name)
                cold = fn(state, "a")
                warm = fn(state, "a")
                edited = fn(state, "b")
                if rep > 0:
                    self.record("cold", name, cold)
                    self.record("no change", name, warm)
                    self.record("last edited", name, edited)
                log(f"rep {rep} {name}: cold {cold:.2f}s, no change {warm:.3f}s, last edited {edited:.2f}s")
                rm(state)

    def report(self):
        tools = [n for n, _ in self.tools()]
        ref = "kiln (overlay capture)"
        L = ["# RUN-step benchmark", "",
             f"Three RUN commands on a busybox base ({len(STEPS)} steps: 2,000 files + 16 MiB, delete 1,111 and "
             "change two, one small file), each build ending in an OCI layout. Medians of "
             f"{self.a.reps} runs, round-robin; lower is better; ratio = kiln (overlay) / peer.", "",
             "| scenario | " + " | ".join(tools) + " | kiln/peer ratios |", "|---" * (len(tools) + 2) + "|"]
        for sc in ("cold", "no change", "last edited"):
            med = {t: statistics.median(self.results[(sc, t)]) for t in tools}
            ratios = ", ".join(f"{med[ref] / med[t]:.2f}x {t.split()[0]} {t.split('(')[-1].rstrip(')')}"
                               for t in tools if not t.startswith("kiln"))
            L.append(f"| {sc} | " + " | ".join(f"{med[t]:.3f} s" for t in tools) + f" | {ratios} |")
        L += ["", f"Machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}. buildah {self.version()}."]
        return "\n".join(L) + "\n"

    def version(self):
        try:
            return subprocess.run(["buildah", "--version"], capture_output=True, text=True).stdout.split()[2]
        except Exception:
            return "n/a"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(here, "work", "steps"))
    ap.add_argument("--results", default=os.path.join(here, "results-steps-latest.md"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("steps.py: run as root (overlay capture and buildah's chroot isolation need it)")
    b = Bench(a)
    b.setup()
    b.run_all()
    md = b.report()
    print(md)
    with open(a.results, "w") as f:
        f.write(md)
    log(f"wrote {a.results}")
    rm(b.work)


if __name__ == "__main__":
    main()
