#!/usr/bin/env bash
# kiln's images are valid for the real tools: oci-image-tool, umoci, skopeo. The unpacked rootfs
# holds exactly the project's files ("all" mode, with its exclusions), with normalized modes,
# symlinks kept as symlinks, and the config the spec asks for; every compression, an image built on
# a local OCI base, a docker-archive, and a large file split into its own layer.
source "$(dirname "$0")/lib.sh"
need_tools oci-image-tool umoci skopeo zstd tar gzip

# A small Flyte-like project: packages, an executable script, a symlink inside the tree, an empty
# directory, a .dockerignore and a .gitignore excluding things, __pycache__, a .pyc and a .git dir.
P=$T/app/proj
mkdir -p "$P"/{wf/sub,utils,empty,data,build,.git/objects,wf/__pycache__}
printf 'from wf.sub import mod\n' >"$P/wf/__init__.py"
printf 'X = 1\n' >"$P/wf/sub/__init__.py"
printf 'def task():\n    return 42\n' >"$P/wf/sub/mod.py"
printf 'def helper():\n    pass\n' >"$P/utils/helpers.py"
printf '#!/bin/sh\necho run\n' >"$P/run.sh"
chmod 0750 "$P/run.sh"                       # any x bit → 0755 in the image
printf 'private = True\n' >"$P/utils/private.py"
chmod 0600 "$P/utils/private.py"             # → 0644 in the image
ln -s ../utils/helpers.py "$P/wf/helper_link.py"
printf 'keep\n' >"$P/data/keep.txt"
printf 'secret\n' >"$P/data/secret.txt"      # .dockerignore
printf 'log\n' >"$P/debug.log"               # .dockerignore (*.log)
printf 'obj\n' >"$P/build/out.o"             # .gitignore (build/)
printf 'bytecode\n' >"$P/wf/__pycache__/mod.cpython-311.pyc"
printf 'bytecode\n' >"$P/utils/old.pyc"
printf 'ref: refs/heads/main\n' >"$P/.git/HEAD"
printf 'data/secret.txt\n*.log\n' >"$P/.dockerignore"
printf 'build/\n' >"$P/.gitignore"
chmod 0700 "$P/empty"                        # dirs → 0755

write_spec() { # write_spec FILE COMPRESSION
  cat >"$1" <<EOF
{
  "name": "flyte-app",
  "source_root": "proj",
  "source_copy_mode": "all",
  "env": {"A": "1", "B": "two words"},
  "entrypoint": ["python", "-m", "wf"],
  "labels": {"team": "ml", "org.opencontainers.image.title": "flyte app"},
  "annotations": {"org.example.build": "ci"},
  "compression": "$2"
}
EOF
}
cd "$T/app"
write_spec spec-gzip.json gzip
write_spec spec-zstd.json zstd
write_spec spec-none.json none

# ---- gzip (the default compression): all three tools accept the image ---------------------------
build_ok spec-gzip.json -o "oci:$T/out:gz"
GZ_DIGEST=$(jget "j['digest']" <<<"$OUT")
GZ_TAG=$(jget "j['tag']" <<<"$OUT")
assert_eq "oci:$T/out:gz" "$(jget "j['outputs'][0]['target']" <<<"$OUT")" "JSON result names the output"
assert_eq "$GZ_DIGEST" "$(jget "j['outputs'][0]['digest']" <<<"$OUT")" "output digest is the image digest"
oci_validate "$T/out" gz "$T/bundle-gz"

# The rootfs holds exactly these paths, with normalized modes and the symlink as a symlink: the
# .dockerignore'd, .gitignore'd, .git, __pycache__ and *.pyc paths are gone, and so is the empty
# directory (flytekit copies files, so an empty directory never reaches its image: docs/files.md).
cat >"$T/expected-listing" <<'EOF'
d 755 ./root
f 644 ./root/.dockerignore
f 644 ./root/.gitignore
d 755 ./root/data
f 644 ./root/data/keep.txt
f 755 ./root/run.sh
d 755 ./root/utils
f 644 ./root/utils/helpers.py
f 644 ./root/utils/private.py
d 755 ./root/wf
f 644 ./root/wf/__init__.py
l 777 ./root/wf/helper_link.py -> ../utils/helpers.py
d 755 ./root/wf/sub
f 644 ./root/wf/sub/__init__.py
f 644 ./root/wf/sub/mod.py
EOF
rootfs_listing "$T/bundle-gz" >"$T/actual-listing"
assert_files_equal "$T/expected-listing" "$T/actual-listing" "unpacked rootfs (gzip) holds exactly the expected paths and modes"

# Every file's content is the project's.
while IFS= read -r f; do
  assert_cmd "content of /root/$f is the source's" cmp -s "$T/bundle-gz/rootfs/root/$f" "$P/$f"
done < <(cd "$T/bundle-gz/rootfs/root" && find . -type f | sed 's|^\./||')

# The config carries the spec's Env (PYTHONPATH first), Entrypoint, WorkingDir and labels.
config_json "$T/out" gz >"$T/config-gz.json"
assert_eq '["PYTHONPATH=/root", "A=1", "B=two words"]' "$(jget "j['config']['Env']" "$T/config-gz.json")" "config Env"
assert_eq '["python", "-m", "wf"]' "$(jget "j['config']['Entrypoint']" "$T/config-gz.json")" "config Entrypoint"
assert_eq "/root" "$(jget "j['config']['WorkingDir']" "$T/config-gz.json")" "config WorkingDir"
assert_eq "ml" "$(jget "j['config']['Labels']['team']" "$T/config-gz.json")" "config label team"
assert_eq "flyte app" "$(jget "j['config']['Labels']['org.opencontainers.image.title']" "$T/config-gz.json")" "config label title"
assert_eq "all" "$(jget "j['config']['Labels']['dev.kiln.source.copy-mode']" "$T/config-gz.json")" "source copy-mode label"
assert_eq "linux amd64" "$(jget "j['os'] + ' ' + j['architecture']" "$T/config-gz.json")" "config platform"
# Manifest annotations: the spec's own one, plus the creation time (epoch 0 by default).
manifest_json "$T/out" gz >"$T/manifest-gz.json"
assert_eq "ci" "$(jget "j['annotations']['org.example.build']" "$T/manifest-gz.json")" "manifest annotation from the spec"
assert_eq "1970-01-01T00:00:00Z" "$(jget "j['annotations']['org.opencontainers.image.created']" "$T/manifest-gz.json")" "created annotation"
# skopeo agrees with kiln on the digest and the labels.
SK=$(skopeo inspect "oci:$T/out:gz")
assert_eq "$GZ_DIGEST" "$(jget "j['Digest']" <<<"$SK")" "skopeo sees kiln's manifest digest"
assert_eq "ml" "$(jget "j['Labels']['team']" <<<"$SK")" "skopeo sees the labels"
# kiln inspect reads the same image back.
kiln inspect "oci:$T/out:gz"
assert_eq 0 "$RC" "kiln inspect exits 0"
assert_eq "$GZ_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "kiln inspect digest"
assert_eq "all" "$(jget "j['source']['copy_mode']" <<<"$OUT")" "kiln inspect source.copy_mode"
assert_eq "10" "$(jget "str(j['source']['files'])" <<<"$OUT")" "kiln inspect source.files (non-directories)"

# ---- zstd and none: valid for the tools that know them; same diff_ids as gzip ------------------
GZ_DIFF_IDS=$(jget "j['rootfs']['diff_ids']" "$T/config-gz.json")
for c in zstd none; do
  build_ok "spec-$c.json" -o "oci:$T/out:$c"
  case $c in
    zstd) mt=application/vnd.oci.image.layer.v1.tar+zstd ;;
    none) mt=application/vnd.oci.image.layer.v1.tar ;;
  esac
  # Every layer has the media type of the asked compression.
  assert_eq "[\"$mt\"]" "$(manifest_json "$T/out" "$c" | jget "sorted(set(l['mediaType'] for l in j['layers']))")" "$c: layer media types"
  if [[ $c == zstd ]]; then
    oci_validate "$T/out" zstd # skopeo only: umoci and oci-image-tool know no zstd
  else
    oci_validate "$T/out" none "$T/bundle-none"
  fi
  # The uncompressed tar is the same whatever the compression: same diff_ids as gzip.
  assert_eq "$GZ_DIFF_IDS" "$(config_json "$T/out" "$c" | jget "j['rootfs']['diff_ids']")" "$c: diff_ids equal gzip's"
  # Each blob decompresses to a tar whose sha256 is its diff_id (umoci can't check zstd for us).
  manifest_json "$T/out" "$c" | jget "'\n'.join(l['digest'] for l in j['layers'])" >"$T/layers-$c"
  i=0
  while IFS= read -r d; do
    got=$(blob_cat "$(blob_path "$T/out" "$d")" | sha256sum | cut -d' ' -f1)
    assert_eq "$(jget "j['rootfs']['diff_ids'][$i]" <<<"$(config_json "$T/out" "$c")")" "sha256:$got" "$c: layer $i decompresses to its diff_id"
    i=$((i + 1))
  done <"$T/layers-$c"
done
# The uncompressed image unpacks to the same tree as the gzip one.
rootfs_listing "$T/bundle-none" >"$T/listing-none"
assert_files_equal "$T/expected-listing" "$T/listing-none" "compression none: same rootfs"

# ---- an image built on the first one (base_image "oci:DIR:TAG") --------------------------------
mkdir -p "$T/app2"
printf 'extra\n' >"$T/app2/extra.txt"
cat >"$T/app2/spec.json" <<'EOF'
{"name": "flyte-app-child", "base_image": "oci:../out:gz", "copy": ["extra.txt"], "env": {"A": "2"}}
EOF
build_ok "$T/app2/spec.json" -o "oci:$T/out2:child"
CHILD=$OUT
oci_validate "$T/out2" child "$T/bundle-child"
BASE_LAYERS=$(jget "[l['digest'] for l in j['layers']]" "$T/manifest-gz.json")
manifest_json "$T/out2" child >"$T/manifest-child.json"
# The child's manifest lists the base's layers first, unchanged, then its own (one: the copy).
assert_eq "$BASE_LAYERS" "$(jget "[l['digest'] for l in j['layers']][:-1]" "$T/manifest-child.json")" "child starts with the base's layers"
assert_eq "$(($(jget "len(j['layers'])" "$T/manifest-gz.json") + 1))" "$(jget "len(j['layers'])" "$T/manifest-child.json")" "child has one more layer"
# The JSON result marks the base layer from_base (a cache "hit": nothing to build), the new one not.
assert_eq '[[true, "hit"], [false, "miss"]]' "$(jget "[[l['from_base'], l['cache']] for l in j['layers']]" <<<"$CHILD")" "from_base flags"
# The base is recorded in the manifest annotations.
assert_eq "$GZ_DIGEST" "$(jget "j['annotations'].get('org.opencontainers.image.base.digest')" "$T/manifest-child.json")" "base.digest annotation"
# An oci: base is a host path: it is not named (the image must not depend on where the layout is).
assert_eq "false" "$(jget "'org.opencontainers.image.base.name' in j['annotations']" "$T/manifest-child.json")" "no base.name annotation for an oci: base"
# Config: Env merged (A overridden in place), Entrypoint inherited, diff_ids = base's + one.
config_json "$T/out2" child >"$T/config-child.json"
assert_eq '["PYTHONPATH=/root", "A=2", "B=two words"]' "$(jget "j['config']['Env']" "$T/config-child.json")" "child Env merges over the base's"
assert_eq '["python", "-m", "wf"]' "$(jget "j['config']['Entrypoint']" "$T/config-child.json")" "child inherits the Entrypoint"
assert_eq "ml" "$(jget "j['config']['Labels']['team']" "$T/config-child.json")" "child keeps the base's labels"
assert_eq "$GZ_DIFF_IDS" "$(jget "j['rootfs']['diff_ids'][:-1]" "$T/config-child.json")" "child diff_ids start with the base's"
# The unpacked child holds the base's tree plus /root/extra.txt.
{
  cat "$T/expected-listing"
  echo "f 644 ./root/extra.txt"
} | LC_ALL=C sort -k3 >"$T/expected-child"
rootfs_listing "$T/bundle-child" >"$T/listing-child"
assert_files_equal "$T/expected-child" "$T/listing-child" "child rootfs = base rootfs + extra.txt"

# ---- docker-archive output ----------------------------------------------------------------------
build_ok spec-gzip.json -o "docker-archive:$T/img.tar"
assert_eq "$GZ_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "docker-archive build has the same image digest"
skopeo inspect "docker-archive:$T/img.tar" >"$T/sk-archive.json" 2>"$T/sk.err" || die "skopeo inspect docker-archive failed: $(cat "$T/sk.err")"
pass
# skopeo sees the archive's layers as the uncompressed tars: their digests are the diff_ids.
assert_eq "$GZ_DIFF_IDS" "$(jget "j['Layers']" "$T/sk-archive.json")" "skopeo: docker-archive layers are the diff_ids"
# Copied into an OCI layout by skopeo, it unpacks to the same rootfs.
skopeo copy -q "docker-archive:$T/img.tar" "oci:$T/out3:t" >/dev/null 2>"$T/sk.err" || die "skopeo copy failed: $(cat "$T/sk.err")"
oci_validate "$T/out3" t "$T/bundle-archive"
rootfs_listing "$T/bundle-archive" >"$T/listing-archive"
assert_files_equal "$T/expected-listing" "$T/listing-archive" "docker-archive → skopeo copy → same rootfs"
# manifest.json's Layers are files whose sha256 is the config's diff_ids, in order.
mkdir "$T/archive"
tar -xf "$T/img.tar" -C "$T/archive"
ARCH_CFG=$(jget "j[0]['Config']" "$T/archive/manifest.json")
# One image, tagged name:tag.
assert_eq "[\"flyte-app:$GZ_TAG\"]" "$(jget "[t for m in j for t in m['RepoTags']]" "$T/archive/manifest.json")" "docker-archive RepoTags"
assert_eq "$GZ_DIFF_IDS" "$(jget "j['rootfs']['diff_ids']" "$T/archive/$ARCH_CFG")" "archive config has the image's diff_ids"
jget "'\n'.join(j[0]['Layers'])" "$T/archive/manifest.json" >"$T/archive-layers"
i=0
while IFS= read -r l; do
  assert_eq "$(jget "j['rootfs']['diff_ids'][$i]" "$T/archive/$ARCH_CFG")" "sha256:$(sha256sum <"$T/archive/$l" | cut -d' ' -f1)" "archive layer $l hashes to diff_id $i"
  i=$((i + 1))
done <"$T/archive-layers"
assert_eq "$(jget "len(j['rootfs']['diff_ids'])" "$T/archive/$ARCH_CFG")" "$i" "archive lists one file per diff_id"

# ---- a file above large_file_threshold gets a layer of its own ----------------------------------
L=$T/large
mkdir -p "$L/proj/models" "$L/proj/pkg"
seq -f 'weights row %06g' 1 20000 >"$L/proj/models/weights.txt" # 360 kB, compressible
head -c 50000 "$L/proj/models/weights.txt" >"$L/proj/models/small.txt" # below the threshold
printf 'import os\n' >"$L/proj/pkg/__init__.py"
cat >"$L/spec.json" <<'EOF'
{"name": "big", "source_root": "proj", "source_copy_mode": "all", "large_file_threshold": 100000}
EOF
build_ok "$L/spec.json" -o "oci:$L/out:t"
LARGE=$OUT
# Two layers: the large file alone (first: heavy, stable layers go first), then the rest.
assert_eq 2 "$(jget "len(j['layers'])" <<<"$LARGE")" "large file split: layer count"
assert_eq "source_root large file models/weights.txt" "$(jget "j['layers'][0]['label']" <<<"$LARGE")" "first layer is the large file's"
assert_eq "[1, 2]" "$(jget "[l['files'] for l in j['layers']]" <<<"$LARGE")" "file counts per layer"
oci_validate "$L/out" t "$L/bundle"
assert_cmd "large file content survives the unpack" cmp -s "$L/bundle/rootfs/root/models/weights.txt" "$L/proj/models/weights.txt"
# Tar listings of the blobs: the large layer's only regular file is weights.txt; the other layer
# has everything else and not weights.txt.
manifest_json "$L/out" t | jget "'\n'.join(l['digest'] for l in j['layers'])" >"$L/layers"
mapfile -t LD <"$L/layers"
assert_eq "root/models/weights.txt" "$(blob_cat "$(blob_path "$L/out" "${LD[0]}")" | tar -tvf - | awk '$1 ~ /^-/ {print $NF}')" "large layer holds only weights.txt"
assert_eq "root/models/small.txt root/pkg/__init__.py" "$(blob_cat "$(blob_path "$L/out" "${LD[1]}")" | tar -tvf - | awk '$1 ~ /^-/ {print $NF}' | sort | xargs)" "main layer holds the other files"
