#!/usr/bin/env bash
# Several kiln processes at once on one store and one layout. Two builds of different images that
# share a 100+ MB layer: the layer is written once (the second process waits on the layer's lock,
# then takes it from the cache), both tags land in the layout, and everything validates. Builds of
# the same image name: the second one says so and waits (or, with --no-wait, fails with exit 6), and
# both are recorded. Many builds into one layout at once: every tag survives.
source "$(dirname "$0")/lib.sh"
need_tools seq flock oci-image-tool skopeo

W=$T/ws
mkdir -p "$W/big"
L=$T/layout

# ---- one shared layer, two processes: written once ------------------------------------------------
# The images differ (env) but their layers are the same. The runs are retried (with new content)
# until the two really overlapped, i.e. one of them had to wait for the other's layer.
OVERLAP=0
for attempt in 1 2 3; do
  seq "$attempt" 16000000 >"$W/big/data.txt"
  for n in a b; do
    echo "{\"name\": \"conc-$n\", \"source_root\": \"big\", \"source_copy_mode\": \"all\", \"env\": {\"WHO\": \"$n\"}}" >"$W/$n.json"
  done
  "$KILN" build "$W/a.json" --json --progress plain -o "oci:$L" >"$T/a.out" 2>"$T/a.err" &
  pa=$!
  "$KILN" build "$W/b.json" --json --progress plain -o "oci:$L" >"$T/b.out" 2>"$T/b.err" &
  pb=$!
  ra=0 rb=0
  wait "$pa" || ra=$?
  wait "$pb" || rb=$?
  assert_eq "0 0" "$ra $rb" "attempt $attempt: both concurrent builds succeed"$'\n'"$(cat "$T/a.err" "$T/b.err")"
  # Exactly one of them wrote the big layer; the other found it in the cache.
  MISSES=$(cat "$T/a.out" "$T/b.out" | "$PYTHON" -c '
import json, sys
dec, text, n, pos = json.JSONDecoder(), sys.stdin.read(), 0, 0
while pos < len(text.rstrip()):
    j, pos = dec.raw_decode(text, pos)
    while pos < len(text) and text[pos].isspace(): pos += 1
    n += sum(1 for l in j["layers"] if l["cache"] == "miss")
print(n)')
  assert_eq 1 "$MISSES" "attempt $attempt: the shared layer was written once, not by both"
  if grep -q "another build is writing it; waiting" "$T/a.err" "$T/b.err"; then
    OVERLAP=1
    break
  fi
done
if ((OVERLAP)); then pass; else fail "in 3 attempts, the two builds never overlapped on the layer (no wait seen)"; fi
TAGS=$(jget "sorted(m['annotations']['org.opencontainers.image.ref.name'] for m in j['manifests'])" "$L/index.json")
for n in a b; do
  tag=$(jget "j['tag']" "$T/$n.out")
  assert_contains "$TAGS" "\"$tag\"" "the layout has conc-$n's tag"
  oci_validate --no-unpack "$L" "$tag"
done
# Nothing was left behind in the cache's tmp, and every blob is what its name says.
assert_eq 0 "$(find "$KILN_CACHE/tmp" -type f | wc -l)" "no temp file left in the cache"
for f in "$KILN_CACHE"/blobs/sha256/* "$L"/blobs/sha256/*; do
  [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$(basename "$f")" ]] || fail "blob $f does not match its name"
done
pass
rm -rf "$W/big"

# ---- the same image name: the second build waits (or fails with --no-wait) --------------------------
mkdir -p "$W/app"
make_tree "$W/app" 2 3 same
echo '{"name": "conc-same", "source_root": "app", "source_copy_mode": "all"}' >"$W/same.json"
LOCK=$KILN_STATE_DIR/locks/conc-same.lock
mkdir -p "$(dirname "$LOCK")"
# Another process "builds" conc-same (holding its lock, as a kiln build does) until told to stop:
# no timing assumption, so a loaded machine cannot let the lock go before the second build asks.
flock "$LOCK" sh -c 'while [ ! -e "$1" ]; do sleep 0.05; done' sh "$T/release" &
holder=$!
for _ in $(seq 600); do flock -n "$LOCK" true || break; sleep 0.05; done
kiln build "$W/same.json" --json --progress quiet --no-wait
assert_eq 6 "$RC" "--no-wait while another build of the name runs: exit 6"
assert_eq "transient busy" "$(jget "j['error_class'] + ' ' + j['error_kind']" <<<"$OUT")" "--no-wait: transient, busy"
assert_contains "$(jget "j['message']" <<<"$OUT")" "is building conc-same right now" "--no-wait: the message says why"
"$KILN" build "$W/same.json" --json --progress quiet >"$T/w.out" 2>"$T/w.err" &
waiter=$!
for _ in $(seq 600); do grep -q "waiting for it to finish" "$T/w.err" && break; sleep 0.1; done
WAITING=no
kill -0 "$waiter" 2>/dev/null && WAITING=yes  # still blocked on the lock when it is released
touch "$T/release"
RC=0
wait "$waiter" || RC=$?
wait "$holder"
assert_eq 0 "$RC" "without --no-wait: the build waits, then succeeds"
assert_contains "$(<"$T/w.err")" "is building conc-same right now; waiting for it to finish" "the wait is reported"
assert_eq yes "$WAITING" "the build really waited for the other one"
# Two real kiln builds of the name at once: both succeed, one after the other, both recorded.
"$KILN" build "$W/same.json" --json --progress plain -o "oci:$T/same" >"$T/s1.out" 2>"$T/s1.err" &
p1=$!
"$KILN" build "$W/same.json" --json --progress plain -o "oci:$T/same" >"$T/s2.out" 2>"$T/s2.err" &
p2=$!
r1=0 r2=0
wait "$p1" || r1=$?
wait "$p2" || r2=$?
assert_eq "0 0" "$r1 $r2" "two builds of one name at once: both succeed"
assert_eq "$(jget "j['digest']" "$T/s1.out")" "$(jget "j['digest']" "$T/s2.out")" "two builds of one name: the same image"
kiln history conc-same --json
assert_eq "success success success failed" "$(jget "' '.join(r['status'] for r in j)" <<<"$OUT")" "every build of the name is recorded"

# ---- many builds into one layout at once: every tag survives --------------------------------------------
pids=()
for n in 1 2 3 4 5 6; do
  echo "{\"name\": \"many$n\", \"source_root\": \"app\", \"source_copy_mode\": \"all\", \"env\": {\"N\": \"$n\"}}" >"$W/many$n.json"
  "$KILN" build "$W/many$n.json" --progress quiet -o "oci:$T/many" >/dev/null 2>"$T/many$n.err" &
  pids+=($!)
done
for n in 1 2 3 4 5 6; do
  wait "${pids[$((n - 1))]}" || fail "concurrent build $n failed: $(cat "$T/many$n.err")"
done
assert_eq 6 "$(jget "len(j['manifests'])" "$T/many/index.json")" "six concurrent builds: six tags in index.json"
assert_eq '["many1", "many2", "many3", "many4", "many5", "many6"]' \
  "$("$KILN" history --json | jget "sorted(r['name'] for r in j if r['name'].startswith('many') and r['status'] == 'success')")" \
  "six concurrent builds: six records"
