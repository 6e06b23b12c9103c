#!/usr/bin/env bash
# Every digest of a base is verified before kiln relies on it. Bases in OCI layouts made here:
#   - a layer blob with other bytes of the same size: exit 2 naming the base and the blob, nothing
#     written to the output; a warm build does not hash again, but a blob changed after it does;
#   - a layer whose content does not match its diff_id ("EVIL content" claiming an honest image's
#     diff_ids): exit 2 before any tree is stored, and an honest build with the same KILN_CACHE then
#     sees only its own files (the poisoning scenario of issue 12); the other way round, with the
#     honest tree and step layer cached, the evil base gets neither and is refused too;
#   - entries with "..", absolute names, a write through a symlink leading outside, a block device,
#     /dev/mem: each exit 2 (error_kind "base") naming the base, the layer digest and the entry,
#     nothing written outside the store, and the output layout untouched;
#   - /dev/null in a base: skipped with a warning (never created in the store);
#   - unpacked trees live under a 0700 directory;
#   - a 15 TiB sparse file in a 10 KB base layer: the build completes, holes stay holes.
source "$(dirname "$0")/lib.sh"
need_tools bwrap
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"

# mkbase DIR SPEC_JSON: an OCI layout DIR (tag "t") whose layers are described by SPEC_JSON, a list
# of layers, each {"entries": [...], "gzip": bool, "claim": "sha256:…" (a diff_id to claim instead
# of the real one)}. Entries: {"name", "type": file|dir|symlink|chr|blk, "data", "target",
# "major", "minor", "mode"}; {"busybox": true} adds bin/busybox and bin/sh.
mkbase() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import gzip, hashlib, io, json, os, sys, tarfile
out, layers = sys.argv[1], json.loads(sys.argv[2])
os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)
descs, diff_ids = [], []
for layer in layers:
    if "rawtar" in layer:  # a tar made elsewhere (GNU tar's sparse entries), as it is
        tar = open(layer["rawtar"], "rb").read()
        real = "sha256:" + hashlib.sha256(tar).hexdigest()
        d, n = put(tar)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})
        diff_ids.append(real)
        continue
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in layer["entries"]:
            if e.get("busybox"):
                for n in ("bin",):
                    ti = tarfile.TarInfo(n); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
                data = open("/bin/busybox", "rb").read()
                ti = tarfile.TarInfo("bin/busybox"); ti.size = len(data); ti.mode = 0o755
                t.addfile(ti, io.BytesIO(data))
                for a in ("sh", "cat", "true", "ls", "echo"):
                    ti = tarfile.TarInfo("bin/" + a); ti.type = tarfile.SYMTYPE; ti.linkname = "busybox"; t.addfile(ti)
                continue
            ti = tarfile.TarInfo(e["name"])
            ti.mode = e.get("mode", 0o644)
            typ = e.get("type", "file")
            data = e.get("data", "").encode()
            if typ == "file":
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "chr": tarfile.CHRTYPE,
                       "blk": tarfile.BLKTYPE}[typ]
            ti.linkname = e.get("target", "")
            ti.devmajor, ti.devminor = e.get("major", 0), e.get("minor", 0)
            t.addfile(ti)
    tar = buf.getvalue()
    real = "sha256:" + hashlib.sha256(tar).hexdigest()
    if layer.get("gzip", True):
        blob = gzip.compress(tar, mtime=0)
        mt = "application/vnd.oci.image.layer.v1.tar+gzip"
    else:
        blob, mt = tar, "application/vnd.oci.image.layer.v1.tar"
    d, n = put(blob)
    descs.append({"mediaType": mt, "digest": d, "size": n})
    diff_ids.append(layer.get("claim") or real)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
cd, cn = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                  "layers": descs}, sort_keys=True).encode()
md, mn = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "t"}}]},
          open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
# The layer digests and real diff_ids, for the test.
print(" ".join(x["digest"] for x in descs))
EOF
}

# diff_ids_of LAYOUT: the diff_ids the config of LAYOUT:t claims.
diff_ids_of() { config_json "$1" t | jget "' '.join(j['rootfs']['diff_ids'])"; }

# A pre-existing, good output layout every refused build targets; it must stay byte-for-byte.
echo '{"name": "out", "source_root": "src", "source_copy_mode": "all"}' >"$T/out.json"
mkdir -p "$T/src"
echo 'X = 1' >"$T/src/x.py"
L=$T/outlayout
build_ok "$T/out.json" -o "oci:$L:keep"
L_SNAPSHOT=$(snapshot "$L")

# spec NAME BASE_LAYOUT [COMMAND]: a spec on oci:BASE_LAYOUT:t (with a RUN step when COMMAND).
spec() {
  local cmds=""
  [[ -n "${3:-}" ]] && cmds=", \"commands\": [$(printf '%s' "$3" | "$PYTHON" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]"
  echo "{\"name\": \"$1\", \"base_image\": \"oci:$2:t\"$cmds}" >"$T/$1.json"
}

# expect_base_refused WHAT SPEC NEEDLE...: exit 2, error_kind "base", every NEEDLE in the message,
# the output layout untouched and no docker-archive written.
expect_base_refused() {
  local what=$1 spec=$2
  shift 2
  kiln build "$spec" --json --progress plain -o "oci:$L:t" -o "docker-archive:$T/never.tar"
  assert_eq 2 "$RC" "$what: exit 2"$'\n'"$ERR"
  assert_eq "failed 2 base" "$(jget "j['status'] + ' ' + str(j['exit_code']) + ' ' + j['error_kind']" <<<"$OUT" 2>/dev/null)" "$what: --json failure of kind base"
  local n
  for n in "$@"; do assert_contains "$ERR" "$n" "$what: the error names $n"; done
  assert_eq "$L_SNAPSHOT" "$(snapshot "$L")" "$what: the output layout is byte-for-byte unchanged"
  assert_cmd "$what: no docker-archive" test ! -e "$T/never.tar"
  # No half-built tree is left, and no tree took the name of the claimed chain.
  local trees=0
  [[ -d "$KILN_CACHE/rootfs" ]] && trees=$(find "$KILN_CACHE/rootfs" -mindepth 1 -maxdepth 1 -name '.*' | wc -l)
  assert_eq 0 "$trees" "$what: no temporary tree left in the store"
}

# ==== 1. A blob with other bytes of the same size ==================================================
H=$T/honest
LAYERS=$(mkbase "$H" '[{"entries": [{"busybox": true}]},
  {"entries": [{"name": "etc", "type": "dir", "mode": 493}, {"name": "etc/motd", "data": "honest motd\n"}], "gzip": false}]')
MOTD_LAYER=${LAYERS##* }
spec plain "$H"
build_ok "$T/plain.json" -o "oci:$T/plain-out:t"
assert_cmd "an honest layout base builds" test -s "$T/plain-out/index.json"
n=$(find "$KILN_CACHE/verified" -name 'ext-*' | wc -l)
assert_eq 2 "$n" "the verified base blobs are remembered (one memo per layer blob)"
memo_before=$(cat "$KILN_CACHE"/verified/ext-* 2>/dev/null | sort || true)
build_ok "$T/plain.json" -o "oci:$T/plain-out:t"
assert_eq "$memo_before" "$(cat "$KILN_CACHE"/verified/ext-* 2>/dev/null | sort || true)" "a warm build uses the memos as they are"

# The same size, other bytes: "honest" -> "EVIL!!" inside the uncompressed tar blob, a new mtime.
B=$(blob_path "$H" "$MOTD_LAYER")
size_before=$(stat -c %s "$B")
"$PYTHON" - "$B" <<'EOF'
import sys
p = sys.argv[1]
d = open(p, "rb").read()
assert b"honest motd" in d
open(p, "wb").write(d.replace(b"honest motd", b"EVIL!! motd"))
EOF
assert_eq "$size_before" "$(stat -c %s "$B")" "the tampered blob has the same size"
spec plain2 "$H"
expect_base_refused "a base blob with other bytes (warm memo, new mtime)" "$T/plain2.json" "oci:$H:t" "$MOTD_LAYER" "does not match its digest"
# Even with the mtime put back, a fresh cache hashes it.
KILN_CACHE=$T/cache-fresh kiln build "$T/plain2.json" --json --progress quiet -o "oci:$T/fresh-out:t"
assert_eq 2 "$RC" "a tampered base blob in a fresh cache: exit 2"
assert_cmd "a tampered base blob: the output layout is not created" test ! -e "$T/fresh-out/index.json"

# ==== 2. diff_id mismatch: EVIL content claiming the honest image's diff_ids ========================
H2=$T/honest2
mkbase "$H2" '[{"entries": [{"busybox": true}]},
  {"entries": [{"name": "etc", "type": "dir", "mode": 493}, {"name": "etc/motd", "data": "honest motd\n"}]}]' >/dev/null
read -r -a CLAIM <<<"$(diff_ids_of "$H2")"
E=$T/evil
EVIL_LAYERS=$(mkbase "$E" "[{\"entries\": [{\"busybox\": true}]},
  {\"entries\": [{\"name\": \"etc\", \"type\": \"dir\", \"mode\": 493}, {\"name\": \"etc/motd\", \"data\": \"EVIL content\\n\"}], \"claim\": \"${CLAIM[1]}\"}]")
assert_eq "$(diff_ids_of "$H2")" "$(diff_ids_of "$E")" "the evil base claims the honest base's diff_ids"
spec evil "$E" "cat /etc/motd > /seen"
expect_base_refused "a layer whose content does not match its diff_id" "$T/evil.json" "oci:$E:t" "${EVIL_LAYERS##* }" \
  "does not match its diff_id" "base layer 2 of 2"
spec honest "$H2" "cat /etc/motd > /seen"
build_ok "$T/honest.json" -o "oci:$T/honest-out:t"
last=$(manifest_json "$T/honest-out" t | jget "j['layers'][-1]['digest']")
seen=$(blob_cat "$(blob_path "$T/honest-out" "$last")" | tar -xO seen)
assert_eq "honest motd" "$seen" "a later honest build with the same cache sees its own content, not the evil one"
# The other order: the honest base's tree and its step layer are in the cache now, under the
# diff_ids the evil base claims. Were they keyed by diff_ids alone, the evil build would be handed
# the honest step layer without unpacking anything, and succeed. Keyed on blob digests too, its
# step has to run on its own tree, and unpacking its base refuses it.
expect_base_refused "a base claiming a cached image's diff_ids" "$T/evil.json" "oci:$E:t" "${EVIL_LAYERS##* }" \
  "does not match its diff_id" "base layer 2 of 2"
assert_not_contains "$ERR" "cached sha256:" "the evil build used no cached step layer"

# ==== 3. Hostile entries ==============================================================================
OUTSIDE=$T/outside
mkdir -p "$OUTSIDE"
# hostile NAME ENTRIES_JSON NEEDLE...: a base (busybox + a layer of ENTRIES_JSON) with a RUN step.
hostile() {
  local name=$1 entries=$2
  shift 2
  local layers
  layers=$(mkbase "$T/$name" "[{\"entries\": [{\"busybox\": true}]}, {\"entries\": $entries}]")
  spec "$name" "$T/$name" "true"
  expect_base_refused "$name" "$T/$name.json" "oci:$T/$name:t" "${layers##* }" "$@"
}
hostile dotdot "[{\"name\": \"../../../../../..$OUTSIDE/dotdot\", \"data\": \"pwned\"}]" "'..' in the name" "refusing entry"
hostile absolute "[{\"name\": \"$OUTSIDE/absolute\", \"data\": \"pwned\"}]" "refusing entry"
hostile symlink "[{\"name\": \"esc\", \"type\": \"symlink\", \"target\": \"$OUTSIDE\"}, {\"name\": \"esc/through-link\", \"data\": \"pwned\"}]" \
  "refusing entry 'esc/through-link'" "is a symlink"
hostile blockdev '[{"name": "disk", "type": "blk", "major": 8, "minor": 0, "mode": 438}]' "refusing entry 'disk'" "block device 8:0"
hostile devmem '[{"name": "mem", "type": "chr", "major": 1, "minor": 1, "mode": 438}]' "refusing entry 'mem'" "character device 1:1"
assert_eq "" "$(ls -A "$OUTSIDE")" "nothing was written outside the store by any hostile base"
assert_eq 0 "$(find "$KILN_CACHE" -type b | wc -l)" "no block device in the store"

# ==== 4. /dev/null in a base: skipped with a warning ==================================================
mkbase "$T/devnull" '[{"entries": [{"busybox": true}, {"name": "dev", "type": "dir", "mode": 493},
  {"name": "dev/null", "type": "chr", "major": 1, "minor": 3, "mode": 438}]}]' >/dev/null
spec devnull "$T/devnull" "echo ok > /ran"
kiln build "$T/devnull.json" --progress plain -o "oci:$T/devnull-out:t"
assert_eq 0 "$RC" "a base with /dev/null builds"$'\n'"$ERR"
assert_contains "$ERR" "skipped character device 1:3 'dev/null'" "the skipped device is logged"
assert_eq 0 "$(find "$KILN_CACHE/rootfs" -type c -name null | wc -l)" "no device node from a base in the store"

# ==== 5. The trees are the owner's only ==============================================================
assert_eq 700 "$(stat -c %a "$KILN_CACHE/rootfs")" "rootfs/ is 0700"
assert_eq 700 "$(stat -c %a "$KILN_CACHE/tmp")" "tmp/ is 0700"

# ==== 6. A full output disk leaves no temp file ======================================================
# A 1 MiB tmpfs for the output layout, a 3 MiB layer: the copy into the layout runs out of space.
if [[ $(id -u) == 0 ]] && mkdir -p "$T/small" && mount -t tmpfs -o size=1m kiln-test-full "$T/small" 2>/dev/null; then
  mkdir -p "$T/bigsrc"
  head -c $((3 << 20)) /dev/urandom >"$T/bigsrc/weights.bin"
  echo '{"name": "big", "source_root": "bigsrc", "source_copy_mode": "all"}' >"$T/big.json"
  kiln build "$T/big.json" --json --progress quiet -o "oci:$T/small/out:t"
  rc=$RC
  leftovers=$(find "$T/small" -name '.kiln-tmp*' | wc -l)
  used=$(du -sk "$T/small" | cut -f1)
  umount "$T/small"
  assert_ne 0 "$rc" "a full output disk fails the build"
  assert_contains "$ERR" "No space left on device" "the error says the disk is full"
  assert_eq 0 "$leftovers" "no .kiln-tmp.* is left in the layout"
  if ((used < 512)); then pass; else fail "the failed copy's bytes were removed (${used} KiB still used)"; fi
  assert_eq 0 "$(find "$KILN_CACHE/tmp" -mindepth 1 | wc -l)" "nothing is left in the store's tmp/"
else
  echo "test_verify_base: not root or no tmpfs mount here: the full-disk check is skipped" >&2
fi

# ---- a 15 TiB sparse file in a 10 KB base layer: a bounded build, holes stay holes ------------------
# GNU tar stores the file as a sparse entry (PAX 1.0 sparse map); a RUN step forces the unpack.
mkdir -p "$T/sparse-src/data"
truncate -s 15T "$T/sparse-src/data/huge.img"
printf 'tail' | dd of="$T/sparse-src/data/huge.img" bs=1 seek=$((15 * 1024 * 1024 * 1024 * 1024 - 4)) conv=notrunc status=none
tar --sparse --format=posix --numeric-owner -C "$T/sparse-src" -cf "$T/sparse-layer.tar" data
assert_cmd "the sparse layer is small" test "$(stat -c %s "$T/sparse-layer.tar")" -lt 100000
mkbase "$T/sparse" '[{"entries": [{"busybox": true}], "gzip": false}, {"rawtar": "'"$T/sparse-layer.tar"'"}]' >/dev/null
for capture in overlay snapshot; do
  # (the capture in the command: each run's step is its own, not the other's cached layer)
  spec "sparse-$capture" "$T/sparse" 'echo "LAST=$(tail -c 4 /data/huge.img)" '"$capture"
  kiln build "$T/sparse-$capture.json" --json --progress plain --capture "$capture" -o "oci:$T/sparse-out-$capture:t"
  assert_eq 0 "$RC" "sparse base ($capture capture): the build completes"$'\n'"$ERR"
  assert_contains "$ERR" "LAST=tail" "sparse base ($capture capture): the step reads the file's last bytes"
done
# The unpacked base kept the holes: the whole store is still small.
assert_cmd "the store holds the 15 TiB file as holes (store < 200 MB)" test "$(du -sm "$KILN_CACHE" | cut -f1)" -lt 200

