#!/usr/bin/env python3
"""Generates the benchmark source trees: deterministic stand-ins for a real ML project.

    gen_tree.py OUT_DIR --preset full|small|100k|100k-small|bigfile|bigfile-small [--jobs N]

Presets:
    full, small            the bench tree: 10,000 (1,000) files, ~275 (~30) MB of text and one
                           512 (64) MiB incompressible weights file (layout below)
    100k, 100k-small       the many-files tree: 100,000 (10,000) small files (python modules with
                           a median of ~1.6 KB, configs, docs; ~330 (~33) MB), no data files, no weights
    bigfile, bigfile-small one 1 GiB (128 MiB) compressible text file, src/data/corpus.txt: runs of
                           consecutive lines drawn from a pool of generated python modules
                           (gzip -1 ~2.9x, gzip -6 ~3.4x, like source code; not zeros, not repeats
                           a 32 KiB deflate window could see)

Layout under OUT_DIR/src (what kiln's source_root points at):
    <project>/...          python packages nested 1-4 deep, modules of 1-40 KB (log-normal)
    tests/...              test modules
    configs/*.json|yaml    experiment configs
    docs/*.md              prose
    data/*.csv, *.jsonl    a few MB-sized data files (numeric tables, text records)
    models/weights.safetensors   one incompressible blob (512 MiB full, 64 MiB small)

Everything comes from seeded PRNGs (one per file, seeded from the file's path), so the same
preset gives the same bytes on every machine. The text is built from a vocabulary of
identifiers and English words, giving a code-like gzip ratio (~3-5x); the weights are
random bytes (ratio 1.0). A stamp file OUT_DIR/.complete records the preset and generator
version: a tree whose stamp matches is left alone.
"""
import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import time
import zlib

GEN_VERSION = "5"

# The python module size distribution of the bench tree (log-normal: median, sigma, min, max).
PY_SIZES = (15_000, 0.6, 1024, 40 * 1024)

PRESETS = {
    # files: total number of files (weights included); text_mb: approx. bytes of text files.
    # csv_files / jsonl_files: MB-sized data files sharing what the small files leave of text_mb.
    "full": dict(files=10_000, text_mb=275, csv_files=12, jsonl_files=6, weights=512 << 20, seed=20241122),
    "small": dict(files=1_000, text_mb=30, csv_files=2, jsonl_files=1, weights=64 << 20, seed=20241123),
    # Many small files (a site-packages or node_modules sized checkout): no data files, no weights.
    "100k": dict(files=100_000, text_mb=0, csv_files=0, jsonl_files=0, weights=0, seed=20261202,
                 py_sizes=(1_600, 0.8, 200, 40 * 1024)),
    "100k-small": dict(files=10_000, text_mb=0, csv_files=0, jsonl_files=0, weights=0, seed=20261203,
                       py_sizes=(1_600, 0.8, 200, 40 * 1024)),
    # One big compressible file.
    "bigfile": dict(bigfile=1 << 30, seed=20261204),
    "bigfile-small": dict(bigfile=128 << 20, seed=20261205),
}

# ------------------------------------------------------------------------------------------
# Vocabulary

ML_WORDS = """self cls torch np nn tensor batch config model layer hidden state loss optimizer
scheduler step epoch dataset loader sample logits labels mask attention head embed dim seq len
weight bias grad device dtype cuda cpu float int bool str list dict tuple none true false
forward backward train eval predict metric score accuracy precision recall f1 checkpoint path
file dir name value key item index size shape view reshape permute transpose concat stack split
mean std var sum max min norm dropout relu gelu softmax sigmoid linear conv pool residual block
encoder decoder transformer token tokenizer vocab pad eos bos input output result args kwargs
logger log info debug warning error exception raise return yield import from class def async
await lambda with as try except finally while for in if elif else pass break continue assert
global nonlocal del is not and or data frame column row features target split fold seed rng
cache buffer queue worker pool thread process lock event timer timeout retry backoff client
server request response session context manager handler callback hook plugin registry factory
builder parser schema field validate serialize deserialize encode decode load save read write
""".split()

ENGLISH = """the of and to in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if so no
will more can who out about some time them into only other new then also these two may first
any like now my such make over our even most after well way made much where through back used
should because each just those people how too little state good very world still own see men
work long get here between both life being under never day same another know while last might
us great old year off come since against go came right take three states himself few house use
during without again place around however home small found thought went say part once general
high upon school every does got united left number course war until always away something fact
though water less public put think almost hand enough far took head yet government system better
set told nothing night end why called didn find going look asked later knew point next city give
group toward young let room president side social given present several order national possible
rather second face per among form important often things looked early white case become large
need big four within felt along children saw best church ever least power development light
""".split()

SYLLABLES = """ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo ga ge gi go ka ke ki ko la
le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to
tu va ve vi vo za ze zi zo tr st pr gr bl cl fl sh ch th qu x y z""".split()


def make_identifiers(rng, n):
    out = set()
    while len(out) < n:
        parts = []
        for _ in range(rng.choice((1, 1, 2, 2, 2, 3))):
            if rng.random() < 0.6:
                parts.append(rng.choice(ML_WORDS))
            else:
                parts.append("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3, 3, 4)))))
        out.add("_".join(parts))
    return sorted(out)


class Vocab:
    def __init__(self, seed):
        rng = random.Random(seed)
        self.idents = make_identifiers(rng, 4000)
        self.classes = sorted({"".join(w.capitalize() for w in i.split("_")) for i in rng.sample(self.idents, 800)})
        self.modules = sorted({i.replace("_", "") for i in rng.sample(self.idents, 300)})


# ------------------------------------------------------------------------------------------
# File content generators (each takes its own Random, so files are independent)

STDLIB = ["os", "sys", "json", "math", "time", "logging", "functools", "itertools", "collections",
          "dataclasses", "typing", "pathlib", "re", "random", "argparse", "contextlib", "abc", "enum"]
THIRD = ["numpy as np", "torch", "torch.nn as nn", "torch.nn.functional as F", "yaml", "pandas as pd",
         "tqdm", "transformers", "datasets", "scipy", "sklearn.metrics as skm"]


def sentence(rng, n=None):
    n = n or rng.randint(5, 16)
    words = [rng.choice(ENGLISH) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def expr(rng, local):
    r = rng.random()
    a, b, c = rng.choice(local), rng.choice(local), rng.choice(local)
    if r < 0.25:
        return f"{a}.{b}({c})"
    if r < 0.45:
        return f"{a}({b}, {c}={rng.choice(local)})"
    if r < 0.6:
        return f"{a}[{rng.randint(0, 8)}] * {b}"
    if r < 0.72:
        return f"self.{a}"
    if r < 0.82:
        return f"{a} + {b}.{c}"
    if r < 0.9:
        return f'f"{{{a}}}_{b}"'
    return str(round(rng.uniform(-10, 10), rng.choice((0, 1, 2, 3))))


def statement_lines(rng, local, indent, depth=0):
    pad = "    " * indent
    r = rng.random()
    if r < 0.45 or depth > 2:
        return [f"{pad}{rng.choice(local)} = {expr(rng, local)}"]
    if r < 0.55:
        return [f"{pad}# {sentence(rng)}"]
    if r < 0.68:
        out = [f"{pad}if {rng.choice(local)} is {rng.choice(('None', 'not None'))}:"]
        for _ in range(rng.randint(1, 3)):
            out += statement_lines(rng, local, indent + 1, depth + 1)
        return out
    if r < 0.78:
        out = [f"{pad}for {rng.choice(local)} in {rng.choice(('range', 'enumerate', 'zip', 'sorted'))}({rng.choice(local)}):"]
        for _ in range(rng.randint(1, 3)):
            out += statement_lines(rng, local, indent + 1, depth + 1)
        return out
    if r < 0.84:
        return [f'{pad}logger.{rng.choice(("debug", "info", "warning"))}("{sentence(rng, 6)} %s", {rng.choice(local)})']
    if r < 0.9:
        return [f'{pad}raise ValueError(f"{rng.choice(local)} must be positive, got {{{rng.choice(local)}}}")']
    return [f"{pad}{rng.choice(local)}.{rng.choice(local)}({expr(rng, local)})"]


def python_module(rng, vocab, size):
    local = rng.sample(vocab.idents, rng.randint(40, 120))
    classes = rng.sample(vocab.classes, 8)
    lines = ['"""' + sentence(rng), "", sentence(rng, 20), '"""']
    lines += [f"import {m}" for m in sorted(rng.sample(STDLIB, rng.randint(2, 6)))]
    lines += [f"import {m}" for m in sorted(rng.sample(THIRD, rng.randint(1, 4)))]
    lines += [f"from .{rng.choice(vocab.modules)} import {rng.choice(classes)}, {rng.choice(local)}"
              for _ in range(rng.randint(0, 4))]
    lines += ["", "logger = logging.getLogger(__name__)", ""]
    total = sum(len(x) + 1 for x in lines)
    while total < size:
        block = []
        if rng.random() < 0.3:
            cls = rng.choice(classes)
            block += ["", "", f"class {cls}({rng.choice(('nn.Module', 'object', 'Base' + cls, 'Config'))}):",
                      f'    """{sentence(rng)}"""', ""]
            for _ in range(rng.randint(1, 4)):
                name = rng.choice(local)
                args = ", ".join(rng.sample(local, rng.randint(0, 4)))
                block += [f"    def {name}(self{', ' + args if args else ''}):", f'        """{sentence(rng)}"""']
                for _ in range(rng.randint(2, 10)):
                    block += statement_lines(rng, local, 2)
                block += [f"        return {rng.choice(local)}", ""]
        else:
            name = rng.choice(local)
            args = ", ".join(rng.sample(local, rng.randint(0, 5)))
            block += ["", "", f"def {name}({args}):", f'    """{sentence(rng)}', "", f"    {sentence(rng, 14)}", '    """']
            for _ in range(rng.randint(3, 14)):
                block += statement_lines(rng, local, 1)
            block += [f"    return {expr(rng, local)}"]
        lines += block
        total += sum(len(x) + 1 for x in block)
    return ("\n".join(lines) + "\n").encode()


def yaml_config(rng, vocab, size):
    local = rng.sample(vocab.idents, 60)
    lines = [f"# {sentence(rng)}"]
    total = 0
    while total < size:
        sec = rng.choice(local)
        block = [f"{sec}:"]
        for _ in range(rng.randint(2, 10)):
            k = rng.choice(local)
            v = rng.choice((str(rng.randint(0, 4096)), str(round(rng.random(), 4)), rng.choice(local),
                            "true", "false", f"[{rng.randint(1, 9)}, {rng.randint(1, 9)}, {rng.randint(1, 9)}]"))
            block.append(f"  {k}: {v}")
        lines += block
        total += sum(len(x) + 1 for x in block)
    return ("\n".join(lines) + "\n").encode()


def json_config(rng, vocab, size):
    local = rng.sample(vocab.idents, 60)

    def obj(depth):
        d = {}
        for _ in range(rng.randint(3, 8)):
            k = rng.choice(local)
            r = rng.random()
            if r < 0.25 and depth < 3:
                d[k] = obj(depth + 1)
            elif r < 0.5:
                d[k] = rng.randint(0, 100000)
            elif r < 0.7:
                d[k] = round(rng.random(), 5)
            elif r < 0.85:
                d[k] = rng.choice(local)
            else:
                d[k] = [rng.randint(0, 512) for _ in range(rng.randint(1, 6))]
        return d

    items = []
    total = 0
    while total < size:
        o = obj(0)
        items.append(o)
        total += len(json.dumps(o, indent=2))
    return (json.dumps({"version": 1, "entries": items}, indent=2, sort_keys=True) + "\n").encode()


def markdown_doc(rng, vocab, size):
    lines = [f"# {rng.choice(vocab.classes)}", ""]
    total = 0
    while total < size:
        block = [f"## {sentence(rng, 4)[:-1]}", ""]
        block += [" ".join(sentence(rng) for _ in range(rng.randint(2, 6))), ""]
        if rng.random() < 0.4:
            block += ["```python", f"from {rng.choice(vocab.modules)} import {rng.choice(vocab.classes)}",
                      f"{rng.choice(vocab.idents)} = {rng.choice(vocab.classes)}()", "```", ""]
        lines += block
        total += sum(len(x) + 1 for x in block)
    return ("\n".join(lines) + "\n").encode()


def csv_data(rng, vocab, size, out_path):
    """Writes a CSV of about `size` bytes straight to out_path (streamed: these are MB-sized)."""
    ncols = rng.randint(8, 24)
    cats = rng.sample(vocab.idents, 12)
    header = ["id", "timestamp", "category"] + [f"f_{i}" for i in range(ncols)] + ["label"]
    # Column kinds: floats of 1-3 decimals, small integers, or a low-cardinality code.
    kinds = [rng.choice(("f1", "f2", "f3", "int", "int", "code")) for _ in range(ncols)]
    scales = [rng.choice((1, 10, 100)) for _ in range(ncols)]
    rnd = rng.random
    def cell(i):
        k = kinds[i]
        if k == "int":
            return str(int(rnd() * scales[i] * 3))
        if k == "code":
            return "ABCDEFGH"[int(rnd() * rnd() * 8)]
        return f"{rnd() * scales[i]:.{k[1]}f}"
    written = 0
    ts = 1_700_000_000
    row_id = 0
    with open(out_path, "wb") as f:
        line = (",".join(header) + "\n").encode()
        f.write(line)
        written += len(line)
        while written < size:
            chunk = []
            for _ in range(2000):
                row_id += 1
                ts += rng.randint(1, 60)
                vals = [cell(i) for i in range(ncols)]
                chunk.append(f"{row_id},{ts},{cats[row_id % 7 if rnd() < 0.8 else rng.randrange(12)]},"
                             + ",".join(vals) + f",{int(rnd() < 0.3)}")
            data = ("\n".join(chunk) + "\n").encode()
            f.write(data)
            written += len(data)


def jsonl_data(rng, vocab, size, out_path):
    """Writes JSON-lines records (text samples with labels and token ids) of about `size` bytes."""
    labels = rng.sample(vocab.idents, 10)
    written = 0
    n = 0
    with open(out_path, "wb") as f:
        while written < size:
            chunk = []
            for _ in range(500):
                n += 1
                text = " ".join(sentence(rng) for _ in range(rng.randint(1, 5)))
                rec = {"id": n, "text": text, "label": rng.choice(labels), "score": round(rng.random(), 3),
                       "tokens": [rng.randrange(32000) for _ in range(rng.randint(4, 24))]}
                chunk.append(json.dumps(rec))
            data = ("\n".join(chunk) + "\n").encode()
            f.write(data)
            written += len(data)


# ------------------------------------------------------------------------------------------
# Tree shape


def path_seed(seed, rel):
    return (seed << 32) ^ zlib.crc32(rel.encode())


def lognormal_size(rng, median, sigma, lo, hi):
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


def plan_tree(p, vocab):
    """Returns [(rel_path, kind, size)] for every file but the weights."""
    rng = random.Random(p["seed"])
    n_total = p["files"] - (1 if p["weights"] else 0)  # the weights file
    py_median, py_sigma, py_lo, py_hi = p.get("py_sizes", PY_SIZES)
    n_csv = p["csv_files"]
    n_cfg = max(4, n_total * 6 // 100)
    n_doc = max(2, n_total * 3 // 100)
    n_jsonl = p["jsonl_files"]
    n_py = n_total - n_csv - n_jsonl - n_cfg - n_doc
    n_tests = n_py // 6
    n_src = n_py - n_tests

    project = "ml_" + vocab.modules[0][:10]
    files = []

    # Packages: grow a tree; each package holds __init__.py plus 3-40 modules.
    def grow(root, budget, depth):
        made = [(root + "/__init__.py", "py", lognormal_size(rng, 1500, 0.6, 1024, 4096))]
        budget -= 1
        own = min(budget, rng.randint(3, 40))
        for _ in range(own):
            name = rng.choice(vocab.modules) + "_" + rng.choice(vocab.modules)[:6]
            made.append((f"{root}/{name}.py", "py", 0))
        budget -= own
        subs = []
        while budget > 0 and depth < 4:
            share = min(budget, rng.randint(15, 300) if depth < 3 else budget)
            sub = f"{root}/{rng.choice(vocab.modules)}{len(subs)}"
            got = grow(sub, share, depth + 1)
            made += got
            budget -= len(got)
            subs.append(sub)
        while budget > 0:  # depth cap reached: put the rest here
            name = rng.choice(vocab.modules) + "_" + str(budget)
            made.append((f"{root}/{name}.py", "py", 0))
            budget -= 1
        return made

    files += grow(project, n_src, 1)
    tests = grow("tests", n_tests, 2)
    files += [(os.path.dirname(r) + "/test_" + os.path.basename(r) if not r.endswith("__init__.py") else r, k, s)
              for r, k, s in tests]
    for i in range(n_cfg):
        ext = "yaml" if i % 3 else "json"
        files.append((f"configs/{rng.choice(('exp', 'model', 'data', 'sweep'))}/{vocab.modules[i % 300]}_{i}.{ext}", ext,
                      lognormal_size(rng, 2500, 0.8, 300, 30_000)))
    for i in range(n_doc):
        files.append((f"docs/{vocab.modules[(i * 7) % 300]}_{i}.md", "md", lognormal_size(rng, 5000, 0.7, 800, 40_000)))

    # De-duplicate paths (module names may collide) keeping the count exact.
    seen, uniq = set(), []
    for r, k, s in files:
        while r in seen:
            base, ext = os.path.splitext(r)
            r = base + "_x" + ext
        seen.add(r)
        uniq.append((r, k, s))
    files = uniq

    # Sizes: python modules log-normal 1-40 KB; the data files take what is left of the text
    # budget, 60% CSV (numeric: slow to deflate) and 40% JSONL (text records).
    py = [i for i, (r, k, s) in enumerate(files) if k == "py" and s == 0]
    for i in py:
        r, k, _ = files[i]
        files[i] = (r, k, lognormal_size(rng, py_median, py_sigma, py_lo, py_hi))
    used = sum(s for _, _, s in files)
    budget = max(p["text_mb"] * 1_000_000 - used, (n_csv + n_jsonl) * 1_000_000)
    for kind, n, share in (("csv", n_csv, 0.6), ("jsonl", n_jsonl, 0.4)):
        if not n:
            continue
        weights = [rng.uniform(0.4, 1.6) for _ in range(n)]
        for i in range(n):
            size = int(budget * share * weights[i] / sum(weights))
            split = rng.choice(("train", "val", "test", "eval"))
            files.append((f"data/{split}_{vocab.modules[i * 11 % 300]}_{i}.{kind}", kind, size))
    assert len(files) == n_total, (len(files), n_total)
    return project, files


def write_weights(path, nbytes, seed):
    rng = random.Random(seed)
    chunk = 4 << 20
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(chunk, left)
            f.write(rng.randbytes(n))
            left -= n


def write_bigfile(path, nbytes, seed):
    """One compressible text file of exactly nbytes: runs of 20-300 consecutive lines, each run
    starting at a random line of a ~16 MB pool of generated python modules. The pool is far larger
    than deflate's 32 KiB window (and zstd -3's 2 MiB one), so the codecs see code-like text, not
    repeats; the runs keep the local structure (indentation, names reused within a function)."""
    rng = random.Random(seed)
    vocab = Vocab(seed)
    pool = b"".join(python_module(random.Random(seed * 7919 + i), vocab, lognormal_size(rng, 8000, 0.6, 1024, 40_000))
                    for i in range(1500))
    offs = [0]
    i = pool.find(b"\n")
    while i >= 0:
        offs.append(i + 1)
        i = pool.find(b"\n", i + 1)
    nl = len(offs) - 1
    written = 0
    with open(path, "wb") as f:
        buf = []
        while written < nbytes:
            s = rng.randrange(nl - 300)
            b = pool[offs[s]:offs[s + rng.randint(20, 300)]][: nbytes - written]
            buf.append(b)
            written += len(b)
            if len(buf) >= 1024:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))


_worker = {}


def _init_worker(seed):
    _worker["vocab"] = Vocab(seed)
    _worker["seed"] = seed


def _write_file(item):
    """Writes one planned file (each from its own PRNG seeded by its path: the bytes do not depend
    on the order or the process that writes them). Returns its size."""
    full, rel, kind, size = item
    vocab, seed = _worker["vocab"], _worker["seed"]
    rng = random.Random(path_seed(seed, rel))
    if kind in ("csv", "jsonl"):
        (csv_data if kind == "csv" else jsonl_data)(rng, vocab, size, full)
    else:
        gen = {"py": python_module, "yaml": yaml_config, "json": json_config, "md": markdown_doc}[kind]
        with open(full, "wb") as f:
            f.write(gen(rng, vocab, size))
    return os.path.getsize(full)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes writing files (the bytes do not depend on it; default 2)")
    a = ap.parse_args()
    p = PRESETS[a.preset]
    stamp_path = os.path.join(a.out, ".complete")
    stamp = json.dumps({"gen_version": GEN_VERSION, "preset": a.preset, **p}, sort_keys=True)
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        print(f"gen_tree: {a.out} is up to date", file=sys.stderr)
        return
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    src = os.path.join(a.out, "src")
    os.makedirs(src)
    t0 = time.time()
    if "bigfile" in p:
        path = os.path.join(src, "data", "corpus.txt")
        os.makedirs(os.path.dirname(path))
        write_bigfile(path, p["bigfile"], p["seed"])
        with open(stamp_path, "w") as f:
            f.write(stamp)
        print(f"gen_tree: wrote {path} ({p['bigfile'] >> 20} MiB) in {time.time() - t0:.0f} s", file=sys.stderr)
        return
    vocab = Vocab(p["seed"])
    project, files = plan_tree(p, vocab)
    items = []
    for rel, kind, size in files:
        full = os.path.join(src, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        items.append((full, rel, kind, size))
    # The MB-sized data files first, so they do not end up last in one process.
    items.sort(key=lambda it: it[2] not in ("csv", "jsonl"))
    total = 0
    if a.jobs > 1:
        pool = multiprocessing.Pool(a.jobs, _init_worker, (p["seed"],))
        sizes = pool.imap_unordered(_write_file, items, chunksize=64)
    else:
        _init_worker(p["seed"])
        sizes = map(_write_file, items)
    for n, size in enumerate(sizes):
        total += size
        if n % 10000 == 9999 or (len(items) <= 20000 and n % 1000 == 999):
            print(f"gen_tree: {n + 1}/{len(files)} files, {total / 1e6:.0f} MB", file=sys.stderr)
    if a.jobs > 1:
        pool.close()
        pool.join()
    if p["weights"]:
        os.makedirs(os.path.join(src, "models"), exist_ok=True)
        write_weights(os.path.join(src, "models", "weights.safetensors"), p["weights"], p["seed"] + 1)
    with open(stamp_path, "w") as f:
        f.write(stamp)
    print(f"gen_tree: wrote {len(files) + (1 if p['weights'] else 0)} files, {total / 1e6:.1f} MB text + "
          f"{p['weights'] >> 20} MiB weights under {src} (project package {project}) in {time.time() - t0:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
