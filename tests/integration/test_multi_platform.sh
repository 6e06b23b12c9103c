#!/usr/bin/env bash
# A spec for several platforms ("platform": "linux/amd64,linux/arm64", flytekit's and buildx's
# form): one image per platform under one OCI image index, in an OCI layout and in a real registry
# (distribution 2.8 on loopback). Each platform's image is byte for byte the one a one-platform
# build (--platform) gives; skopeo copies the index with --all; the tag is reproducible and
# `kiln tag` gives it; a docker-archive (one image) is refused before anything is built; an index
# already in the registry is not pushed again; a nested base spec and a multi-platform registry
# base are resolved per platform.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools skopeo umoci oci-image-tool

W=$T/ws
mkdir -p "$W/app"
make_tree "$W/app" 2 3 multi
cat >"$W/spec.json" <<'EOF'
{"name": "multi", "source_root": "app", "source_copy_mode": "all", "platform": "linux/amd64, linux/arm64"}
EOF

# ---- kiln tag, and the build into a layout ---------------------------------------------------
kiln tag "$W/spec.json"
assert_eq 0 "$RC" "kiln tag of a multi-platform spec exits 0"
TAGREF=$OUT
build_ok "$W/spec.json" -o "oci:$T/out"
RES=$OUT
TAG=$(jget "j['tag']" <<<"$RES")
INDEX=$(jget "j['digest']" <<<"$RES")
assert_eq "$TAGREF" "multi:$TAG" "kiln tag gives the build's tag"
assert_eq "application/vnd.oci.image.index.v1+json" "$(jget "j['media_type']" <<<"$RES")" "the result is an image index"
assert_eq '["linux/amd64", "linux/arm64"]' "$(jget "[p['platform'] for p in j['platforms']]" <<<"$RES")" "one image per platform, in the spec's order"
AMD=$(jget "j['platforms'][0]['digest']" <<<"$RES")
ARM=$(jget "j['platforms'][1]['digest']" <<<"$RES")
assert_ne "$AMD" "$ARM" "the two platforms' images differ (their configs name them)"

# The layout: the tag names the index, whose manifests name their platforms.
assert_eq "application/vnd.oci.image.index.v1+json $INDEX" \
  "$(jget "' '.join([[m['mediaType'], m['digest']] for m in j['manifests'] if m['annotations']['org.opencontainers.image.ref.name'] == '$TAG'][0])" "$T/out/index.json")" \
  "index.json: the tag names the image index"
skopeo inspect --raw "oci:$T/out:$TAG" >"$T/raw.json"
assert_eq "sha256:$(sha256sum <"$T/raw.json" | cut -d' ' -f1)" "$INDEX" "the index blob hashes to its digest"
assert_eq "[[\"$AMD\", \"amd64\", \"linux\"], [\"$ARM\", \"arm64\", \"linux\"]]" \
  "$(jget "[[m['digest'], m['platform']['architecture'], m['platform']['os']] for m in j['manifests']]" "$T/raw.json")" \
  "skopeo reads the index: each manifest with its platform"
# Each platform's image is the image a one-platform build gives, and a valid image on its own.
for p in amd64 arm64; do
  build_ok "$W/spec.json" --platform "linux/$p" -o "oci:$T/one-$p:x"
  want=$([[ $p == amd64 ]] && echo "$AMD" || echo "$ARM")
  assert_eq "$want" "$(jget "j['digest']" <<<"$OUT")" "linux/$p: the index's image is the one --platform linux/$p builds"
  oci_validate "$T/one-$p" x
  kiln inspect "oci:$T/out:$TAG" --platform "linux/$p"
  assert_eq "linux $p" "$(jget "j['config']['os'] + ' ' + j['config']['architecture']" <<<"$OUT")" "kiln inspect --platform linux/$p picks its image from the index"
  assert_eq "$want $INDEX [[\"linux/amd64\", \"$AMD\"], [\"linux/arm64\", \"$ARM\"]]" \
    "$(jget "' '.join([j['digest'], j['index']['digest'], json.dumps([[m['platform'], m['digest']] for m in j['index']['manifests']])])" <<<"$OUT")" \
    "kiln inspect --platform linux/$p: that image's digest, and the index it came through with every platform"
done
kiln inspect "oci:$T/one-arm64:x"
assert_eq "null" "$(jget "j.get('index')" <<<"$OUT")" "kiln inspect of a one-platform image: no index"
# skopeo copies the whole index (every platform's blobs are in the layout).
skopeo copy -q --all "oci:$T/out:$TAG" "oci:$T/copy:c" >"$T/copy.log" 2>&1 || fail "skopeo copy --all of the index: $(cat "$T/copy.log")"
assert_eq "$INDEX" "sha256:$(skopeo inspect --raw "oci:$T/copy:c" | sha256sum | cut -d' ' -f1)" "skopeo copy --all keeps the index byte for byte"

# ---- reproducible: another store, another checkout, another order --------------------------
cp -a "$W" "$T/ws2"
touch -d '2001-01-01' "$T/ws2/app"/*/*
KILN_CACHE=$T/cache2 build_ok "$T/ws2/spec.json"
assert_eq "$INDEX" "$(jget "j['digest']" <<<"$OUT")" "another store and checkout: the same index digest"
assert_eq "$TAG" "$(jget "j['tag']" <<<"$OUT")" "another store and checkout: the same tag"
build_ok "$W/spec.json" --platform linux/arm64,linux/amd64
assert_ne "$INDEX" "$(jget "j['digest']" <<<"$OUT")" "another order is another index"
assert_ne "$TAG" "$(jget "j['tag']" <<<"$OUT")" "another order is another tag"
assert_eq "$ARM" "$(jget "j['platforms'][0]['digest']" <<<"$OUT")" "the same arm64 image, listed first"
kiln tag "$W/spec.json" --platform linux/amd64
assert_ne "multi:$TAG" "$OUT" "a one-platform tag is not the index's"

# ---- a docker-archive holds one image: refused before anything is walked ---------------------
rm -rf "$T/cache3"
KILN_CACHE=$T/cache3 kiln build "$W/spec.json" -o "docker-archive:$T/multi.tar" --progress plain
assert_eq 2 "$RC" "docker-archive of a multi-platform spec: exit 2"
assert_contains "$ERR" "a docker-archive holds one image" "says why"
assert_contains "$ERR" "--platform" "says the way out"
assert_not_contains "$ERR" "walked" "refused before the walk"
[[ ! -e "$T/multi.tar" ]] || fail "no archive written"
kiln build "$W/spec.json" -o "docker-archive:$T/one.tar" --platform linux/arm64 --progress quiet
assert_eq 0 "$RC" "--platform linux/arm64 narrows it to one image: the archive is written"

# ---- RUN steps run the base's own programs: a platform this machine cannot execute is refused
# before any platform is built (unless an emulator is registered with binfmt_misc's F flag) ------
if grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 && grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  echo "test_multi_platform: an aarch64 emulator is registered here: the refusal of foreign RUN steps is not checked" >&2
elif [[ $(uname -m) == x86_64 ]]; then
  echo '{"name": "multi-steps", "platform": "linux/amd64,linux/arm64", "commands": ["echo hi"]}' >"$W/steps.json"
  KILN_CACHE=$T/cache-steps kiln build "$W/steps.json" --progress plain
  assert_eq 2 "$RC" "RUN steps for linux/arm64 on x86_64 without an emulator: exit 2"
  assert_contains "$ERR" "field 'platform' is linux/arm64: RUN steps run the base image's own linux/arm64 programs, and this linux/amd64 machine cannot execute them" "says why"
  assert_contains "$ERR" "qemu-user-static" "says the way out"
  assert_not_contains "$ERR" "platform linux/amd64: building" "refused before the first platform is built"
fi

# ---- a nested base spec is built for each platform --------------------------------------------
cat >"$W/nested.json" <<'EOF'
{"name": "multi-nested", "platform": "linux/amd64,linux/arm64", "source_root": "app", "source_copy_mode": "all",
 "base_image": {"name": "nb", "env": {"FROM_BASE": "1"}}}
EOF
build_ok "$W/nested.json" -o "oci:$T/nested"
NTAG=$(jget "j['tag']" <<<"$OUT")
for p in amd64 arm64; do
  kiln inspect "oci:$T/nested:$NTAG" --platform "linux/$p"
  assert_eq "$p FROM_BASE=1" "$(jget "j['config']['architecture'] + ' ' + [e for e in j['config']['config']['Env'] if e.startswith('FROM_BASE')][0]" <<<"$OUT")" \
    "nested base: linux/$p's image sits on a base built for linux/$p"
done

# ---- the registry: every platform's image by digest, then the index under the tag -----------
start_registry plain
R=$REG_ADDR
sed "s|\"name\": \"multi\"|\"name\": \"multi\", \"registry\": \"$R\"|" "$W/spec.json" >"$W/push.json"
kiln build "$W/push.json" --json --progress plain
[[ $RC == 0 ]] || die "push of the index failed ($RC): $ERR"
PUSHED=$OUT
assert_eq success "$(jget "j['status']" <<<"$PUSHED")" "push: status success"
assert_eq "$INDEX" "$(jget "j['digest']" <<<"$PUSHED")" "push: the same index as the layout's (the registry does not enter the image)"
assert_eq "$INDEX" "$(jget "j['pushed']['digest']" <<<"$PUSHED")" "push: the registry holds the index under the digest kiln computed"
skopeo inspect --tls-verify=false --raw "docker://$R/multi:$TAG" >"$T/reg.json"
assert_eq "$INDEX" "sha256:$(sha256sum <"$T/reg.json" | cut -d' ' -f1)" "skopeo reads the index back byte for byte"
for p in amd64 arm64; do
  want=$([[ $p == amd64 ]] && echo "$AMD" || echo "$ARM")
  skopeo copy -q --src-tls-verify=false --override-arch "$p" "docker://$R/multi:$TAG" "oci:$T/pull-$p:x" >"$T/pull.log" 2>&1 ||
    fail "skopeo copy --override-arch $p from the registry: $(cat "$T/pull.log")"
  assert_eq "$want" "sha256:$(skopeo inspect --raw "oci:$T/pull-$p:x" | sha256sum | cut -d' ' -f1)" \
    "skopeo resolves linux/$p to its image in the registry"
  kiln inspect "$R/multi:$TAG" --platform "linux/$p" --insecure-allow-http "$R"
  assert_eq "$want $INDEX" "$(jget "j['digest'] + ' ' + j['index']['digest']" <<<"$OUT")" "kiln inspect of the registry's index: linux/$p's image, through the index"
done
# The tag is a content hash: a second build finds the index and builds nothing.
M=$(reg_mark)
kiln build "$W/push.json" --json --progress plain
assert_eq 0 "$RC" "second push: exit 0"
assert_eq exists "$(jget "j['status']" <<<"$OUT")" "second push: status exists"
assert_eq "$INDEX" "$(jget "j['digest']" <<<"$OUT")" "second push: the registry's index"
assert_eq 0 "$(reg_count PUT . "$M")" "second push: nothing PUT"
# With an output: the index is built from the cache for it, checked against the registry's, and
# written; still nothing pushed.
M=$(reg_mark)
kiln build "$W/push.json" --json --progress plain -o "oci:$T/again"
assert_eq 0 "$RC" "exists + output: exit 0"
assert_eq exists "$(jget "j['status']" <<<"$OUT")" "exists + output: status exists"
assert_eq "$INDEX" "$(jget "j['outputs'][0]['digest']" <<<"$OUT")" "exists + output: the layout gets the registry's index"
assert_eq 0 "$(reg_count PUT . "$M")" "exists + output: nothing PUT"
skopeo inspect --raw "oci:$T/again:$TAG" | cmp -s - "$T/raw.json" || fail "exists + output: the layout's index is the registry's"

# ---- never half an index under the tag: a platform's manifest that cannot be put stops the push
# before the index is put -----------------------------------------------------------------------
start_fault_proxy "$R" "status=500,method=PUT,path=/manifests/$ARM,count=0"
sed "s|\"name\": \"multi\"|\"name\": \"multi-fault\", \"registry\": \"$PROXY_ADDR\"|" "$W/spec.json" >"$W/fault.json"
kiln build "$W/fault.json" --json --progress quiet
assert_eq 6 "$RC" "the arm64 manifest PUT always fails: exit 6 (transient)"
assert_contains "$(cat "$PROXY_LOG")" "PUT /v2/multi-fault/manifests/$ARM" "the fault did fire"
assert_eq 0 "$(grep -c "PUT /v2/multi-fault/manifests/$TAG" "$PROXY_LOG" || true)" "no index PUT under the tag after a platform failed"
skopeo inspect --tls-verify=false --raw "docker://$R/multi-fault:$TAG" >/dev/null 2>&1 && fail "the tag exists after a failed push" || pass
stop_fault_proxy

# ---- kiln push of a layout's index: the whole index, or one platform with --platform ---------
kiln push "oci:$T/out:$TAG" "$R/pushed:v1" --json --insecure-allow-http "$R"
assert_eq 0 "$RC" "kiln push of an index tag: exit 0"$'\n'"$ERR"
assert_eq "$INDEX" "$(jget "j['digest']" <<<"$OUT")" "kiln push: the whole index, under its digest"
assert_eq "[\"$AMD\", \"$ARM\"]" "$(jget "[p['digest'] for p in j['platforms']]" <<<"$OUT")" "kiln push: both platforms' images"
skopeo inspect --tls-verify=false --raw "docker://$R/pushed:v1" | cmp -s - "$T/raw.json" || fail "kiln push: the registry holds the layout's index byte for byte"
kiln push "oci:$T/out:$TAG" "$R/pushed:arm" --platform linux/arm64 --json --insecure-allow-http "$R"
assert_eq 0 "$RC" "kiln push --platform linux/arm64: exit 0"
assert_eq "$ARM" "$(jget "j['digest']" <<<"$OUT")" "kiln push --platform: that platform's image only"
# An index kiln would not write byte for byte (here: one with an annotation) is refused whole,
# never pushed as another digest.
"$PYTHON" - "$T/out" "$TAG" <<'PY'
import hashlib, json, os, sys
d, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(os.path.join(d, "index.json")))
top = [m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
inner = json.load(open(os.path.join(d, "blobs", "sha256", top["digest"].split(":")[1])))
inner["annotations"] = {"org.example.made-by": "another tool"}
b = json.dumps(inner).encode()
h = hashlib.sha256(b).hexdigest()
open(os.path.join(d, "blobs", "sha256", h), "wb").write(b)
idx["manifests"].append({"mediaType": top["mediaType"], "digest": "sha256:" + h, "size": len(b),
                         "annotations": {"org.opencontainers.image.ref.name": "foreign"}})
json.dump(idx, open(os.path.join(d, "index.json"), "w"))
PY
M=$(reg_mark)
kiln push "oci:$T/out:foreign" "$R/pushed:foreign" --insecure-allow-http "$R"
assert_eq 2 "$RC" "an index kiln cannot push as it is: exit 2"
assert_contains "$ERR" "names an image index that kiln cannot push as it is (it is not in the form kiln writes)" "says why"
assert_contains "$ERR" "--platform" "says the way out"
assert_eq 0 "$(reg_count PUT . "$M")" "an index refused: nothing PUT"

# ---- a multi-platform registry base: each platform builds on its own base ---------------------
cat >"$W/on-base.json" <<EOF
{"name": "on-base", "platform": "linux/arm64,linux/amd64", "base_image": "$R/multi:$TAG",
 "env": {"LAYER": "top"}}
EOF
build_ok "$W/on-base.json" -o "oci:$T/on-base"
OTAG=$(jget "j['tag']" <<<"$OUT")
for p in amd64 arm64; do
  kiln inspect "oci:$T/on-base:$OTAG" --platform "linux/$p"
  want=$([[ $p == amd64 ]] && echo "$AMD" || echo "$ARM")
  base_layers=$(skopeo inspect --tls-verify=false --raw "docker://$R/multi@$want" | jget "[l['digest'] for l in j['layers']]")
  assert_eq "$base_layers" "$(jget "[l['digest'] for l in j['layers']][:1]" <<<"$OUT")" \
    "registry base: linux/$p's image starts with linux/$p's base layers"
done
