#!/usr/bin/env bash
# kiln push oci:DIR[:TAG] REF: an image built into a layout goes to a registry with the same
# digest; a second push uploads nothing; a digest reference and a non-oci source are refused.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"

start_registry plain
R=$REG_ADDR

make_tree "$T/app" 3 5
cat >"$T/spec.json" <<JSON
{"name": "layoutapp", "source_root": "app", "source_copy_mode": "all"}
JSON
build_ok "$T/spec.json" -o "oci:$T/out:v1"
built=$(jget 'j["digest"]' <<<"$OUT")

# First push: every blob uploaded, the registry holds the layout's digest.
kiln push "oci:$T/out:v1" "$R/layoutapp:v1" --json --progress quiet
assert_eq 0 "$RC" "push exits 0: $ERR"
assert_eq "$built" "$(jget 'j["digest"]' <<<"$OUT")" "pushed digest is the layout's"
assert_eq 2 "$(jget 'j["uploaded"]' <<<"$OUT")" "layer and config uploaded"
remote=$(skopeo inspect --tls-verify=false "docker://$R/layoutapp:v1" | jget 'j["Digest"]')
assert_eq "$built" "$remote" "skopeo sees the same digest"

# Second push: nothing uploaded, same digest, no previous digest (the tag did not move).
kiln push "oci:$T/out:v1" "$R/layoutapp:v1" --json --progress quiet
assert_eq 0 "$RC" "second push exits 0"
assert_eq 0 "$(jget 'j["uploaded"]' <<<"$OUT")" "second push uploads nothing"
assert_eq 2 "$(jget 'j["skipped"]' <<<"$OUT")" "second push skips both blobs"
assert_eq null "$(jget 'j["previous_digest"]' <<<"$OUT")" "tag did not move"

# Bad input: a digest target, a non-oci source, a missing tag in the layout.
kiln push "oci:$T/out:v1" "$R/layoutapp@$built" --progress quiet
assert_eq 2 "$RC" "a digest target is refused"
kiln push "$T/out" "$R/layoutapp:v2" --progress quiet
assert_eq 2 "$RC" "a non-oci source is refused"
kiln push "oci:$T/out:nope" "$R/layoutapp:v2" --progress quiet
assert_eq 5 "$RC" "a missing layout tag is not found"

# ---- SIGTERM while a blob upload hangs: one failure object, exit 143, no manifest, no tag --------
# (The proxy holds the first blob PUT for 30 s; kiln is stopped while it waits on it.)
start_fault_proxy "$R" 'stall=30,method=PUT,path=/blobs/uploads/,count=1'
stop_during_stall TERM "$T/term.out" "$T/term.err" "$KILN" push "oci:$T/out:v1" "$PROXY_ADDR/layoutapp-term:v1" \
  --json --progress plain
assert_eq 143 "$STOP_RC" "SIGTERM during a push: exit 143"$'\n'"$(cat "$T/term.err")"
assert_cmd "the push stopped within the grace ($STOP_SECS s), not after the upload" test "$STOP_SECS" -lt 10
OUT=$(<"$T/term.out")
assert_eq "1" "$(grep -c '^{' "$T/term.out")" "one JSON object on stdout"
assert_eq "failed 143 interrupted" "$(jget "' '.join(str(j[k]) for k in ('status', 'exit_code', 'error_kind'))" <<<"$OUT")" \
  "the failure object: status, exit_code, kind"
assert_contains "$(jget "j['message']" <<<"$OUT")" "interrupted by SIGTERM" "the message names the signal"
assert_eq 404 "$("$PYTHON" - "$R" <<'PY'
import sys, urllib.error, urllib.request
req = urllib.request.Request("http://%s/v2/layoutapp-term/manifests/v1" % sys.argv[1], method="HEAD",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
try:
    print(urllib.request.urlopen(req).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
)" "no manifest and no tag were pushed"
stop_fault_proxy
