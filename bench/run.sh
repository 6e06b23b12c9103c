#!/usr/bin/env bash
# kiln benchmark: kiln vs same-shape tar|pigz -1 and tar|zstd -3 peers, the openssl and read-only
# floors, umoci and buildah, and
# kiln's push vs skopeo's to a throwaway docker-registry on 127.0.0.1.
#
#   bench/run.sh [--small] [--reps N] [--rev REV | --kiln PATH | --no-build]
#
#   --small     1,000 files / ~30 MB text / 64 MiB weights instead of 10,000 / ~280 MB / 512 MiB
#   --reps N    timed repetitions per scenario (default 3); the median is reported
#   --rev REV   benchmark a commit: built from `git archive REV` under bench/work/ (immune to
#               uncommitted work in the tree; kept per commit, so comparing two is cheap)
#   --kiln PATH use this kiln binary (skips the build)
#   --no-build  use build-bench/kiln as it is
#
# By default kiln is built (Release) from the working tree in build-bench/; if that build fails
# (someone's work in progress) the previous build-bench/kiln is used, with a warning.
# Generates the tree once under bench/work/ (git-ignored), builds kiln,
# runs every scenario, prints the table and writes it to bench/results-latest[-small].md.
# The bench reports PASS/FAIL against the targets but exits 0 unless it could not run.
# The push rows need docker-registry and skopeo (left out, with a note, when missing); every
# registry started for them is stopped when bench.py ends, however it ends.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
preset=full
reps=3
kiln=""
rev=""
label=""
build=1
while (($#)); do
  case "$1" in
    --small) preset=small ;;
    --reps) reps="$2"; shift ;;
    --reps=*) reps="${1#--reps=}" ;;
    --kiln) kiln="$2"; shift ;;
    --rev) rev="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

need=(tar gzip pigz zstd openssl umoci python3)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time (package time)")
if ((${#missing[@]})); then
  echo "run.sh: missing ${missing[*]}: run scripts/install-deps.sh --test" >&2
  exit 1
fi
command -v buildah >/dev/null || echo "run.sh: buildah not installed: its row is left out" >&2
for t in docker-registry skopeo; do
  command -v "$t" >/dev/null || echo "run.sh: $t not installed: the push rows are left out" >&2
done

work="$here/work"
mkdir -p "$work"
tree="$work/tree-$preset"

# 1. The tree (generated once; a stamp file records the preset and generator version).
python3 "$here/gen_tree.py" "$tree" --preset "$preset"
# bench/work/ is git-ignored in kiln's own checkout, and kiln (like flytekit) bakes only tracked
# files below a directory git ignores: give the tree a repository of its own (nothing tracked,
# nothing ignored), as a project checkout has. The peers read the same tree.
[[ -d "$tree/.git" ]] || git init -q "$tree"

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

# 3. The measurements.
results="$here/results-latest.md"
[[ "$preset" == small ]] && results="$here/results-latest-small.md"
python3 "$here/bench.py" --tree "$tree" --kiln "$kiln" --kiln-label "$label" --work "$work" \
  --preset "$preset" --reps "$reps" --results "$results"
