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
