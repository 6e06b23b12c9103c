#!/usr/bin/python3
"""kiln's .flyteignore (the fast-register bundle) against pyflyte's, on random trees and patterns.

For each seed, builds a random tree (outside any git repository: no git rule applies on either
side) holding a random .flyteignore and, for half the seeds, a random .dockerignore (pyflyte reads
both with docker-py's matcher, and so does kiln for the bundle), then compares

  - pyflyte: flytekit's tools/script_mode.ls_files(root, ALL, ignore_group=IgnoreGroup(root,
    [GitIgnore, DockerIgnore, StandardIgnore, FlyteIgnore])), the default ignores of
    fast_registration.fast_package, loaded from the flytekit checkout with only the stubs importing
    needs, with Debian's python3-docker for the PatternMatcher FlyteIgnore uses;
  - kiln: `kiln files SPEC --flyteignore --json`, its files and symlinks.

The names and patterns are drawn to hit where docker-py and Docker disagree: case (ASCII, Greek
sigma, dotted I), "[...]" with "!", "^", "]", "-" and backslashes, a lone "[", "**" inside a
segment, "..", "./", leading and trailing "/", "!" exceptions and ".dockerignore", whitespace
(Unicode spaces too), comments, a BOM, CRLF and CR line ends, names with "\\n". Some patterns hold a
reversed range ("[z-a]"), on which Python's re fails: pyflyte then fails, and kiln must fail too.

Usage: flyteignore_dockerpy.py KILN FLYTEKIT_DIR [--seeds N] [--first S] [--keep]
The last line says how many trees, files and patterns were compared and how many differences there
were. Exit 0 when there are none; 1 otherwise (each difference printed).
"""
import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance import load_flytekit  # noqa: E402  (flytekit's modules without flyteidl)


# Path segments: case variants, glob characters in names, Unicode with special lowercasing.
SEGMENTS = [
    "a", "A", "b", "B", "src", "Src", "SRC", "data", "Data", "x.py", "X.PY", "a.py", "b.py",
    "readme.md", "README.MD", "n.txt", ".txt", "a b", "[", "]", "[ab]", "!x", "^a", "#notes",
    "\\#notes", "-", "a-z", "\u03a3", "\u0391\u03a3", "\u03c3", "\u03c2", "\u0130", "i\u0307", "\u00e9",
    "\u00c9", ".dockerignore", ".DockerIgnore", ".flyteignore", "..x", "*", "?", "**", "x.PYC.txt",
    "K", "\u212a", "nl\n", "\ufeffbom", "\u00a0sp", "tab\t", "a.b.c", "\\", "z",
]

# Pattern pieces beyond the names.
GLOB = ["*", "**", "?", "[a-c]", "[!a]", "[^a]", "[]a]", "[!]a]", "[", "]", "[\\]", "[a-]", "[-a]",
        "[A-Z]", "[^]", "\\", "\\*", "/", "./", "../", ".", "..", "!", "#", "**/", "/**", "[[]", "[ab",
        "\u03a3", "\u0130", "\u00c9", "[\u00e9-\u00ea]", "***", "*.", ".*"]
BAD = ["[z-a]", "[B-a]", "[a-\\]", "[--+]"]
SPACES = ["", "", "", " ", "\t", "\u00a0", "\u3000", " \t"]


def random_path(rng):
    depth = rng.choice([1, 1, 2, 2, 3, 4])
    return [rng.choice(SEGMENTS) for _ in range(depth)]


def mutate(rng, seg):
    if not seg or rng.random() < 0.4:
        return seg
    chars = list(seg)
    k = rng.randrange(len(chars))
    op = rng.randrange(5)
    if op == 0:
        chars[k] = chars[k].swapcase()
    elif op == 1:
        chars[k] = "?"
    elif op == 2:
        chars[k] = "*"
    elif op == 3:
        chars[k] = "[" + chars[k] + rng.choice(["", "x", "-z"]) + "]"
    else:
        chars.insert(k, rng.choice(GLOB))
    return "".join(chars)


def random_pattern(rng, paths):
    r = rng.random()
    if r < 0.6 and paths:
        p = rng.choice(paths)
        parts = p[: rng.randint(1, len(p))]
        parts = [mutate(rng, s) if rng.random() < 0.5 else s for s in parts]
        if rng.random() < 0.15:
            parts[rng.randrange(len(parts))] = rng.choice(["*", "**", "?*"])
        pat = "/".join(parts)
    elif r < 0.99:
        pat = "".join(rng.choice(GLOB + SEGMENTS) for _ in range(rng.randint(1, 4)))
    else:
        pat = rng.choice(BAD)
    if rng.random() < 0.1:
        pat = rng.choice(["/", "./", "../", "**/", "a/../"]) + pat
    if rng.random() < 0.1:
        pat = pat + "/"
    if rng.random() < 0.25:
        pat = "!" + rng.choice(["", "", " "]) + pat
    pat = pat.replace("\n", "")
    return rng.choice(SPACES) + pat + rng.choice(SPACES)


def random_flyteignore(rng, paths):
    lines = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        if r < 0.08:
            lines.append(rng.choice(["# comment", " #x", "#" + random_pattern(rng, paths)]))
        elif r < 0.13:
            lines.append(rng.choice(["", "   ", "\t"]))
        else:
            lines.append(random_pattern(rng, paths))
    text = ""
    for line in lines:
        text += line.replace("\r", "") + rng.choice(["\n", "\n", "\n", "\r\n", "\r"])
    if rng.random() < 0.2:
        text = text[:-1] if text.endswith("\n") and not text.endswith("\r\n") else text
    if rng.random() < 0.1:
        text = "\ufeff" + text
    return text


def build_tree(rng, root):
    paths = []
    for _ in range(rng.randint(5, 60)):
        parts = random_path(rng)
        if parts[0] in (".flyteignore", ".dockerignore"):  # at the root, read by both sides
            continue
        full = os.path.join(root, *parts)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            if os.path.isdir(full):
                continue
            with open(full, "w") as f:
                f.write("x")
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            continue  # a file and a directory of the same name
        paths.append(parts)
    return paths


def kiln_files(kiln, root, spec_dir):
    spec = os.path.join(spec_dir, "spec.json")
    with open(spec, "w") as f:
        json.dump({"name": "fi", "source_root": root, "source_copy_mode": "all"}, f)
    r = subprocess.run([kiln, "files", spec, "--flyteignore", "--json"], capture_output=True)
    if r.returncode != 0:
        return None, r.returncode, r.stderr.decode("utf-8", "replace").strip()
    out = set()
    for e in json.loads(r.stdout)["source"]:
        if e["type"] != "dir":
            out.add(e["path"])
    return out, 0, ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kiln")
    ap.add_argument("flytekit")
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    ignore, script_mode, CopyFileDetection = load_flytekit(args.flytekit)
    logging.getLogger("flytekit").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", FutureWarning)  # Python's re on "[[" and "--" in a class

    base = tempfile.mkdtemp(prefix="kiln-flyteignore-")
    os.environ["GIT_CEILING_DIRECTORIES"] = os.path.dirname(base)
    diffs = trees = files = ignored = patterns = failures = 0
    try:
        for seed in range(args.first, args.first + args.seeds):
            rng = random.Random(seed)
            root = os.path.join(base, f"t{seed}")
            os.makedirs(root)
            paths = build_tree(rng, root)
            text = random_flyteignore(rng, paths)
            with open(os.path.join(root, ".flyteignore"), "w", encoding="utf-8", newline="") as f:
                f.write(text)
            shown = f".flyteignore: {text!r}"
            if rng.random() < 0.5:
                dtext = random_flyteignore(rng, paths)
                with open(os.path.join(root, ".dockerignore"), "w", encoding="utf-8", newline="") as f:
                    f.write(dtext)
                shown += f"; .dockerignore: {dtext!r}"
            trees += 1
            try:
                group = ignore.IgnoreGroup(root, [ignore.GitIgnore, ignore.DockerIgnore, ignore.StandardIgnore,
                                                  ignore.FlyteIgnore])
                patterns += len(group.ignores[-1].pm.patterns) - 1  # without the appended !.dockerignore
                listed, _ = script_mode.ls_files(root, CopyFileDetection.ALL, False, group)
                pyflyte = {os.path.relpath(p, root) for p in listed}
                py_error = None
            except Exception as e:  # re.error on a reversed range: pyflyte fails
                pyflyte, py_error = None, f"{type(e).__name__}: {e}"
            kiln, rc, err = kiln_files(args.kiln, root, base)
            if py_error is not None or kiln is None:
                failures += 1
                if py_error is None or kiln is not None or rc != 2:
                    diffs += 1
                    print(f"seed {seed}: pyflyte {py_error or 'succeeds'}; kiln exit {rc} {err}")
                    print(f"  {shown}")
                continue
            on_disk = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
            files += len(on_disk)
            ignored += len(on_disk - pyflyte)
            if pyflyte != kiln:
                diffs += 1
                print(f"seed {seed}: differs; {shown}")
                for p in sorted(pyflyte - kiln):
                    print(f"  only pyflyte: {p!r}")
                for p in sorted(kiln - pyflyte):
                    print(f"  only kiln:    {p!r}")
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    print(f"{trees} trees, {files} files ({ignored} ignored by pyflyte), {patterns} patterns "
          f"({failures} trees where both fail): "
          f"{diffs} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
