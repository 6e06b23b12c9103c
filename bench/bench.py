#!/usr/bin/env python3
"""kiln benchmark: times kiln against tar/gzip/pigz/zstd/sha256sum, umoci and buildah on one tree.

Called by bench/run.sh (which generates the tree and builds kiln); see bench/README.md.

Every measurement runs the tool under GNU time (/usr/bin/time -f '%M ...') for peak RSS; CPU
seconds come from getrusage(RUSAGE_CHILDREN) around the command (microsecond resolution, where GNU
time's %U/%S have 10 ms); the wall time is taken here around the whole command (fork/exec overhead
included: it is measured with `true` and reported). Pipelines wrap each stage in its own GNU time: their RSS and
CPU are the sums over the stages, which run at the same time. Multi-command peers (umoci, buildah)
report the sum of wall times, the max RSS and the summed CPU. Nothing is dropped from the page
cache: each tool runs once untimed first (warm-up), then the repetitions run round-robin across
tools so drift on a noisy machine spreads evenly.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

TIME = "/usr/bin/time"
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


class Sample:
    def __init__(self, wall, rss_kb, cpu, extra=None):
        self.wall, self.rss_kb, self.cpu, self.extra = wall, rss_kb, cpu, extra or {}


class Bench:
    def __init__(self, a):
        self.a = a
        self.tree = os.path.abspath(a.tree)
        self.src = os.path.join(self.tree, "src")
        self.kiln = os.path.abspath(a.kiln)
        self.work = os.path.abspath(a.work)
        self.tmp = os.path.join(self.work, "run")  # outputs, caches, time files: same disk as the tree
        self.samples = {}   # scenario -> [Sample]
        self.checks = []    # (what, ok, detail)
        self.notes = []
        self.kiln_results = {}  # scenario -> [kiln JSON]
        self.ref_digest = {}    # compression -> manifest digest of the cold build
        self.edit_file = None
        self.edit_orig = None
        self.skipped = {}   # scenario -> reason

    # ---------------------------------------------------------------- running things

    def tfile(self, name):
        return os.path.join(self.tmp, "time-" + name)

    def run_timed(self, argv, name="cmd", env=None, stdout=subprocess.DEVNULL):
        """Runs argv under GNU time. Returns (wall, rss_kb, cpu, completed)."""
        tf = self.tfile(name)
        rm(tf)
        c0 = children_cpu()
        t0 = time.perf_counter()
        cp = subprocess.run([TIME, "-f", TIME_FMT, "-o", tf] + argv, stdout=stdout, stderr=subprocess.PIPE,
                            env=env)
        wall = time.perf_counter() - t0
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
        t0 = time.perf_counter()
        cp = subprocess.run(["bash", "-c", cmd], stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        cpu = children_cpu() - c0  # every stage (and bash, and GNU time) summed
        if cp.returncode != 0:
            raise RuntimeError(f"{cmd} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}")
        rss = sum(read_time_file(tf)[0] for tf in tfs)
        return Sample(wall, rss, cpu, {"out_bytes": os.path.getsize(out_path)})

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

    def record(self, scenario, sample):
        self.samples.setdefault(scenario, []).append(sample)

    def check(self, what, ok, detail=""):
        self.checks.append((what, bool(ok), detail))
        if not ok:
            log(f"CHECK FAILED: {what} {detail}")

    # ---------------------------------------------------------------- kiln

    def spec_path(self, compression):
        p = os.path.join(self.tree, f"kiln-{compression}.json")
        spec = {"name": "bench", "source_root": "src", "source_copy_mode": "all", "compression": compression}
        body = json.dumps(spec, indent=2) + "\n"
        if not os.path.exists(p) or open(p).read() != body:
            with open(p, "w") as f:
                f.write(body)
        return p

    def kiln_build(self, compression, cache, out):
        argv = [self.kiln, "build", self.spec_path(compression), "-o", f"oci:{out}:bench", "--json",
                "--progress", "quiet", "--cache", cache]
        wall, rss, cpu, cp = self.run_timed(argv, "kiln", stdout=subprocess.PIPE)
        res = json.loads(cp.stdout)
        if res.get("status") != "success":
            raise RuntimeError(f"kiln failed: {cp.stdout[:2000]}")
        return Sample(wall, rss, cpu, {"json": res})

    def kiln_cold(self, compression, tag):
        cache, out = os.path.join(self.tmp, f"kiln-cache-{tag}"), os.path.join(self.tmp, f"kiln-out-{tag}")
        rm(cache)
        rm(out)
        self.settle()
        s = self.kiln_build(compression, cache, out)
        res = s.extra["json"]
        misses = [l for l in res["layers"] if l["cache"] != "miss" and not l["from_base"]]
        self.check(f"kiln cold ({compression}): every layer built (cache miss)", not misses,
                   f"{len(misses)} hit(s) in a fresh cache" if misses else "")
        ref = self.ref_digest.setdefault(compression, res["digest"])
        self.check(f"kiln cold ({compression}): same digest on every cold build (reproducible)",
                   res["digest"] == ref, f"{res['digest']} != {ref}" if res["digest"] != ref else "")
        return s, cache, out

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
        log(f"{label}: kiln cold (gzip)")
        s, cache, out = self.kiln_cold("gzip", "gzip")
        if not warm:
            self.record("kiln cold (gzip)", s)
        cold_digest = s.extra["json"]["digest"]

        # No-change rebuilds: same cache, same output.
        n_nc = 2 if warm else max(1, -(-self.a.nochange_reps // self.a.reps))  # ceil: spread over the reps
        log(f"{label}: kiln no-change rebuild x{n_nc}")
        for _ in range(n_nc):
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
        s2 = self.kiln_build("gzip", cache, out)  # untimed: file restored
        self.check("kiln rebuild after restoring the file: digest equals the cold build's",
                   s2.extra["json"]["digest"] == cold_digest)

        # Cold, zstd.
        log(f"{label}: kiln cold (zstd)")
        s, cache_z, out_z = self.kiln_cold("zstd", "zstd")
        if not warm:
            self.record("kiln cold (zstd)", s)
        for p in (cache, out, cache_z, out_z):
            rm(p)

    # ---------------------------------------------------------------- peers

    def peer_tar_pipe(self, scenario, stages, ext):
        out = os.path.join(self.tmp, "peer-out" + ext)
        rm(out)
        self.settle()
        s = self.run_pipeline([f"tar -cf - -C {self.tree} src"] + stages, out, "pipe")
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

    def peer_umoci(self):
        layout = os.path.join(self.tmp, "umoci-layout")
        rm(layout)
        self.settle()
        s = self.run_sequence([["umoci", "init", "--layout", layout],
                               ["umoci", "new", "--image", f"{layout}:bench"],
                               ["umoci", "insert", "--image", f"{layout}:bench", self.src, "/root"]], "umoci")
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

    def peers(self):
        p = [
            ("tar | gzip", lambda: self.peer_tar_pipe("tar | gzip", ["gzip -c"], ".tar.gz")),
            ("tar | pigz", lambda: self.peer_tar_pipe("tar | pigz", ["pigz -c"], ".tar.gz")),
            ("tar | zstd -T0", lambda: self.peer_tar_pipe("tar | zstd -T0", ["zstd -q -T0 -c"], ".tar.zst")),
            ("tar | sha256sum", lambda: self.peer_tar_pipe("tar | sha256sum", ["sha256sum"], ".sha256")),
            ("tar to file + fsync", self.peer_tar_fsync),
            ("umoci insert", self.peer_umoci),
            ("buildah (vfs) from+copy+commit", self.peer_buildah),
        ]
        return [(n, f) for n, f in p if n not in self.skipped]

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

    # ---------------------------------------------------------------- the run

    def run(self):
        rm(self.tmp)
        os.makedirs(self.tmp)
        self.pick_edit_file()
        self.probe_buildah()
        if shutil.which("umoci") is None:
            self.skipped["umoci insert"] = "umoci is not installed"
        for name, why in self.skipped.items():
            log(f"skipping {name}: {why}")

        # Overhead of the measuring itself (fork/exec of GNU time and the child).
        ov = []
        for i in range(15):
            w, _, _, _ = self.run_timed(["true"], "true")
            ov.append(w)
        self.overhead = statistics.median(ov)
        self.load_start = os.getloadavg()

        peers = self.peers()
        try:
            log("warm-up: one untimed run of every tool")
            self.kiln_rep(0, warm=True)
            for name, fn in peers:
                log(f"warm-up: {name}")
                fn()
            for rep in range(self.a.reps):
                self.kiln_rep(rep, warm=False)
                for name, fn in peers:
                    log(f"rep {rep + 1}: {name}")
                    self.record(name, fn())
        finally:
            self.restore()
        rm(self.tmp)
        self.load_end = os.getloadavg()

    # ---------------------------------------------------------------- reporting

    def med(self, scenario, attr="wall"):
        xs = self.samples.get(scenario)
        return statistics.median(getattr(s, attr) for s in xs) if xs else None

    def report(self):
        tree_files = tree_bytes = 0
        for root, _, files in os.walk(self.src):
            for f in files:
                tree_files += 1
                tree_bytes += os.path.getsize(os.path.join(root, f))
        umoci = self.med("umoci insert")
        sha = self.med("tar | sha256sum")
        kiln_ver = subprocess.run([self.kiln, "--version"], capture_output=True, text=True).stdout.strip()
        L = []
        L.append(f"# kiln benchmark ({self.a.preset} tree)")
        L.append("")
        L.append(f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; {kiln_ver}; kiln binary `{self.a.kiln_label}`")
        L.append(f"- machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; "
                 f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in self.load_start)} at the start, "
                 f"{'/'.join(f'{x:.1f}' for x in self.load_end)} at the end")
        L.append(f"- tree: {tree_files} files, {tree_bytes / 2**20:.0f} MiB "
                 f"(weights {os.path.getsize(os.path.join(self.src, 'models', 'weights.safetensors')) / 2**20:.0f} MiB)")
        L.append(f"- {self.a.reps} repetitions per scenario (no-change rebuild: {len(self.samples.get('kiln no-change rebuild', []))}), "
                 f"median shown; every tool warmed once first; page cache not dropped; "
                 f"measuring overhead (GNU time + fork/exec of `true`): {self.overhead * 1000:.1f} ms")
        L.append("")
        L.append("| scenario | median s | min–max s | peak RSS MB | CPU s | output MB | × umoci | × tar\\|sha256sum | notes |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        notes = {
            "kiln cold (gzip)": "fresh cache + fresh output layout",
            "kiln cold (zstd)": "fresh cache + fresh output layout",
            "kiln no-change rebuild": "same cache, same output",
            "kiln one file changed": "one .py changed (different change each rep)",
            "tar | gzip": "no cache: a rebuild costs the same",
            "tar | pigz": "no cache: a rebuild costs the same",
            "tar | zstd -T0": "level 3; no cache: a rebuild costs the same",
            "tar | sha256sum": "the floor: read + hash every byte once",
            "tar to file + fsync": "uncompressed, durable write (kiln fsyncs its blobs)",
            "umoci insert": "init + new + insert (gzip); no cache: a rebuild costs the same",
            "buildah (vfs) from+copy+commit": "gzip, commit to oci:; no layer cache on this path: a rebuild costs the same",
        }
        order = ["kiln cold (gzip)", "kiln cold (zstd)", "kiln no-change rebuild", "kiln one file changed",
                 "tar | gzip", "tar | pigz", "tar | zstd -T0", "tar | sha256sum", "tar to file + fsync",
                 "umoci insert", "buildah (vfs) from+copy+commit"]
        for sc in order:
            if sc in self.skipped:
                L.append(f"| {sc} | — | — | — | — | — | — | — | left out: {self.skipped[sc]} |")
                continue
            xs = self.samples.get(sc)
            if not xs:
                continue
            m = self.med(sc)
            out_mb = ""
            if sc == "tar | sha256sum":
                out_mb = "—"
            elif "out_bytes" in xs[0].extra:
                out_mb = f"{statistics.median(s.extra['out_bytes'] for s in xs) / 2**20:.0f}"
            elif "json" in xs[0].extra:
                out_mb = f"{sum(l['size'] for l in xs[0].extra['json']['layers']) / 2**20:.0f}"
            L.append(f"| {sc} | {m:.3f} | {min(s.wall for s in xs):.3f}–{max(s.wall for s in xs):.3f} | "
                     f"{max(s.rss_kb for s in xs) / 1024:.1f} | {self.med(sc, 'cpu'):.2f} | {out_mb} | "
                     f"{m / umoci:.2f} | {m / sha:.2f} | {notes.get(sc, '')} |" if umoci and sha else
                     f"| {sc} | {m:.3f} | | {max(s.rss_kb for s in xs) / 1024:.1f} | {self.med(sc, 'cpu'):.2f} | {out_mb} | | | |")
        L.append("")
        L.append("Peak RSS of a pipeline is the sum over its stages (they run together); of umoci/buildah, the max over "
                 "their commands. CPU s = user + system. For kiln, output MB is the sum of the layer blobs.")
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

        cg, cz = self.med("kiln cold (gzip)"), self.med("kiln cold (zstd)")
        target("cold build (gzip) ≤ 0.5× umoci", cg, 0.5 * umoci if umoci else None, "{:.2f}", " s",
               cpu_ratio("kiln cold (gzip)", "umoci insert", 0.5))
        target("cold build (zstd) ≤ 1.3× tar\\|sha256sum", cz, 1.3 * sha if sha else None, "{:.2f}", " s",
               cpu_ratio("kiln cold (zstd)", "tar | sha256sum", 1.3))
        nc = self.med("kiln no-change rebuild")
        target("no-change rebuild ≤ 50 ms", nc * 1000 if nc is not None else None, 50, "{:.1f}", " ms",
               f"{self.med('kiln no-change rebuild', 'cpu') * 1000:.1f} ms CPU" if nc is not None else "")
        target("one file changed ≤ 1 s", self.med("kiln one file changed"), 1.0, "{:.2f}", " s",
               f"{self.med('kiln one file changed', 'cpu'):.2f} s CPU" if self.med("kiln one file changed") else "")
        kr = [s.rss_kb for sc, xs in self.samples.items() if sc.startswith("kiln") for s in xs]
        worst = max(((max(x.rss_kb for x in xs), sc) for sc, xs in self.samples.items() if sc.startswith("kiln")),
                    default=(0, ""))
        target("kiln peak RSS ≤ 64 MB (max over all kiln runs)", max(kr) / 1024 if kr else None, 64, "{:.1f}", " MB",
               f"worst: {worst[1]}")
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
        L.append(f"- edited file for the one-file-changed rows: `{os.path.relpath(self.edit_file, self.src)}` "
                 f"({len(self.edit_orig)} bytes; restored afterwards)")
        L.append("")

        # Where kiln's time goes.
        L.append("## Where kiln's time goes (medians of kiln's own --json timings, seconds)")
        L.append("")
        L.append("`wall` is measured outside; `walk`/`hash`/`layers`/`total` come from kiln's JSON; "
                 "`rest` = wall − total (process start, spec parsing, writing the output layout, exit).")
        L.append("")
        L.append("| scenario | wall | walk | hash | layers | total | rest | CPU s | CPU/wall |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sc in ["kiln cold (gzip)", "kiln cold (zstd)", "kiln no-change rebuild", "kiln one file changed"]:
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
        for sc in ["kiln cold (gzip)", "kiln cold (zstd)", "kiln one file changed"]:
            xs = self.samples.get(sc)
            if not xs:
                continue
            for i, l in enumerate(xs[0].extra["json"]["layers"]):
                secs = statistics.median(s.extra["json"]["layers"][i].get("seconds", 0) for s in xs)
                tar = l.get("uncompressed_size", 0)
                L.append(f"| {sc} | {l['label']} | {l['media_type'].rsplit('.', 1)[-1]} | {l['cache']} | {secs:.3f} | "
                         f"{tar / 2**20:.1f} | {l['size'] / 2**20:.1f} | {tar / l['size'] if l['size'] else 0:.2f} |")
        L.append("")
        return "\n".join(L) + "\n"

    def dump_raw(self, path):
        raw = {sc: [{"wall": s.wall, "rss_kb": s.rss_kb, "cpu": s.cpu, "extra": s.extra} for s in xs]
               for sc, xs in self.samples.items()}
        with open(path, "w") as f:
            json.dump({"samples": raw, "checks": self.checks, "skipped": self.skipped, "overhead_s": self.overhead,
                       "load_start": self.load_start, "load_end": self.load_end,
                       "edit_file": self.edit_file, "edit_len": len(self.edit_orig)}, f, indent=1)

    def load_raw(self, path):
        """Reloads a dump_raw file, to redo the report without measuring again."""
        with open(path) as f:
            d = json.load(f)
        self.samples = {sc: [Sample(x["wall"], x["rss_kb"], x["cpu"], x["extra"]) for x in xs]
                        for sc, xs in d["samples"].items()}
        self.checks = [tuple(c) for c in d["checks"]]
        self.skipped = d["skipped"]
        self.overhead = d["overhead_s"]
        self.load_start, self.load_end = d["load_start"], d["load_end"]
        self.edit_file, self.edit_orig = d["edit_file"], b"x" * d["edit_len"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True, help="generated tree (holds src/)")
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--kiln-label", default="")
    ap.add_argument("--work", required=True, help="scratch dir on the same disk as the tree")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nochange-reps", type=int, default=15, help="samples of the (cheap) no-change rebuild")
    ap.add_argument("--results", required=True, help="markdown file to write")
    ap.add_argument("--from-raw", help="redo the report from a results-<preset>.json dump, measuring nothing")
    a = ap.parse_args()
    a.kiln_label = a.kiln_label or a.kiln
    b = Bench(a)
    if a.from_raw:
        b.load_raw(a.from_raw)
    else:
        b.run()
        b.dump_raw(os.path.join(a.work, f"results-{a.preset}.json"))
    md = b.report()
    print(md)
    with open(a.results, "w") as f:
        f.write(md)
    log(f"wrote {a.results}")


if __name__ == "__main__":
    main()
