#!/usr/bin/env bash
# Pushing to a real registry (distribution 2.8, plain HTTP on loopback): a 70 MiB layer goes up in
# chunks and skopeo reads back the very image kiln built; a forced re-push uploads nothing; an
# existing tag skips the build entirely; a base pulled from the registry has its layers mounted
# into the new repository, never downloaded; a multi-platform base index resolves to the
# requested platform; and no secret shows in kiln's output.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools skopeo umoci oci-image-tool

start_registry plain
R=$REG_ADDR
W=$T/ws
mkdir -p "$W/app"
make_tree "$W/app" 2 3 push
# 70 MiB: above kiln's 64 MiB monolithic limit, so it goes in 32 MiB PATCH chunks.
head -c $((70 << 20)) /dev/urandom >"$W/app/big.bin"
BIG_SHA=$(sha256sum <"$W/app/big.bin" | cut -d' ' -f1)
# A docker config with a secret: the plain registry never asks for it, but kiln must not print it
# even so.
SECRET="push-secret-$RANDOM$RANDOM"
docker_config "$W/auth/config.json" someone "$SECRET"
cat >"$W/spec.json" <<EOF
{"name": "pushapp", "registry": "$R", "source_root": "app", "source_copy_mode": "all",
 "registry_config": "auth/config.json"}
EOF
kiln tag "$W/spec.json"
assert_eq 0 "$RC" "kiln tag exits 0"
IMAGE=$OUT
TAG=${IMAGE##*:}
assert_eq "$R/pushapp:$TAG" "$IMAGE" "kiln tag names REGISTRY/NAME:TAG"

# ---- first push: chunked upload of the big layer ----------------------------------------------
M=$(reg_mark)
kiln build "$W/spec.json" --json --progress plain
[[ $RC == 0 ]] || die "first push failed ($RC): $ERR"
FIRST=$OUT
D=$(jget "j['digest']" <<<"$FIRST")
assert_eq success "$(jget "j['status']" <<<"$FIRST")" "first push: status success"
assert_eq "$D" "$(jget "j['pushed']['digest']" <<<"$FIRST")" "pushed.digest is the built digest"
assert_eq "$IMAGE@$D" "$(jget "j['pushed']['reference']" <<<"$FIRST")" "pushed.reference is REGISTRY/NAME:TAG@DIGEST"
NBLOBS=$(jget "len(set(l['digest'] for l in j['layers'])) + 1" <<<"$FIRST") # layers + config
assert_eq "$NBLOBS 0 0" "$(jget "'%d %d %d' % (j['pushed']['uploaded'], j['pushed']['skipped'], j['pushed']['mounted'])" <<<"$FIRST")" \
  "first push uploads every blob (layers + config)"
assert_eq None "$(jget "str(j['pushed']['previous_digest'])" <<<"$FIRST")" "first push: no previous digest"
BIG_DIGEST=$(jget "[l['digest'] for l in j['layers'] if l['size'] > (64 << 20)][0]" <<<"$FIRST")
REQS=$(reg_requests "$M")
PATCHES=$(grep -c "^PATCH /v2/pushapp/blobs/uploads/" <<<"$REQS" || true)
if ((PATCHES >= 3)); then pass; else fail "a 70 MiB blob goes up in >= 3 PATCH chunks of 32 MiB (saw $PATCHES)"$'\n'"$REQS"; fi
assert_match "$REQS" "PUT /v2/pushapp/blobs/uploads/[^ ]*digest=$BIG_DIGEST 201" "the chunked upload is committed with a PUT ?digest="
assert_eq 1 "$(grep -c "^PUT /v2/pushapp/manifests/$TAG 201" <<<"$REQS" || true)" "one manifest PUT, to the tag"
# The manifest goes last: no blob request after it.
assert_match "$(tail -1 <<<"$REQS")" "^PUT /v2/pushapp/manifests/" "the manifest PUT is the push's last request"
# No secret anywhere in what kiln printed.
assert_not_contains "$OUT$ERR" "$SECRET" "first push: the secret is not in stdout/stderr"
assert_not_contains "$OUT$ERR" "$(printf 'someone:%s' "$SECRET" | base64 -w0)" "first push: the base64 auth is not in stdout/stderr"

# ---- skopeo reads back exactly that image --------------------------------------------------------
skopeo inspect --tls-verify=false "docker://$IMAGE" >"$T/skopeo-inspect.json" 2>"$T/skopeo.err" ||
  die "skopeo inspect docker://$IMAGE failed: $(cat "$T/skopeo.err")"
assert_eq "$D" "$(jget "j['Digest']" "$T/skopeo-inspect.json")" "skopeo inspect: same manifest digest"
assert_eq "$(jget "[l['digest'] for l in j['layers']]" <<<"$FIRST")" "$(jget "j['Layers']" "$T/skopeo-inspect.json")" \
  "skopeo inspect: same layers"
skopeo copy --quiet --preserve-digests --src-tls-verify=false "docker://$IMAGE" "oci:$T/back:t" >/dev/null 2>"$T/skopeo.err" ||
  die "skopeo copy docker://$IMAGE failed: $(cat "$T/skopeo.err")"
assert_eq "$D" "$(jget "j['manifests'][0]['digest']" "$T/back/index.json")" "skopeo copy back: same manifest digest"
if layout_blobs_ok "$T/back"; then pass; else fail "copied-back blobs match their digests"; fi
oci_validate "$T/back" t "$T/bundle"
assert_eq "$BIG_SHA" "$(sha256sum <"$T/bundle/rootfs/root/big.bin" | cut -d' ' -f1)" "the 70 MiB file came back intact"
assert_eq "$(cat "$W/app/d001/f002.py")" "$(cat "$T/bundle/rootfs/root/d001/f002.py")" "a small file came back intact"
rm -rf "$T/bundle" "$T/back"

# ---- --force re-push: every blob is already there, none is uploaded ---------------------------
M=$(reg_mark)
kiln build "$W/spec.json" --json --progress quiet --force
[[ $RC == 0 ]] || die "forced re-push failed ($RC): $ERR"
assert_eq "$D" "$(jget "j['digest']" <<<"$OUT")" "forced re-push: same digest"
assert_eq "0 $NBLOBS 0" "$(jget "'%d %d %d' % (j['pushed']['uploaded'], j['pushed']['skipped'], j['pushed']['mounted'])" <<<"$OUT")" \
  "forced re-push: nothing uploaded, every blob skipped"
assert_eq 0 "$(jget "j['pushed']['bytes_uploaded']" <<<"$OUT")" "forced re-push: 0 bytes uploaded"
assert_eq None "$(jget "str(j['pushed']['previous_digest'])" <<<"$OUT")" "forced re-push: the tag did not move"
# The only upload session is the preflight's (opened and deleted); no blob PUT or PATCH at all.
assert_eq 1 "$(reg_count POST "/v2/pushapp/blobs/uploads/" "$M")" "forced re-push: one POST (the preflight's)"
assert_eq 0 "$(reg_count "PUT|PATCH" "/v2/pushapp/blobs/uploads/" "$M")" "forced re-push: no blob PUT/PATCH"
assert_eq 1 "$(reg_count DELETE "/v2/pushapp/blobs/uploads/" "$M")" "forced re-push: the preflight's session is deleted"

# ---- the tag exists: nothing is built ------------------------------------------------------------
M=$(reg_mark)
SKIP_CACHE=$T/cache-skip
kiln build "$W/spec.json" --json --progress quiet --cache "$SKIP_CACHE"
assert_eq 0 "$RC" "existing tag: exit 0"
assert_eq "exists" "$(jget "j['status']" <<<"$OUT")" "existing tag: status exists"
assert_eq "$D" "$(jget "j['digest']" <<<"$OUT")" "existing tag: the registry's digest"
assert_eq "$IMAGE@$D" "$(jget "j['reference']" <<<"$OUT")" "existing tag: reference"
kiln cache du --json --cache "$SKIP_CACHE"
assert_eq "0 0" "$(jget "'%d %d' % (j['blobs'], j['layer_records'])" <<<"$OUT")" "existing tag: no blob or layer record in a fresh cache"
assert_eq 0 "$(reg_count "PUT|PATCH" "/v2/" "$M")" "existing tag: nothing written to the registry"
assert_eq 0 "$(reg_count GET "/v2/pushapp/blobs/" "$M")" "existing tag: nothing downloaded"
# Without --json: the reference on stdout.
kiln build "$W/spec.json" --progress quiet --cache "$SKIP_CACHE"
assert_eq 0 "$RC" "existing tag (text): exit 0"
assert_eq "$R/pushapp@$D" "$OUT" "existing tag (text): REGISTRY/NAME@DIGEST on stdout"

# ---- a base from the registry: its layers are mounted, never downloaded --------------------------
mkdir -p "$W/basesrc" "$W/derivedsrc"
make_tree "$W/basesrc" 1 4 base
seq 1 50000 >"$W/basesrc/numbers.txt"
printf 'print("derived")\n' >"$W/derivedsrc/main.py"
cat >"$W/base.json" <<EOF
{"name": "base", "registry": "$R", "source_root": "basesrc", "source_copy_mode": "all",
 "large_file_threshold": 100000}
EOF
kiln build "$W/base.json" --json --progress quiet
[[ $RC == 0 ]] || die "base push failed ($RC): $ERR"
BASE_JSON=$OUT
BASE_REF=$(jget "j['image']" <<<"$BASE_JSON")
BASE_DIGEST=$(jget "j['digest']" <<<"$BASE_JSON")
mapfile -t BASE_LAYERS < <(jget "'\n'.join(l['digest'] for l in j['layers'])" <<<"$BASE_JSON")
assert_eq 2 "${#BASE_LAYERS[@]}" "the base has two layers (numbers.txt is a large file)"
cat >"$W/derived.json" <<EOF
{"name": "derived", "registry": "$R", "base_image": "$BASE_REF", "source_root": "derivedsrc",
 "source_copy_mode": "all"}
EOF
M=$(reg_mark)
# A fresh cache: the base's layers are not on this machine, only in the registry.
kiln build "$W/derived.json" --json --progress quiet --cache "$T/cache-derived"
[[ $RC == 0 ]] || die "derived push failed ($RC): $ERR"
DERIVED=$OUT
DERIVED_IMAGE=$(jget "j['image']" <<<"$DERIVED")
DERIVED_DIGEST=$(jget "j['digest']" <<<"$DERIVED")
assert_eq "${#BASE_LAYERS[@]}" "$(jget "j['pushed']['mounted']" <<<"$DERIVED")" "derived push: every base layer mounted"
assert_eq 2 "$(jget "j['pushed']['uploaded']" <<<"$DERIVED")" "derived push: uploads only its own layer and config"
assert_eq "$(printf '%s\n' "${BASE_LAYERS[@]}")" "$(jget "'\n'.join(l['digest'] for l in j['layers'] if l['from_base'])" <<<"$DERIVED")" \
  "derived build: the base layers come first"
REQS=$(reg_requests "$M")
# (the log does show blob downloads: the base's config is one, read to build on it)
BASE_CONFIG=$(jget "j['config_digest']" <<<"$BASE_JSON")
assert_eq 1 "$(grep -c "^GET /v2/base/blobs/$BASE_CONFIG 200" <<<"$REQS" || true)" "derived build: the base config is downloaded once"
for l in "${BASE_LAYERS[@]}"; do
  assert_eq 0 "$(grep -c "^GET /v2/[^ ]*/blobs/$l " <<<"$REQS" || true)" "derived push: base layer ${l:7:12} never downloaded"
  assert_eq 1 "$(grep -c "^POST /v2/derived/blobs/uploads/?mount=$l&from=base 201" <<<"$REQS" || true)" \
    "derived push: base layer ${l:7:12} mounted from base (201)"
done
kiln cache du --json --cache "$T/cache-derived"
for l in "${BASE_LAYERS[@]}"; do
  if [[ ! -e "$T/cache-derived/blobs/sha256/${l#sha256:}" ]]; then pass; else fail "base layer ${l:7:12} is not in the derived build's cache"; fi
done
# The pushed image is whole (its mounted blobs are in the derived repository) and records its base.
skopeo copy --quiet --preserve-digests --src-tls-verify=false "docker://$DERIVED_IMAGE" "oci:$T/derived-back:t" >/dev/null 2>"$T/skopeo.err" ||
  die "skopeo copy of the derived image failed: $(cat "$T/skopeo.err")"
assert_eq "$DERIVED_DIGEST" "$(jget "j['manifests'][0]['digest']" "$T/derived-back/index.json")" "derived: skopeo sees the built digest"
oci_validate "$T/derived-back" t "$T/bundle"
assert_eq "print(\"derived\")" "$(cat "$T/bundle/rootfs/root/main.py")" "derived rootfs has its own file"
assert_eq "$(sha256sum <"$W/basesrc/numbers.txt")" "$(sha256sum <"$T/bundle/rootfs/root/numbers.txt")" "derived rootfs has the base's files"
rm -rf "$T/bundle"
ANN=$(manifest_json "$T/derived-back" t | jget "j.get('annotations', {})")
assert_eq "$BASE_DIGEST" "$(jget "j.get('org.opencontainers.image.base.digest')" <<<"$ANN")" "derived manifest: base.digest annotation"
assert_eq "$BASE_REF" "$(jget "j.get('org.opencontainers.image.base.name')" <<<"$ANN")" "derived manifest: base.name annotation"
# kiln inspect of the registry reference shows the same manifest annotations and layers.
kiln inspect "$DERIVED_IMAGE" --cache "$T/cache-inspect"
assert_eq 0 "$RC" "kiln inspect REGISTRY_REF exits 0"
assert_eq "$DERIVED_IMAGE@$DERIVED_DIGEST" "$(jget "j['reference']" <<<"$OUT")" "kiln inspect: reference with digest"
assert_eq "$(printf '%s\n' "${BASE_LAYERS[@]}")" "$(jget "'\n'.join(l['digest'] for l in j['layers'][:-1])" <<<"$OUT")" "kiln inspect: base layers"
assert_eq "$BASE_DIGEST" "$(jget "j['annotations'].get('org.opencontainers.image.base.digest', '<missing>')" <<<"$OUT")" \
  "kiln inspect REGISTRY_REF: annotations of the pushed manifest"

# ---- a multi-platform base: the index resolves to the spec's platform -------------------------
mkdir -p "$W/mp"
printf 'multi\n' >"$W/mp/m.txt"
for arch in amd64 arm64; do
  cat >"$W/mp-$arch.json" <<EOF
{"name": "mp", "source_root": "mp", "source_copy_mode": "all", "platform": "linux/$arch"}
EOF
  build_ok "$W/mp-$arch.json" -o "oci:$T/mp-$arch:$arch"
  declare "MP_$arch=$(jget "j['digest']" <<<"$OUT")"
done
# MP_amd64 and MP_arm64: the two single-platform manifests.
assert_ne "$MP_amd64" "$MP_arm64" "the two platforms give two manifests"
INDEX_DIGEST=$("$PYTHON" - "$T/multi" "$T/mp-amd64" "$T/mp-arm64" <<'EOF'
import hashlib, json, os, shutil, sys
out, layouts = sys.argv[1], sys.argv[2:]
os.makedirs(out + "/blobs/sha256", exist_ok=True)
entries = []
for lay in layouts:
    for b in os.listdir(lay + "/blobs/sha256"):
        shutil.copyfile(lay + "/blobs/sha256/" + b, out + "/blobs/sha256/" + b)
    m = json.load(open(lay + "/index.json"))["manifests"][0]
    man = json.load(open(lay + "/blobs/sha256/" + m["digest"][7:]))
    cfg = json.load(open(lay + "/blobs/sha256/" + man["config"]["digest"][7:]))
    entries.append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                    "platform": {"architecture": cfg["architecture"], "os": cfg["os"]}})
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": entries}, separators=(",", ":")).encode()
digest = hashlib.sha256(index).hexdigest()
open(out + "/blobs/sha256/" + digest, "wb").write(index)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
           "digest": "sha256:" + digest, "size": len(index),
           "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}, open(out + "/index.json", "w"))
open(out + "/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
print("sha256:" + digest)
EOF
)
skopeo copy --quiet --all --preserve-digests --dest-tls-verify=false "oci:$T/multi:multi" "docker://$R/multibase:1" \
  >/dev/null 2>"$T/skopeo.err" || die "skopeo copy --all of the index failed: $(cat "$T/skopeo.err")"
skopeo inspect --raw --tls-verify=false "docker://$R/multibase:1" >"$T/multi-raw.json" 2>"$T/skopeo.err" ||
  die "skopeo inspect --raw multibase failed: $(cat "$T/skopeo.err")"
assert_eq "$MP_amd64 $MP_arm64" "$(jget "' '.join(m['digest'] for m in j['manifests'])" "$T/multi-raw.json")" \
  "the registry holds the index of both manifests"
assert_eq "$INDEX_DIGEST" "sha256:$(sha256sum <"$T/multi-raw.json" | cut -d' ' -f1)" "the registry holds the very index written"
printf 'on top\n' >"$W/mp/top.txt"
# arm64: pushed; the registry's manifest names the arm64 manifest as its base.
cat >"$W/on-arm64.json" <<EOF
{"name": "onmulti", "registry": "$R", "base_image": "$R/multibase:1", "platform": "linux/arm64",
 "source_root": "mp", "source_copy_mode": "all"}
EOF
kiln build "$W/on-arm64.json" --json --progress quiet --cache "$T/cache-mp"
[[ $RC == 0 ]] || die "build on the multi-platform base (arm64) failed ($RC): $ERR"
ARM_IMAGE=$(jget "j['image']" <<<"$OUT")
ARM_DIGEST=$(jget "j['digest']" <<<"$OUT")
skopeo inspect --raw --tls-verify=false "docker://$ARM_IMAGE" >"$T/arm-raw.json" 2>"$T/skopeo.err" ||
  die "skopeo inspect --raw $ARM_IMAGE failed: $(cat "$T/skopeo.err")"
assert_eq "$ARM_DIGEST" "sha256:$(sha256sum <"$T/arm-raw.json" | cut -d' ' -f1)" "arm64 build: the registry's manifest is the built one"
assert_eq "$MP_arm64" "$(jget "j['annotations']['org.opencontainers.image.base.digest']" "$T/arm-raw.json")" \
  "arm64 build: base.digest is the index's arm64 manifest"
skopeo inspect --config --tls-verify=false "docker://$ARM_IMAGE" >"$T/arm-config.json" 2>"$T/skopeo.err" ||
  die "skopeo inspect --config failed: $(cat "$T/skopeo.err")"
assert_eq "linux/arm64" "$(jget "j['os'] + '/' + j['architecture']" "$T/arm-config.json")" "arm64 build: config says linux/arm64"
# amd64 (the default platform): written to a layout, so the base layers are downloaded.
cat >"$W/on-amd64.json" <<EOF
{"name": "onmulti", "base_image": "$R/multibase:1", "source_root": "mp", "source_copy_mode": "all"}
EOF
build_ok "$W/on-amd64.json" -o "oci:$T/on-amd64:t" --cache "$T/cache-mp"
assert_eq "$MP_amd64" "$(manifest_json "$T/on-amd64" t | jget "j['annotations']['org.opencontainers.image.base.digest']")" \
  "amd64 build: base.digest is the index's amd64 manifest"
assert_eq "$R/multibase:1" "$(manifest_json "$T/on-amd64" t | jget "j['annotations']['org.opencontainers.image.base.name']")" \
  "amd64 build: base.name is the reference"
assert_eq "linux/amd64" "$(config_json "$T/on-amd64" t | jget "j['os'] + '/' + j['architecture']")" "amd64 build: config says linux/amd64"
oci_validate "$T/on-amd64" t "$T/bundle"
assert_eq "multi" "$(cat "$T/bundle/rootfs/root/m.txt")" "amd64 build: the base's file is in the rootfs"
# A platform the index lacks: exit 2 naming the platforms it has, before anything is built.
cat >"$W/on-s390x.json" <<EOF
{"name": "onmulti", "base_image": "$R/multibase:1", "platform": "linux/s390x", "source_root": "mp",
 "source_copy_mode": "all"}
EOF
kiln build "$W/on-s390x.json" --json --progress quiet -o "oci:$T/on-s390x:t" --cache "$T/cache-mp"
assert_eq 2 "$RC" "a platform missing from the base index: exit 2 (the input, not a lookup to retry)"
assert_contains "$ERR" "no image for platform linux/s390x (it has: " "a platform missing from the base index: the error names it and what the index has"

# ---- a tree past the walk's memory budget: the push streams, the image is the list path's -------
# KILN_WALK_BUDGET=2: every walk thread spills sorted runs after two entries, so the tag pass
# (prepare_tag) and the build (a streamed build) read the walk as a stream.
mkdir -p "$W/many"
make_tree "$W/many" 3 6 many
cat >"$W/stream.json" <<EOF
{"name": "pushstream", "registry": "$R", "source_root": "many", "source_copy_mode": "all"}
EOF
KILN_WALK_BUDGET=2 kiln build "$W/stream.json" --json --progress quiet --cache "$T/cache-stream"
[[ $RC == 0 ]] || die "streamed push failed ($RC): $ERR"
SD=$(jget "j['digest']" <<<"$OUT")
assert_eq success "$(jget "j['status']" <<<"$OUT")" "streamed push: status success"
# The same spec without the budget, into a layout from a store of its own: the same image.
build_ok "$W/stream.json" -o "oci:$T/stream-list:t" --cache "$T/cache-list"
assert_eq "$SD" "$(jget "j['digest']" <<<"$OUT")" "a streamed push builds the list path's image"
KILN_WALK_BUDGET=2 kiln build "$W/stream.json" --json --progress quiet --cache "$T/cache-stream"
assert_eq exists "$(jget "j['status']" <<<"$OUT")" "streamed: the pushed tag is found, nothing is built"
KILN_WALK_BUDGET=0 kiln build "$W/stream.json" --json --progress quiet --cache "$T/cache-stream"
assert_eq 2 "$RC" "KILN_WALK_BUDGET=0: refused as a usage error"
assert_contains "$ERR" "KILN_WALK_BUDGET must be a number of entries" "KILN_WALK_BUDGET=0: the error names the variable"
