#!/usr/bin/env bash
# Issue 12 §4: a race between the walk and the reads must never bake bytes from outside
# source_root. While ~200 builds run, a background process keeps swapping a directory of the
# project for a symlink to an outside directory, and a file for a symlink to an outside file (both
# holding a canary). Every build either succeeds with the project's own bytes or fails with a
# clear error (exit 2); no layer blob of any build may contain the canary.
source "$(dirname "$0")/lib.sh"

ITER=${KILN_RACE_ITERATIONS:-200}
P="$T/proj"
mkdir -p "$P/src" "$T/outside"
for k in 1 2 3 4 5 6; do
  mkdir -p "$P/src/d$k"
  for i in 1 2 3; do printf 'inside %s %s\n' "$k" "$i" >"$P/src/d$k/f$i.txt"; done
  ln -s "$T/outside" "$P/src/d$k.link"
done
# A bulk walked before the dK (names sort first): the time a walk spends in it is the window
# between checking dK and entering it.
for k in $(seq 10 29); do
  mkdir -p "$P/src/a$k"
  for i in $(seq 1 20); do printf '%s %s\n' "$k" "$i" >"$P/src/a$k/f$i.py"; done
done
printf 'inside g\n' >"$P/src/g.txt"
ln -s "$T/outside/g.txt" "$P/src/g.link"
printf 'print("main")\n' >"$P/src/main.py"
for i in 1 2 3; do printf 'KILN-RACE-CANARY-%s\n' "$i" >"$T/outside/f$i.txt"; done
printf 'KILN-RACE-CANARY-G\n' >"$T/outside/g.txt"
cat >"$P/spec.json" <<JSON
{"name": "race", "source_root": "src", "source_copy_mode": "all", "compression": "none"}
JSON

# The swapper: renameat2(RENAME_EXCHANGE) swaps each directory dK with the symlink dK.link (to the
# outside directory), and g.txt with g.link, atomically: each path is always one or the other.
# Bursts of fast swaps hit the window between a check and a use; the pauses between bursts leave
# a state (a directory, or a symlink) in place long enough for a build to read it, and to finish.
"$PYTHON" - "$P/src" <<'PY' &
import ctypes, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
AT_FDCWD, RENAME_EXCHANGE = -100, 2
rng = random.Random(12)
pairs = [(b"d%d" % k, b"d%d.link" % k) for k in range(1, 7)] + [(b"g.txt", b"g.link")]
while True:
    end = time.monotonic() + rng.uniform(0.001, 0.005)
    while time.monotonic() < end:
        for a, b in pairs:
            if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) != 0:
                sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    for a, b in pairs:
        if rng.random() < 0.5:
            libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
    time.sleep(rng.uniform(0.02, 0.1))
PY
SWAPPER=$!

ok=0 refused=0 changed=0 other=0 leaked=0
for i in $(seq 1 "$ITER"); do
  export KILN_CACHE="$T/cache.$i"  # a fresh store: every build walks, hashes and writes again
  kiln build "$P/spec.json" --progress quiet -o "oci:$T/out.$i"
  case "$RC" in
    0) ok=$((ok + 1)) ;;
    2) refused=$((refused + 1)) ;;
    3) [[ "$ERR" == *"changed while the build read it"* ]] && changed=$((changed + 1)) || { other=$((other + 1)); echo "build $i: exit 3: $ERR" >&2; } ;;
    *) other=$((other + 1)); echo "build $i: exit $RC: $ERR" >&2 ;;
  esac
  if grep -rlq --binary-files=text 'KILN-RACE-CANARY' "$KILN_CACHE" "$T/out.$i" 2>/dev/null; then
    leaked=$((leaked + 1))
    echo "build $i (exit $RC): outside bytes in $(grep -rl --binary-files=text 'KILN-RACE-CANARY' "$KILN_CACHE" "$T/out.$i" | head -3)" >&2
  fi
  rm -rf "$KILN_CACHE" "$T/out.$i"
done
echo "race: $ITER builds: $ok succeeded, $refused refused (exit 2), $changed saw a file change while read (exit 3), $other other, $leaked with outside bytes" >&2
assert_eq 0 "$leaked" "no build stored a byte from outside source_root"
assert_eq 0 "$other" "a build succeeds, is refused (exit 2) or fails its layer on a changed file (exit 3); never a crash or internal error"

# Control: with the swapper paused (whatever state it left: directories or symlinks to the
# outside), builds succeed, and still bake no outside byte (symlinks are stored, not followed).
kill -STOP "$SWAPPER"
for i in 1 2 3; do
  export KILN_CACHE="$T/cache.c$i"
  kiln build "$P/spec.json" --progress quiet -o "oci:$T/out.c$i"
  assert_eq 0 "$RC" "control build $i succeeds on a still tree: $ERR"
  if grep -rlq --binary-files=text 'KILN-RACE-CANARY' "$KILN_CACHE" "$T/out.c$i"; then
    fail "control build $i stored outside bytes"
  else
    pass
  fi
done
{ kill -KILL "$SWAPPER" && wait "$SWAPPER"; } 2>/dev/null || true  # (no "Killed" job notice)
