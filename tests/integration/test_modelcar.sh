#!/usr/bin/env bash
# KServe modelcar images end to end: a busybox base made here from Debian's busybox-static, a model
# directory (one 200 MB file among small ones) built with `kiln modelcar`, unpacked by umoci and
# run by bwrap (the modelcar-init check and the modelcar's symlink command, taken from the pod
# patch); a rebuild after one small file changes reuses the big file's layer; every `kiln
# k8s-patch` output parses and pins the digest; the lint catches an empty /models, an entrypoint
# and a missing shell. Then through a registry: a registry base, --push, k8s-patch resolving a tag,
# verify of a registry reference.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools umoci bwrap skopeo oci-image-tool
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"
"$PYTHON" -c 'import yaml' 2>/dev/null || die "missing PyYAML for $PYTHON (Debian's python3-yaml)"

L="$T/layout"

# yget EXPR FILE: like jget, for a YAML document (PyYAML's safe_load).
yget() {
  "$PYTHON" -c '
import json, sys, yaml
j = yaml.safe_load(open(sys.argv[2]))
v = eval(sys.argv[1], {"j": j, "json": json})
print(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
' "$@"
}

# unescape_k8s ARG: what the container's shell gets for an arg (the kubelet turns $$ into $).
unescape_k8s() { "$PYTHON" -c 'import sys; print(sys.argv[1].replace("$$", "$"))' "$1"; }

# in_rootfs ROOTFS CMD: runs `sh -c CMD` inside ROOTFS (own pid namespace, /proc, a tmpfs /mnt).
in_rootfs() {
  bwrap --bind "$1" / --proc /proc --dev /dev --tmpfs /mnt --unshare-all /bin/sh -c "$2"
}

# ---- a busybox base, built by kiln from a rootfs directory ----------------------------------------
mkdir -p "$T/busybox/bin"
cp /bin/busybox "$T/busybox/bin/busybox"
for a in sh ln sleep ls [ test mkdir cat; do ln -s busybox "$T/busybox/bin/$a"; done
cat >"$T/busybox.json" <<'EOF'
{"name": "busybox", "source_root": "busybox", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/busybox.json" -o "oci:$L:busybox"
BASE_DIGEST=$(jget "j['digest']" <<<"$OUT")
oci_validate "$L" busybox "$T/busybox-bundle"
in_rootfs "$T/busybox-bundle/rootfs" 'ls / >/dev/null && [ -x /bin/busybox ]' || fail "the busybox base does not run under bwrap"
pass

# ---- the model ------------------------------------------------------------------------------------
M="$T/model"
mkdir -p "$M/tokenizer"
head -c $((200 << 20)) /dev/urandom >"$M/model.safetensors"
printf '{"architectures": ["Demo"]}\n' >"$M/config.json"
printf 'hello\nworld\n' >"$M/tokenizer/vocab.txt"
printf 'h e\n' >"$M/tokenizer/merges.txt"
printf '# demo model\n' >"$M/README.md"
chmod 600 "$M/config.json"  # private in the checkout: readable by any uid in the image
chmod 700 "$M/tokenizer"

kiln modelcar "$M" --base "oci:$L:busybox" -o "oci:$L:v1" --json --progress quiet
((RC == 0)) || die "kiln modelcar exited $RC"$'\n'"$ERR"$'\n'"$OUT"
printf '%s' "$OUT" >"$T/v1.json"
V1=$(jget "j['digest']" "$T/v1.json")
assert_eq "model@$V1" "$(jget "j['reference']" "$T/v1.json")" "the reference is name@digest"
assert_eq "[]" "$(jget "[f for f in j['lint'] if f['severity'] == 'error']" "$T/v1.json")" "the modelcar lints clean"
BIG=$(jget "[l for l in j['layers'] if 'large file model.safetensors' in l['label']][0]" "$T/v1.json")
BIG_DIGEST=$(jget "j['digest']" <<<"$BIG")
assert_eq "application/vnd.oci.image.layer.v1.tar" "$(jget "j['media_type']" <<<"$BIG")" "the big file's layer is uncompressed"
assert_eq miss "$(jget "j['cache']" <<<"$BIG")" "first build writes the big layer"
assert_eq 3 "$(jget "len(j['layers'])" "$T/v1.json")" "base + the big file + the small files"

config_json "$L" v1 >"$T/v1-config.json"
assert_eq "False False" "$(jget "'%s %s' % ('Entrypoint' in j['config'], 'Cmd' in j['config'])" "$T/v1-config.json")" \
  "no entrypoint and no cmd"
assert_eq "$(jget "j['model_digest']" "$T/v1.json")" "$(jget "j['config']['Labels']['dev.kiln.model.digest']" "$T/v1-config.json")" \
  "the model digest label"
assert_eq "$BASE_DIGEST" "$(jget "j['config']['Labels']['dev.kiln.base.digest']" "$T/v1-config.json")" "the base digest label"
assert_eq "$BASE_DIGEST" "$(manifest_json "$L" v1 | jget "j['annotations']['org.opencontainers.image.base.digest']")" \
  "the base digest annotation"

# ---- umoci unpacks it; modes; bwrap runs KServe's commands from the pod patch ----------------------
oci_validate "$L" v1 "$T/bundle"
R="$T/bundle/rootfs"
rootfs_listing "$T/bundle" >"$T/listing"
assert_eq "d 775 ./models" "$(grep ' ./models$' "$T/listing")" "/models is 0775"
assert_eq "d 775 ./models/tokenizer" "$(grep ' ./models/tokenizer$' "$T/listing")" "model directories are 0775"
assert_eq "f 644 ./models/config.json" "$(grep ' ./models/config.json$' "$T/listing")" "model files are 0644"
cmp -s "$M/model.safetensors" "$R/models/model.safetensors" || fail "the big file differs after unpack"
pass
if [[ $(id -u) == 0 ]]; then
  # Files private in the checkout are readable by an unprivileged uid in the image.
  chroot --userspec=65534:65534 "$R" /bin/cat /models/config.json >/dev/null || fail "uid 65534 cannot read /models/config.json"
  chroot --userspec=65534:65534 "$R" /bin/ls /models/tokenizer >/dev/null || fail "uid 65534 cannot list /models/tokenizer"
  pass
fi

kiln k8s-patch --modelcar "oci:$L:v1" --repository registry.example/models/demo --json
((RC == 0)) || die "k8s-patch exited $RC"$'\n'"$ERR"
printf '%s' "$OUT" >"$T/init.json"
INIT_ARGS=$(jget "[c for c in j['spec']['initContainers'] if c['name'] == 'modelcar-init'][0]['args']" "$T/init.json")
CAR_ARGS=$(jget "[c for c in j['spec']['containers'] if c['name'] == 'modelcar'][0]['args']" "$T/init.json")
assert_eq '["sh", "-c"]' "$(jget "j[:2]" <<<"$CAR_ARGS")" "the modelcar runs sh -c"
CAR_CMD=$(unescape_k8s "$(jget "j[2]" <<<"$CAR_ARGS")")
INIT_CMD=$(unescape_k8s "$(jget "j[2]" <<<"$INIT_ARGS")")
assert_eq 'ln -sf /proc/$$/root/models /mnt/models && sleep infinity' "$CAR_CMD" "the shell sees KServe's symlink command"

out=$(in_rootfs "$R" "$INIT_CMD" 2>&1) || fail "modelcar-init fails on a good image: $out"
assert_contains "$out" "not empty" "modelcar-init reports /models"
# The symlink command, without `sleep infinity`, then a look through the link.
out=$(in_rootfs "$R" "${CAR_CMD% && sleep infinity} && ls /mnt/models/ && cat /mnt/models/tokenizer/vocab.txt" 2>&1) ||
  fail "the modelcar command fails: $out"
assert_contains "$out" "model.safetensors" "/mnt/models lists the model through /proc/\$\$/root"
assert_contains "$out" "world" "files read through the link"
# The init check fails on an image whose /models is empty.
mkdir -p "$T/empty-rootfs"
cp -a "$R/bin" "$T/empty-rootfs/"
mkdir "$T/empty-rootfs/models"
if in_rootfs "$T/empty-rootfs" "$INIT_CMD" >/dev/null 2>&1; then fail "modelcar-init passes an empty /models"; else pass; fi
rm -rf "$T/bundle" "$T/busybox-bundle" "$T/empty-rootfs"

# ---- every patch parses (YAML and JSON) and pins the digest ----------------------------------------
REF="registry.example/models/demo@$V1"
for mode in init sidecar imagevolume; do
  for fmt in yaml json; do
    flag=()
    [[ $fmt == json ]] && flag=(--json)
    kiln k8s-patch --modelcar "oci:$L:v1" --repository registry.example/models/demo --mode "$mode" "${flag[@]}"
    ((RC == 0)) || {
      fail "k8s-patch --mode $mode ($fmt) exited $RC: $ERR"
      continue
    }
    printf '%s\n' "$OUT" >"$T/patch.$mode.$fmt"
    images=$(yget "sorted(set([c['image'] for k in ('containers', 'initContainers') for c in j['spec'].get(k, []) if 'image' in c] + [v['image']['reference'] for v in j['spec']['volumes'] if 'image' in v]))" "$T/patch.$mode.$fmt") ||
      {
        fail "the $mode patch ($fmt) does not parse"
        continue
      }
    assert_eq "[\"$REF\"]" "$images" "$mode ($fmt): every image is the digest reference"
  done
  assert_eq "$(yget j "$T/patch.$mode.yaml")" "$(yget j "$T/patch.$mode.json")" "$mode: YAML and JSON say the same"
done
assert_eq true "$(yget "j['spec']['shareProcessNamespace']" "$T/patch.init.yaml")" "init: shareProcessNamespace"
assert_eq '{"emptyDir": {}, "name": "kserve-provision-location"}' "$(yget "j['spec']['volumes'][0]" "$T/patch.init.yaml")" \
  "init: the shared emptyDir"
assert_eq '["Always", "modelcar"]' \
  "$(yget "[[c.get('restartPolicy'), c['name']] for c in j['spec']['initContainers'] if 'startupProbe' in c][0]" "$T/patch.sidecar.yaml")" \
  "sidecar: a native sidecar with a startup probe"
assert_eq '{"mountPath": "/mnt/models", "name": "kserve-provision-location", "readOnly": true, "subPath": "models"}' \
  "$(yget "j['spec']['containers'][0]['volumeMounts'][0]" "$T/patch.imagevolume.yaml")" "imagevolume: subPath models, read-only"
kiln k8s-patch --modelcar "oci:$L:v1"
assert_eq 2 "$RC" "an oci: modelcar needs --repository"
kiln k8s-patch --modelcar "oci:$L:v1" --repository registry.example/models/demo:v1
assert_eq 2 "$RC" "--repository with a tag is refused"

# ---- several platforms: one index, the model's layers shared, each node pinned to the index -----
# A two-platform busybox base. Its arm64 image is a stand-in (this machine's busybox labelled
# arm64): nothing here runs it, and only which base each platform gets is checked.
build_ok "$T/busybox.json" --platform linux/amd64,linux/arm64 -o "oci:$L:busybox-multi"
kiln modelcar "$M" --base "oci:$L:busybox-multi" --platform linux/amd64,linux/arm64 -o "oci:$L:multi" --json --progress quiet
((RC == 0)) || die "kiln modelcar --platform linux/amd64,linux/arm64 exited $RC"$'\n'"$ERR"$'\n'"$OUT"
printf '%s' "$OUT" >"$T/multi.json"
MC_INDEX=$(jget "j['digest']" "$T/multi.json")
assert_eq "application/vnd.oci.image.index.v1+json" "$(jget "j['media_type']" "$T/multi.json")" "a modelcar for two platforms is an image index"
assert_eq "[]" "$(jget "[f for f in j['lint'] if f['severity'] == 'error']" "$T/multi.json")" "both platforms pass the lint"
MC_AMD=$(jget "j['platforms'][0]['digest']" "$T/multi.json")
MC_ARM=$(jget "j['platforms'][1]['digest']" "$T/multi.json")
kiln modelcar "$M" --base "oci:$L:busybox-multi" --platform linux/amd64 -o "oci:$T/one:x" --json --progress quiet
assert_eq "$MC_AMD" "$(jget "j['digest']" <<<"$OUT")" "its linux/amd64 image is the one a one-platform modelcar on that base gives"
model_layers() { kiln inspect "oci:$L:multi" --platform "$1"; jget "[l['digest'] for l in j['layers']][1:]" <<<"$OUT"; }
assert_eq "$(model_layers linux/amd64)" "$(model_layers linux/arm64)" "the model's layers are the same blobs on both platforms"
kiln inspect "oci:$L:multi" --platform linux/arm64
assert_eq "arm64 $(jget "j['platforms'][1]['digest']" <<<"$(kiln build "$T/busybox.json" --platform linux/amd64,linux/arm64 --json --progress quiet; echo "$OUT")")" \
  "$(jget "j['config']['architecture'] + ' ' + j['config']['config']['Labels']['dev.kiln.base.digest']" <<<"$OUT")" \
  "the arm64 image sits on the base's arm64 image"
# verify lints every platform of an index: an index whose arm64 entry is the bare base (no
# /models) fails, naming the platform; --platform linux/amd64 lints the good one alone.
kiln modelcar verify "oci:$L:multi" --json
assert_eq "0 ok" "$(jget "str(j['exit_code']) + ' ' + j['status']" <<<"$OUT")" "modelcar verify of the index: both platforms pass"
assert_eq "$MC_INDEX" "$(jget "j['digest']" <<<"$OUT")" "modelcar verify of the index: names the index"
BB_ARM=$(kiln inspect "oci:$L:busybox-multi" --platform linux/arm64; jget "j['digest']" <<<"$OUT")
"$PYTHON" - "$L" "$MC_AMD" "$BB_ARM" <<'PY'
import hashlib, json, os, sys
d, amd, arm = sys.argv[1:]
def desc(digest, arch):
    size = os.path.getsize(os.path.join(d, "blobs", "sha256", digest.split(":")[1]))
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"}}
b = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [desc(amd, "amd64"), desc(arm, "arm64")]}).encode()
h = hashlib.sha256(b).hexdigest()
open(os.path.join(d, "blobs", "sha256", h), "wb").write(b)
idx = json.load(open(os.path.join(d, "index.json")))
idx["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + h,
                         "size": len(b), "annotations": {"org.opencontainers.image.ref.name": "mixed"}})
json.dump(idx, open(os.path.join(d, "index.json"), "w"))
PY
kiln modelcar verify "oci:$L:mixed"
assert_eq 2 "$RC" "modelcar verify of an index with a bad platform: exit 2"
assert_contains "$OUT" "linux/arm64: " "the finding names the platform"
assert_not_contains "$OUT" "linux/amd64: " "the good platform has no finding"
kiln modelcar verify "oci:$L:mixed" --platform linux/amd64
assert_eq 0 "$RC" "modelcar verify --platform linux/amd64 lints that image alone"

# k8s-patch pins the index (each node pulls its own platform's image), or one platform on request.
kiln k8s-patch --modelcar "oci:$L:multi" --repository registry.example/models/demo --json
assert_contains "$OUT" "registry.example/models/demo@$MC_INDEX" "k8s-patch of an index pins the index digest"
kiln k8s-patch --modelcar "oci:$L:multi" --repository registry.example/models/demo --platform linux/arm64 --json
assert_contains "$OUT" "registry.example/models/demo@$MC_ARM" "k8s-patch --platform linux/arm64 pins that platform's image"

# ---- one small file changes: only the small files' layer is rebuilt --------------------------------
printf 'again\n' >>"$M/tokenizer/vocab.txt"
kiln modelcar "$M" --base "oci:$L:busybox" -o "oci:$L:v2" --json --progress quiet
((RC == 0)) || die "the rebuild exited $RC"$'\n'"$ERR"
printf '%s' "$OUT" >"$T/v2.json"
BIG2=$(jget "[l for l in j['layers'] if 'large file model.safetensors' in l['label']][0]" "$T/v2.json")
assert_eq hit "$(jget "j['cache']" <<<"$BIG2")" "the big file's layer is a cache hit"
assert_eq "$BIG_DIGEST" "$(jget "j['digest']" <<<"$BIG2")" "the big file's layer digest is unchanged"
assert_ne "$V1" "$(jget "j['digest']" "$T/v2.json")" "a new model version is a new image"
assert_ne "$(jget "j['model_digest']" "$T/v1.json")" "$(jget "j['model_digest']" "$T/v2.json")" "and a new model digest"
assert_eq 1 "$(jget "len([l for l in j['layers'] if not l['from_base'] and l['cache'] == 'miss'])" "$T/v2.json")" \
  "one layer written"

# The same model as an ImageSpec (the SDK path) gives the same image, and so does the command run
# from elsewhere: paths are as written (relative to the working directory, or to the spec file).
cat >"$T/modelcar.json" <<EOF
{"name": "demo", "modelcar": true, "source_root": "model", "base_image": "oci:layout:busybox"}
EOF
build_ok "$T/modelcar.json" -o "oci:$L:spec"
SPEC_DIGEST=$(jget "j['digest']" <<<"$OUT")
OUT=$(cd "$T" && "$KILN" modelcar model --base oci:layout:busybox -o oci:layout:rel --json --progress quiet)
assert_eq "$SPEC_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "kiln build of the spec gives the command's digest"
assert_eq '{"base_image": "oci:layout:busybox", "modelcar": true, "name": "model", "source_root": "model"}' \
  "$(jget "j['spec']" <<<"$OUT")" "the command reports its spec"
cp -a "$T/model" "$T/elsewhere"
OUT=$(cd "$T" && "$KILN" modelcar elsewhere --base oci:layout:busybox -o oci:layout:moved --json --progress quiet)
assert_eq "$SPEC_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "the model directory's path does not change the image"
rm -rf "$T/elsewhere"

# ---- kiln modelcar verify ---------------------------------------------------------------------------
kiln modelcar verify "oci:$L:v2"
assert_eq 0 "$RC" "verify passes a good modelcar"
assert_contains "$OUT" "modelcar lint passed" "verify says so"
kiln modelcar verify "oci:$L:v2" --json
assert_eq ok "$(jget "j['status']" <<<"$OUT")" "verify --json status"
kiln modelcar "$M" --base "oci:$L:busybox" -o "oci:$L:latest" --progress quiet
assert_eq 0 "$RC" "a latest tag is only a warning"
assert_contains "$ERR" "latest_tag" "the build warns about latest"
kiln modelcar verify "oci:$L:latest" --json
assert_eq '0 ["latest_tag"]' "$RC $(jget "[f['code'] for f in j['findings']]" <<<"$OUT")" "verify warns about latest"

# ---- the lint catches an empty /models, an entrypoint and a missing shell --------------------------
# (An empty directory of a source tree is not baked, as flytekit copies files only: a RUN step
# makes the empty /models.)
cat >"$T/empty.json" <<'EOF'
{"name": "empty", "base_image": "oci:layout:busybox", "commands": ["mkdir -p /models"]}
EOF
build_ok "$T/empty.json" -o "oci:$L:empty"
kiln modelcar verify "oci:$L:empty" --json
assert_eq '2 ["models_empty"]' "$RC $(jget "[f['code'] for f in j['findings']]" <<<"$OUT")" "verify: empty /models"

mkdir -p "$T/withep/models"
printf 'w\n' >"$T/withep/models/w.txt"
cat >"$T/withep.json" <<'EOF'
{"name": "withep", "source_root": "withep", "source_dest": "/", "source_copy_mode": "all",
 "base_image": "oci:layout:busybox", "entrypoint": ["/bin/sh", "-c"]}
EOF
build_ok "$T/withep.json" -o "oci:$L:withep"
kiln modelcar verify "oci:$L:withep" --json
assert_eq '2 ["entrypoint"]' "$RC $(jget "[f['code'] for f in j['findings']]" <<<"$OUT")" "verify: an entrypoint"
# kiln modelcar drops the base's entrypoint.
kiln modelcar "$M" --base "oci:$L:withep" -o "oci:$L:noep" --progress quiet
assert_eq 0 "$RC" "a modelcar on a base with an entrypoint builds"
kiln modelcar verify "oci:$L:noep"
assert_eq 0 "$RC" "and has no entrypoint"

mkdir -p "$T/nosh/bin"
cp /bin/busybox "$T/nosh/bin/busybox"
for a in ln sleep ls [; do ln -s busybox "$T/nosh/bin/$a"; done
cat >"$T/nosh.json" <<'EOF'
{"name": "nosh", "source_root": "nosh", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/nosh.json" -o "oci:$L:nosh"
kiln modelcar "$M" --base "oci:$L:nosh" -o "oci:$L:nosh-model" --json --progress quiet
assert_eq 2 "$RC" "a modelcar on a base without sh fails"
assert_eq '["tool_missing"]' "$(jget "[f['code'] for f in j['lint']]" <<<"$OUT")" "the build's lint names the tool"
assert_contains "$(jget "j['lint'][0]['message']" <<<"$OUT")" "'sh'" "the missing tool is sh"
assert_not_contains "$(cat "$L/index.json")" '"nosh-model"' "a failed lint writes nothing"
kiln modelcar "$M" --base "oci:$L:nosh" -o "oci:$L:nosh-volume" --volume-only --progress quiet
assert_eq 0 "$RC" "--volume-only does not need the tools"

mkdir -p "$T/nothing"
kiln modelcar "$T/nothing" --base "oci:$L:busybox" -o "oci:$L:nothing"
assert_eq 2 "$RC" "an empty model directory is refused"
assert_contains "$ERR" "holds no file" "and says why"

# ---- through a registry: a registry base, --push, a tag resolved to its digest, verify ----------
start_registry plain
R=$REG_ADDR
cat >"$T/busybox-reg.json" <<EOF
{"name": "busybox", "registry": "$R", "source_root": "busybox", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/busybox-reg.json"
REG_BASE=$(jget "j['pushed']['reference']" <<<"$OUT")
REG_BASE=${REG_BASE%@*}
kiln modelcar "$M" --base "$REG_BASE" --push "$R/models/demo:v2" --json --progress quiet
((RC == 0)) || die "kiln modelcar --push exited $RC"$'\n'"$ERR"$'\n'"$OUT"
PUSHED=$(jget "j['digest']" <<<"$OUT")
assert_eq "$R/models/demo@$PUSHED" "$(jget "j['reference']" <<<"$OUT")" "--push: the reference is REPO@digest"
assert_eq "$R/models/demo:v2@$PUSHED" "$(jget "j['pushed']['reference']" <<<"$OUT")" "--push: pushed to the given tag"
assert_eq "$REG_BASE" "$(jget "j['spec']['base_image']" <<<"$OUT")" "a registry base"
kiln k8s-patch --modelcar "$R/models/demo:v2" --mode imagevolume
((RC == 0)) || fail "k8s-patch of a registry tag exited $RC: $ERR"
printf '%s\n' "$OUT" >"$T/patch.reg.yaml"
assert_eq "$R/models/demo@$PUSHED" "$(yget "j['spec']['volumes'][0]['image']['reference']" "$T/patch.reg.yaml")" \
  "k8s-patch resolves the tag to the pushed digest"
kiln modelcar verify "$R/models/demo:v2" --json --cache "$T/cache-verify"
assert_eq "0 ok $PUSHED" "$RC $(jget "j['status'] + ' ' + j['digest']" <<<"$OUT")" "verify of a registry reference (layers downloaded)"

# ---- SIGINT while the push's upload hangs: one failure object, exit 130, nothing pushed ---------
start_fault_proxy "$R" 'stall=30,method=PUT,path=/blobs/uploads/,count=1'
stop_during_stall INT "$T/int.out" "$T/int.err" "$KILN" modelcar "$M" --base "$REG_BASE" \
  --push "$PROXY_ADDR/models/demo-int:v1" --json --progress plain
assert_eq 130 "$STOP_RC" "SIGINT during kiln modelcar --push: exit 130"$'\n'"$(cat "$T/int.err")"
assert_cmd "it stopped within the grace ($STOP_SECS s)" test "$STOP_SECS" -lt 10
assert_eq "1" "$(grep -c '^{' "$T/int.out")" "one JSON object on stdout"
assert_eq "failed 130 interrupted" \
  "$(jget "' '.join(str(j[k]) for k in ('status', 'exit_code', 'error_kind'))" <"$T/int.out")" "the failure object"
assert_eq 0 "$(grep -c "PUT /v2/models/demo-int/manifests/" "$PROXY_LOG" || true)" "no manifest was sent"
stop_fault_proxy
