#!/usr/bin/python3
"""Conformance of kiln's file selection (source_copy_mode "all") with flytekit's own.

For each seed, builds a random project inside a real git repository (nested and parent
.gitignore files, .git/info/exclude, core.excludesFile, tracked files that match ignore patterns,
a .dockerignore, __pycache__, .cache, symlinks, a nested repository, core.ignorecase, a stale
.git file or a .git directory of junk, a repository made in a directory the outer one tracks files
in, .git symlinks and a .git file leading back to the outer .git), then compares:

  - flytekit: tools/script_mode.ls_files(root, ALL, ignore_group=IgnoreGroup(root, [GitIgnore,
    DockerIgnore, StandardIgnore])), exactly as image_spec/default_builder.py calls it, loaded from
    the flytekit checkout with only the stubs importing needs (a bare `flytekit` package and its
    logger), using Debian's python3-docker for the pattern matcher it imports;
  - kiln: `kiln files SPEC --json` (the set a build bakes).

docker-py's PatternMatcher and Docker's (moby/patternmatcher) disagree on some patterns (docker-py
lowercases, checks only one parent length, always keeps .dockerignore). A reference of Docker's
matcher written here (from moby's algorithm, regular expressions built the way moby builds them)
decides, per tree, whether both read the .dockerignore alike. Where they do, kiln must equal
flytekit exactly; where they do not, kiln must equal flytekit with Docker's matcher in place of
docker-py's (kiln follows Docker).

Deliberate differences (docs/files.md), not counted: kiln stores symlinks as symlinks, so it keeps a
symlink to a directory and a dangling symlink, which flytekit's walk skips; and kiln does not bake a
repository nested in a git-ignored directory, which flytekit does.

Usage: conformance.py KILN FLYTEKIT_DIR [--seeds N] [--first S] [--keep]
Exit 0 when there are no differences; 1 otherwise (each difference printed).
"""
import argparse
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import types


# --------------------------------------------------------------------------------------------
# flytekit, loaded from its source tree with the fewest stubs.

def load_flytekit(src):
    pkg = os.path.join(src, "flytekit")
    if not os.path.isdir(pkg):
        raise SystemExit(f"no flytekit package under {src}")
    fk = types.ModuleType("flytekit")
    fk.__path__ = [pkg]
    sys.modules["flytekit"] = fk  # skip flytekit/__init__.py (it needs flyteidl and more)
    loggers = types.ModuleType("flytekit.loggers")
    loggers.logger = logging.getLogger("flytekit")
    sys.modules["flytekit.loggers"] = loggers
    import flytekit.constants as constants  # noqa: E402  (an Enum only)
    import flytekit.tools.ignore as ignore  # noqa: E402
    import flytekit.tools.script_mode as script_mode  # noqa: E402
    return ignore, script_mode, constants.CopyFileDetection


# --------------------------------------------------------------------------------------------
# Docker's .dockerignore matcher (moby/patternmatcher + ignorefile), as a reference.

def go_clean(p):
    if p == "":
        return "."
    rooted = p.startswith("/")
    out = []
    for s in p.split("/"):
        if s in ("", "."):
            continue
        if s == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(s)
    r = ("/" if rooted else "") + "/".join(out)
    return r if r else "."


def docker_read(content):
    """ignorefile.ReadAll then patternmatcher.New: [(exclusion, compiled)]."""
    pats = []
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines):
        line = line[:-1] if line.endswith("\r") else line
        if n == 0 and line.startswith("\ufeff"):
            line = line[1:]
        if line.startswith("#"):
            continue
        p = line.strip()
        if not p:
            continue
        invert = p[0] == "!"
        if invert:
            p = p[1:].strip()
        if p:
            p = go_clean(p)
            if len(p) > 1 and p[0] == "/":
                p = p[1:]
        if invert:
            p = "!" + p
        p = go_clean(p.strip())
        excl = p[0] == "!"
        if excl:
            if len(p) == 1:
                raise ValueError('illegal exclusion pattern "!"')
            p = p[1:]
        pats.append((excl, docker_compile(p)))
    return pats


def docker_compile(p):
    reg, kind, i, n = "^", "exact", 0, len(p)
    k = 0
    while i < n:
        ch = p[i]
        i += 1
        if ch == "*":
            if i < n and p[i] == "*":
                i += 1
                if i < n and p[i] == "/":
                    i += 1
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        reg += ".*"
                        kind = "regexp"
                else:
                    reg += "(.*/)?"
                    kind = "regexp"
                if k == 0:
                    kind = "suffix"
            else:
                reg += "[^/]*"
                kind = "regexp"
        elif ch == "?":
            reg += "[^/]"
            kind = "regexp"
        elif ch in ".+()|{}$":
            reg += "\\" + ch
        elif ch == "\\":
            if i < n:
                reg += "\\" + p[i]
                i += 1
                kind = "regexp"
            else:
                reg += "\\\\"
        elif ch in "[]":
            reg += ch
            kind = "regexp"
        else:
            reg += re.escape(ch) if ch != "^" else "^"
        k += 1
    if kind == "regexp":
        return ("regexp", re.compile(reg + r"\Z"))
    if kind == "prefix":
        return ("prefix", p[:-2])
    if kind == "suffix":
        return ("suffix", p[2:])
    return ("exact", p)


def docker_match_one(c, path):
    kind, v = c
    if kind == "exact":
        return path == v
    if kind == "prefix":
        return path.startswith(v)
    if kind == "suffix":
        return path.endswith(v) or (v[:1] == "/" and path == v[1:])
    return v.match(path) is not None


def docker_matches(pats, path):
    """MatchesOrParentMatches."""
    matched = False
    parts = path.split("/")
    for excl, c in pats:
        if excl != matched:
            continue
        hit = docker_match_one(c, path)
        if not hit and len(parts) > 1:
            for k in range(1, len(parts)):
                if docker_match_one(c, "/".join(parts[:k])):
                    hit = True
                    break
        if hit:
            matched = not excl
    return matched


# --------------------------------------------------------------------------------------------
# Random projects.

DIRS = ["pkg", "src", "build", "dist", "data", "docs", "secret", "vendor", "gen", "logs", "tmp",
        "Build", "a", "b", "sub"]
FILES = ["main.py", "mod.py", "__init__.py", "README.md", "README.MD", "notes.txt", "app.log",
         "keep.log", "x.tmp", "key.pem", "server.pem", "data.csv", "x.bak", "x.swp", "Makefile",
         "a.pyc", "config.yaml", "LICENSE", "keep.md", "abc", "keep.txt"]
GITIGNORE = ["*.log", "!keep.log", "build/", "/dist", "secret/", "tmp*", "*.tmp", "**/gen/", "logs/*",
             "!logs/keep.log", "data/*.csv", "vendor", "*.pem", "!server.pem", "docs/**", "a/**/b",
             "Build", "!build/keep.txt", "*.md", "!README.md", "sub/", "config.*"]
DOCKERIGNORE = ["*.md", "**.pem", "docs", "!docs/keep.md", "**/*.log", "build", "!build/keep.txt",
                "data/**", "/secret", "*/tmp*", "a?c", "[a-c]*.txt", "**/__init__.py", "Makefile",
                "!Makefile", "vendor/", "*/*/*.py", "README.*", "logs/*", "!**/keep.log", "**/LICENSE",
                ".dockerignore", "**/a/**", "pkg/**/x.*", "#comment", "  notes.txt  ", "./gen/../dist",
                "**", "!*.py", "!**/*.py", "*.MD", "Build"]
PARENT_GITIGNORE = ["secret/", "*.yaml", "/sub/app/tmp/", "*.csv", "!sub/app/data/data.csv", "app/gen/"]


def w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def git(env, cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_tree(rng, base, env):
    repo = os.path.join(base, "repo")
    os.makedirs(repo)
    nested = rng.random() < 0.6
    root = os.path.join(repo, "sub", "app") if nested else repo
    os.makedirs(root, exist_ok=True)
    files = []
    for _ in range(rng.randint(15, 45)):
        depth = rng.choice([0, 1, 1, 2, 2, 3])
        rel = "/".join(rng.choice(DIRS) for _ in range(depth) if True)
        rel = os.path.join(rel, rng.choice(FILES)) if rel else rng.choice(FILES)
        p = os.path.join(root, rel)
        if os.path.isdir(p) or any(os.path.isfile(os.path.join(root, *rel.split("/")[:k]))
                                   for k in range(1, rel.count("/") + 1)):
            continue
        w(p, f"{rel} {rng.random()}\n")
        files.append(rel)
    # flytekit's standard ignores.
    for d in rng.sample(["", "pkg", "src/pkg", "a"], 2):
        w(os.path.join(root, d, "__pycache__", "m.cpython-311.pyc"), "pyc")
    w(os.path.join(root, ".cache", "pip", "x"), "cache")
    w(os.path.join(root, "pkg", ".cache", "y"), "nested cache")
    if rng.random() < 0.3:
        w(os.path.join(root, "x.pyc"), "pyc")
    # Symlinks: to an inside file, to a directory, dangling.
    if files:
        os.symlink(files[0], os.path.join(root, "link-to-file"))
    os.makedirs(os.path.join(root, "pkg"), exist_ok=True)
    os.symlink("pkg", os.path.join(root, "link-to-dir"))
    os.symlink("missing", os.path.join(root, "dangling"))
    # Ignore files.
    w(os.path.join(root, ".gitignore"), "\n".join(rng.sample(GITIGNORE, rng.randint(0, 6))) + "\n")
    for d in rng.sample(DIRS, 3):
        if os.path.isdir(os.path.join(root, d)):
            w(os.path.join(root, d, ".gitignore"), "\n".join(rng.sample(GITIGNORE, rng.randint(1, 3))) + "\n")
    if nested:
        w(os.path.join(repo, ".gitignore"), "\n".join(rng.sample(PARENT_GITIGNORE, rng.randint(1, 3))) + "\n")
        w(os.path.join(repo, "sub", ".gitignore"), rng.choice(["*.txt\n", "!notes.txt\n", "app/logs/\n", ""]))
        w(os.path.join(repo, "other.py"), "outside the source root\n")
    if rng.random() < 0.8:
        w(os.path.join(root, ".dockerignore"), "\n".join(rng.sample(DOCKERIGNORE, rng.randint(1, 6))) + "\n")
    # A nested repository (a vendored checkout): git ls-files does not look inside it.
    if rng.random() < 0.4:
        dep = os.path.join(root, "third_party", "dep")
        w(os.path.join(dep, "dep.py"), "dep\n")
        w(os.path.join(dep, "dep.log"), "log\n")
        w(os.path.join(dep, "build", "out.txt"), "out\n")
        w(os.path.join(dep, ".gitignore"), "*.py\n")
        git(env, dep, "init", "-q")
        if rng.random() < 0.5:
            with open(os.path.join(root, ".gitignore"), "a") as f:
                f.write(rng.choice(["third_party/\n", "*.log\n", "dep\n"]))
    git(env, repo, "init", "-q")
    w(os.path.join(repo, ".git", "info", "exclude"), rng.choice(["*.bak\n", "*.csv\n", "notes.txt\n", ""]))
    excludes = os.path.join(base, "excludes")
    w(excludes, rng.choice(["*.swp\n", "LICENSE\n", "abc\n"]))
    if rng.random() < 0.5:
        git(env, repo, "config", "core.excludesFile", excludes)
    else:
        w(os.path.join(env["HOME"], ".gitconfig"), f"[core]\n\texcludesFile = {excludes}\n")
    # Track a random subset, forcing some ignored files in.
    tracked = [f for f in files if rng.random() < 0.4]
    if tracked:
        prefix = os.path.relpath(root, repo)
        git(env, repo, "add", "-f", "--", *[os.path.normpath(os.path.join(prefix, f)) for f in tracked])
        git(env, repo, "commit", "-q", "-m", "x")
    # What git decides from the repository itself, drawn from a generator of its own so that the
    # trees above stay what they were for each seed.
    xr = random.Random(rng.random())
    # core.ignorecase (git init sets it on macOS and Windows; it travels with the checkout): the
    # patterns fold case, and a tracked file whose name changed case is still tracked.
    if xr.random() < 0.35:
        git(env, repo, "config", "core.ignorecase", "true")
        for f in xr.sample(tracked, min(len(tracked), 3)):
            d, name = os.path.split(f)
            up = os.path.join(root, d, name.upper())
            if not os.path.exists(up):
                os.rename(os.path.join(root, f), up)
        for f in xr.sample(["APP.LOG", "Key.PEM", "BUILD/x.py", "Secret/s.txt", "NOTES.TXT", "Data/d.CSV",
                            "x.TMP", "Config.YAML"], 3):
            if not os.path.exists(os.path.join(root, f)):
                w(os.path.join(root, f), "case\n")
    # A directory whose .git is not a repository for git (a stale submodule .git file, a .git
    # directory of junk): git applies the outer rules inside it.
    if xr.random() < 0.35:
        lib = os.path.join(root, "vendored", "lib")
        for f in ("lib.py", "debug.log", "key.pem", "notes.txt"):
            w(os.path.join(lib, f), f + "\n")
        if xr.random() < 0.5:
            w(os.path.join(lib, ".git"), "gitdir: ../../.git/modules/lib\n")
        else:
            w(os.path.join(lib, ".git", "HEAD"), "junk\n")
    # A repository made over files the outer one tracks (`git init` or a clone in a tracked
    # directory): the index says the directory is git's own (treat_directory: index_directory), so
    # git walks it with the outer rules and the .gitignore found there. Beside it, a repository in
    # a directory that tracks nothing below: git does not look inside that one.
    if xr.random() < 0.35:
        ext = os.path.join(root, "plugins", "ext")
        w(os.path.join(ext, "ext.py"), "tracked\n")
        w(os.path.join(ext, "tracked.log"), "tracked\n")
        prefix = os.path.relpath(root, repo)
        git(env, repo, "add", "-f", "--", *[os.path.normpath(os.path.join(prefix, "plugins", "ext", f))
                                            for f in ("ext.py", "tracked.log")])
        git(env, repo, "commit", "-q", "-m", "ext")
        git(env, ext, "init", "-q")
        for f in ("debug.log", "new.py", "key.pem", "notes.txt", "sub/s.log", "sub/s.py"):
            w(os.path.join(ext, f), f + "\n")
        w(os.path.join(ext, ".gitignore"), "*.log\nnew.py\n")
        inner = os.path.join(root, "plugins", "inner")
        w(os.path.join(inner, "i.log"), "log\n")
        w(os.path.join(inner, ".gitignore"), "*.log\n")
        git(env, inner, "init", "-q")
    # .git entries that lead back to the repository's own git directory: symlinks to it (git
    # compares real paths: not another repository, so the outer rules apply inside), and a .git
    # file naming it (another repository for git: no outer rule inside; flytekit bakes the file).
    if xr.random() < 0.35:
        gitdir = os.path.join(repo, ".git")
        w(os.path.join(root, "linked", ".gitignore"), "*.log\nnotes.txt\n")
        for name in ("sym", "abs", "gitfile"):
            d = os.path.join(root, "linked", name)
            for f in ("m.py", "debug.log", "key.pem", "notes.txt"):
                w(os.path.join(d, f), f + "\n")
            if name == "sym":
                os.symlink(os.path.relpath(gitdir, d), os.path.join(d, ".git"))
            elif name == "abs":
                os.symlink(gitdir, os.path.join(d, ".git"))
            else:
                w(os.path.join(d, ".git"), f"gitdir: {os.path.relpath(gitdir, d)}\n")
    return root


# --------------------------------------------------------------------------------------------

def walk_files(root):
    out = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".git"]
        for f in fs:
            out.append(os.path.relpath(os.path.join(d, f), root))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kiln")
    ap.add_argument("flytekit")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    ignore, script_mode, CopyFileDetection = load_flytekit(args.flytekit)

    def flytekit_ls(root, docker_ref=None):
        group = ignore.IgnoreGroup(root, [ignore.GitIgnore, ignore.DockerIgnore, ignore.StandardIgnore])
        if docker_ref is not None:  # Docker's matcher in place of docker-py's
            for ig in group.ignores:
                if isinstance(ig, ignore.DockerIgnore):
                    ig._is_ignored = lambda path, pats=docker_ref: docker_matches(pats, path)
        files, _ = script_mode.ls_files(root, CopyFileDetection.ALL, deref_symlinks=False, ignore_group=group)
        return {os.path.relpath(f, root) for f in files}

    diffs = 0
    agree = disagree = 0
    work = tempfile.mkdtemp(prefix="kiln-fidelity.")
    try:
        for seed in range(args.first, args.first + args.seeds):
            rng = random.Random(seed)
            base = os.path.join(work, str(seed))
            home = os.path.join(base, "home")
            os.makedirs(home)
            env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), GIT_CONFIG_NOSYSTEM="1")
            root = make_tree(rng, base, env)
            os.environ.update(HOME=home, XDG_CONFIG_HOME=env["XDG_CONFIG_HOME"], GIT_CONFIG_NOSYSTEM="1")

            spec = os.path.join(base, "spec.json")
            with open(spec, "w") as f:
                json.dump({"name": "fidelity", "source_root": root, "source_copy_mode": "all"}, f)
            r = subprocess.run([args.kiln, "files", spec, "--json"], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"seed {seed}: kiln files failed ({r.returncode}): {r.stderr.strip()}")
                diffs += 1
                continue
            kiln = set()
            for e in json.loads(r.stdout)["source"]:
                if e["type"] == "dir":
                    continue
                p = os.path.join(root, e["path"])
                if e["type"] == "symlink" and (not os.path.exists(p) or os.path.isdir(p)):
                    continue  # kept by kiln on purpose, skipped by flytekit's walk
                kiln.add(e["path"])

            # Deliberate difference: a git-ignored directory is not baked by kiln even when a
            # repository is nested in it; flytekit bakes that repository's files (git ls-files
            # reports it as one "dir/" entry, which its per-file check never matches).
            dep = os.path.join(root, "third_party", "dep")
            dropped = set()
            if os.path.isdir(os.path.join(dep, ".git")):
                for d in ("third_party/", "third_party/dep/"):
                    c = subprocess.run(["git", "check-ignore", "-q", os.path.join(root, d)], cwd=root, env=env)
                    if c.returncode == 0:
                        dropped = {p for p in walk_files(root) if p.startswith("third_party/dep/")}
                        break

            di = os.path.join(root, ".dockerignore")
            ref = docker_read(open(di).read()) if os.path.isfile(di) else []
            pm = ignore.DockerIgnore(root).pm
            alike = all(pm.matches(p) == docker_matches(ref, p) for p in walk_files(root))
            if alike:
                agree += 1
                want, what = flytekit_ls(root), "flytekit"
            else:
                disagree += 1
                want, what = flytekit_ls(root, ref), "flytekit with Docker's matcher"
            want -= dropped
            if kiln != want:
                diffs += 1
                print(f"seed {seed}: kiln differs from {what} (tree kept under {base})")
                for p in sorted(want - kiln):
                    print(f"  only {what}: {p}")
                for p in sorted(kiln - want):
                    print(f"  only kiln: {p}")
                args.keep = True
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"fidelity: {args.seeds} git trees ({agree} where docker-py and Docker read .dockerignore alike, "
          f"{disagree} where they differ and kiln follows Docker): {diffs} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
