#!/usr/bin/env bash
# kiln in CI. Every exit code provoked for real: 0 success, 1 internal (a cache path under a regular
# file), 2 spec error, 3 a build step failed (a file that changes while its layer is written), 4 bad
# credentials, 5 a base that is not in the registry, 6 a registry nobody listens on, 7 a pull-only
# token pushing (in the preflight, and at the push itself with --skip-preflight), 8 a registry whose
# stored layer blob, then manifest, was altered on disk (content that does not match its digest). Each --json failure
# object names the real cause: status, exit_code, error_class, failed_step, step_exit_code, message,
# log_path, log_tail (the log ends with the cause), and each is in the build history. Under
# GITHUB_ACTIONS, `::error file=…,line=…::` annotations point at the spec. Several specs in one call:
# one store, --jobs, a summary table, --keep-going vs --fail-fast (cancelled builds are failures,
# never successes, and move no tag).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools seq skopeo

W=$T/ws
mkdir -p "$W/app"
make_tree "$W/app" 2 3 ci
echo '{"name": "ci-ok", "source_root": "app", "source_copy_mode": "all"}' >"$W/ok.json"
echo '{"name": "ci-ok2", "source_root": "app", "source_copy_mode": "all", "env": {"B": "2"}}' >"$W/ok2.json"
printf '{"name": "ci-bad",\n "env": ["A=1"]}\n' >"$W/bad.json"

# history_json: the build records, as `kiln history --json` prints them.
history_json() { "$KILN" history --json "$@"; }

# check_failure WHAT CODE CLASS STEP_PREFIX MESSAGE_PART: the last `kiln … --json` run ($OUT, $RC)
# failed with exit CODE, and its failure object and history record name the cause.
check_failure() {
  local what=$1 code=$2 class=$3 step=$4 part=$5
  assert_eq "$code" "$RC" "$what: exit $code"$'\n'"$ERR"
  assert_eq "failed|$code|$class" "$(jget "'|'.join(str(j[k]) for k in ('status', 'exit_code', 'error_class'))" <<<"$OUT")" \
    "$what: status, exit_code, error_class"
  assert_match "$(jget "str(j['failed_step'])" <<<"$OUT")" "^$step" "$what: failed_step"
  assert_eq None "$(jget "str(j['step_exit_code'])" <<<"$OUT")" "$what: step_exit_code is null (no step ran a command)"
  assert_contains "$(jget "j['message']" <<<"$OUT")" "$part" "$what: the message names the cause"
  local log id
  log=$(jget "j['log_path']" <<<"$OUT")
  id=$(jget "j['build_id']" <<<"$OUT")
  if [[ -f "$log" && "$log" == "$KILN_STATE_DIR/logs/$id.log" ]]; then pass; else fail "$what: log_path $log is the build's log file"; fi
  # The log's tail ends with the cause, not a later symptom.
  assert_contains "$(jget "j['log_tail'][-1]" <<<"$OUT")" "$(jget "j['message']" <<<"$OUT")" "$what: log_tail ends with the cause"
  assert_eq "$(jget "j['log_tail']" <<<"$OUT")" "$(tail -n 20 "$log" | "$PYTHON" -c 'import json, sys; print(json.dumps(sys.stdin.read().splitlines(), sort_keys=True))')" \
    "$what: log_tail is the log file's last lines"
  # The history has the failure, with the same cause.
  local rec
  rec=$("$KILN" show "$id" --json)
  assert_eq "failed|$code|$class|$(jget "j['failed_step']" <<<"$OUT")" \
    "$(jget "'|'.join(str(j[k]) for k in ('status', 'exit_code', 'error_class', 'failed_step'))" <<<"$rec")" \
    "$what: the history records the failure"
}

# ---- 0: success --------------------------------------------------------------------------------
build_ok "$W/ok.json" -o "oci:$T/out"
OK_DIGEST=$(jget "j['digest']" <<<"$OUT")
OK_ID=$(jget "j['build_id']" <<<"$OUT")
assert_eq "success $OK_DIGEST" "$("$KILN" show "$OK_ID" --json | jget "j['status'] + ' ' + j['image_digest']")" "0: the build is recorded"

# ---- 1: internal (an unexpected system failure: the cache cannot be created) --------------------
touch "$T/a-file"
kiln build "$W/ok.json" --json --progress quiet --cache "$T/a-file/cache"
check_failure "1 (cache under a regular file)" 1 permanent cache "Not a directory"

# ---- 2: a spec error, with the field ------------------------------------------------------------
kiln build "$W/bad.json" --json --progress quiet
check_failure "2 (bad spec)" 2 permanent spec "field 'env' must be an object"
assert_eq env "$(jget "j['field']" <<<"$OUT")" "2: the field is named"
# A bad command line is 2 too (no build, no record).
kiln build "$W/ok.json" --fail-fast --keep-going
assert_eq 2 "$RC" "2: --fail-fast with --keep-going is a usage error"

# ---- 3: a build step fails: a file changes while its layer is being written -----------------------
# data.txt (100+ MB of numbers: compressible, so gzip takes a second) gets a layer of its own; as
# soon as kiln starts that layer, the file grows. kiln notices when it has read the file, and the
# layer step fails (exit 3), never storing a layer made of a half-old, half-new file. (The timing
# is retried with a bigger file should a fast machine finish the layer first.)
mkdir -p "$W/grow"
echo '{"name": "ci-grow", "source_root": "grow", "source_copy_mode": "all"}' >"$W/grow.json"
GROW_RC=0
for lines in 16000000 24000000 32000000; do
  seq 1 "$lines" >"$W/grow/data.txt"
  RECORDS_BEFORE=$(find "$KILN_CACHE/layers" -type f | wc -l)
  "$KILN" build "$W/grow.json" --json --progress plain >"$T/grow.out" 2>"$T/grow.err" &
  pid=$!
  for ((i = 0; i < 3000; i++)); do
    grep -q "large file data.txt (" "$T/grow.err" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  echo 'one more line' >>"$W/grow/data.txt"
  GROW_RC=0
  wait "$pid" || GROW_RC=$?
  ((GROW_RC == 0)) || break
done
RC=$GROW_RC OUT=$(<"$T/grow.out") ERR=$(<"$T/grow.err")
check_failure "3 (a file changed during its layer)" 3 permanent "layer source_root large file data.txt" "file changed while the build read it"
assert_eq step "$(jget "j['error_kind']" <<<"$OUT")" "3: error_kind step"
assert_contains "$ERR" "kiln: error: layer source_root large file data.txt: file changed while the build read it" "3: stderr names the step and the cause"
# Nothing half-built was kept: no layer record, and every cache blob is what its name says.
assert_eq "$RECORDS_BEFORE" "$(find "$KILN_CACHE/layers" -type f | wc -l)" "3: no layer record was written"
bad_blobs=0
for f in "$KILN_CACHE"/blobs/sha256/*; do
  [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$(basename "$f")" ]] || bad_blobs=$((bad_blobs + 1))
done
assert_eq 0 "$bad_blobs" "3: no blob in the cache differs from its name"
# Once the tree is stable, the same spec builds.
build_ok "$W/grow.json"
rm -rf "$W/grow"

# ---- 4, 5, 7: a registry with token auth (pusher: pull+push; reader: pull only) -----------------
start_registry token
docker_config "$W/pusher/config.json" pusher "$REG_PASS"
docker_config "$W/reader/config.json" reader "$REG_PASS"
docker_config "$W/wrong/config.json" pusher "wrong-$REG_PASS"
push_spec() { # FILE NAME CONFIG [EXTRA_JSON]
  echo "{\"name\": \"$2\", \"registry\": \"$REG_ADDR\", \"source_root\": \"app\", \"source_copy_mode\": \"all\", \"registry_config\": \"$3\"${4:-}}" >"$1"
}
push_spec "$W/wrong.json" ci-push wrong/config.json
kiln build "$W/wrong.json" --json --progress quiet
check_failure "4 (wrong password)" 4 permanent preflight "credentials"
push_spec "$W/missing-base.json" ci-child pusher/config.json ", \"base_image\": \"$REG_ADDR/no-such-base:1.0\""
kiln build "$W/missing-base.json" --json --progress quiet
check_failure "5 (base not in the registry)" 5 permanent prepare "no-such-base"
push_spec "$W/reader.json" ci-push reader/config.json
kiln build "$W/reader.json" --json --progress quiet
check_failure "7 (pull-only token, preflight)" 7 permanent preflight "push"
M=$(reg_mark)
kiln build "$W/reader.json" --json --progress quiet --skip-preflight
check_failure "7 (pull-only token, at the push)" 7 permanent push "cannot start an upload"
assert_eq 0 "$(reg_count "PUT" "/v2/ci-push/manifests/" "$M")" "7: no manifest was pushed"

# ---- 8: the registry serves content that does not match its digest (its storage altered on disk) -
push_spec "$W/base8.json" ci-base8 pusher/config.json
kiln build "$W/base8.json" --json --progress quiet --push
assert_eq 0 "$RC" "8: the base is pushed"$'\n'"$ERR"
REF8=$(jget "j['pushed']['reference']" <<<"$OUT")
REF8=${REF8%@*}
LAYER8=$(jget "j['layers'][0]['digest']" <<<"$OUT")
MAN8=$(jget "j['pushed']['digest']" <<<"$OUT")
STORAGE=$REG_DIR/storage/docker/registry/v2/blobs/sha256
# alter FILE: the same size, other bytes (every byte of the middle run inverted).
alter() {
  "$PYTHON" - "$1" <<'EOF2'
import sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
mid = len(d) // 2
for i in range(mid, min(len(d), mid + 16)):
    d[i] ^= 0xFF
open(p, "wb").write(bytes(d))
EOF2
}
blob_data() { local h=${1#sha256:}; echo "$STORAGE/${h:0:2}/$h/data"; }
assert_cmd "8: the registry stores the layer blob" test -f "$(blob_data "$LAYER8")"
alter "$(blob_data "$LAYER8")"
echo "{\"name\": \"ci-child8\", \"base_image\": \"$REF8\", \"registry_config\": \"pusher/config.json\", \"env\": {\"C\": \"8\"}}" >"$W/child8.json"
# A fresh store: the pusher's store holds the honest blob, and a build takes a blob it has.
KILN_CACHE=$W/cache8 kiln build "$W/child8.json" --json --progress quiet -o "oci:$W/out8:t"
check_failure "8 (a base layer blob altered in the registry)" 8 permanent "" "does not match its digest"
assert_eq integrity "$(jget "j['error_kind']" <<<"$OUT")" "8: error_kind integrity"
assert_contains "$(jget "j['message']" <<<"$OUT")" "$LAYER8" "8: the message names the blob"
assert_cmd "8: no output layout" test ! -e "$W/out8/index.json"
assert_eq 0 "$(find "$W/cache8" -name "${LAYER8#sha256:}*" | wc -l)" "8: the altered blob is not in the store under its digest"
# The manifest itself: the registry still reports its digest, the bytes it sends differ (still JSON:
# the registry parses a manifest before it serves it).
printf '\n' >>"$(blob_data "$MAN8")"
KILN_CACHE=$W/cache8 kiln build "$W/child8.json" --json --progress quiet -o "oci:$W/out8:t"
check_failure "8 (the base manifest altered in the registry)" 8 permanent "" "does not match the digest the registry reports"
assert_eq integrity "$(jget "j['error_kind']" <<<"$OUT")" "8: error_kind integrity (manifest)"
stop_registry

# ---- 6: transient: a registry nobody listens on ---------------------------------------------------
PORT=$(free_port)
echo "{\"name\": \"ci-gone\", \"registry\": \"127.0.0.1:$PORT\", \"source_root\": \"app\", \"source_copy_mode\": \"all\"}" >"$W/gone.json"
kiln build "$W/gone.json" --json --progress quiet
check_failure "6 (registry unreachable)" 6 transient preflight "cannot reach"

# ---- GitHub Actions annotations point at the spec file and line ----------------------------------
cd "$W"
GITHUB_ACTIONS=true GITHUB_WORKSPACE=$W kiln build "$W/bad.json" --progress quiet
assert_eq 2 "$RC" "annotation: exit 2"
assert_contains "$ERR" "::error file=bad.json,line=2,title=kiln build failed (exit 2%2C spec)::$W/bad.json: field 'env'" \
  "annotation: file relative to the workspace, the field's line, the message"
printf '{"name": "x",\n "env": {"A": "1"},\n "copy": [}\n' >"$W/syntax.json"
GITHUB_ACTIONS=true GITHUB_WORKSPACE=$W kiln build syntax.json --progress quiet
assert_contains "$ERR" "::error file=syntax.json,line=3," "annotation: a JSON syntax error points at its line"
GITHUB_ACTIONS=true GITHUB_WORKSPACE=$W kiln build "$W/bad.json" "$W/ok.json" --progress quiet
assert_eq 1 "$(grep -c '^::error file=bad.json,' <<<"$ERR")" "annotation: one per failed spec in a multi-spec build"
kiln build "$W/bad.json" --progress quiet
assert_not_contains "$ERR" "::error" "no annotation outside GitHub Actions"
cd "$T"

# ---- several specs: one store, a table, --keep-going (the default) ---------------------------------
kiln build "$W/ok.json" "$W/bad.json" "$W/ok2.json" --jobs 1 -o "oci:$T/multi" --progress plain
assert_eq 2 "$RC" "keep-going: a failed spec makes the exit code its own (2)"
assert_eq "ci-ok@$OK_DIGEST" "$(head -1 <<<"$OUT")" "keep-going: stdout has a reference per successful build"
assert_eq 2 "$(wc -l <<<"$OUT")" "keep-going: two references"
assert_contains "$ERR" "3 builds: 2 succeeded, 1 failed" "keep-going: summary line"
assert_match "$ERR" "  $W/bad.json +- +FAILED \(2\) " "keep-going: table row of the failed spec"
assert_match "$ERR" "  $W/ok2.json +ci-ok2:[0-9a-f]+ +ok " "keep-going: the spec after the failure was built"
assert_eq 2 "$(jget "len(j['manifests'])" "$T/multi/index.json")" "keep-going: two tags in the layout"
kiln build "$W/ok.json" "$W/bad.json" "$W/ok2.json" --jobs 1 --json --progress quiet
assert_eq "failed 2 success,failed,success" "$(jget "j['status'] + ' ' + str(j['exit_code']) + ' ' + ','.join(b['status'] for b in j['builds'])" <<<"$OUT")" \
  "keep-going --json: {status, exit_code, builds}"
assert_eq "$W/ok.json $W/bad.json $W/ok2.json" "$(jget "' '.join(b['spec'] for b in j['builds'])" <<<"$OUT")" "--json builds are in the order given"
# One store: the second spec (same files) found its layer in the cache.
assert_eq hit "$(jget "j['builds'][2]['layers'][0]['cache']" <<<"$OUT")" "one shared store: the layer is a cache hit for the next spec"
# All good: exit 0, and --jobs 2 builds both at once.
kiln build "$W/ok.json" "$W/ok2.json" --jobs 2 --json --progress quiet -o "oci:$T/both"
assert_eq "0 success" "$RC $(jget "j['status']" <<<"$OUT")" "two good specs: exit 0, status success"
assert_eq 2 "$(jget "len(j['manifests'])" "$T/both/index.json")" "two good specs: both tags in the layout"
# Outputs that cannot take several images are refused before anything is built.
kiln build "$W/ok.json" "$W/ok2.json" -o "oci:$T/x:one-tag" --progress quiet
assert_eq 2 "$RC" "several specs into one oci:DIR:TAG: usage error"
assert_contains "$ERR" "takes no :TAG" "several specs into one oci:DIR:TAG: says why"

# ---- --fail-fast: the rest are cancelled, reported as failed, and move no tag -----------------------
kiln build "$W/bad.json" "$W/ok.json" "$W/ok2.json" --jobs 1 --fail-fast --json --progress quiet -o "oci:$T/ff"
assert_eq 2 "$RC" "fail-fast: exit code of the first failure"
assert_eq "failed,failed,failed" "$(jget "','.join(b['status'] for b in j['builds'])" <<<"$OUT")" "fail-fast: cancelled builds are failed, never success"
assert_eq "False,True,True" "$(jget "','.join(str(b.get('cancelled', False)) for b in j['builds'])" <<<"$OUT")" "fail-fast: the two after the failure are cancelled"
assert_contains "$(jget "j['builds'][1]['message']" <<<"$OUT")" "$W/bad.json failed first" "fail-fast: a cancelled build names the failure"
[[ ! -e "$T/ff/index.json" ]] && pass || fail "fail-fast: no tag was written for the cancelled builds"
kiln build "$W/bad.json" "$W/ok.json" "$W/ok2.json" --jobs 1 --fail-fast --progress plain
assert_contains "$ERR" "3 builds: 0 succeeded, 1 failed, 2 cancelled" "fail-fast: the summary counts cancelled builds"
assert_eq "" "$OUT" "fail-fast: no reference on stdout"
# Builds already running are stopped mid-layer: two specs with a 100+ MB layer start with a spec
# that fails at once; the big ones are cancelled and leave no tag.
mkdir -p "$W/big"
seq 1 16000000 >"$W/big/data.txt"
echo '{"name": "ci-big1", "source_root": "big", "source_copy_mode": "all"}' >"$W/big1.json"
echo '{"name": "ci-big2", "source_root": "big", "source_copy_mode": "all", "compression": "zstd"}' >"$W/big2.json"
kiln build "$W/big1.json" "$W/big2.json" "$W/bad.json" --jobs 3 --fail-fast --json --progress quiet -o "oci:$T/ff2"
assert_eq 2 "$RC" "fail-fast (running builds): exit 2"
assert_eq "failed,failed,failed" "$(jget "','.join(b['status'] for b in j['builds'])" <<<"$OUT")" "fail-fast (running builds): none reported as success"
assert_eq "True,True" "$(jget "','.join(str(b.get('cancelled', False)) for b in j['builds'][:2])" <<<"$OUT")" "fail-fast (running builds): both cancelled"
[[ ! -e "$T/ff2/index.json" ]] && pass || fail "fail-fast (running builds): no tag moved"
# The same with --keep-going: both big images are built.
kiln build "$W/big1.json" "$W/big2.json" "$W/bad.json" --jobs 3 --keep-going --json --progress quiet -o "oci:$T/kg2"
assert_eq "2 success,success,failed" "$RC $(jget "','.join(b['status'] for b in j['builds'])" <<<"$OUT")" "keep-going (running builds): the others finish"
assert_eq 2 "$(jget "len(j['manifests'])" "$T/kg2/index.json")" "keep-going (running builds): both tags in the layout"

# ---- the history holds every build above, cancelled ones as cancelled -----------------------------
H=$(history_json)
assert_eq 0 "$(jget "len([r for r in j if r['status'] in ('running', 'interrupted')])" <<<"$H")" "history: no build left running"
if (($(jget "len([r for r in j if r['status'] == 'cancelled'])" <<<"$H") >= 6)); then pass; else fail "history: the cancelled builds are recorded as cancelled"; fi
assert_eq "[]" "$(jget "[r['id'] for r in j if r['status'] == 'cancelled' and r['image_digest']]" <<<"$H")" "history: a cancelled build has no image"
