#!/usr/bin/env bash
# kiln benchmark, one run, four cases (round-robin):
#   tree10k   the bench tree: kiln vs same-shape tar|pigz -1 and tar|zstd -3 peers, the openssl,
#             read-only and find floors, umoci and buildah
#   push      kiln's push vs skopeo's to a throwaway docker-registry on 127.0.0.1 (bench tree)
#   tree100k  100,000 small files: kiln cold (gzip) vs tar|pigz -1 and umoci, no-change rebuild vs
#             the find floor, peak RSS
#   bigfile   one 1 GiB compressible file: kiln (gzip) vs pigz -1 -p2 and gzip -1
#
#   bench/run.sh [--small] [--quick] [--reps N] [--cases LIST] [--clean]
#                [--rev REV | --kiln PATH | --no-build]
#
#   --small     smaller inputs: 1,000 files / ~30 MB text / 64 MiB weights instead of 10,000 /
#               ~280 MB / 512 MiB; 10,000 instead of 100,000 small files; 128 MiB instead of 1 GiB
#   --quick     a smoke test: 1 repetition, 3 no-change samples (medians of 1: not for figures;
#               overrides --reps)
#   --reps N    timed repetitions per scenario (default 3); the median is reported
#   --cases L   comma-separated subset of tree10k,push,tree100k,bigfile (default: all)
#   --clean     remove the generated inputs under bench/work/ afterwards (they are kept by
#               default: generating them again takes a few minutes)
#   --rev REV   benchmark a commit: built from `git archive REV` under bench/work/ (immune to
#               uncommitted work in the tree; kept per commit, so comparing two is cheap)
#   --kiln PATH use this kiln binary (skips the build)
#   --no-build  use build-bench/kiln as it is
#
# By default kiln is built (Release) from the working tree in build-bench/; if that build fails
# (someone's work in progress) the previous build-bench/kiln is used, with a warning.
# Generates the inputs once under bench/work/ (git-ignored), builds kiln, runs every scenario of
# the selected cases, prints the tables and writes them to bench/results-latest[-small].md
# (results-latest[-small][-quick][-CASES].md for --quick or a subset of the cases).
# The bench reports PASS/FAIL against the targets but exits 0 unless it could not run.
# The push rows need docker-registry and skopeo (left out, with a note, when missing); every
# registry started for them is stopped when bench.py ends, however it ends.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
preset=full
reps=3
nochange=15
nochange100k=9
quick=0
cases=tree10k,push,tree100k,bigfile
clean=0
kiln=""
rev=""
label=""
build=1
while (($#)); do
  case "$1" in
    --small) preset=small ;;
    --quick) quick=1 ;;
    --reps) reps="$2"; shift ;;
    --reps=*) reps="${1#--reps=}" ;;
    --cases) cases="$2"; shift ;;
    --cases=*) cases="${1#--cases=}" ;;
    --clean) clean=1 ;;
    --kiln) kiln="$2"; shift ;;
    --rev) rev="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if ((quick)); then reps=1; nochange=3; nochange100k=3; fi
has() { [[ ",$cases," == *",$1,"* ]]; }
for c in ${cases//,/ }; do
  case "$c" in tree10k|push|tree100k|bigfile) ;; *) echo "run.sh: unknown case $c (tree10k,push,tree100k,bigfile)" >&2; exit 2 ;; esac
done

need=(tar gzip pigz zstd openssl umoci find python3)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time (package time)")
if ((${#missing[@]})); then
  echo "run.sh: missing ${missing[*]}: run scripts/install-deps.sh --test" >&2
  exit 1
fi
has tree10k && { command -v buildah >/dev/null || echo "run.sh: buildah not installed: its row is left out" >&2; }
if has push; then
  for t in docker-registry skopeo; do
    command -v "$t" >/dev/null || echo "run.sh: $t not installed: the push rows are left out" >&2
  done
fi

work="$here/work"
mkdir -p "$work"
suffix=""
[[ "$preset" == small ]] && suffix="-small"
tree="$work/tree-$preset"
tree100k="$work/tree-100k$suffix"
bigtree="$work/tree-bigfile$suffix"

# 1. The inputs (generated once each; a stamp file records the preset and generator version).
# Only the selected cases' (the push rows use the bench tree).
# bench/work/ is git-ignored in kiln's own checkout, and kiln (like flytekit) bakes only tracked
# files below a directory git ignores: give each tree a repository of its own (nothing tracked,
# nothing ignored), as a project checkout has. The peers read the same trees.
args=()
gen() {  # gen DIR PRESET
  python3 "$here/gen_tree.py" "$1" --preset "$2"
  [[ -d "$1/.git" ]] || git init -q "$1"
}
if has tree10k || has push; then gen "$tree" "$preset"; args+=(--tree "$tree"); fi
if has tree100k; then gen "$tree100k" "100k$suffix"; args+=(--tree-100k "$tree100k"); fi
if has bigfile; then gen "$bigtree" "bigfile$suffix"; args+=(--bigfile "$bigtree"); fi
cleanup() {
  if ((clean)); then
    echo "run.sh: removing the generated inputs (--clean)" >&2
    rm -rf "$tree" "$tree100k" "$bigtree" "$work/blobs"
  fi
}
trap cleanup EXIT

# 2. kiln.
if [[ -z "$kiln" && -n "$rev" ]]; then
  # A committed revision, built from `git archive` in bench/work/ (kept per commit): immune to
  # uncommitted work in progress in the tree, and lets two commits be compared.
  sha=$(git -C "$root" rev-parse --verify "$rev^{commit}")
  srcdir="$work/kiln-src-${sha:0:12}"
  if [[ ! -x "$srcdir/build/kiln" ]]; then
    echo "run.sh: building kiln ${sha:0:12} (Release) in ${srcdir#$root/}" >&2
    rm -rf "$srcdir"
    mkdir -p "$srcdir"
    git -C "$root" archive "$sha" | tar -xf - -C "$srcdir"
    if ! { cmake -S "$srcdir" -B "$srcdir/build" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null &&
           cmake --build "$srcdir/build" -j2 >"$work/build.log" 2>&1; }; then
      echo "run.sh: build of ${sha:0:12} failed (see bench/work/build.log)" >&2
      tail -20 "$work/build.log" >&2
      exit 1
    fi
  fi
  kiln="$srcdir/build/kiln"
  label="kiln @ ${sha:0:12} (git archive of $rev)"
fi
if [[ -z "$kiln" ]]; then
  kiln="$root/build-bench/kiln"
  if ((build)); then
    echo "run.sh: building kiln (Release) in build-bench/" >&2
    if ! { cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null &&
           cmake --build "$root/build-bench" -j2 >"$work/build.log" 2>&1; }; then
      if [[ -x "$kiln" ]]; then
        echo "run.sh: build failed (see bench/work/build.log); using the existing $kiln" >&2
      else
        echo "run.sh: build failed (see bench/work/build.log); try --rev HEAD to benchmark the last commit" >&2
        tail -20 "$work/build.log" >&2
        exit 1
      fi
    fi
  fi
fi
[[ -x "$kiln" ]] || { echo "run.sh: no kiln binary at $kiln" >&2; exit 1; }
[[ -n "$label" ]] || label="$kiln"
if [[ "$kiln" == "$root/build-bench/kiln" ]]; then
  label="build-bench/kiln @ $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
  [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]] && label+=" + uncommitted changes"
fi

# 3. The measurements. The report goes to bench/results-latest[-small][-quick][-CASES].md (CASES
# only when not all four ran): a partial or quick run does not overwrite the full report.
name="latest$suffix"
((quick)) && name+="-quick"
[[ "$cases" == tree10k,push,tree100k,bigfile ]] || name+="-${cases//,/+}"
results="$here/results-$name.md"
python3 "$here/bench.py" "${args[@]}" --cases "$cases" --kiln "$kiln" --kiln-label "$label" --work "$work" \
  --preset "$preset" --reps "$reps" --nochange-reps "$nochange" --nochange-reps-100k "$nochange100k" \
  --results "$results" --raw "$work/results-$name.json"
