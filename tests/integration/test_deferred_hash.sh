#!/usr/bin/env bash
# A build with no push hashes each layer's files as it comes to the layer (deferred hashing;
# an uncompressed layer is written while its files are hashed). The result must be exactly what
# hashing first gives: the tag `kiln tag` computes, the same digest from another checkout that
# shares the cache (the speculatively written blobs are then dropped as cache hits, leaving no
# temp file), a stat index that makes the next build a no-change rebuild, and hardlinks, empty
# files and large files (stored as-is or compressed) all keyed as before.
source "$(dirname "$0")/lib.sh"

P=$T/proj
make_tree "$P/src" 4 30 deferred
: >"$P/src/empty.txt"
ln "$P/src/d000/f000.py" "$P/src/hard_a.py"   # three names, one inode: stored as tar hardlinks
ln "$P/src/d000/f000.py" "$P/src/hard_b.py"
"$PYTHON" - "$P/src" <<'EOF'
import hashlib, os, sys
root = sys.argv[1]
# 6 MiB of incompressible bytes (stored as-is: written while hashed) and 6 MiB of text (compressed:
# hashed first), both over the 4 MiB large_file_threshold below, and a hardlink to the random one.
with open(os.path.join(root, "weights.bin"), "wb") as f:
    block = b"kiln"
    for i in range((6 << 20) // 32):
        block = hashlib.sha256(block).digest()
        f.write(block)
with open(os.path.join(root, "corpus.txt"), "w") as f:
    for i in range(6 << 20 // 40):
        f.write("line %08d of a compressible corpus\n" % (i * 7919 % 100003))
os.link(os.path.join(root, "weights.bin"), os.path.join(root, "weights_link.bin"))
EOF

for comp in none gzip; do
  cat >"$T/spec-$comp.json" <<EOF
{"name": "deferred", "source_root": "proj/src", "source_copy_mode": "all", "compression": "$comp",
 "large_file_threshold": 4194304}
EOF
  # What hashing everything first gives (kiln tag prepares without building).
  kiln tag "$T/spec-$comp.json" --json
  assert_eq 0 "$RC" "kiln tag ($comp)"
  WANT_TAG=$(jget "j['tag']" <<<"$OUT")
  WANT_HASH=$(jget "j['spec_hash']" <<<"$OUT")

  export KILN_CACHE=$T/cache-$comp
  build_ok "$T/spec-$comp.json" -o "oci:$T/out-$comp:a"
  DIGEST=$(jget "j['digest']" <<<"$OUT")
  assert_eq "$WANT_TAG" "$(jget "j['tag']" <<<"$OUT")" "$comp: the build's tag is kiln tag's"
  assert_eq "$WANT_HASH" "$(jget "j['spec_hash']" <<<"$OUT")" "$comp: spec_hash"
  assert_eq "$WANT_HASH" "$(config_json "$T/out-$comp" a | jget "j['config']['Labels']['dev.kiln.spec-hash']")" \
    "$comp: the config's spec-hash label"
  assert_eq "[]" "$(jget "[l['label'] for l in j['layers'] if l['cache'] != 'miss' and not l['from_base']]" <<<"$OUT")" \
    "$comp: a cold build writes every layer"

  # The same tree in another directory (its own stat index, nothing known) with the same cache:
  # every layer is found in the cache once hashed; the image is the same.
  rm -rf "$T/proj2"
  cp -a "$P" "$T/proj2"
  sed 's#proj/src#proj2/src#' "$T/spec-$comp.json" >"$T/spec2-$comp.json"
  build_ok "$T/spec2-$comp.json" -o "oci:$T/out2-$comp:a"
  assert_eq "$DIGEST" "$(jget "j['digest']" <<<"$OUT")" "$comp: same image from another checkout"
  assert_eq "[]" "$(jget "[l['label'] for l in j['layers'] if l['cache'] != 'hit' and not l['from_base']]" <<<"$OUT")" \
    "$comp: another checkout finds every layer in the cache"
  assert_eq "" "$(find "$KILN_CACHE/tmp" -maxdepth 1 -name 'blob*' | head -1)" \
    "$comp: blobs written before their key was known and then found cached are dropped"

  # The deferred build recorded the digests: the next build of the first checkout reads no file.
  build_ok "$T/spec-$comp.json" -o "oci:$T/out-$comp:a"
  assert_eq "$DIGEST" "$(jget "j['digest']" <<<"$OUT")" "$comp: rebuild, same image"
  assert_eq "0" "$(jget "len([l for l in j['layers'] if l['cache'] != 'hit' and not l['from_base']])" <<<"$OUT")" \
    "$comp: rebuild: every layer cached"
done

# The hardlinks are tar hardlinks in both images, and the two compressions agree on the files.
for comp in none gzip; do
  L=$(manifest_json "$T/out-$comp" a | jget "' '.join(l['digest'] for l in j['layers'])")
  links=""
  for d in $L; do
    links+=$(blob_cat "$(blob_path "$T/out-$comp" "$d")" | tar -tvf - | awk '$1 ~ /^h/ {print $6, $8}')
  done
  assert_contains "$links" "root/hard_a.py" "$comp: hard_a.py is a hardlink"
  assert_contains "$links" "root/weights_link.bin" "$comp: weights_link.bin is a hardlink"
done

oci_validate "$T/out-none" a
oci_validate "$T/out-gzip" a
