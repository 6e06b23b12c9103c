#!/usr/bin/env bash
# Gzip layers are compressed in parallel (fixed 1 MiB pieces, docs/store.md) yet byte-identical
# whatever the thread count: --jobs 1, 2 and 4, in separate caches, give the same image digest and
# byte-identical layouts; every gzip layer is ONE gzip member that gzip, zlib (Python), umoci and
# skopeo accept, and it unpacks to the very bytes of the project.
source "$(dirname "$0")/lib.sh"
need_tools umoci skopeo oci-image-tool gzip

P="$T/proj"
mkdir -p "$P/src/pkg" "$P/data"
# A compressible file that gets a layer of its own (over large_file_threshold), 12+ pieces...
seq 1 1300000 | sed 's/$/ the quick brown fox jumps over the lazy dog/' >"$P/data/big.txt"
# ...and a tree of smaller files sharing one layer of several pieces.
for i in $(seq 1 40); do
  seq "$i" 3 150000 | sed "s/\$/ = module_$i.value  # comment/" >"$P/src/pkg/m$i.py"
done
printf 'print("hi")\n' >"$P/src/main.py"
cat >"$T/spec.json" <<'JSON'
{"name": "pgz", "source_root": "proj", "source_copy_mode": "all", "large_file_threshold": 4194304}
JSON

digest_at() {  # digest_at JOBS: a cold build with its own cache into $T/out-JOBS
  KILN_CACHE="$T/cache-$1" build_ok "$T/spec.json" --jobs "$1" -o "oci:$T/out-$1:t"
  jget "j['digest']" <<<"$OUT"
}
D1=$(digest_at 1)
D2=$(digest_at 2)
D4=$(digest_at 4)
assert_eq "$D1" "$D2" "gzip build: --jobs 1 and --jobs 2 give the same digest"
assert_eq "$D1" "$D4" "gzip build: --jobs 1 and --jobs 4 give the same digest"
assert_eq "$(snapshot "$T/out-1")" "$(snapshot "$T/out-2")" "the -j1 and -j2 layouts are byte-identical"

# Every layer is gzip, and the big ones span several pieces.
LAYERS=$(manifest_json "$T/out-2" t | jget "' '.join(l['digest'] + ',' + str(l['size']) + ',' + l['mediaType'] for l in j['layers'])")
NBIG=0
for l in $LAYERS; do
  IFS=, read -r dig size mt <<<"$l"
  assert_eq "application/vnd.oci.image.layer.v1.tar+gzip" "$mt" "layer media type"
  blob=$(blob_path "$T/out-2" "$dig")
  gzip -t "$blob" || fail "gzip -t rejects layer $dig"
  # One member: zlib stops at the first member's end; nothing may follow it.
  "$PYTHON" - "$blob" <<'PY' || fail "layer $dig is not exactly one gzip member"
import sys, zlib
data = open(sys.argv[1], "rb").read()
d = zlib.decompressobj(31)
plain = d.decompress(data)
assert d.eof and d.unused_data == b"", (d.eof, len(d.unused_data))
PY
  pass
  tar_size=$(gzip -dc "$blob" | wc -c)
  ((tar_size > 3 * 1048576)) && NBIG=$((NBIG + 1))
done
((NBIG >= 2)) || fail "expected two layers of several 1 MiB pieces, got $NBIG"

# umoci (Go's gzip), oci-image-tool and skopeo accept the image; it unpacks to the project's bytes.
oci_validate "$T/out-2" t "$T/bundle"
cmp "$P/data/big.txt" "$T/bundle/rootfs/root/data/big.txt" || fail "big.txt unpacked differs"
cmp "$P/src/pkg/m17.py" "$T/bundle/rootfs/root/src/pkg/m17.py" || fail "m17.py unpacked differs"
pass
