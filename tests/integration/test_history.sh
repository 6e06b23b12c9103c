#!/usr/bin/env bash
# Build records: every build, success or failure, is appended to SQLite (WAL) under the state dir
# ($KILN_STATE_DIR, else $XDG_STATE_HOME/kiln); reusing a name adds records and deletes none;
# `kiln history`, `kiln show` (and --log), `kiln diff` naming the changed spec field and layer; a
# build killed mid-way reads as interrupted; and a push that moves an existing remote tag says so in
# the log and the record, keeping the old digest, so a rollback is one push by digest. A tag that
# exists in the registry skips the build but still writes every -o output (from the registry's
# image) and --image-refs, or fails; `kiln push` and `kiln modelcar` are recorded like builds (kind
# push / modelcar), with the tag they moved.
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

# ---- the tag exists: nothing is built, but every requested output is still written ------------------
echo "{\"name\": \"hist-exists\", \"registry\": \"$REG_ADDR\", \"source_root\": \"app\", \"source_copy_mode\": \"all\"}" >"$W/exists.json"
build_ok "$W/exists.json"
EX_DIGEST=$(jget "j['digest']" <<<"$OUT")
EX_TAG=$(jget "j['tag']" <<<"$OUT")
# Another machine: a fresh cache, so the image can only come from the registry.
kiln build "$W/exists.json" --json --progress plain --cache "$T/cache-exists" \
  -o "oci:$T/ex" -o "docker-archive:$T/ex.tar" --image-refs "$T/ex-refs.txt"
assert_eq 0 "$RC" "exists with outputs: exit 0"$'\n'"$ERR"
assert_eq "exists $EX_DIGEST" "$(jget "j['status'] + ' ' + j['digest']" <<<"$OUT")" "exists with outputs: status exists, the registry's digest"
assert_eq "oci:$T/ex $EX_DIGEST docker-archive:$T/ex.tar $EX_DIGEST" \
  "$(jget "' '.join(o['target'] + ' ' + o['digest'] for o in j['outputs'])" <<<"$OUT")" "exists with outputs: both outputs written, with the digest"
assert_contains "$ERR" "the outputs get the registry's image" "exists with outputs: said on stderr"
assert_eq "$EX_DIGEST" "$(jget "[m['digest'] for m in j['manifests'] if m['annotations']['org.opencontainers.image.ref.name'] == '$EX_TAG'][0]" "$T/ex/index.json")" \
  "exists with outputs: the layout's tag names the registry's digest"
oci_validate --no-unpack "$T/ex" "$EX_TAG"
if layout_blobs_ok "$T/ex"; then pass; else fail "exists with outputs: the layout's blobs match their digests"; fi
skopeo inspect "docker-archive:$T/ex.tar" >"$T/ex-tar.json" 2>"$T/skopeo.err" || fail "skopeo reads the archive: $(cat "$T/skopeo.err")"
assert_eq "$REG_ADDR/hist-exists:$EX_TAG@$EX_DIGEST" "$(cat "$T/ex-refs.txt")" "exists: --image-refs gets the reference too"
kiln show "$(jget "j['build_id']" <<<"$OUT")" --json
assert_eq "exists [\"docker-archive:$T/ex.tar\", \"oci:$T/ex\"]" "$(jget "j['status'] + ' ' + json.dumps(j['outputs'])" <<<"$OUT")" \
  "exists with outputs: the record keeps the outputs, in commit order (archives, then layout tags)"
# An output that cannot be written fails the run: never exit 0 with an output skipped.
touch "$T/not-a-dir"
kiln build "$W/exists.json" --json --progress quiet --cache "$T/cache-exists" -o "oci:$T/not-a-dir/layout"
assert_ne 0 "$RC" "exists with an unwritable output: not exit 0"
assert_eq "failed output oci:$T/not-a-dir/layout" "$(jget "j['status'] + ' ' + j['failed_step']" <<<"$OUT")" \
  "exists with an unwritable output: the output step failed"

# ---- kiln push is recorded like a build, with the tag it moved ------------------------------------
echo '{"name": "other", "source_root": "app", "source_copy_mode": "all", "env": {"OTHER": "2"}}' >"$W/other2.json"
build_ok "$W/other2.json" -o "oci:$T/other:o2"
P3=$(jget "j['digest']" <<<"$OUT")
kiln push "oci:$T/other:o" "$REG_ADDR/hist-layout:v1" --json --progress quiet
assert_eq 0 "$RC" "kiln push"$'\n'"$ERR"
PUSH_ID1=$(jget "j['build_id']" <<<"$OUT")
kiln push "oci:$T/other:o2" "$REG_ADDR/hist-layout:v1" --json --progress plain
assert_eq 0 "$RC" "kiln push that moves the tag"
PUSH_ID2=$(jget "j['build_id']" <<<"$OUT")
assert_contains "$ERR" "moved from $P1 to $P3" "kiln push: the moved tag is said"
kiln history "$REG_ADDR/hist-layout" --json
assert_eq "$PUSH_ID2 $PUSH_ID1" "$(jget "' '.join(r['id'] for r in j)" <<<"$OUT")" "kiln push: both pushes in the history"
assert_eq "push push success success" "$(jget "' '.join([r['kind'] for r in j] + [r['status'] for r in j])" <<<"$OUT")" \
  "kiln push: recorded as pushes, succeeded"
assert_eq "$P1 $P3 None" "$(jget "' '.join([j[0]['tag_moved_from'], j[0]['image_digest'], str(j[1]['tag_moved_from'])])" <<<"$OUT")" \
  "kiln push: the second record keeps the digest the tag moved from"
assert_eq "[\"$REG_ADDR/hist-layout:v1@$P3\"] oci:$T/other:o2" "$(jget "json.dumps(j[0]['pushed']) + ' ' + j[0]['spec_path']" <<<"$OUT")" \
  "kiln push: the record keeps the pushed reference and the source"
assert_contains "$(cat "$(jget "j[0]['log_path']" <<<"$OUT")")" "pushed $REG_ADDR/hist-layout:v1@$P3" "kiln push: the push has a log"
kiln show "$PUSH_ID2"
assert_contains "$OUT" "push $PUSH_ID2" "kiln show: a push says it is one"
assert_contains "$OUT" "source:         oci:$T/other:o2" "kiln show: and names its source"
kiln push "oci:$T/other:nope" "$REG_ADDR/hist-layout:v1" --json --progress quiet
assert_eq 5 "$RC" "kiln push of a missing tag: exit 5"
kiln show "$(jget "j['build_id']" <<<"$OUT")" --json
assert_eq "push failed 5 source" "$(jget "' '.join(str(j[k]) for k in ('kind', 'status', 'exit_code', 'failed_step'))" <<<"$OUT")" \
  "kiln push: a failed push is recorded"

# ---- kiln modelcar is recorded like a build, with the tag it moved -----------------------------------
mkdir -p "$W/model"
echo '{"w": 1}' >"$W/model/config.json"
kiln modelcar "$W/model" --base scratch --volume-only --push "$REG_ADDR/hist-mc:v1" -o "oci:$T/mc" --json --progress quiet
assert_eq 0 "$RC" "kiln modelcar"$'\n'"$ERR"
MC1=$(jget "j['digest']" <<<"$OUT")
echo '{"w": 2}' >"$W/model/config.json"
kiln modelcar "$W/model" --base scratch --volume-only --push "$REG_ADDR/hist-mc:v1" --json --progress quiet
assert_eq 0 "$RC" "kiln modelcar, the model changed"
MC2=$(jget "j['digest']" <<<"$OUT")
MC_ID2=$(jget "j['build_id']" <<<"$OUT")
kiln history "$REG_ADDR/hist-mc" --json
assert_eq "$MC_ID2 modelcar modelcar success success" "$(jget "' '.join([j[0]['id']] + [r['kind'] for r in j] + [r['status'] for r in j])" <<<"$OUT")" \
  "kiln modelcar: both builds in the history, as modelcars"
assert_eq "$MC1 $MC2" "$(jget "j[0]['tag_moved_from'] + ' ' + j[0]['image_digest']" <<<"$OUT")" "kiln modelcar: the record keeps the tag move"
assert_eq "[\"oci:$T/mc\"] $W/model" "$(jget "json.dumps(j[1]['outputs']) + ' ' + j[1]['spec_path']" <<<"$OUT")" \
  "kiln modelcar: the record keeps the outputs and the model directory"
