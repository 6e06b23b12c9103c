#!/usr/bin/env bash
# Issue 12 §4: a race between the walk and the reads must never bake bytes from outside
# source_root. While ~200 builds run, a background process keeps swapping a directory of the
# project for a symlink to an outside directory, and a file for a symlink to an outside file (both
# holding a canary). Every build either succeeds with the project's own bytes or fails with a
# clear error (exit 2); no layer blob of any build may contain the canary.
source "$(dirname "$0")/lib.sh"

ITER=${KILN_RACE_ITERATIONS:-200}
P="$T/proj"
mkdir -p "$P/src/d" "$T/outside"
for i in $(seq 1 20); do printf 'inside %s\n' "$i" >"$P/src/d/f$i.txt"; done
printf 'inside g\n' >"$P/src/g.txt"
printf 'print("main")\n' >"$P/src/main.py"
for i in $(seq 1 20); do printf 'KILN-RACE-CANARY-%s\n' "$i" >"$T/outside/f$i.txt"; done
printf 'KILN-RACE-CANARY-G\n' >"$T/outside/g.txt"
cat >"$P/spec.json" <<JSON
{"name": "race", "source_root": "src", "source_copy_mode": "all", "compression": "none"}
JSON

# The swapper: renameat2(RENAME_EXCHANGE) swaps a directory and a symlink (and a file and a
# symlink) atomically, over and over, so each path is always one or the other.
ln -s "$T/outside" "$P/src/d.link"
ln -s "$T/outside/g.txt" "$P/src/g.link"
"$PYTHON" - "$P/src" <<'PY' &
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
AT_FDCWD, RENAME_EXCHANGE = -100, 2
while True:
    if libc.renameat2(AT_FDCWD, b"d", AT_FDCWD, b"d.link", RENAME_EXCHANGE) != 0:
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    libc.renameat2(AT_FDCWD, b"g.txt", AT_FDCWD, b"g.link", RENAME_EXCHANGE)
PY
SWAPPER=$!

ok=0 refused=0 other=0 leaked=0
for i in $(seq 1 "$ITER"); do
  export KILN_CACHE="$T/cache.$i"  # a fresh store: every build walks, hashes and writes again
  kiln build "$P/spec.json" --progress quiet -o "oci:$T/out.$i"
  case "$RC" in
    0) ok=$((ok + 1)) ;;
    2) refused=$((refused + 1)) ;;
    *) other=$((other + 1)); echo "build $i: exit $RC: $ERR" >&2 ;;
  esac
  if grep -rlq --binary-files=text 'KILN-RACE-CANARY' "$KILN_CACHE" "$T/out.$i" 2>/dev/null; then
    leaked=$((leaked + 1))
    echo "build $i (exit $RC): outside bytes in $(grep -rl --binary-files=text 'KILN-RACE-CANARY' "$KILN_CACHE" "$T/out.$i" | head -3)" >&2
  fi
  rm -rf "$KILN_CACHE" "$T/out.$i"
done
kill "$SWAPPER" 2>/dev/null || true
wait "$SWAPPER" 2>/dev/null || true

echo "race: $ITER builds: $ok succeeded, $refused refused (exit 2), $other other, $leaked with outside bytes" >&2
assert_eq 0 "$leaked" "no build stored a byte from outside source_root"
assert_eq 0 "$other" "a build either succeeds or is refused with exit 2 (never a crash or internal error)"
if ((ok == 0)); then fail "no build succeeded at all: the race test proves nothing"; else pass; fi
