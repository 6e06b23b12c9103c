# Shared helpers for kiln's integration tests (sourced by every tests/integration/test_*.sh).
#
# What a test gets by sourcing this file:
#   - strict mode (set -Eeuo pipefail) and an ERR trap that names the failing line;
#   - $T: a fresh temp dir, removed on exit (kept when KILN_TEST_KEEP=1), with KILN_CACHE=$T/cache
#     and KILN_STATE_DIR=$T/state (build history);
#   - assertions that record a failure and carry on (fail, assert_eq, assert_ne, assert_contains,
#     assert_not_contains, assert_match, assert_cmd, assert_files_equal), and `die` for what makes
#     going on pointless;
#   - `kiln ARGS...`: runs $KILN, leaving $OUT (stdout), $ERR (stderr) and $RC (exit code);
#   - `build_ok SPEC ARGS...`: a `kiln build --json --progress quiet` that must succeed;
#   - jget (python3 over JSON), make_tree, snapshot, rootfs_listing, manifest_json, config_json,
#     blob_path, blob_cat, oci_validate, run_entrypoint, need_tools;
#   - a one-line summary at exit: "test_x: N passed, M failed (S s)". The exit code is non-zero
#     when any assertion failed or a command broke off the script.
#
# Environment: KILN (the binary, required), KILN_SOURCE_DIR (the repo root); KILN_TEST_KEEP=1 keeps
# the temp dir, KILN_TEST_TRACE=1 traces commands with timestamps.

set -Eeuo pipefail
export LC_ALL=C.UTF-8 TZ=UTC
# KILN_TEST_TRACE=1: trace every command with a timestamp (to find what is slow).
if [[ "${KILN_TEST_TRACE:-}" == 1 ]]; then
  PS4='+ ${EPOCHREALTIME} '
  set -x
fi

: "${KILN:?set KILN to the kiln binary (ctest does)}"
KILN=$(realpath "$KILN")
KILN_SOURCE_DIR=${KILN_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TEST_NAME=$(basename "$0" .sh)
# Debian's python3 directly: a pyenv shim first on PATH costs ~0.2 s a call.
PYTHON=$(command -v /usr/bin/python3 || command -v python3) || {
  echo "$TEST_NAME: python3 is missing (run scripts/install-deps.sh --test)" >&2
  exit 1
}

T=$(mktemp -d "${TMPDIR:-/tmp}/kiln-${TEST_NAME}.XXXXXX")
export KILN_CACHE="$T/cache"
# Build records and logs go to the test's own state dir; no GitHub annotations unless a test asks.
export KILN_STATE_DIR="$T/state"
unset SOURCE_DATE_EPOCH XDG_CACHE_HOME XDG_STATE_HOME GITHUB_ACTIONS GITHUB_WORKSPACE
# Counts live in files, so an assertion inside $(...) or a pipeline subshell counts too.
: >"$T/.passes"
: >"$T/.fails"
_START=$SECONDS

_on_err() {
  echo "ERROR: $TEST_NAME: line $1: command failed (exit $2): $3" >&2
}
trap '_on_err "$LINENO" "$?" "$BASH_COMMAND"' ERR

_on_exit() {
  local rc=$?
  # Background jobs a test left behind (kill tests) must not outlive it.
  local p
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  local passed failed
  passed=$(wc -c <"$T/.passes")
  failed=$(wc -c <"$T/.fails")
  if ((rc == 77 && failed == 0)); then
    # skip_test (or a test's own `exit 77`): ctest reports a skip, not a pass or a failure.
    chmod -R u+rwX "$T" 2>/dev/null || true
    rm -rf "$T"
    echo "$TEST_NAME: skipped after $passed passed ($((SECONDS - _START)) s)"
    exit 77
  fi
  if ((rc != 0 && failed == 0)); then failed=1; fi
  if [[ "${KILN_TEST_KEEP:-}" == 1 ]]; then
    echo "$TEST_NAME: kept $T" >&2
  else
    chmod -R u+rwX "$T" 2>/dev/null || true
    rm -rf "$T"
  fi
  echo "$TEST_NAME: $passed passed, $failed failed ($((SECONDS - _START)) s)"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
trap _on_exit EXIT

# ------------------------------------------------------------------------------------------------
# Assertions. Each records one pass or one failure; a failure prints what differed and the test
# goes on (the script still exits 1 at the end).

fail() {
  printf . >>"$T/.fails"
  echo "FAIL: $TEST_NAME: $*" >&2
}
pass() { printf . >>"$T/.passes"; }

# die MSG: a failure after which the rest of the script cannot run.
die() {
  fail "$@"
  exit 1
}

# assert_eq EXPECTED ACTUAL WHAT
assert_eq() {
  if [[ "$1" == "$2" ]]; then
    pass
  else
    fail "$3"$'\n'"  expected: $1"$'\n'"  actual:   $2"
  fi
}

# assert_ne A B WHAT: the two values differ.
assert_ne() {
  if [[ "$1" != "$2" ]]; then
    pass
  else
    fail "$3"$'\n'"  both are: $1"
  fi
}

# assert_contains HAYSTACK NEEDLE WHAT
assert_contains() {
  if [[ "$1" == *"$2"* ]]; then
    pass
  else
    fail "$3"$'\n'"  expected to contain: $2"$'\n'"  actual: $1"
  fi
}

# assert_not_contains HAYSTACK NEEDLE WHAT
assert_not_contains() {
  if [[ "$1" != *"$2"* ]]; then
    pass
  else
    fail "$3"$'\n'"  must not contain: $2"$'\n'"  actual: $1"
  fi
}

# assert_match STRING ERE WHAT
assert_match() {
  if [[ "$1" =~ $2 ]]; then
    pass
  else
    fail "$3"$'\n'"  expected to match: $2"$'\n'"  actual: $1"
  fi
}

# assert_cmd WHAT CMD...: CMD succeeds.
assert_cmd() {
  local what=$1
  shift
  if "$@"; then
    pass
  else
    fail "$what (failed: $*)"
  fi
}

# assert_files_equal FILE_EXPECTED FILE_ACTUAL WHAT: shows a diff when they differ.
assert_files_equal() {
  if cmp -s "$1" "$2"; then
    pass
  else
    fail "$3"$'\n'"$(diff -u "$1" "$2" | head -40)"
  fi
}

# ------------------------------------------------------------------------------------------------
# Running kiln

# kiln ARGS...: runs $KILN. Sets OUT (stdout), ERR (stderr), RC (exit code); never fails itself,
# except that a kiln still running after $KILN_TEST_TIMEOUT seconds (default 400) is killed and
# recorded as a failure with what it printed: a hang shows where it hung, instead of the test
# being killed silently by ctest's timeout.
kiln() {
  RC=0
  local limit=${KILN_TEST_TIMEOUT:-400} start=$SECONDS
  timeout --foreground -k 10 "$limit" "$KILN" "$@" >"$T/.kiln.out" 2>"$T/.kiln.err" || RC=$?
  OUT=$(<"$T/.kiln.out")
  ERR=$(<"$T/.kiln.err")
  if ((RC == 124 || RC == 137)) && ((SECONDS - start >= limit)); then
    fail "kiln $* was still running after $limit s (killed); its stderr ends:"$'\n'"$(tail -n 20 "$T/.kiln.err")"
  fi
}

# build_ok SPEC ARGS...: `kiln build SPEC --json --progress quiet ARGS...` that must succeed
# (dies otherwise). The JSON result is in $OUT.
build_ok() {
  local spec=$1
  shift
  kiln build "$spec" --json --progress quiet "$@"
  if ((RC != 0)); then
    die "kiln build $spec $* exited $RC"$'\n'"$ERR"$'\n'"$OUT"
  fi
}

# jget EXPR [FILE]: evaluates the Python expression EXPR with `j` bound to the JSON document read
# from FILE (default: stdin). Strings print as-is, everything else as JSON.
jget() {
  "$PYTHON" -c '
import json, sys
j = json.load(open(sys.argv[2]) if len(sys.argv) > 2 else sys.stdin)
v = eval(sys.argv[1], {"j": j, "json": json})
print(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
' "$@"
}

# ------------------------------------------------------------------------------------------------
# Trees and files

# make_tree DIR NDIRS FILES_PER_DIR [SALT]: DIR/dNN/fNN.py with deterministic, distinct content.
make_tree() {
  local dir=$1 ndirs=$2 nfiles=$3 salt=${4:-}
  "$PYTHON" - "$dir" "$ndirs" "$nfiles" "$salt" <<'EOF'
import os, sys
root, ndirs, nfiles, salt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for d in range(ndirs):
    p = os.path.join(root, "d%03d" % d)
    os.makedirs(p, exist_ok=True)
    for f in range(nfiles):
        with open(os.path.join(p, "f%03d.py" % f), "w") as fh:
            fh.write("# %s generated file %d/%d\nVALUE = %d\n" % (salt, d, f, d * 1000 + f))
EOF
}

# snapshot DIR: "sha256  ./path" for every regular file, sorted, plus every other entry's type:
# any change to a byte, a new file or a removed one shows.
snapshot() {
  (
    cd "$1"
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    find . ! -type f -printf '%y %p\n' | LC_ALL=C sort
  )
}

# rootfs_listing BUNDLE: "TYPE MODE PATH[ -> TARGET]" of everything in an unpacked rootfs, sorted.
rootfs_listing() {
  (
    cd "$1/rootfs"
    find . -mindepth 1 ! -type l -printf '%y %m %p\n'
    find . -mindepth 1 -type l -printf '%y %m %p -> %l\n'
  ) | LC_ALL=C sort -k3
}

# manifest_json DIR TAG: the manifest tagged TAG in the layout DIR.
manifest_json() {
  local d
  d=$(jget "[m['digest'] for m in j['manifests'] if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == '$2'][0]" "$1/index.json")
  cat "$1/blobs/sha256/${d#sha256:}"
}

# config_json DIR TAG: the image config tagged TAG in the layout DIR.
config_json() {
  local c
  c=$(manifest_json "$1" "$2" | jget "j['config']['digest']")
  cat "$1/blobs/sha256/${c#sha256:}"
}

# blob_path DIR DIGEST
blob_path() { echo "$1/blobs/sha256/${2#sha256:}"; }

# blob_cat FILE: a layer blob, decompressed (gzip, zstd or plain tar).
blob_cat() {
  local magic
  magic=$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')
  case "$magic" in
    1f8b*) gzip -dc "$1" ;;
    28b52ffd) zstd -dcq "$1" ;;
    *) cat "$1" ;;
  esac
}

# oci_validate [--no-unpack] DIR TAG [BUNDLE]: the image tagged TAG in layout DIR passes
# oci-image-tool validate, `umoci unpack` (which checks every digest and diff_id; skipped with
# --no-unpack) and `skopeo inspect`. With zstd layers (which oci-image-tool and umoci do not know)
# only skopeo runs. The unpacked bundle is left in BUNDLE when given. Fatal on failure: nothing
# after it would make sense.
oci_validate() {
  local unpack=1
  if [[ "$1" == --no-unpack ]]; then
    unpack=0
    shift
  fi
  local dir=$1 tag=$2 bundle=${3:-$T/.bundle}
  local log="$T/.validate.log"
  if manifest_json "$dir" "$tag" | grep -q 'tar+zstd'; then
    [[ -z "${3:-}" ]] || die "oci_validate: cannot unpack zstd image $dir:$tag into a bundle"
  else
    # oci-image-tool 1.0.0-rc1 answers "descriptor retrieved by refs [name=X] is not unique" as
    # soon as a layout holds three or more tagged manifests (and rejects a zstd image it was not
    # asked about without --ref): validate a one-image copy of the layout (blobs hardlinked).
    local one="$T/.validate-layout"
    rm -rf "$one"
    mkdir -p "$one/blobs"
    cp -al "$dir/blobs/sha256" "$one/blobs/" 2>/dev/null || cp -a "$dir/blobs/sha256" "$one/blobs/"
    cp "$dir/oci-layout" "$one/oci-layout"
    jget "json.dumps(dict(j, manifests=[m for m in j['manifests'] if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == '$tag']))" \
      "$dir/index.json" >"$one/index.json"
    oci-image-tool validate --type image --ref "name=$tag" "$one" >"$log" 2>&1 ||
      die "oci-image-tool validate rejects $dir:$tag"$'\n'"$(cat "$log")"
    rm -rf "$one"
    if ((unpack)); then
      rm -rf "$bundle"
      local rootless=()
      if [[ $(id -u) -ne 0 ]]; then rootless=(--rootless); fi
      umoci unpack "${rootless[@]}" --image "$dir:$tag" "$bundle" >"$log" 2>&1 ||
        die "umoci unpack rejects $dir:$tag"$'\n'"$(cat "$log")"
      [[ -n "${3:-}" ]] || rm -rf "$bundle"
    fi
  fi
  skopeo inspect "oci:$dir:$tag" >"$log" 2>&1 || die "skopeo inspect rejects oci:$dir:$tag"$'\n'"$(cat "$log")"
  pass
}

# run_entrypoint DIR TAG ROOTFS: runs the image's Entrypoint + Cmd, with its Env and WorkingDir,
# inside ROOTFS (an unpacked bundle's rootfs) under bwrap, as a container runtime would; prints
# what it prints (stdout and stderr). Never fails itself.
run_entrypoint() {
  local cfg
  cfg=$(config_json "$1" "$2")
  local -a argv envs
  mapfile -t argv < <(jget "'\n'.join((j['config'].get('Entrypoint') or []) + (j['config'].get('Cmd') or []))" <<<"$cfg")
  mapfile -t envs < <(jget "'\n'.join(j['config'].get('Env') or [])" <<<"$cfg")
  local -a setenv=()
  local kv
  for kv in "${envs[@]}"; do
    [[ -n "$kv" ]] && setenv+=(--setenv "${kv%%=*}" "${kv#*=}")
  done
  local wd
  wd=$(jget "j['config'].get('WorkingDir') or '/'" <<<"$cfg")
  bwrap --bind "$3" / --proc /proc --dev /dev --tmpfs /tmp --unshare-all --die-with-parent --clearenv \
    --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${setenv[@]}" --chdir "$wd" \
    -- "${argv[@]}" 2>&1 || true
}

# need_tools TOOL...: dies with a clear message when a test tool is missing.
# skip_test WHY: the test cannot run here (a missing optional resource): ctest reports it skipped.
# wait_for_text FILE TEXT: waits (up to 10 s) until FILE holds TEXT (a fixed string); the caller
# asserts what it needs afterwards.
wait_for_text() {
  local _
  for _ in $(seq 200); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 0
}

skip_test() {
  echo "SKIP: $TEST_NAME: $*" >&2
  exit 77
}

need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "missing test tool '$t' (run scripts/install-deps.sh --test)"
  done
}

need_tools sha256sum
