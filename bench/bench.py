#!/usr/bin/env python3
"""kiln benchmark: times kiln against same-shape tar|pigz -1 / zstd -3 peers, the openssl, read-only and
`find` floors, umoci and buildah on the bench tree (10,000 files), kiln's push against skopeo's to a
loopback registry, kiln against umoci and the floors on a 100,000-file tree, and kiln against
pigz -1 / gzip -1 on one 1 GiB compressible file. Cases (--cases): tree10k, push, tree100k, bigfile.

Called by bench/run.sh (which generates the tree and builds kiln); see bench/README.md.

Every measurement runs the tool under GNU time (/usr/bin/time -f '%M ...') for peak RSS; CPU
seconds come from getrusage(RUSAGE_CHILDREN) around the command (microsecond resolution, where GNU
time's %U/%S have 10 ms); the wall time is taken here around the whole command (fork/exec overhead
included: it is measured with `true` and reported). Pipelines wrap each stage in its own GNU time: their RSS and
CPU are the sums over the stages, which run at the same time. Multi-command peers (umoci, buildah)
report the sum of wall times, the max RSS and the summed CPU. Nothing is dropped from the page
cache: each tool runs once untimed first (warm-up), then the repetitions run round-robin across
tools so drift on a noisy machine spreads evenly.

The push rows start a throwaway `docker-registry` (distribution 2.8) on 127.0.0.1 per block (see
registry.py): fresh storage for every cold push; every registry is stopped in a `finally`, at exit
and on SIGTERM/SIGHUP.
"""
import argparse
import atexit
import datetime
import glob
import gzip
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time

sys.dont_write_bytecode = True  # no __pycache__ next to bench.py in the repository
import registry  # noqa: E402  (bench/registry.py: the loopback registry of the push rows)

TIME = "/usr/bin/time"
SHAPE_PIGZ = "same shape: code | pigz -1, weights hashed"
SHAPE_ZSTD = "same shape: code | zstd -3, weights hashed"
FLOOR_HASH = "floor: tar | openssl dgst -sha256"
FLOOR_READ = "floor: tar | cat (read only)"
FLOOR_FIND = "floor: find -printf '%s %T@' (stat walk)"
FLOOR_CHUNK = "floor: the changed chunk through pigz -1 -p2"
CASES = ("tree10k", "push", "tree100k", "bigfile")
# The 100k-file tree's and the big file's rows: scenario keys are prefixed with the case.
T100 = "tree100k: "
BIG = "bigfile: "
TIME_FMT = "%M %U %S"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rm(path):
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def children_cpu():
    """CPU seconds (user + system) of every reaped child so far, at microsecond resolution."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def io_full_us():
    """The kernel's IO pressure, "full" line (/proc/pressure/io): microseconds so far during which
    every runnable task of the machine waited on IO at once (the device stalled everything), or
    None where PSI is not available."""
    try:
        with open("/proc/pressure/io") as f:
            for line in f:
                if line.startswith("full"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_time_file(path):
    """Parses a GNU time '-f "%M %U %S"' output file: (rss_kb, cpu_s)."""
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    # GNU time prints "Command exited with non-zero status N" before the format line on failure.
    rss, user, sys_ = lines[-1].split()
    return int(rss), float(user) + float(sys_)


def dir_bytes(path):
    n = 0
    for root, _, files in os.walk(path):
        for f in files:
            n += os.lstat(os.path.join(root, f)).st_size
    return n


def esc(text):
    """A pipe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def is_kiln(scenario):
    """A kiln row (of any case: "tree100k: kiln cold (gzip)" too)."""
    return scenario.split(": ", 1)[-1].startswith("kiln") or scenario.startswith("kiln")


class Sample:
    def __init__(self, wall, rss_kb, cpu, extra=None):
        self.wall, self.rss_kb, self.cpu, self.extra = wall, rss_kb, cpu, extra or {}


class Bench:
    def __init__(self, a):
        self.a = a
        self.cases = a.cases
        self.tree = os.path.abspath(a.tree) if a.tree else None
        self.src = os.path.join(self.tree, "src") if self.tree else None
        self.tree100k = os.path.abspath(a.tree_100k) if a.tree_100k else None
        self.bigtree = os.path.abspath(a.bigfile) if a.bigfile else None
        self.kiln = os.path.abspath(a.kiln)
        self.work = os.path.abspath(a.work)
        # Outputs, caches, time files, registry storage: same disk as the tree. Per preset, so a
        # --small check can run while a full run is going on.
        self.tmp = os.path.join(self.work, f"run-{a.preset}")
        self.samples = {}   # scenario -> [Sample]
        self.pending_stall = 0.0  # device stall (s) of the sample being measured (add_stall)
        self.checks = []    # (what, ok, detail)
        self.notes = []
        self.kiln_results = {}  # scenario -> [kiln JSON]
        self.ref_digest = {}    # compression -> manifest digest of the cold build
        self.edit_file = None
        self.edit_orig = None
        self.skipped = {}   # scenario -> reason
        self.push = {}      # push setup: tag, digest, blob count, sizes (see push_setup)
        self.uncompressed = []  # files (relative to src) kiln stores in uncompressed layers
        self.repro = {}     # case -> {"runs": [(what, digest)], "jobs1": digest, "jobs2": digest}
        self.overhead = 0.0
        self.load_start = self.load_end = (0.0, 0.0, 0.0)

    # ---------------------------------------------------------------- running things

    def tfile(self, name):
        return os.path.join(self.tmp, "time-" + name)

    def run_timed(self, argv, name="cmd", env=None, stdout=subprocess.DEVNULL):
        """Runs argv under GNU time. Returns (wall, rss_kb, cpu, completed)."""
        tf = self.tfile(name)
        rm(tf)
        c0 = children_cpu()
        io0 = io_full_us()
        t0 = time.perf_counter()
        cp = subprocess.run([TIME, "-f", TIME_FMT, "-o", tf] + argv, stdout=stdout, stderr=subprocess.PIPE,
                            env=env)
        wall = time.perf_counter() - t0
        self.add_stall(io0)
        cpu = children_cpu() - c0  # GNU time's %U/%S have 10 ms resolution; rusage has 1 us
        if cp.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}")
        rss, _ = read_time_file(tf)
        return wall, rss, cpu, cp

    def run_pipeline(self, stages, out_path, name):
        """Runs `stage0 | stage1 | ... > out_path` in bash, each stage under its own GNU time."""
        parts, tfs = [], []
        for i, st in enumerate(stages):
            tf = self.tfile(f"{name}-{i}")
            rm(tf)
            tfs.append(tf)
            parts.append(f"{TIME} -f '{TIME_FMT}' -o {tf} {st}")
        cmd = "set -o pipefail; " + " | ".join(parts) + f" > {out_path}"
        c0 = children_cpu()
        io0 = io_full_us()
        t0 = time.perf_counter()
        cp = subprocess.run(["bash", "-c", cmd], stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        self.add_stall(io0)
        cpu = children_cpu() - c0  # every stage (and bash, and GNU time) summed
        if cp.returncode != 0:
            raise RuntimeError(f"{cmd} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}")
        rss = sum(read_time_file(tf)[0] for tf in tfs)
        return Sample(wall, rss, cpu, {"out_bytes": os.path.getsize(out_path) if out_path != os.devnull else 0})

    def run_sequence(self, argvs, name):
        wall = cpu = 0.0
        rss = 0
        for i, argv in enumerate(argvs):
            w, r, c, _ = self.run_timed(argv, f"{name}-{i}")
            wall += w
            cpu += c
            rss = max(rss, r)
        return Sample(wall, rss, cpu)

    def settle(self):
        """Between measurements (untimed): flush dirty pages left by the previous one."""
        subprocess.run(["sync"])
        self.pending_stall = 0.0

    def add_stall(self, io0):
        """Adds the device stall seen since `io0` (io_full_us() before a timed command) to the
        sample being measured."""
        io1 = io_full_us()
        if io0 is not None and io1 is not None:
            self.pending_stall += (io1 - io0) / 1e6

    def record(self, scenario, sample):
        # The device stall during the timed commands since the last record (or settle): seconds in
        # which the whole machine waited on IO. Reported beside the rows, never subtracted.
        sample.extra.setdefault("io_stall", self.pending_stall)
        self.pending_stall = 0.0
        self.samples.setdefault(scenario, []).append(sample)

    def check(self, what, ok, detail=""):
        self.checks.append((what, bool(ok), detail))
        if not ok:
            log(f"CHECK FAILED: {what} {detail}")

    # ---------------------------------------------------------------- kiln

    def spec_path(self, compression, tree=None):
        p = os.path.join(tree or self.tree, f"kiln-{compression}.json")
        spec = {"name": "bench", "source_root": "src", "source_copy_mode": "all", "compression": compression}
        body = json.dumps(spec, indent=2) + "\n"
        if not os.path.exists(p) or open(p).read() != body:
            with open(p, "w") as f:
                f.write(body)
        return p

    def kiln_build(self, compression, cache, out, tree=None, jobs=None):
        """`kiln build SPEC -o oci:OUT:bench --json --cache CACHE` (jobs: add `--jobs N`; default:
        kiln's own, the number of cores). Peak RSS is the kiln process's (GNU time %M)."""
        argv = [self.kiln, "build", self.spec_path(compression, tree), "-o", f"oci:{out}:bench", "--json",
                "--progress", "quiet", "--cache", cache]
        if jobs:
            argv += ["--jobs", str(jobs)]
        wall, rss, cpu, cp = self.run_timed(argv, "kiln", stdout=subprocess.PIPE)
        res = json.loads(cp.stdout)
        if res.get("status") != "success":
            raise RuntimeError(f"kiln failed: {cp.stdout[:2000]}")
        return Sample(wall, rss, cpu, {"json": res})

    def kiln_cold(self, compression, tag, case="tree10k", tree=None, jobs=None, store=None):
        """A cold build: a fresh cache (store) and a fresh output layout. `store` names the cache
        directory (default: one per compression); `jobs` adds --jobs N. The gzip builds' digests
        go to the reproducibility table (self.repro)."""
        cache = os.path.join(self.tmp, store or f"kiln-cache-{tag}")
        out = os.path.join(self.tmp, f"kiln-out-{tag}")
        rm(cache)
        rm(out)
        self.settle()
        s = self.kiln_build(compression, cache, out, tree=tree, jobs=jobs)
        res = s.extra["json"]
        prefix = "" if case == "tree10k" else case + ": "
        misses = [l for l in res["layers"] if l["cache"] != "miss" and not l["from_base"]]
        self.check(f"{prefix}kiln cold ({compression}): every layer built (cache miss)", not misses,
                   f"{len(misses)} hit(s) in a fresh cache" if misses else "")
        if case == "tree10k" and compression == "gzip" and not self.uncompressed:
            self.uncompressed = self.uncompressed_files(out)
        ref = self.ref_digest.setdefault(compression if case == "tree10k" else f"{case}:{compression}", res["digest"])
        self.check(f"{prefix}kiln cold ({compression}): same digest on every cold build (reproducible)",
                   res["digest"] == ref, f"{res['digest']} != {ref}" if res["digest"] != ref else "")
        if compression == "gzip":
            r = self.repro.setdefault(case, {"runs": []})
            what = f"--jobs {jobs}" if jobs else f"default jobs ({os.cpu_count()})"
            r["runs"].append((f"{what}, store {os.path.basename(cache)}", res["digest"]))
            if jobs in (1, 2):
                r[f"jobs{jobs}"] = res["digest"]
        return s, cache, out

    def repro_builds(self, case, tree):
        """Untimed, in the warm-up: the gzip build with --jobs 1, into a fresh store of its own.
        With the warm-up build (--jobs 2) and the timed cold builds (one fresh store each) it
        makes the reproducibility table: same digest across runs, thread counts and stores."""
        log(f"warm-up: {case}: kiln cold (gzip) --jobs 1, store repro-store-j1 (reproducibility)")
        _, cache, out = self.kiln_cold("gzip", "repro-j1", case=case, tree=tree, jobs=1, store="repro-store-j1")
        rm(cache)
        rm(out)

    def find_floor(self, src):
        """The `find` floor of a no-change rebuild: walk the tree and stat every entry (GNU find's
        %s and %T@ need an lstat each), printing size and mtime to /dev/null."""
        wall, rss, cpu, _ = self.run_timed(["find", src, "-printf", "%s %T@\n"], "find")
        return Sample(wall, rss, cpu)

    def chunk_floor(self, cache, digest):
        """The work a one-file change cannot avoid: compressing the changed chunk. The rebuilt
        layer's tar (decompressed from kiln's store, untimed) through `pigz -1 -p 2` (kiln's level,
        2 threads) to /dev/null."""
        blob = os.path.join(cache, "blobs", *digest.split(":"))
        tar = os.path.join(self.tmp, "changed-chunk.tar")
        with gzip.open(blob, "rb") as src, open(tar, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        try:
            wall, rss, cpu, _ = self.run_timed(["pigz", "-1", "-p", "2", "-c", tar], "pigz-chunk")
        finally:
            rm(tar)
        return Sample(wall, rss, cpu, {"out_bytes": os.path.getsize(blob)})

    def uncompressed_files(self, layout):
        """Files (relative to src) in the layers kiln stored uncompressed, read from its output."""
        with open(os.path.join(layout, "index.json")) as f:
            mdesc = json.load(f)["manifests"][0]
        blob = lambda d: os.path.join(layout, "blobs", *d.split(":"))
        with open(blob(mdesc["digest"])) as f:
            manifest = json.load(f)
        names = []
        for l in manifest["layers"]:
            if l["mediaType"].endswith(".tar"):
                with tarfile.open(blob(l["digest"])) as t:
                    names += [m.name for m in t.getmembers() if m.isfile()]
        # In the image: root/<path in src> (source_dest /root).
        return sorted(n.split("/", 1)[1] for n in names if n.startswith("root/"))

    def pick_edit_file(self):
        pys = []
        for root, dirs, files in os.walk(self.src):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".py") and f != "__init__.py":
                    pys.append(os.path.join(root, f))
            if len(pys) > 50:
                break
        # A mid-sized module of the main package, deterministic.
        pys.sort(key=lambda p: (abs(os.path.getsize(p) - 12000), p))
        self.edit_file = pys[0]
        with open(self.edit_file, "rb") as f:
            self.edit_orig = f.read()

    def edit(self, n):
        with open(self.edit_file, "wb") as f:
            f.write(self.edit_orig + f"# bench edit {n} {time.time_ns()}\n".encode())

    def restore(self):
        if self.edit_file is not None:
            with open(self.edit_file, "wb") as f:
                f.write(self.edit_orig)

    def kiln_rep(self, rep, warm):
        label = "warm-up" if warm else f"rep {rep + 1}"
        # Cold, gzip (the default compression) — its cache and output serve the rebuilds.
        # A fresh store per rep (another cache directory each time: reproducibility across stores).
        log(f"{label}: kiln cold (gzip)")
        s, cache, out = self.kiln_cold("gzip", "gzip", store=f"kiln-cache-gzip-{'warm' if warm else rep + 1}",
                                       jobs=2 if warm else None)
        if not warm:
            self.record("kiln cold (gzip)", s)
        cold_digest = s.extra["json"]["digest"]

        # No-change rebuilds: same cache, same output; each after a `find` walk of the same tree
        # (the floor of a rebuild that stats every file), so the pair sees the same machine.
        n_nc = 2 if warm else max(1, -(-self.a.nochange_reps // self.a.reps))  # ceil: spread over the reps
        log(f"{label}: kiln no-change rebuild x{n_nc} (each after a find floor)")
        for _ in range(n_nc):
            f = self.find_floor(self.src)
            if not warm:
                self.record(FLOOR_FIND, f)
            s = self.kiln_build("gzip", cache, out)
            res = s.extra["json"]
            bad = [l["label"] for l in res["layers"] if l["cache"] != "hit"]
            self.check("kiln no-change rebuild: all layers are cache hits", not bad, f"misses: {bad}" if bad else "")
            self.check("kiln no-change rebuild: digest equals the cold build's", res["digest"] == cold_digest,
                       f"{res['digest']} != {cold_digest}" if res["digest"] != cold_digest else "")
            if not warm:
                self.record("kiln no-change rebuild", s)

        # One source file changed: a different change each time, then restore and check the digest.
        log(f"{label}: kiln one-file-changed rebuild")
        self.edit(rep if not warm else -1)
        try:
            s = self.kiln_build("gzip", cache, out)
        finally:
            self.restore()
        res = s.extra["json"]
        misses = [l for l in res["layers"] if l["cache"] == "miss"]
        self.check("kiln one-file-changed: digest differs from the cold build's", res["digest"] != cold_digest)
        self.check("kiln one-file-changed: exactly one layer rebuilt", len(misses) == 1,
                   f"{len(misses)} rebuilt: {[l['label'] for l in misses]}")
        if not warm:
            self.record("kiln one file changed", s)
            if len(misses) == 1:
                self.record(FLOOR_CHUNK, self.chunk_floor(cache, misses[0]["digest"]))
        s2 = self.kiln_build("gzip", cache, out)  # untimed: file restored
        self.check("kiln rebuild after restoring the file: digest equals the cold build's",
                   s2.extra["json"]["digest"] == cold_digest)

        # Cold, zstd.
        log(f"{label}: kiln cold (zstd)")
        s, cache_z, out_z = self.kiln_cold("zstd", "zstd")
        if not warm:
            self.record("kiln cold (zstd)", s)
        # Cold, uncompressed: against the read + hash floor.
        log(f"{label}: kiln cold (none)")
        s, cache_n, out_n = self.kiln_cold("none", "none")
        if not warm:
            self.record("kiln cold (none)", s)
        for p in (cache, out, cache_z, out_z, cache_n, out_n):
            rm(p)
        if warm:
            self.repro_builds("tree10k", self.tree)

    # ---------------------------------------------------------------- peers

    def peer_tar_pipe(self, scenario, stages, ext, tree=None):
        """`tar | STAGES > file` (ext None: > /dev/null, for the read-only floor; GNU tar itself
        skips reading file data when it writes straight to /dev/null, hence the pipe)."""
        out = os.path.join(self.tmp, "peer-out" + ext) if ext else os.devnull
        if ext:
            rm(out)
        self.settle()
        s = self.run_pipeline([f"tar -cf - -C {shlex.quote(tree or self.tree)} src"] + stages, out, "pipe")
        if ext:
            rm(out)
        return s

    def peer_tar_fsync(self):
        out = os.path.join(self.tmp, "peer-out.tar")
        rm(out)
        self.settle()
        s = self.run_sequence([["tar", "-cf", out, "-C", self.tree, "src"], ["sync", out]], "tarsync")
        s.extra["out_bytes"] = os.path.getsize(out)
        rm(out)
        return s

    def peer_umoci(self, src=None):
        layout = os.path.join(self.tmp, "umoci-layout")
        rm(layout)
        self.settle()
        s = self.run_sequence([["umoci", "init", "--layout", layout],
                               ["umoci", "new", "--image", f"{layout}:bench"],
                               ["umoci", "insert", "--image", f"{layout}:bench", src or self.src, "/root"]], "umoci")
        s.extra["out_bytes"] = dir_bytes(layout)
        rm(layout)
        return s

    def buildah_argv(self):
        return ["buildah", "--storage-driver", "vfs", "--root", os.path.join(self.tmp, "buildah-root"),
                "--runroot", os.path.join(self.tmp, "buildah-runroot")]

    def buildah_clean(self):
        rm(os.path.join(self.tmp, "buildah-root"))
        rm(os.path.join(self.tmp, "buildah-runroot"))
        rm(os.path.join(self.tmp, "buildah-out"))

    def peer_buildah(self):
        self.buildah_clean()
        self.settle()
        b = self.buildah_argv()
        name = "bench-ctr"
        out = os.path.join(self.tmp, "buildah-out")
        s = self.run_sequence([b + ["from", "--name", name, "scratch"],
                               b + ["copy", name, self.src, "/root"],
                               b + ["commit", "--quiet", "--disable-compression=false", name, f"oci:{out}:bench"]],
                              "buildah")
        s.extra["out_bytes"] = dir_bytes(out)
        self.buildah_clean()
        return s

    def same_shape(self, scenario, codec, ext):
        """The peer of kiln's shape: the files kiln stores in compressed layers go through `tar |
        CODEC` at kiln's level, while the large files kiln stores uncompressed (weights: a sample
        showed no gain) are only hashed (`openssl dgst -sha256`), both at once as kiln's layers are.
        The uncompressed set comes from kiln's own cold build (its layer labels and media types)."""
        out = os.path.join(self.tmp, "peer-out" + ext)
        rm(out)
        self.settle()
        excl = " ".join(f"--exclude=./{shlex.quote(p)}" for p in self.uncompressed)
        hashes = " ".join(shlex.quote(os.path.join(self.src, p)) for p in self.uncompressed)
        tf_tar, tf_codec, tf_hash = self.tfile("shape-tar"), self.tfile("shape-codec"), self.tfile("shape-hash")
        for tf in (tf_tar, tf_codec, tf_hash):
            rm(tf)
        hash_part = (f"{TIME} -f '{TIME_FMT}' -o {tf_hash} openssl dgst -sha256 {hashes} >/dev/null & "
                     if hashes else f"echo '0 0 0' > {tf_hash}; ")
        cmd = ("set -o pipefail; " + hash_part +
               f"{TIME} -f '{TIME_FMT}' -o {tf_tar} tar -cf - -C {self.src} {excl} . | "
               f"{TIME} -f '{TIME_FMT}' -o {tf_codec} {codec} > {out}; rc=$?; wait || rc=1; exit $rc")
        c0 = children_cpu()
        io0 = io_full_us()
        t0 = time.perf_counter()
        cp = subprocess.run(["bash", "-c", cmd], stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        self.add_stall(io0)
        cpu = children_cpu() - c0
        if cp.returncode != 0:
            raise RuntimeError(f"{cmd} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}")
        rss = sum(read_time_file(tf)[0] for tf in (tf_tar, tf_codec, tf_hash))
        sample = Sample(wall, rss, cpu, {"out_bytes": os.path.getsize(out)})
        rm(out)
        return sample

    def peers(self):
        jobs = "2"  # kiln's default --jobs
        p = [
            # Same shape and level as kiln (gzip level 1, zstd level 3; weights hashed, not compressed).
            (SHAPE_PIGZ, lambda: self.same_shape(SHAPE_PIGZ, f"pigz -1 -p {jobs} -c", ".tar.gz")),
            (SHAPE_ZSTD, lambda: self.same_shape(SHAPE_ZSTD, f"zstd -q -3 -T{jobs} -c", ".tar.zst")),
            # Whole tree through the codec, kiln's levels.
            ("tar | gzip -1", lambda: self.peer_tar_pipe("tar | gzip -1", ["gzip -1 -c"], ".tar.gz")),
            ("tar | pigz -1", lambda: self.peer_tar_pipe("tar | pigz -1", [f"pigz -1 -p {jobs} -c"], ".tar.gz")),
            # Floors: read + SHA-256 every byte once (OpenSSL's SHA-NI/AVX code, as kiln uses), and read only.
            (FLOOR_HASH, lambda: self.peer_tar_pipe(FLOOR_HASH, ["openssl dgst -sha256"], ".sha256")),
            (FLOOR_READ, lambda: self.peer_tar_pipe(FLOOR_READ, ["cat"], None)),
            ("tar to file + fsync", self.peer_tar_fsync),
            ("umoci insert", self.peer_umoci),
            ("buildah (vfs) from+copy+commit", self.peer_buildah),
        ]
        return [(n, f) for n, f in p if n not in self.skipped]

    # ---------------------------------------------------------------- the 100k-file tree

    T100_PEERS = ["tar | pigz -1 -p2 (same shape)", FLOOR_HASH, "umoci insert"]

    def tree100k_rep(self, rep, warm):
        """kiln cold (gzip) and no-change rebuilds (each after a `find` floor) on the 100k-file
        tree, then its peers: the same-shape `tar | pigz -1 -p2` (no file there is large enough for
        a layer of its own: every byte goes through gzip level 1, on kiln's 2 threads), the openssl
        floor and umoci insert."""
        label = "warm-up" if warm else f"rep {rep + 1}"
        tree = self.tree100k
        src = os.path.join(tree, "src")
        log(f"{label}: tree100k: kiln cold (gzip)")
        s, cache, out = self.kiln_cold("gzip", "t100-gzip", case="tree100k", tree=tree,
                                       store=f"t100-cache-{'warm' if warm else rep + 1}", jobs=2 if warm else None)
        if not warm:
            self.record(T100 + "kiln cold (gzip)", s)
        cold_digest = s.extra["json"]["digest"]
        n_nc = 1 if warm else max(1, -(-self.a.nochange_reps_100k // self.a.reps))
        log(f"{label}: tree100k: kiln no-change rebuild x{n_nc} (each after a find floor)")
        for _ in range(n_nc):
            f = self.find_floor(src)
            s = self.kiln_build("gzip", cache, out, tree=tree)
            res = s.extra["json"]
            bad = [l["label"] for l in res["layers"] if l["cache"] != "hit"]
            self.check("tree100k: kiln no-change rebuild: all layers are cache hits", not bad,
                       f"misses: {bad}" if bad else "")
            self.check("tree100k: kiln no-change rebuild: digest equals the cold build's", res["digest"] == cold_digest,
                       f"{res['digest']} != {cold_digest}" if res["digest"] != cold_digest else "")
            if not warm:
                self.record(T100 + FLOOR_FIND, f)
                self.record(T100 + "kiln no-change rebuild", s)
        rm(cache)
        rm(out)
        if warm:
            self.repro_builds("tree100k", tree)
        peers = {"tar | pigz -1 -p2 (same shape)": lambda: self.peer_tar_pipe(None, ["pigz -1 -p 2 -c"], ".tar.gz", tree),
                 FLOOR_HASH: lambda: self.peer_tar_pipe(None, ["openssl dgst -sha256"], ".sha256", tree),
                 "umoci insert": lambda: self.peer_umoci(src)}
        for name in self.T100_PEERS:
            if name in self.skipped:
                continue
            log(f"{label}: tree100k: {name}")
            s = peers[name]()
            if not warm:
                self.record(T100 + name, s)

    # ---------------------------------------------------------------- one big compressible file

    BIG_PEERS = ["pigz -1 -p2", "gzip -1", "floor: openssl dgst -sha256"]

    def bigfile_path(self):
        return os.path.join(self.bigtree, "src", "data", "corpus.txt")

    def bigfile_rep(self, rep, warm):
        """kiln cold (gzip) of a source root holding one big compressible file, against pigz -1 -p2
        and gzip -1 of the same file (read directly: no tar in front) and the openssl floor."""
        label = "warm-up" if warm else f"rep {rep + 1}"
        log(f"{label}: bigfile: kiln cold (gzip)")
        s, cache, out = self.kiln_cold("gzip", "big-gzip", case="bigfile", tree=self.bigtree,
                                       store=f"big-cache-{'warm' if warm else rep + 1}", jobs=2 if warm else None)
        if not warm:
            self.record(BIG + "kiln cold (gzip)", s)
        rm(cache)
        rm(out)
        if warm:
            self.repro_builds("bigfile", self.bigtree)
        f = shlex.quote(self.bigfile_path())
        cmds = {"pigz -1 -p2": (f"pigz -1 -p 2 -c {f}", ".gz"), "gzip -1": (f"gzip -1 -c {f}", ".gz"),
                "floor: openssl dgst -sha256": (f"openssl dgst -sha256 {f}", ".sha256")}
        for name in self.BIG_PEERS:
            if warm and name != "floor: openssl dgst -sha256":
                continue  # kiln's warm-up builds have read the file into the page cache; a codec has nothing else to warm
            log(f"{label}: bigfile: {name}")
            o = os.path.join(self.tmp, "peer-out" + cmds[name][1])
            rm(o)
            self.settle()
            s = self.run_pipeline([cmds[name][0]], o, "big")
            rm(o)
            if not warm:
                self.record(BIG + name, s)

    def probe_buildah(self):
        if shutil.which("buildah") is None:
            self.skipped["buildah (vfs) from+copy+commit"] = "buildah is not installed"
            return
        try:
            self.buildah_clean()
            b = self.buildah_argv()
            subprocess.run(b + ["from", "--name", "probe", "scratch"], check=True, capture_output=True)
            subprocess.run(b + ["rm", "probe"], check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            self.skipped["buildah (vfs) from+copy+commit"] = "buildah failed here: " + e.stderr.decode(errors="replace")[-300:]
        finally:
            self.buildah_clean()

    # ---------------------------------------------------------------- push (kiln vs skopeo)

    PUSH_SCENARIOS = ["kiln push cold", "kiln push warm", "kiln push warm, --skip-preflight",
                      "kiln push, tag exists (no --force)", "kiln push from layout, warm",
                      "kiln build, no push (baseline)",
                      "skopeo push cold", "skopeo push warm"]
    WEIGHTS_MIB = (64, 512)
    RSS_GROWTH_LIMIT_MB = 4.0  # peak RSS may grow this much from the small blob to the 8x larger one

    def weights_scenario(self, mib):
        return f"kiln push cold, weights only ({mib} MiB)"

    def probe_push(self):
        why = None
        for tool in ("docker-registry", "skopeo"):
            if shutil.which(tool) is None:
                why = f"{tool} is not installed"
        if why:
            for sc in self.PUSH_SCENARIOS + [self.weights_scenario(m) for m in self.WEIGHTS_MIB]:
                self.skipped[sc] = why

    def push_spec(self, directory, name, reg_addr, source_root="src", file_name="kiln-push.json"):
        """A spec like the gzip one, with "registry" set (not part of the tag: the tag and the layer
        cache keys stay the same whichever port the registry has)."""
        p = os.path.join(directory, file_name)
        spec = {"name": name, "source_root": source_root, "source_copy_mode": "all", "compression": "gzip",
                "registry": reg_addr}
        with open(p, "w") as f:
            f.write(json.dumps(spec, indent=2) + "\n")
        return p

    def weights_dir(self, mib):
        """A directory holding one incompressible file of `mib` MiB and nothing else: a generated
        tree's `src/models` when its weights have that size (read in place: never linked or
        copied, since a new hard link changes the file's ctime and a `tar` reading it at that moment,
        in a concurrent run, fails with "file changed as we read it"), else work/blobs/weights-<N>M/,
        generated once (seeded)."""
        want = mib << 20
        for d in sorted(glob.glob(os.path.join(os.path.dirname(self.tree), "tree-*", "src", "models"))):
            if os.listdir(d) == ["weights.safetensors"] and os.path.getsize(os.path.join(d, "weights.safetensors")) == want:
                return d
        d = os.path.join(self.work, "blobs", f"weights-{mib}M")
        path = os.path.join(d, "weights.safetensors")
        if not os.path.exists(path) or os.path.getsize(path) != want:
            log(f"generating {path}")
            os.makedirs(d, exist_ok=True)
            rng = random.Random(f"kiln-bench-weights-{mib}")
            with open(path + ".tmp", "wb") as f:
                for _ in range(mib):
                    f.write(rng.randbytes(1 << 20))
            os.replace(path + ".tmp", path)
        return d

    def kiln_push_argv(self, spec, *flags):
        return [self.kiln, "build", spec, *flags, "--json", "--progress", "quiet", "--cache", self.push["cache"]]

    def run_kiln_json(self, argv, name="kiln-push"):
        wall, rss, cpu, cp = self.run_timed(argv, name, stdout=subprocess.PIPE)
        res = json.loads(cp.stdout)
        if res.get("status") not in ("success", "exists"):
            raise RuntimeError(f"kiln failed: {cp.stdout[:2000]}")
        return Sample(wall, rss, cpu, {"json": res})

    def push_setup(self):
        """Untimed: the bench image (gzip) built into a cache of its own and an OCI layout (skopeo's
        source); the weights-only images built into the same cache."""
        cache, layout = os.path.join(self.tmp, "push-cache"), os.path.join(self.tmp, "push-layout")
        rm(cache)
        rm(layout)
        self.push = {"cache": cache, "layout": layout}
        spec = self.push_spec(self.tree, "bench", "127.0.0.1:5000")  # --no-push: never contacted
        s = self.run_kiln_json(self.kiln_push_argv(spec, "--no-push", "-o", f"oci:{layout}:bench"))
        res = s.extra["json"]
        blobs = {l["digest"] for l in res["layers"]} | {res["config_digest"]}
        self.push.update(tag=res["tag"], digest=res["digest"], blobs=len(blobs),
                         bytes=sum(l["size"] for l in res["layers"]))
        ref = self.ref_digest.get("gzip")
        if ref:
            self.check("push: the image pushed is the bench image (digest of the cold gzip build)", res["digest"] == ref,
                       f"{res['digest']} != {ref}" if res["digest"] != ref else "")
        for mib in self.WEIGHTS_MIB:
            if self.weights_scenario(mib) in self.skipped:
                continue
            d = os.path.join(self.tmp, f"weights-{mib}")  # the spec only; the source is read in place
            rm(d)
            os.makedirs(d)
            src = self.weights_dir(mib)
            spec = self.push_spec(d, f"bench-w{mib}", "127.0.0.1:5000", source_root=src)
            r = self.run_kiln_json(self.kiln_push_argv(spec, "--no-push")).extra["json"]
            self.push[f"w{mib}"] = {"dir": d, "src": src, "digest": r["digest"], "tag": r["tag"],
                                    "blobs": len({l["digest"] for l in r["layers"]} | {r["config_digest"]})}

    def skopeo_inspect_digest(self, addr, name, tag):
        cp = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--no-tags", f"docker://{addr}/{name}:{tag}"],
                            capture_output=True, text=True)
        if cp.returncode != 0:
            return f"(skopeo inspect failed: {cp.stderr.strip()[-300:]})"
        return json.loads(cp.stdout).get("Digest", "")

    def timed_push(self, reg, fn):
        """Runs fn() (which returns a Sample) against registry `reg`, after a sync; adds the
        registry's CPU seconds and the requests it answered to the sample."""
        self.settle()
        mark, cpu0 = reg.mark(), reg.cpu()
        s = fn()
        reqs = reg.requests(mark)
        s.extra["registry_cpu"] = reg.cpu() - cpu0
        s.extra["requests"] = registry.summarize(reqs)
        return s

    def kiln_push(self, reg, spec, scenario, want_digest, n_blobs, *flags, expect="upload"):
        s = self.timed_push(reg, lambda: self.run_kiln_json(self.kiln_push_argv(spec, *flags)))
        res = s.extra["json"]
        s.extra.pop("json")
        s.extra["kiln"] = {"status": res.get("status"), "digest": res.get("digest"), "timings": res.get("timings", {}),
                           "pushed": res.get("pushed")}
        pushed = res.get("pushed") or {}
        if expect == "exists":
            self.check(f"{scenario}: kiln finds the tag and pushes nothing", res.get("status") == "exists",
                       f"status {res.get('status')}")
            self.check(f"{scenario}: kiln reports the pushed digest", res.get("digest") == want_digest,
                       f"{res.get('digest')} != {want_digest}")
            return s
        self.check(f"{scenario}: kiln's pushed digest is the image's", pushed.get("digest") == want_digest,
                   f"{pushed.get('digest')} != {want_digest}")
        if expect == "upload":
            ok = pushed.get("uploaded") == n_blobs and pushed.get("skipped") == 0
        else:
            ok = pushed.get("uploaded") == 0 and pushed.get("skipped") == n_blobs
        self.check(f"{scenario}: {'every blob uploaded' if expect == 'upload' else 'no blob uploaded (all present)'}", ok,
                   f"uploaded {pushed.get('uploaded')}, skipped {pushed.get('skipped')}, mounted {pushed.get('mounted')} "
                   f"of {n_blobs}")
        with open(spec) as f:
            name = json.load(f)["name"]
        got = self.skopeo_inspect_digest(reg.addr, name, res.get("tag"))
        self.check(f"{scenario}: skopeo inspect of the pushed tag gives kiln's digest", got == pushed.get("digest"),
                   f"skopeo: {got}, kiln: {pushed.get('digest')}")
        return s

    def kiln_layout_push(self, reg, scenario, want_digest, n_blobs):
        """`kiln push oci:LAYOUT:bench REF`: the same copy skopeo makes, layout to registry."""
        argv = [self.kiln, "push", f"oci:{self.push['layout']}:bench", f"{reg.addr}/bench:{self.push['tag']}",
                "--json", "--progress", "quiet", "--cache", self.push["cache"]]
        s = self.timed_push(reg, lambda: self.run_kiln_json(argv))
        res = s.extra.pop("json")
        self.check(f"{scenario}: kiln's pushed digest is the image's", res.get("digest") == want_digest,
                   f"{res.get('digest')} != {want_digest}")
        self.check(f"{scenario}: no blob uploaded (all present)",
                   res.get("uploaded") == 0 and res.get("skipped") == n_blobs,
                   f"uploaded {res.get('uploaded')}, skipped {res.get('skipped')} of {n_blobs}")
        return s

    def skopeo_cache_file(self):
        if os.geteuid() == 0:
            return "/var/lib/containers/cache/blob-info-cache-v1.boltdb"
        base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return os.path.join(base, "containers", "cache", "blob-info-cache-v1.boltdb")

    def skopeo_push(self, reg, scenario):
        tag = self.push["tag"]
        argv = ["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{self.push['layout']}:bench", f"docker://{reg.addr}/bench:{tag}"]
        s = self.timed_push(reg, lambda: Sample(*self.run_timed(argv, "skopeo")[:3]))
        got = self.skopeo_inspect_digest(reg.addr, "bench", tag)
        self.check(f"{scenario}: skopeo pushed the same image (manifest digest = kiln's)", got == self.push["digest"],
                   f"{got} != {self.push['digest']}")
        return s

    def push_kiln_block(self, warm):
        reg = registry.Registry(self.tmp).start()
        try:
            spec = self.push_spec(self.tree, "bench", reg.addr)
            d, n = self.push["digest"], self.push["blobs"]
            out = [("kiln push cold", self.kiln_push(reg, spec, "kiln push cold", d, n, "--push")),
                   ("kiln push warm", self.kiln_push(reg, spec, "kiln push warm", d, n, "--push", "--force", expect="skip")),
                   ("kiln push warm, --skip-preflight",
                    self.kiln_push(reg, spec, "kiln push warm, --skip-preflight", d, n, "--push", "--force",
                                   "--skip-preflight", expect="skip")),
                   ("kiln push, tag exists (no --force)",
                    self.kiln_push(reg, spec, "kiln push, tag exists (no --force)", d, n, "--push", expect="exists")),
                   ("kiln push from layout, warm",
                    self.kiln_layout_push(reg, "kiln push from layout, warm", d, n))]
            self.settle()
            s = self.run_kiln_json(self.kiln_push_argv(spec, "--no-push"))
            s.extra = {"kiln": {"timings": s.extra["json"].get("timings", {})}}
            out.append(("kiln build, no push (baseline)", s))
            if warm:
                # Once: pull kiln's push back with skopeo, which checks every blob against its digest.
                pulled = os.path.join(self.tmp, "push-verify")
                rm(pulled)
                cp = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                     f"docker://{reg.addr}/bench:{self.push['tag']}", f"oci:{pulled}:bench"],
                                    capture_output=True, text=True)
                self.check("kiln push: skopeo pulls the pushed image back (every blob verified against its digest)",
                           cp.returncode == 0, cp.stderr.strip()[-300:])
                rm(pulled)
            for mib in self.WEIGHTS_MIB:
                sc = self.weights_scenario(mib)
                if sc in self.skipped:
                    continue
                w = self.push[f"w{mib}"]
                spec_w = self.push_spec(w["dir"], f"bench-w{mib}", reg.addr, source_root=w["src"])
                out.append((sc, self.kiln_push(reg, spec_w, sc, w["digest"], w["blobs"], "--push", "--force")))
            return out
        finally:
            reg.stop()

    def push_skopeo_block(self):
        reg = registry.Registry(self.tmp).start()
        try:
            # Cold means cold for skopeo too: fresh storage on a fresh port, and no blob-info cache
            # (it remembers where blobs were seen and can skip or mount instead of uploading).
            rm(self.skopeo_cache_file())
            out = [("skopeo push cold", self.skopeo_push(reg, "skopeo push cold"))]
            out.append(("skopeo push warm", self.skopeo_push(reg, "skopeo push warm")))
            return out
        finally:
            reg.stop()

    def push_rep(self, rep, warm):
        if "kiln push cold" in self.skipped:
            return
        label = "warm-up" if warm else f"rep {rep + 1}"
        blocks = [("kiln", lambda: self.push_kiln_block(warm)), ("skopeo", self.push_skopeo_block)]
        if rep % 2:
            blocks.reverse()  # alternate who goes first, so drift does not favour one
        for who, fn in blocks:
            log(f"{label}: push ({who}, fresh loopback registry)")
            for sc, s in fn():
                if not warm:
                    self.record(sc, s)

    # ---------------------------------------------------------------- the run

    def run(self):
        rm(self.tmp)
        os.makedirs(self.tmp)
        # kiln's build history (a SQLite db + one log per build) goes to a state dir of this run's,
        # not ~/.local/state/kiln: no lock contention with other kiln runs on the machine (a
        # concurrent bench, the tests), nothing left behind. Every kiln row still pays for writing it.
        os.environ["KILN_STATE_DIR"] = os.path.join(self.tmp, "kiln-state")
        C = self.cases
        if "tree10k" in C:
            self.pick_edit_file()
            self.probe_buildah()
        if shutil.which("umoci") is None:
            self.skipped["umoci insert"] = "umoci is not installed"
        if "push" in C:
            self.probe_push()
        for name, why in self.skipped.items():
            log(f"skipping {name}: {why}")

        # Overhead of the measuring itself (fork/exec of GNU time and the child).
        ov = []
        for i in range(15):
            w, _, _, _ = self.run_timed(["true"], "true")
            ov.append(w)
        self.overhead = statistics.median(ov)
        self.load_start = os.getloadavg()

        peers = self.peers() if "tree10k" in C else []
        do_push = "push" in C and "kiln push cold" not in self.skipped
        try:
            # Warm-up (untimed): every tool once, so every row reads its input from the page cache;
            # the reproducibility builds (--jobs 1, --jobs 2) run here too. Then the reps, round-robin
            # over every case, so drift on a busy machine spreads over all rows.
            log(f"warm-up: one untimed run of every tool (cases: {', '.join(C)})")
            if "tree10k" in C:
                self.kiln_rep(0, warm=True)
            for name, fn in peers:
                log(f"warm-up: {name}")
                fn()
            if do_push:
                log("push: building the image to push into a cache of its own (untimed)")
                self.push_setup()
                self.push_rep(0, warm=True)
            if "tree100k" in C:
                self.tree100k_rep(0, warm=True)
            if "bigfile" in C:
                self.bigfile_rep(0, warm=True)
            for rep in range(self.a.reps):
                if "tree10k" in C:
                    self.kiln_rep(rep, warm=False)
                for name, fn in peers:
                    log(f"rep {rep + 1}: {name}")
                    self.record(name, fn())
                if do_push:
                    self.push_rep(rep, warm=False)
                if "tree100k" in C:
                    self.tree100k_rep(rep, warm=False)
                if "bigfile" in C:
                    self.bigfile_rep(rep, warm=False)
        finally:
            self.restore()
            registry.stop_all()
        rm(self.tmp)
        self.load_end = os.getloadavg()

    # ---------------------------------------------------------------- reporting

    def stall(self, scenario):
        """Median device stall (s) over a scenario's reps: time the whole machine waited on IO
        (PSI "full") while its timed commands ran; None when not measured."""
        xs = [s.extra["io_stall"] for s in self.samples.get(scenario, []) if "io_stall" in s.extra]
        return statistics.median(xs) if xs else None

    def med(self, scenario, attr="wall"):
        xs = self.samples.get(scenario)
        return statistics.median(getattr(s, attr) for s in xs) if xs else None

    def tree_line(self, src):
        """'N files, X MiB' of a tree (counted now: the trees are deterministic)."""
        if not src or not os.path.isdir(src):
            return "?"
        n = b = 0
        for root, _, files in os.walk(src):
            for f in files:
                n += 1
                b += os.lstat(os.path.join(root, f)).st_size
        return f"{n:,} file{'s' if n != 1 else ''}, {b / 2**20:.0f} MiB"

    def out_mb(self, sc):
        xs = self.samples[sc]
        if "floor:" in sc:
            return "—"
        if "out_bytes" in xs[0].extra:
            return f"{statistics.median(s.extra['out_bytes'] for s in xs) / 2**20:.0f}" if xs[0].extra["out_bytes"] else "—"
        if "json" in xs[0].extra:
            return f"{sum(l['size'] for l in xs[0].extra['json']['layers']) / 2**20:.0f}"
        return "—"

    def row(self, sc, ratios, note, shown=None):
        """One table row: median, min–max, peak RSS (max over the reps), CPU s, output MB, then a
        ratio cell per (denominator scenario), then the note."""
        xs = self.samples[sc]
        m = self.med(sc)
        cells = [f"{m / self.med(d):.2f}" if d and self.med(d) else "" for d in ratios]
        return (f"| {esc(shown or sc)} | {m:.3f} | {min(s.wall for s in xs):.3f}–{max(s.wall for s in xs):.3f} | "
                f"{max(s.rss_kb for s in xs) / 1024:.1f} | {self.med(sc, 'cpu'):.2f} | {self.out_mb(sc)} | "
                + " | ".join(cells) + f" | {esc(note)} |")

    def report(self):
        umoci = self.med("umoci insert")
        floor = self.med(FLOOR_HASH)
        kiln_ver = subprocess.run([self.kiln, "--version"], capture_output=True, text=True).stdout.strip()
        have10k = any(sc in self.samples for sc in ("kiln cold (gzip)", SHAPE_PIGZ, "umoci insert"))
        have100k = any(sc.startswith(T100) for sc in self.samples)
        havebig = any(sc.startswith(BIG) for sc in self.samples)
        L = []
        L.append(f"# kiln benchmark ({self.a.preset} preset; cases: {', '.join(self.cases)})")
        L.append("")
        L.append(f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; {kiln_ver}; kiln binary `{self.a.kiln_label}`")
        L.append(f"- machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; "
                 f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in self.load_start)} at the start, "
                 f"{'/'.join(f'{x:.1f}' for x in self.load_end)} at the end")
        if self.src and ("tree10k" in self.cases or "push" in self.cases):
            w = os.path.join(self.src, "models", "weights.safetensors")
            L.append(f"- bench tree: {self.tree_line(self.src)}"
                     + (f" (weights {os.path.getsize(w) / 2**20:.0f} MiB)" if os.path.exists(w) else ""))
        if self.tree100k and "tree100k" in self.cases:
            L.append(f"- many-files tree (tree100k): {self.tree_line(os.path.join(self.tree100k, 'src'))}")
        if self.bigtree and "bigfile" in self.cases:
            L.append(f"- big file: {self.tree_line(os.path.join(self.bigtree, 'src'))} (`src/data/corpus.txt`)")
        nc = [f"{len(self.samples[k])} on the {t}" for k, t in (("kiln no-change rebuild", "bench tree"),
                                                                 (T100 + "kiln no-change rebuild", "100k tree"))
              if self.samples.get(k)]
        L.append(f"- {self.a.reps} repetition(s) per scenario{' (no-change rebuilds: ' + ', '.join(nc) + ')' if nc else ''}, "
                 f"median shown, all in this one run; every tool warmed once first; page cache not dropped; "
                 f"measuring overhead (GNU time + fork/exec of `true`): {self.overhead * 1000:.1f} ms")
        L.append("")
        L.append("Every ratio column names its denominator (a row of the same table); peak RSS is GNU time's %M of "
                 "the process (kiln: the build process), the max over the reps; of a pipeline the sum over its stages "
                 "(they run together); of umoci/buildah the max over their commands. CPU s = user + system. "
                 "For kiln, output MB is the sum of the layer blobs.")
        L.append("")
        ratio = lambda m, d: f"{m / d:.2f}" if m is not None and d else ""
        if have10k:
            L.append("## Bench tree")
            L.append("")
            # Each kiln row's like-for-like peer: same codec, same level, same shape (weights hashed).
            shape_of = {"kiln cold (gzip)": SHAPE_PIGZ, "kiln cold (zstd)": SHAPE_ZSTD, "kiln cold (none)": FLOOR_HASH,
                        "kiln no-change rebuild": FLOOR_FIND}
            L.append("| scenario | median s | min–max s | peak RSS MB | CPU s | output MB | × same-shape peer | "
                     "× openssl floor | × umoci | notes |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            notes = {
                "kiln cold (gzip)": f"fresh cache + output; peer: {SHAPE_PIGZ}",
                "kiln cold (zstd)": f"fresh cache + output; peer: {SHAPE_ZSTD}",
                "kiln cold (none)": f"fresh cache + output, uncompressed; peer: {FLOOR_HASH}",
                "kiln no-change rebuild": f"same cache, same output; peer: {FLOOR_FIND}",
                "kiln one file changed": "one .py changed (different change each rep)",
                FLOOR_CHUNK: "the rebuilt layer's tar (from kiln's store) through pigz -1 -p2: the work a one-file change cannot avoid",
                SHAPE_PIGZ: "kiln's shape: files kiln compresses through pigz -1 -p2, its uncompressed layers' files through openssl, at once",
                SHAPE_ZSTD: "as above with zstd -3 -T2",
                "tar | gzip -1": "whole tree, kiln's level, one thread; no cache",
                "tar | pigz -1": "whole tree, kiln's level, 2 threads; no cache",
                FLOOR_HASH: "read + SHA-256 every byte once (OpenSSL, as kiln)",
                FLOOR_READ: "read every byte once",
                FLOOR_FIND: "walk the tree, lstat every entry (`find src -printf '%s %T@\\n'`): the floor of a no-change rebuild; "
                            "sampled right before each no-change rebuild",
                "tar to file + fsync": "uncompressed, durable write (kiln fsyncs its blobs)",
                "umoci insert": "init + new + insert (gzip, level 6 default); no cache",
                "buildah (vfs) from+copy+commit": "gzip, commit to oci:; no layer cache on this path",
            }
            order = ["kiln cold (gzip)", "kiln cold (zstd)", "kiln cold (none)", "kiln no-change rebuild",
                     "kiln one file changed", FLOOR_CHUNK, SHAPE_PIGZ, SHAPE_ZSTD, "tar | gzip -1", "tar | pigz -1", FLOOR_HASH,
                     FLOOR_READ, FLOOR_FIND, "tar to file + fsync", "umoci insert", "buildah (vfs) from+copy+commit"]
            for sc in order:
                if sc in self.skipped:
                    L.append(f"| {esc(sc)} | — | — | — | — | — | — | — | — | left out: {self.skipped[sc]} |")
                    continue
                xs = self.samples.get(sc)
                if not xs:
                    continue
                m = self.med(sc)
                out_mb = ""
                if sc in (FLOOR_HASH, FLOOR_READ, FLOOR_FIND, FLOOR_CHUNK):
                    out_mb = "—"
                elif "out_bytes" in xs[0].extra:
                    out_mb = f"{statistics.median(s.extra['out_bytes'] for s in xs) / 2**20:.0f}"
                elif "json" in xs[0].extra:
                    out_mb = f"{sum(l['size'] for l in xs[0].extra['json']['layers']) / 2**20:.0f}"
                L.append(f"| {esc(sc)} | {m:.3f} | {min(s.wall for s in xs):.3f}–{max(s.wall for s in xs):.3f} | "
                         f"{max(s.rss_kb for s in xs) / 1024:.1f} | {self.med(sc, 'cpu'):.2f} | {out_mb} | "
                         f"{ratio(m, self.med(shape_of[sc])) if sc in shape_of else ''} | {ratio(m, floor)} | "
                         f"{ratio(m, umoci)} | {esc(notes.get(sc, ''))} |")
            L.append("")
            L.append(f"Uncompressed in kiln's output (so hashed, not compressed, by the same-shape peers): "
                     f"{', '.join('`' + p + '`' for p in self.uncompressed[:5]) or 'nothing'}"
                     f"{' and %d more' % (len(self.uncompressed) - 5) if len(self.uncompressed) > 5 else ''}.")
            L.append("")
        if have100k:
            L.append("## 100k-file tree")
            L.append("")
            xs = self.samples.get(T100 + "kiln cold (gzip)")
            ls = xs[0].extra["json"]["layers"] if xs else []
            layers = (f"{len(ls)} ({', '.join('`' + l['label'] + '`' for l in ls[:2])}{', …' if len(ls) > 2 else ''})"
                      if ls else "?")
            L.append("Many small files: what a no-change rebuild's walk and a cold build's per-file costs look like at "
                     f"scale. No file is large enough for a layer of its own; kiln's gzip layers: {layers}, built in "
                     "parallel, one thread each. The same-shape peer is the whole tree through `tar | pigz -1 -p 2` "
                     "(kiln's level, 2 threads).")
            L.append("")
            L.append("| scenario | median s | min–max s | peak RSS MB | CPU s | output MB | × same-shape peer | "
                     "× openssl floor | × umoci | notes |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            shape = {"kiln cold (gzip)": "tar | pigz -1 -p2 (same shape)", "kiln no-change rebuild": FLOOR_FIND}
            notes = {"kiln cold (gzip)": "fresh cache + output; peer: tar | pigz -1 -p2 (same shape)",
                     "kiln no-change rebuild": f"same cache, same output; peer: {FLOOR_FIND}",
                     FLOOR_FIND: "walk + lstat every entry; sampled right before each no-change rebuild",
                     "tar | pigz -1 -p2 (same shape)": "whole tree, kiln's level and threads; no cache",
                     FLOOR_HASH: "read + SHA-256 every byte once",
                     "umoci insert": "init + new + insert (gzip, level 6 default); no cache"}
            for name in ["kiln cold (gzip)", "kiln no-change rebuild", FLOOR_FIND] + self.T100_PEERS:
                sc = T100 + name
                if name in self.skipped and name == "umoci insert":
                    L.append(f"| {esc(name)} | — | — | — | — | — | — | — | — | left out: {self.skipped[name]} |")
                    continue
                if sc not in self.samples:
                    continue
                L.append(self.row(sc, [T100 + shape[name] if name in shape else None, T100 + FLOOR_HASH,
                                       T100 + "umoci insert"], notes.get(name, ""), shown=name))
            L.append("")
        if havebig:
            L.append("## One big compressible file")
            L.append("")
            L.append("A source root holding one big text file (gzip -1 compresses it ~2.9×): kiln's one-file layer "
                     "against the codecs on the same file, read directly (no tar in front).")
            L.append("")
            L.append("| scenario | median s | min–max s | peak RSS MB | CPU s | output MB | × pigz -1 -p2 | × gzip -1 | "
                     "× openssl floor | notes |")
            L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            notes = {"kiln cold (gzip)": "fresh cache + output; one layer: the file, gzip level 1",
                     "pigz -1 -p2": "`pigz -1 -p 2 -c FILE > OUT`: kiln's level, 2 threads",
                     "gzip -1": "`gzip -1 -c FILE > OUT`: kiln's level, one thread",
                     "floor: openssl dgst -sha256": "read + SHA-256 the file once"}
            for name in ["kiln cold (gzip)"] + self.BIG_PEERS:
                sc = BIG + name
                if sc in self.samples:
                    L.append(self.row(sc, [BIG + "pigz -1 -p2", BIG + "gzip -1", BIG + "floor: openssl dgst -sha256"],
                                      notes.get(name, ""), shown=name))
            L.append("")
        if self.repro:
            L.append("## Reproducibility (gzip)")
            L.append("")
            L.append("Every cold gzip build of this run, each into a fresh store (cache directory) of its own: the "
                     "warm-up build (`--jobs 2`), the timed reps (kiln's default --jobs: the number of cores) and one "
                     "more warm-up build with `--jobs 1`.")
            L.append("")
            L.append("| case | cold builds | same digest across runs and stores | --jobs 1 = --jobs 2 | digest |")
            L.append("|---|---:|---|---|---|")
            for case, r in self.repro.items():
                digests = {d for _, d in r["runs"]}
                runs_ok = len(digests) == 1
                j1, j2 = r.get("jobs1"), r.get("jobs2")
                jobs = "n/a" if not (j1 and j2) else ("yes" if j1 == j2 else f"**no**: -j1 `{j1}`, -j2 `{j2}`")
                dig = f"`{next(iter(digests))}`" if runs_ok else "; ".join(f"{w}: `{d}`" for w, d in r["runs"])
                L.append(f"| {case} | {len(r['runs'])} | {'yes' if runs_ok else '**no**'} | {jobs} | {dig} |")
            L.append("")

        # Targets.
        L.append("## Targets")
        L.append("")
        L.append("| target | measured | limit | result | same ratio by CPU s (info) |")
        L.append("|---|---:|---:|---|---|")

        def target(name, measured, limit, fmt, unit="", cpu_view=""):
            if measured is None or limit is None:
                L.append(f"| {name} | n/a | n/a | n/a | |")
                return
            ok = measured <= limit
            L.append(f"| {name} | {fmt.format(measured)}{unit} | {fmt.format(limit)}{unit} | "
                     f"{'PASS' if ok else 'FAIL'} | {cpu_view} |")

        def cpu_ratio(a, b, limit):
            ca, cb = self.med(a, "cpu"), self.med(b, "cpu")
            if ca is None or cb is None or cb == 0:
                return ""
            return f"{ca:.2f} / {cb:.2f} CPU s = {ca / cb:.2f}× ({'within' if ca / cb <= limit else 'over'} {limit}×)"

        def ratio_target(name, num, den, limit):
            """num/den ≤ limit, both scenarios of this run; skipped when either is missing."""
            n, d = self.med(num), self.med(den)
            if n is None or d is None:
                return
            stalled = [f"{sc}: {self.stall(sc):.2f} s" for sc in (num, den) if (self.stall(sc) or 0) >= 0.1]
            target(name, n / d, limit, "{:.2f}", "×",
                   f"{n:.3f} s / {d:.3f} s; by CPU: " + cpu_ratio(num, den, limit)
                   + (f"; device stalled (median rep) {', '.join(stalled)}" if stalled else ""))

        ratio_target("cold build (gzip) ≤ 0.4× umoci insert (bench tree)", "kiln cold (gzip)", "umoci insert", 0.4)
        ratio_target("cold build (gzip) ≤ 0.7× umoci insert (100k tree)", T100 + "kiln cold (gzip)",
                     T100 + "umoci insert", 0.7)
        ratio_target("cold build (zstd) ≤ 1.3× its same-shape peer (zstd -3 -T2)", "kiln cold (zstd)", SHAPE_ZSTD, 1.3)
        ratio_target("cold build (uncompressed) ≤ 1.2× the openssl floor", "kiln cold (none)", FLOOR_HASH, 1.2)
        ratio_target("no-change rebuild ≤ 1.5× the find floor (bench tree)", "kiln no-change rebuild", FLOOR_FIND, 1.5)
        ratio_target("no-change rebuild ≤ 1.5× the find floor (100k tree)", T100 + "kiln no-change rebuild",
                     T100 + FLOOR_FIND, 1.5)
        nc = self.med("kiln no-change rebuild")
        if nc is not None:
            target("no-change rebuild ≤ 50 ms (bench tree)", nc * 1000, 50, "{:.1f}", " ms",
                   f"{self.med('kiln no-change rebuild', 'cpu') * 1000:.1f} ms CPU")
        oc, ch = self.med("kiln one file changed"), self.med(FLOOR_CHUNK)
        if oc is not None and nc is not None and ch is not None:
            target("one file changed ≤ 1.5× (no-change rebuild + the changed chunk's pigz)", oc / (nc + ch), 1.5,
                   "{:.2f}", "×", f"{oc:.3f} s / ({nc:.3f} s + {ch:.3f} s)")
        if self.med("kiln one file changed") is not None:
            target("one file changed ≤ 1 s", self.med("kiln one file changed"), 1.0, "{:.2f}", " s",
                   f"{self.med('kiln one file changed', 'cpu'):.2f} s CPU")
        kiln_rows = [sc for sc in self.samples if is_kiln(sc)]
        kr = [s.rss_kb for sc in kiln_rows for s in self.samples[sc]]
        worst = max(((max(x.rss_kb for x in self.samples[sc]), sc) for sc in kiln_rows), default=(0, ""))
        if kr:
            target("kiln peak RSS ≤ 64 MB (max over all kiln runs)", max(kr) / 1024, 64, "{:.1f}", " MB",
                   f"worst: {worst[1]}")
        r100 = [s.rss_kb for sc in kiln_rows if sc.startswith(T100) for s in self.samples[sc]]
        if r100:
            target("kiln peak RSS ≤ 64 MB at 100k files", max(r100) / 1024, 64, "{:.1f}", " MB",
                   f"umoci insert: {max(s.rss_kb for s in self.samples[T100 + 'umoci insert']) / 1024:.1f} MB"
                   if self.samples.get(T100 + "umoci insert") else "")
        kb, pb, gb = self.med(BIG + "kiln cold (gzip)"), self.med(BIG + "pigz -1 -p2"), self.med(BIG + "gzip -1")
        if kb is not None and pb:
            vs_gzip = f"; × gzip -1: {kb / gb:.2f}" if gb else ""
            L.append(f"| big file, gzip: kiln ÷ pigz -1 -p2 (info: no limit set) | {kb / pb:.2f}× | — | info | "
                     f"{kb:.3f} s / {pb:.3f} s{vs_gzip}; by CPU: "
                     f"{cpu_ratio(BIG + 'kiln cold (gzip)', BIG + 'pigz -1 -p2', 1.0)} |")
        for case, r in self.repro.items():
            digests = {d for _, d in r["runs"]}
            j1, j2 = r.get("jobs1"), r.get("jobs2")
            ok = len(digests) == 1 and (not (j1 and j2) or j1 == j2)
            L.append(f"| digests identical across runs, --jobs 1 vs 2 and stores ({case}) | "
                     f"{'yes' if ok else 'no'} ({len(r['runs'])} builds) | all equal | {'PASS' if ok else 'FAIL'} | "
                     f"`{sorted(digests)[0][:19]}…` |")
        self.push_targets(target, cpu_ratio)
        L.append("")

        # Device stalls.
        stalls = [(sc, xs) for sc, xs in self.samples.items()
                  if any(x.extra.get("io_stall", 0) >= 0.05 for x in xs)]
        if any("io_stall" in x.extra for xs in self.samples.values() for x in xs):
            L.append("## Device stalls")
            L.append("")
            L.append("Seconds in which every runnable task of the machine waited on IO at once (the kernel's IO "
                     "pressure, `full` line of /proc/pressure/io), while a row's timed commands ran: a disk that "
                     "stalls (on this VM, its IO budget running out) slows whatever writes or reads then. Shown for "
                     "what it explains, never subtracted from a time.")
            L.append("")
            if stalls:
                L.append("| scenario | stall per rep, s (median) | max | share of the median wall |")
                L.append("|---|---:|---:|---:|")
                for sc, xs in stalls:
                    st = [x.extra.get("io_stall", 0) for x in xs]
                    m = self.med(sc)
                    L.append(f"| {esc(sc)} | {statistics.median(st):.2f} | {max(st):.2f} | "
                             f"{statistics.median(st) / m * 100 if m else 0:.0f}% |")
            else:
                L.append("None of at least 0.05 s in any rep.")
            L.append("")

        # Correctness.
        L.append("## Correctness checks")
        L.append("")
        agg = {}
        for what, ok, detail in self.checks:
            a = agg.setdefault(what, [0, 0, ""])
            a[0 if ok else 1] += 1
            if not ok and not a[2]:
                a[2] = detail
        for what, (good, bad, detail) in agg.items():
            L.append(f"- {'PASS' if not bad else 'FAIL'}: {what} ({good}/{good + bad}){' — ' + detail if detail else ''}")
        if self.edit_file:
            L.append(f"- edited file for the one-file-changed rows: `{os.path.relpath(self.edit_file, self.src)}` "
                     f"({len(self.edit_orig)} bytes; restored afterwards)")
        L.append("")

        # Where kiln's time goes.
        L.append("## Where kiln's time goes (medians of kiln's own --json timings, seconds)")
        L.append("")
        L.append("`wall` is measured outside; `walk`/`hash`/`layers`/`total` come from kiln's JSON; "
                 "`rest` = wall − total (process start, spec parsing, the build history, writing the output layout, exit).")
        L.append("")
        L.append("| scenario | wall | walk | hash | layers | total | rest | CPU s | CPU/wall |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sc in ["kiln cold (gzip)", "kiln cold (zstd)", "kiln no-change rebuild", "kiln one file changed",
                   T100 + "kiln cold (gzip)", T100 + "kiln no-change rebuild", BIG + "kiln cold (gzip)"]:
            xs = self.samples.get(sc)
            if not xs:
                continue
            t = lambda k: statistics.median(s.extra["json"]["timings"].get(k, 0) for s in xs)
            w = self.med(sc)
            cpu = self.med(sc, "cpu")
            L.append(f"| {sc} | {w:.3f} | {t('walk'):.3f} | {t('hash'):.3f} | {t('layers'):.3f} | {t('total'):.3f} | "
                     f"{w - t('total'):.3f} | {cpu:.2f} | {cpu / w:.2f} |")
        L.append("")
        L.append("Per layer (median seconds; layers are built in parallel, one thread each):")
        L.append("")
        L.append("| scenario | layer | media type | cache | seconds | tar MB | blob MB | ratio |")
        L.append("|---|---|---|---|---:|---:|---:|---:|")
        for sc in ["kiln cold (gzip)", "kiln cold (zstd)", "kiln one file changed", T100 + "kiln cold (gzip)",
                   BIG + "kiln cold (gzip)"]:
            xs = self.samples.get(sc)
            if not xs:
                continue
            for i, l in enumerate(xs[0].extra["json"]["layers"]):
                secs = statistics.median(s.extra["json"]["layers"][i].get("seconds", 0) for s in xs)
                tar = l.get("uncompressed_size", 0)
                L.append(f"| {sc} | {l['label']} | {l['media_type'].rsplit('.', 1)[-1]} | {l['cache']} | {secs:.3f} | "
                         f"{tar / 2**20:.1f} | {l['size'] / 2**20:.1f} | {tar / l['size'] if l['size'] else 0:.2f} |")
        L.append("")
        self.push_report(L)
        return "\n".join(L) + "\n"

    def push_report(self, L):
        """The push section: kiln vs skopeo to a loopback registry, the push-only estimate, the
        registry's request counts."""
        have = [sc for sc in self.PUSH_SCENARIOS + [self.weights_scenario(m) for m in self.WEIGHTS_MIB]
                if self.samples.get(sc)]
        if not have:
            why = self.skipped.get("kiln push cold")
            if why:
                L += ["## Push to a loopback registry", "", f"Left out: {why}.", ""]
            return
        P = self.push
        L.append("## Push to a loopback registry (kiln vs skopeo)")
        L.append("")
        if P.get("digest"):
            L.append(f"The bench image (gzip; {P.get('blobs')} blobs: layers + config, {P.get('bytes', 0) / 2**20:.0f} MB of "
                     f"layers; `{P['digest'][:19]}…`, tag `{P.get('tag')}`), pushed to `docker-registry` (distribution "
                     "2.8, plain HTTP, filesystem storage on the same disk) on 127.0.0.1. kiln pushes from its cache "
                     "(every layer a cache hit, so its build part is a no-change rebuild); skopeo copies kiln's OCI "
                     "layout of the same image (`skopeo copy --preserve-digests oci:LAYOUT:bench docker://…`).")
            L.append("")
        L.append("| scenario | median s | min–max s | peak RSS MB | CPU s | registry CPU s | blobs uploaded | × skopeo | notes |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        notes = {
            "kiln push cold": "fresh registry; `kiln build SPEC --push` (preflight included)",
            "kiln push warm": "every blob present; `--push --force` (HEADs, then the manifest)",
            "kiln push warm, --skip-preflight": "the same without the preflight (dry push) requests",
            "kiln push, tag exists (no --force)": "what a re-run does: walk + hash, the tag is found: no layer built, nothing pushed",
            "kiln push from layout, warm": "`kiln push oci:LAYOUT:bench REF`: the same copy skopeo makes, every blob present",
            "kiln build, no push (baseline)": "`--no-push`: the same run without preflight and push",
            "skopeo push cold": "fresh registry and no blob-info cache",
            "skopeo push warm": "every blob present (blob-info cache kept)",
        }
        vs = {"kiln push cold": "skopeo push cold", "kiln push warm": "skopeo push warm",
              "kiln push warm, --skip-preflight": "skopeo push warm",
              "kiln push, tag exists (no --force)": "skopeo push warm",
              "kiln push from layout, warm": "skopeo push warm"}
        for sc in self.PUSH_SCENARIOS + [self.weights_scenario(m) for m in self.WEIGHTS_MIB]:
            if sc in self.skipped and sc in ("kiln push cold", "skopeo push cold"):
                L.append(f"| {sc} | — | — | — | — | — | — | — | left out: {self.skipped[sc]} |")
                continue
            xs = self.samples.get(sc)
            if not xs:
                continue
            m = self.med(sc)
            reg_cpu = statistics.median(s.extra.get("registry_cpu", 0) for s in xs) if "requests" in xs[0].extra else None
            up = statistics.median(s.extra["requests"].get("PUT blob", 0) for s in xs) if "requests" in xs[0].extra else None
            other = self.med(vs[sc]) if sc in vs else None
            note = notes.get(sc, "")
            if sc.startswith("kiln push cold, weights"):
                note = f"one uncompressed layer + config, fresh repository; {xs[0].extra.get('kiln', {}).get('pushed', {}).get('bytes_uploaded', 0) / 2**20 / m:.0f} MB/s"
            L.append(f"| {sc} | {m:.3f} | {min(s.wall for s in xs):.3f}–{max(s.wall for s in xs):.3f} | "
                     f"{max(s.rss_kb for s in xs) / 1024:.1f} | {self.med(sc, 'cpu'):.2f} | "
                     f"{'' if reg_cpu is None else f'{reg_cpu:.2f}'} | {'' if up is None else f'{up:g}'} | "
                     f"{f'{m / other:.2f}' if other else ''} | {note} |")
        # Push only, isolated two ways.
        base = self.med("kiln build, no push (baseline)")
        for sc, peer in (("kiln push cold", "skopeo push cold"), ("kiln push warm", "skopeo push warm")):
            xs = self.samples.get(sc)
            if not xs or base is None:
                continue
            d = self.med(sc) - base
            other = self.med(peer)
            L.append(f"| *{sc.replace('kiln push', 'kiln push only,')} (derived)* | {d:.3f} | | | | | | "
                     f"{f'{d / other:.2f}' if other else ''} | median({sc}) − median(baseline): preflight + push + "
                     f"what the no-push run does not do |")
        L.append("")
        L.append("Peak RSS and CPU s are the client's (GNU time); registry CPU s is the registry process's "
                 "(/proc/PID/stat, user + system) over the same push. Blobs uploaded = upload commits (`PUT …/blobs/uploads/…`) "
                 "in the registry's access log. The *derived* rows subtract the no-push run's median from the push run's: "
                 "an estimate of what the push itself costs kiln, on top of the no-change build every push run also does.")
        L.append("")

        # Where kiln's push run goes.
        rows = [sc for sc in ("kiln push cold", "kiln push warm", "kiln push warm, --skip-preflight",
                              "kiln push, tag exists (no --force)",
                              "kiln build, no push (baseline)") + tuple(self.weights_scenario(m) for m in self.WEIGHTS_MIB)
                if self.samples.get(sc)]
        if rows:
            L.append("Where kiln's push runs go (medians, seconds): `build` is kiln's own `timings.total` (walk, hash, "
                     "layers: all cache hits); `wall − build` is the rest: process start, the build history, "
                     "preflight, the registry checks, the push itself, exit.")
            L.append("")
            L.append("| scenario | wall | build (kiln JSON) | wall − build | wall − baseline wall |")
            L.append("|---|---:|---:|---:|---:|")
            for sc in rows:
                xs = self.samples[sc]
                w = self.med(sc)
                t = statistics.median(s.extra.get("kiln", {}).get("timings", {}).get("total", 0) for s in xs)
                rest = statistics.median(s.wall - s.extra.get("kiln", {}).get("timings", {}).get("total", 0) for s in xs)
                L.append(f"| {sc} | {w:.3f} | {t:.3f} | {rest:.3f} | "
                         f"{'' if base is None or sc.endswith('(baseline)') else f'{w - base:.3f}'} |")
            L.append("")

        # Requests.
        kinds = ["GET /v2/", "GET tags/list", "HEAD manifest", "GET manifest", "HEAD blob", "POST upload", "PATCH",
                 "PUT blob", "DELETE upload", "PUT manifest"]
        rows = [sc for sc in self.PUSH_SCENARIOS + [self.weights_scenario(m) for m in self.WEIGHTS_MIB]
                if self.samples.get(sc) and "requests" in self.samples[sc][0].extra]
        if rows:
            L.append("Requests the registry answered per push (median over the reps, from its access log):")
            L.append("")
            L.append("| scenario | " + " | ".join(kinds) + " | other | total |")
            L.append("|---|" + "---:|" * (len(kinds) + 2))
            for sc in rows:
                xs = self.samples[sc]
                med = lambda k: statistics.median(s.extra["requests"].get(k, 0) for s in xs)
                other = statistics.median(s.extra["requests"]["total"] - sum(s.extra["requests"].get(k, 0) for k in kinds)
                                          for s in xs)
                L.append(f"| {sc} | " + " | ".join(f"{med(k):g}" for k in kinds) + f" | {other:g} | {med('total'):g} |")
            L.append("")
        L.append("Fairness: every cold push (kiln's and skopeo's) goes to a registry started for it, with empty storage "
                 "on a fresh port; before each cold skopeo push the harness also removes skopeo's blob-info cache "
                 f"(`{self.skopeo_cache_file()}`), which remembers where blobs were seen and could let skopeo skip or "
                 "mount them instead of uploading. skopeo runs with `--preserve-digests`: without it, skopeo gzips the "
                 "uncompressed weights layer on the way (different bytes, a different digest, and the compression's cost). "
                 "kiln's peak-RSS check pushes two weights-only images (one incompressible file, one uncompressed layer), "
                 "64 MiB and 512 MiB, into a fresh repository of the same registry and compares kiln's peak RSS.")
        L.append("")

    def push_targets(self, target, cpu_ratio):
        for sc, peer, name in (("kiln push cold", "skopeo push cold", "push cold ≤ 1.0× skopeo"),
                               ("kiln push warm", "skopeo push warm", "push warm ≤ 1.0× skopeo (build --push --force)"),
                               ("kiln push from layout, warm", "skopeo push warm",
                                "push warm ≤ 1.0× skopeo (kiln push from the layout, like for like)")):
            k, s = self.med(sc), self.med(peer)
            if k is None or s is None:
                continue
            target(name, k / s, 1.0, "{:.2f}", "×",
                   f"{k:.3f} s / {s:.3f} s; by CPU: " + cpu_ratio(sc, peer, 1.0))
        small, big = (self.samples.get(self.weights_scenario(m)) for m in self.WEIGHTS_MIB)
        if small and big:
            rs = statistics.median(s.rss_kb for s in small) / 1024
            rb = statistics.median(s.rss_kb for s in big) / 1024
            target(f"kiln push peak RSS flat in blob size ({self.WEIGHTS_MIB[1]} vs {self.WEIGHTS_MIB[0]} MiB blob)",
                   rb - rs, self.RSS_GROWTH_LIMIT_MB, "{:+.1f}", " MB",
                   f"median peak RSS {rs:.1f} MB pushing {self.WEIGHTS_MIB[0]} MiB, {rb:.1f} MB pushing "
                   f"{self.WEIGHTS_MIB[1]} MiB")

    def dump_raw(self, path):
        raw = {sc: [{"wall": s.wall, "rss_kb": s.rss_kb, "cpu": s.cpu, "extra": s.extra} for s in xs]
               for sc, xs in self.samples.items()}
        with open(path, "w") as f:
            json.dump({"samples": raw, "checks": self.checks, "skipped": self.skipped, "overhead_s": self.overhead,
                       "push": self.push, "repro": self.repro, "cases": list(self.cases), "reps": self.a.reps,
                       "load_start": self.load_start, "load_end": self.load_end,
                       "edit_file": self.edit_file, "edit_len": len(self.edit_orig or b"")}, f, indent=1)

    def load_raw(self, path):
        """Reloads a dump_raw file, to redo the report without measuring again."""
        with open(path) as f:
            d = json.load(f)
        self.samples = {sc: [Sample(x["wall"], x["rss_kb"], x["cpu"], x["extra"]) for x in xs]
                        for sc, xs in d["samples"].items()}
        self.checks = [tuple(c) for c in d["checks"]]
        self.skipped = d["skipped"]
        self.push = d.get("push", {})
        self.overhead = d["overhead_s"]
        self.load_start, self.load_end = d["load_start"], d["load_end"]
        self.edit_file, self.edit_orig = d["edit_file"], b"x" * d["edit_len"]
        self.repro = {c: {**r, "runs": [tuple(x) for x in r["runs"]]} for c, r in d.get("repro", {}).items()}
        self.cases = d.get("cases", self.cases)
        self.a.reps = d.get("reps", self.a.reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", help="the bench tree (holds src/): cases tree10k and push")
    ap.add_argument("--tree-100k", help="the many-files tree (holds src/): case tree100k")
    ap.add_argument("--bigfile", help="the big-file tree (holds src/data/corpus.txt): case bigfile")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated cases to run, round-robin in one run (default: all of {','.join(CASES)})")
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--kiln-label", default="")
    ap.add_argument("--work", required=True, help="scratch dir on the same disk as the tree")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nochange-reps", type=int, default=15, help="samples of the (cheap) no-change rebuild")
    ap.add_argument("--nochange-reps-100k", type=int, default=9, help="samples of the no-change rebuild of the 100k tree")
    ap.add_argument("--results", required=True, help="markdown file to write")
    ap.add_argument("--raw", help="where to dump the raw samples (default: WORK/results-PRESET.json)")
    ap.add_argument("--from-raw", help="redo the report from a results-<preset>.json dump, measuring nothing")
    ap.add_argument("--only", choices=["all", "push"], default="all",
                    help="push: only the push rows (the same as --cases push)")
    a = ap.parse_args()
    a.cases = ["push"] if a.only == "push" else [c for c in a.cases.split(",") if c]
    bad = [c for c in a.cases if c not in CASES]
    if bad or not a.cases:
        ap.error(f"--cases: unknown {', '.join(bad) or '(none)'}; known: {', '.join(CASES)}")
    a.cases = [c for c in CASES if c in a.cases]  # the run's order
    for c, need in (("tree10k", "tree"), ("push", "tree"), ("tree100k", "tree_100k"), ("bigfile", "bigfile")):
        if c in a.cases and not getattr(a, need) and not a.from_raw:
            ap.error(f"case {c} needs --{need.replace('_', '-')}")
    # Registries started for the push rows are stopped whatever happens: normal exit, exception,
    # ^C (KeyboardInterrupt) or SIGTERM/SIGHUP (turned into SystemExit so `finally` blocks run).
    atexit.register(registry.stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: sys.exit(128 + n))
    a.kiln_label = a.kiln_label or a.kiln
    b = Bench(a)
    if a.from_raw:
        b.load_raw(a.from_raw)
    else:
        b.run()
        b.dump_raw(a.raw or os.path.join(a.work, f"results-{a.preset}.json"))
    md = b.report()
    print(md)
    with open(a.results, "w") as f:
        f.write(md)
    log(f"wrote {a.results}")


if __name__ == "__main__":
    main()
