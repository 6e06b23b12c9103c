#!/usr/bin/env python3
"""Memory and rebuild time at a million files (issue 13: "<= 64 MB peak RSS ... for 1M files").

    bench/million.py --kiln PATH [--work DIR] [--files N] [--reps N] [--results FILE] [--clean]

Generates (once, under WORK/tree-1m, git-ignored bench/work/ by default) a source root of N
(default 1,000,000) two-line Python modules in 100 x 100 directories, in a git repository of its
own; then, in one run: kiln's cold build (gzip, a fresh store each rep) and no-change rebuilds,
each no-change rebuild right after the `find` floor (walk + lstat every entry); and the streamed
commands, `kiln tag` (cold: a fresh store; no-change) and `kiln files`, with peak RSS (GNU time's
%M) and wall time. Prints a markdown report and writes it to --results (default
bench/results-million.md). Kept apart from bench/run.sh: generating the tree takes a minute or
two and ~4 GB of inodes, and no peer tool is run at this size (umoci takes minutes).
Exits 0 whatever the targets say; non-zero only if kiln failed.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_RSS_MB = 64


def log(msg):
    print(f"[million {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def generate(tree, files):
    src = os.path.join(tree, "src")
    stamp = os.path.join(tree, ".generated")
    want = f"million-v1 files={files}\n"
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    log(f"generating {files:,} files under {src}")
    shutil.rmtree(tree, ignore_errors=True)
    per_dir = 100
    dirs = (files + per_dir - 1) // per_dir
    n = 0
    for d in range(dirs):
        path = os.path.join(src, f"pkg{d // 100:03d}", f"mod_{d % 100:02d}")
        os.makedirs(path)
        for f in range(min(per_dir, files - n)):
            with open(os.path.join(path, f"file_{f:03d}_module.py"), "w") as fh:
                fh.write(f"# {d} {f}\nX = {d * per_dir + f}\n")
        n += per_dir
    subprocess.run(["git", "init", "-q", tree], check=True)
    with open(os.path.join(tree, "kiln.json"), "w") as fh:
        json.dump({"name": "million", "source_root": "src", "source_copy_mode": "all"}, fh)
    with open(stamp, "w") as fh:
        fh.write(want)


def timed(argv, cwd=None):
    """(wall s, peak RSS MB) of argv under GNU time; raises on failure."""
    with tempfile.NamedTemporaryFile("r") as tf:
        t0 = time.monotonic()
        cp = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *argv], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.monotonic() - t0
        if cp.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {cp.returncode}: {cp.stderr.decode(errors='replace')[-2000:]}")
        rss_kb = int(tf.read().strip().splitlines()[-1])
    return wall, rss_kb / 1024


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--work", default=os.path.join(here, "work"))
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(here, "results-million.md"))
    ap.add_argument("--clean", action="store_true", help="remove the generated tree at the end")
    a = ap.parse_args()
    kiln = os.path.abspath(a.kiln)
    tree = os.path.join(os.path.abspath(a.work), "tree-1m" if a.files == 1_000_000 else f"tree-{a.files}")
    generate(tree, a.files)
    spec = os.path.join(tree, "kiln.json")
    run = tempfile.mkdtemp(prefix="million-", dir=os.path.abspath(a.work))
    cold, nochange, floor = [], [], []
    tag_cold, tag_nochange, files = [], [], []
    try:
        for rep in range(a.reps):
            store = os.path.join(run, f"store-{rep}")
            out = os.path.join(run, f"out-{rep}")
            subprocess.run(["sync"])
            log(f"rep {rep + 1}: kiln cold")
            cold.append(timed([kiln, "build", spec, "--cache", store, "-o", f"oci:{out}:million", "--progress", "quiet"]))
            subprocess.run(["sync"])
            log(f"rep {rep + 1}: find floor, then kiln no-change rebuild")
            floor.append(timed(["find", os.path.join(tree, "src"), "-printf", "%s %T@\n"]))
            nochange.append(timed([kiln, "build", spec, "--cache", store, "-o", f"oci:{out}:million", "--progress", "quiet"]))
            shutil.rmtree(store, ignore_errors=True)
            log(f"rep {rep + 1}: kiln tag cold, kiln tag no-change, kiln files")
            tag_cold.append(timed([kiln, "tag", spec, "--cache", store, "--progress", "quiet"]))
            tag_nochange.append(timed([kiln, "tag", spec, "--cache", store, "--progress", "quiet"]))
            files.append(timed([kiln, "files", spec]))
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        if a.clean:
            shutil.rmtree(tree, ignore_errors=True)

    def row(name, samples, ratio=None):
        walls = [s[0] for s in samples]
        r = f" {statistics.median(walls) / ratio:.2f} |" if ratio else " |"
        return (f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
                f"{max(s[1] for s in samples):.0f} |{r}")

    floor_med = statistics.median(s[0] for s in floor)
    worst = max(s[1] for s in cold + nochange)
    worst_streamed = max(s[1] for s in tag_cold + tag_nochange + files)
    version = subprocess.run([kiln, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    L = [f"# kiln at a million files ({time.strftime('%Y-%m-%d %H:%M')})", "",
         f"- {version}; `{kiln}`; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end",
         f"- tree: {a.files:,} two-line Python modules in {(a.files + 99) // 100:,} directories "
         f"(`bench/million.py`), gzip; {a.reps} reps, medians; peak RSS: the max over the reps", "",
         "| scenario | median s | min–max s | peak RSS MB | × find floor |", "|---|---:|---:|---:|---:|",
         row("kiln cold (fresh store)", cold), row("kiln no-change rebuild", nochange, floor_med),
         row("kiln tag cold (fresh store; streamed)", tag_cold),
         row("kiln tag no-change (streamed)", tag_nochange, floor_med),
         row("kiln files (streamed)", files, floor_med),
         row("floor: find -printf '%s %T@' (stat walk)", floor, floor_med), "",
         "| target | measured | limit | result |", "|---|---:|---:|---|",
         f"| kiln peak RSS ≤ {TARGET_RSS_MB} MB at {a.files:,} files | {worst:.0f} MB | {TARGET_RSS_MB} MB | "
         f"{'PASS' if worst <= TARGET_RSS_MB else 'FAIL'} |",
         f"| kiln tag and kiln files peak RSS ≤ {TARGET_RSS_MB} MB at {a.files:,} files | {worst_streamed:.0f} MB | "
         f"{TARGET_RSS_MB} MB | {'PASS' if worst_streamed <= TARGET_RSS_MB else 'FAIL'} |", ""]
    text = "\n".join(L)
    print(text)
    with open(a.results, "w") as fh:
        fh.write(text)
    log(f"wrote {a.results}")


if __name__ == "__main__":
    main()
