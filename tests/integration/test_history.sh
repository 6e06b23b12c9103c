#!/usr/bin/env bash
# Build records: every build, success or failure, is appended to SQLite (WAL) under the state dir
# ($KILN_STATE_DIR, else $XDG_STATE_HOME/kiln); reusing a name adds records and deletes none;
# `kiln history`, `kiln show` (and --log), `kiln diff` naming the changed spec field and layer; a
# build killed mid-way reads as interrupted; and a push that moves an existing remote tag says so in
# the log and the record, keeping the old digest, so a rollback is one push by digest.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools skopeo seq

W=$T/ws
mkdir -p "$W/app"
make_tree "$W/app" 2 5 hist
echo '{"name": "hist-app", "source_root": "app", "source_copy_mode": "all", "env": {"MODE": "one"}}' >"$W/spec.json"

# ---- a first build, recorded ---------------------------------------------------------------------
build_ok "$W/spec.json" -o "oci:$T/out"
ID1=$(jget "j['build_id']" <<<"$OUT")
D1=$(jget "j['digest']" <<<"$OUT")
LOG1=$(jget "j['log_path']" <<<"$OUT")
assert_eq "$KILN_STATE_DIR/logs/$ID1.log" "$LOG1" "the log is under the state dir, named by the build id"
assert_match "$ID1" '^[0-9A-HJKMNP-TV-Z]{26}$' "the build id is 26 Crockford base32 characters"
assert_eq wal "$("$PYTHON" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode").fetchone()[0])' "$KILN_STATE_DIR/builds.db")" \
  "the database is in WAL mode"
kiln show "$ID1" --json
REC1=$OUT
assert_eq "hist-app|hist-app|success|$D1|$(jget "j['tag']" <<<"$REC1")" \
  "$(jget "'|'.join([j['name'], j['repository'], j['status'], j['image_digest'], j['tag']])" <<<"$REC1")" "show --json: name, status, image digest"
assert_match "$(jget "j['spec_digest'] + ' ' + j['inputs_digest']" <<<"$REC1")" '^sha256:[0-9a-f]{64} sha256:[0-9a-f]{64}$' "show --json: spec and inputs digests"
assert_eq '{"MODE": "one"}' "$(jget "j['spec']['env']" <<<"$REC1")" "the record keeps the canonical spec"
assert_eq "1 source_root (10 files)" "$(jget "str(len(j['layers'])) + ' ' + j['layers'][0]['label']" <<<"$REC1")" "the record keeps the layer list"
assert_eq "[\"oci:$T/out\"]" "$(jget "j['outputs']" <<<"$REC1")" "the record keeps the outputs"
assert_eq true "$(jget "j['timings']['total'] > 0 and j['finished_ms'] >= j['started_ms']" <<<"$REC1")" "the record keeps timings"
kiln show "$ID1" --log
assert_contains "$OUT" "built hist-app:" "show --log prints the build's log"
kiln show "$ID1"
assert_contains "$OUT" "status:         success" "show: a readable summary"
kiln show "${ID1:0:24}" --json
assert_eq "$ID1" "$(jget "j['id']" <<<"$OUT")" "show takes a unique id prefix"
kiln show 0000000000 --json
assert_eq 5 "$RC" "show of an unknown id: exit 5"

# ---- the name reused: a new record, the old one untouched -------------------------------------------
echo '{"name": "hist-app", "source_root": "app", "source_copy_mode": "all", "env": {"MODE": "two"}}' >"$W/spec.json"
echo 'CHANGED = True' >>"$W/app/d001/f002.py"
kiln build "$W/spec.json" --json -o "oci:$T/out" --progress plain
assert_eq 0 "$RC" "the name reused: the build just runs (nothing asked)"
assert_not_contains "$ERR" "waiting" "the name reused: no wait (no build of it is running)"
ID2=$(jget "j['build_id']" <<<"$OUT")
D2=$(jget "j['digest']" <<<"$OUT")
assert_ne "$D1" "$D2" "the second build is another image"
# A failed build of the same name is recorded too.
echo '{"name": "hist-app", "source_root": "app", "sorce_copy_mode": "all"}' >"$W/spec-bad.json"
kiln build "$W/spec-bad.json" --json --progress quiet
assert_eq 2 "$RC" "a failed build"
ID3=$(jget "j['build_id']" <<<"$OUT")
kiln history hist-app --json
assert_eq "$ID3 $ID2 $ID1" "$(jget "' '.join(r['id'] for r in j)" <<<"$OUT")" "history NAME: every record, newest first"
assert_eq "failed success success" "$(jget "' '.join(r['status'] for r in j)" <<<"$OUT")" "history NAME: statuses"
assert_eq "$D1" "$(jget "j[2]['image_digest']" <<<"$OUT")" "the first record still has its own digest"
assert_contains "$(jget "j[0]['message']" <<<"$OUT")" "sorce_copy_mode" "the failed record keeps its message"
kiln history hist-app
assert_eq 4 "$(wc -l <<<"$OUT")" "history NAME: a header and three rows"
assert_match "$(sed -n 2p <<<"$OUT")" "^$ID3 .* failed \(2\)" "history: the failed build's row"
kiln history -n 1 --json
assert_eq 1 "$(jget "len(j)" <<<"$OUT")" "history -n 1"
kiln history no-such-name --json
assert_eq "0 []" "$RC $OUT" "history of an unknown name: empty"

# ---- kiln diff names the changed field and layer ----------------------------------------------------
kiln diff "$ID1" "$ID2" --json
assert_eq 0 "$RC" "diff exits 0"
assert_eq '["one", "two"]' "$(jget "[[c['before'], c['after']] for c in j['changes'] if c['field'] == 'spec.env.MODE'][0]" <<<"$OUT")" \
  "diff: the changed spec field, before and after"
assert_eq "source_root (10 files) source_root (10 files)" \
  "$(jget "' '.join(c[k]['label'] for c in j['changes'] if c['field'] == 'layers[0]' for k in ('before', 'after'))" <<<"$OUT")" \
  "diff: the changed layer, named"
assert_eq "$D1 $D2" "$(jget "' '.join(c[k] for c in j['changes'] if c['field'] == 'image_digest' for k in ('before', 'after'))" <<<"$OUT")" \
  "diff: the image digests"
assert_eq "[]" "$(jget "[c['field'] for c in j['changes'] if c['field'] in ('spec.source_root', 'spec.compression', 'name')]" <<<"$OUT")" \
  "diff: unchanged fields are not listed"
kiln diff "$ID1" "$ID2"
assert_contains "$OUT" "spec.env.MODE: one → two" "diff (text): the field"
assert_match "$OUT" "layers\[0\]: sha256:[0-9a-f]{12}… source_root \(10 files\) → sha256:" "diff (text): the layer"
kiln diff "$ID1" "$ID1" --json
assert_eq "[]" "$(jget "j['changes']" <<<"$OUT")" "diff of a build with itself: no change"

# ---- a build killed mid-way reads as interrupted; the next one runs --------------------------------------
mkdir -p "$W/big"
seq 1 16000000 >"$W/big/data.txt"
echo '{"name": "hist-big", "source_root": "big", "source_copy_mode": "all"}' >"$W/big.json"
"$KILN" build "$W/big.json" --progress plain >/dev/null 2>"$T/big.err" &
pid=$!
for ((i = 0; i < 3000; i++)); do
  grep -q "large file data.txt (" "$T/big.err" && break
  sleep 0.01
done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
kiln history hist-big --json
assert_eq interrupted "$(jget "j[0]['status']" <<<"$OUT")" "a killed build reads as interrupted"
assert_contains "$(cat "$(jget "j[0]['log_path']" <<<"$OUT")")" "large file data.txt" "a killed build's log has what it did"
kiln build "$W/big.json" --json --progress plain
assert_eq 0 "$RC" "after the kill, the next build of the name runs"
assert_not_contains "$ERR" "waiting" "after the kill, no wait: the dead build's lock went with it"
kiln history hist-big --json
assert_eq "success interrupted" "$(jget "' '.join(r['status'] for r in j)" <<<"$OUT")" "history: the rebuild and the interrupted build"
rm -rf "$W/big"

# ---- XDG_STATE_HOME is the default place ------------------------------------------------------------
(
  unset KILN_STATE_DIR
  export XDG_STATE_HOME=$T/xdg
  "$KILN" build "$W/spec.json" --progress quiet >/dev/null
)
[[ -f "$T/xdg/kiln/builds.db" ]] && pass || fail "without KILN_STATE_DIR, the records go to \$XDG_STATE_HOME/kiln"

# ---- a push that moves a remote tag: said in the log and kept in the record ---------------------------
start_registry plain
echo "{\"name\": \"hist-push\", \"registry\": \"$REG_ADDR\", \"source_root\": \"app\", \"source_copy_mode\": \"all\"}" >"$W/push.json"
kiln tag "$W/push.json"
IMAGE=$OUT
# Someone else's image is under that tag already (pushed here with skopeo).
echo '{"name": "other", "source_root": "app", "source_copy_mode": "all", "env": {"OTHER": "1"}}' >"$W/other.json"
build_ok "$W/other.json" -o "oci:$T/other:o"
P1=$(jget "j['digest']" <<<"$OUT")
skopeo copy --quiet --dest-tls-verify=false "oci:$T/other:o" "docker://$IMAGE" >/dev/null 2>"$T/skopeo.err" ||
  die "skopeo copy to $IMAGE failed: $(cat "$T/skopeo.err")"
# kiln pushes its image to the tag (--force: the tag exists), moving it.
kiln build "$W/push.json" --json --progress plain --force
assert_eq 0 "$RC" "the push that moves the tag"$'\n'"$ERR"
P2=$(jget "j['digest']" <<<"$OUT")
ID_MOVE=$(jget "j['build_id']" <<<"$OUT")
assert_ne "$P1" "$P2" "the pushed image is another digest"
assert_eq "$P1" "$(jget "j['pushed']['previous_digest']" <<<"$OUT")" "--json: pushed.previous_digest"
assert_contains "$ERR" "moved from $P1 to $P2" "the moved tag is said on stderr"
assert_contains "$(cat "$(jget "j['log_path']" <<<"$OUT")")" "moved from $P1 to $P2; roll back with a push of the old digest" "and in the build's log"
kiln show "$ID_MOVE" --json
assert_eq "$P1" "$(jget "j['tag_moved_from']" <<<"$OUT")" "the record keeps the old digest"
assert_eq "[\"$IMAGE@$P2\"]" "$(jget "j['pushed']" <<<"$OUT")" "the record keeps the pushed reference"
kiln history hist-push
assert_match "$(sed -n 2p <<<"$OUT")" "success \(tag moved\)" "history shows the tag move"
# The rollback: one push of the old digest to the tag.
skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false "docker://${IMAGE%:*}@$P1" "docker://$IMAGE" >/dev/null 2>"$T/skopeo.err" ||
  fail "rollback by digest failed: $(cat "$T/skopeo.err")"
assert_eq "$P1" "$(skopeo inspect --tls-verify=false "docker://$IMAGE" | jget "j['Digest']")" "rollback: the tag names the old digest again"
