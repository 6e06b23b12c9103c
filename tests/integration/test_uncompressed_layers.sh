#!/usr/bin/env bash
# Uncompressed layers (compression "none", and a large file kiln stores as-is): the blob is the tar,
# so its digest is its diff_id and the sha256sum of the blob file; the bytes do not depend on the
# thread count; and they are pinned (a change in the tar writer that changes them changes every
# uncompressed image: it must be deliberate).
source "$(dirname "$0")/lib.sh"

# A small fixed project: code, an executable, a symlink, an empty file, and a 12 MiB file of
# incompressible bytes (larger than the writer's 1 MiB read and write buffers),
# which large_file_threshold puts in a layer of its own.
P=$T/proj
make_tree "$P/src" 3 20 uncompressed
printf '#!/bin/sh\necho hi\n' >"$P/src/run.sh"
chmod +x "$P/src/run.sh"
ln -s d000/f000.py "$P/src/alias.py"
: >"$P/src/empty.txt"
"$PYTHON" - "$P/src/weights.dat" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "wb") as f:
    block = b"kiln"
    for i in range((12 << 20) // 32):
        block = hashlib.sha256(block).digest()
        f.write(block)
EOF
cat >"$T/spec.json" <<'EOF'
{"name": "plain", "source_root": "proj/src", "source_copy_mode": "all", "compression": "none",
 "large_file_threshold": 4194304}
EOF

build_ok "$T/spec.json" -o "oci:$T/out:a" --jobs 1
DIGEST1=$(jget "j['digest']" <<<"$OUT")
assert_eq 2 "$(jget "len([l for l in j['layers'] if not l['from_base']])" <<<"$OUT")" \
  "the large file in a layer of its own, the rest in another"

# Every layer: plain tar media type, digest == diff_id == sha256sum of the blob, sizes agree.
MANIFEST=$(manifest_json "$T/out" a)
CONFIG=$(config_json "$T/out" a)
N=$(jget "len(j['layers'])" <<<"$MANIFEST")
for ((i = 0; i < N; i++)); do
  d=$(jget "j['layers'][$i]['digest']" <<<"$MANIFEST")
  assert_eq "application/vnd.oci.image.layer.v1.tar" "$(jget "j['layers'][$i]['mediaType']" <<<"$MANIFEST")" \
    "layer $i is stored uncompressed"
  assert_eq "$d" "$(jget "j['rootfs']['diff_ids'][$i]" <<<"$CONFIG")" "layer $i: digest == diff_id"
  f=$(blob_path "$T/out" "$d")
  assert_eq "${d#sha256:}" "$(sha256sum "$f" | cut -d' ' -f1)" "layer $i: sha256sum of the blob is its digest"
  assert_eq "$(jget "j['layers'][$i]['size']" <<<"$MANIFEST")" "$(stat -c %s "$f")" "layer $i: size"
  # The cache holds the same bytes (the layout's blob is a hardlink or a copy of it).
  assert_eq "${d#sha256:}" "$(sha256sum "$KILN_CACHE/blobs/sha256/${d#sha256:}" | cut -d' ' -f1)" \
    "layer $i: the cache's blob matches too"
done

# The same bytes with more threads, a fresh cache, and another checkout directory.
cp -a "$P" "$T/proj2"
sed 's#proj/src#proj2/src#' "$T/spec.json" >"$T/spec2.json"
KILN_CACHE=$T/cache2 build_ok "$T/spec2.json" -o "oci:$T/out2:a" --jobs 4
assert_eq "$DIGEST1" "$(jget "j['digest']" <<<"$OUT")" "same image with -j4, another cache and directory"

# The layer bytes kiln writes for this tree (with libarchive 3.6;
# another libarchive may write other PAX bytes, so the pin applies to 3.6 only).
GOLDEN="sha256:2846723f80c1f4d91078e2f3061871e053364205f83c32e31232a5e0ec84bd84 sha256:431b1ab28503420788e23bbe6f0fb7ad7c42fec0054303811dbef14513670c46"
LAYERS=$(jget "' '.join(sorted(l['digest'] for l in j['layers']))" <<<"$MANIFEST")
kiln version --json
if [[ "$(jget "j['libraries']['libarchive']" <<<"$OUT")" == 3.6.* ]]; then
  assert_eq "$GOLDEN" "$LAYERS" "the layer bytes are the pinned ones (libarchive 3.6)"
else
  echo "$TEST_NAME: libarchive is not 3.6: the pinned layer digests are not checked" >&2
fi

# umoci reads it back (every digest and diff_id checked).
oci_validate "$T/out" a

# The same image as a docker-archive (a file past 8 MiB: written through the page cache, then with
# O_DIRECT): every layer file in it hashes to its diff_id, in the config's order.
build_ok "$T/spec.json" -o "docker-archive:$T/img.tar" --jobs 1
assert_eq "$DIGEST1" "$(jget "j['digest']" <<<"$OUT")" "the docker-archive build is the same image"
ARCHIVE_CHECK='
import hashlib, json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    m = json.load(t.extractfile("manifest.json"))[0]
    cfg = json.load(t.extractfile(m["Config"]))
    got = ["sha256:" + hashlib.sha256(t.extractfile(n).read()).hexdigest() for n in m["Layers"]]
print("ok" if got == cfg["rootfs"]["diff_ids"] else "layers %s != diff_ids %s" % (got, cfg["rootfs"]["diff_ids"]))
'
assert_eq ok "$("$PYTHON" -c "$ARCHIVE_CHECK" "$T/img.tar")" "the archive's layers hash to the config's diff_ids"

# A cache disk that fills up while the 12 MiB layer is written past its first 8 MiB (the part
# written with O_DIRECT, from a thread of the blob's own): the build fails, saying so, promptly,
# and leaves no temp file and no blob; with room again, the same build gives the same image.
if [[ $(id -u) == 0 ]] && mkdir -p "$T/smallcache" &&
   mount -t tmpfs -o size=10m kiln-test-cache-full "$T/smallcache" 2>/dev/null; then
  KILN_CACHE=$T/smallcache/c kiln build "$T/spec.json" --json --progress quiet -o "oci:$T/out-full:a" --jobs 1
  rc=$RC
  err=$ERR
  tmp_left=$(find "$T/smallcache/c/tmp" -mindepth 1 | wc -l)
  blobs=$(find "$T/smallcache/c/blobs" -type f -size +1M | wc -l)
  umount "$T/smallcache"
  assert_ne 0 "$rc" "a full cache disk fails the build"
  assert_contains "$err" "No space left on device" "the error says the disk is full"
  assert_eq 0 "$tmp_left" "nothing is left in the store's tmp/"
  assert_eq 0 "$blobs" "no big blob was stored"
  [[ ! -e "$T/out-full/index.json" ]] && pass || fail "no output layout was written"
  # The same for a docker-archive output on a full disk (the cache has room).
  mount -t tmpfs -o size=10m kiln-test-out-full "$T/smallcache"
  kiln build "$T/spec.json" --json --progress quiet -o "docker-archive:$T/smallcache/img.tar" --jobs 1
  rc=$RC
  err=$ERR
  left=$(find "$T/smallcache" -mindepth 1 | wc -l)
  umount "$T/smallcache"
  assert_ne 0 "$rc" "a full output disk fails the docker-archive build"
  assert_contains "$err" "No space left on device" "the error says the disk is full"
  assert_eq 0 "$left" "no archive and no temp file are left on the full disk"
  KILN_CACHE=$T/cache3 build_ok "$T/spec.json" -o "oci:$T/out3:a" --jobs 1
  assert_eq "$DIGEST1" "$(jget "j['digest']" <<<"$OUT")" "with room again, the same image"
else
  echo "$TEST_NAME: not root or no tmpfs mount here: the full-cache-disk check is skipped" >&2
fi
