#!/usr/bin/env bash
# kill -9 at any moment of a build leaves the output layout and the cache consistent: the image
# that was there still validates and unpacks, index.json parses, and no partial blob is visible
# under its digest, in the layout or in the cache. A build after the kills succeeds, and the
# history says which builds were interrupted (none reads as a success).
source "$(dirname "$0")/lib.sh"
need_tools umoci oci-image-tool skopeo

# The first image, L:a: a tree of 400 small files (few, so unpacking it after every kill is
# quick).
P=$T/proj
make_tree "$P" 4 100
echo '{"name": "killme", "source_root": "proj", "source_copy_mode": "all"}' >"$T/spec.json"
L=$T/layout
build_ok "$T/spec.json" -o "oci:$L:a"
DIGEST_A=$(jget "j['digest']" <<<"$OUT")

# The builds to kill: the same tree plus a 128 MB incompressible file (a layer of its own), so a
# build takes a second or two. Each iteration edits a small file and a few bytes of the big one,
# so every build rehashes and rewrites both layers.
head -c $((128 << 20)) /dev/urandom >"$P/big.dat"

# verify_new_blobs DIR...: every blob in the blobs dirs has the sha256 its name says. A blob, once
# checked, is not hashed again while its name and identity (inode, size, mtime) stay the same
# (layout blobs are often hardlinks of cache blobs: one hash for both).
declare -A VERIFIED=()
verify_new_blobs() {
  local dir f id
  for dir in "$@"; do
    [[ -d "$dir" ]] || continue
    for f in "$dir"/*; do
      [[ -f "$f" ]] || continue
      id="$(basename "$f") $(stat -c '%d:%i %s %Y' "$f")"
      [[ -n "${VERIFIED[$id]-}" ]] && continue
      if [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$(basename "$f")" ]]; then
        VERIFIED[$id]=1
      else
        fail "$1: blob $f (size $(stat -c %s "$f")) does not match its name: a partial blob is visible"
        return
      fi
    done
  done
  pass
}

# check_consistent WHEN: the layout and the cache are consistent after WHEN.
check_consistent() {
  # index.json parses, and tag a still names the first image.
  local idx
  idx=$(jget "json.dumps({m['annotations']['org.opencontainers.image.ref.name']: m['digest'] for m in j['manifests']}, sort_keys=True)" "$L/index.json") ||
    die "$1: index.json does not parse"
  assert_eq "$DIGEST_A" "$(jget "j['a']" <<<"$idx")" "$1: tag a still names the first image"
  # The first image still validates and unpacks (umoci checks every digest and diff_id).
  oci_validate "$L" a
  # If tag b got written (the build ended before the kill), its image is complete too. (Unpacked
  # only at the end, with UNPACK_B=1: 128 MB is slow to unpack; its blobs are checked below.)
  if [[ "$(jget "j.get('b', '')" <<<"$idx")" != "" ]]; then
    if [[ "${UNPACK_B:-}" == 1 ]]; then oci_validate "$L" b; else oci_validate --no-unpack "$L" b; fi
  fi
  # No blob under a wrong name, in the layout or the cache.
  verify_new_blobs "$L/blobs/sha256" "$KILN_CACHE/blobs/sha256"
}

check_consistent "the first build"

# edit N: change one small file and a few bytes of the big one.
edit() {
  echo "EDIT = $1" >>"$P/d000/f000.py"
  printf '%08d' "$1" | dd of="$P/big.dat" bs=4096 seek="$1" conv=notrunc status=none
}
# How long one such build takes here (into a scratch layout), so the kill delays spread over the
# build whatever the machine: 3% .. 95% of it, within 0.05 s .. 1.5 s.
edit 0
START=$EPOCHREALTIME
build_ok "$T/spec.json" -o "oci:$T/timing:t"
BUILD_SECONDS=$("$PYTHON" -c "print(round($EPOCHREALTIME - $START, 3))")
assert_eq 2 "$(jget "len(j['layers'])" <<<"$OUT")" "big file in its own layer, small files in another"
DELAYS=$("$PYTHON" -c "print(' '.join('%.2f' % min(1.5, max(0.05, f * $BUILD_SECONDS)) for f in (0.03, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)))")
rm -rf "$T/timing"

tag_b() { jget "([m['digest'] for m in j['manifests'] if m['annotations']['org.opencontainers.image.ref.name'] == 'b'] + [''])[0]" "$L/index.json"; }
KILLED=0
LATE=0 # killed builds that had committed their outputs already (only their record and exit were left)
i=0
for delay in $DELAYS; do
  i=$((i + 1))
  edit "$i"
  before=$(tag_b)
  "$KILN" build "$T/spec.json" -o "oci:$L:b" --progress quiet >/dev/null 2>"$T/kill.err" &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null || true
  st=0
  wait "$pid" 2>/dev/null || st=$? # (2>/dev/null: no "Killed" job notice)
  if ((st == 137)); then
    KILLED=$((KILLED + 1))
    [[ "$(tag_b)" == "$before" ]] || LATE=$((LATE + 1))
  elif ((st != 0)); then
    fail "build $i (killed after ${delay}s) exited $st before the kill: $(cat "$T/kill.err")"
  fi
  check_consistent "kill -9 after ${delay}s"
done
# The history: every build that ended is a success; every killed one that got as far as its record
# (a kill in the first milliseconds may come before it) reads as interrupted (its process is gone,
# and its name lock with it): never as a success, never as still running. The one exception is a
# build killed after it had moved tag b: its outputs were complete, and its success record may
# have been written before the kill.
HIST=$("$KILN" history killme --json)
SUCCESSES=$(jget "len([r for r in j if r['status'] == 'success'])" <<<"$HIST")
if ((SUCCESSES >= 10 - KILLED && SUCCESSES <= 10 - KILLED + LATE)); then pass; else
  fail "history: only the builds that ended (or had committed when killed) are successes: $SUCCESSES successes, $KILLED of 8 killed, $LATE of them after moving tag b"
fi
assert_eq "[]" "$(jget "sorted(set(r['status'] for r in j) - {'success', 'interrupted'})" <<<"$HIST")" "history: the others read as interrupted"
if (($(jget "len([r for r in j if r['status'] == 'interrupted'])" <<<"$HIST") >= KILLED / 2)); then pass; else fail "history: most killed builds are recorded as interrupted"$'\n'"$HIST"; fi
# Most builds must really have been killed mid-way, or this test proves nothing.
if ((KILLED >= 4)); then pass; else fail "only $KILLED of 8 builds were still running when killed (build time ${BUILD_SECONDS}s, delays $DELAYS)"; fi

# A normal build into L:b after all that succeeds, validates, and matches a build from scratch.
build_ok "$T/spec.json" -o "oci:$L:b"
DIGEST_B=$(jget "j['digest']" <<<"$OUT")
UNPACK_B=1 check_consistent "the final build"
assert_eq "$DIGEST_B" "$(jget "[m['digest'] for m in j['manifests'] if m['annotations']['org.opencontainers.image.ref.name'] == 'b'][0]" "$L/index.json")" "tag b names the final build"
KILN_CACHE=$T/fresh-cache build_ok "$T/spec.json" -o "oci:$T/fresh:b"
assert_eq "$DIGEST_B" "$(jget "j['digest']" <<<"$OUT")" "the build after the kills equals a build with a fresh cache"

# ---- concurrent builds into one layout: every tag survives ---------------------------------------
# Six builds of small specs (six image names, so none waits for another), each with its own tag,
# at once into one layout: index.json is updated under a lock, so none of the tags is lost and
# every image validates.
mkdir -p "$T/conc/proj"
echo 'C = 1' >"$T/conc/proj/c.py"
pids=()
for n in 1 2 3 4 5 6; do
  echo "{\"name\": \"conc$n\", \"source_root\": \"proj\", \"source_copy_mode\": \"all\", \"env\": {\"N\": \"$n\"}}" >"$T/conc/spec$n.json"
  "$KILN" build "$T/conc/spec$n.json" --progress quiet -o "oci:$T/conc/L:t$n" >/dev/null 2>"$T/conc/err$n" &
  pids+=($!)
done
for n in 1 2 3 4 5 6; do
  wait "${pids[$((n - 1))]}" || fail "concurrent build $n failed: $(cat "$T/conc/err$n")"
done
assert_eq '["t1", "t2", "t3", "t4", "t5", "t6"]' "$(jget "sorted(m['annotations']['org.opencontainers.image.ref.name'] for m in j['manifests'])" "$T/conc/L/index.json")" "concurrent builds: every tag is in index.json"
for n in 1 2 3 4 5 6; do oci_validate --no-unpack "$T/conc/L" "t$n"; done
echo "$TEST_NAME: $KILLED of 8 builds killed mid-way (a build takes ${BUILD_SECONDS}s; kills after $DELAYS s)" >&2
