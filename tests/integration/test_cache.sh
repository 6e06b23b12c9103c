#!/usr/bin/env bash
# The cache: a no-change rebuild hits every layer and reads no source file (strace proves it); a
# one-file change rebuilds only the layer holding it; `kiln cache du` counts what is stored and
# `kiln cache prune --all` empties it, after which a rebuild gives the same digest.
source "$(dirname "$0")/lib.sh"
need_tools strace umoci oci-image-tool skopeo

# 100 small files and one 2 MB file above large_file_threshold (a layer of its own). No ignore
# files: in "all" mode those are read on every walk.
P=$T/proj
make_tree "$P" 5 20
seq -f 'big line %08g' 1 130000 >"$P/big.txt" # ~2 MB
cat >"$T/spec.json" <<'EOF'
{"name": "cached", "source_root": "proj", "source_copy_mode": "all", "large_file_threshold": 1000000}
EOF
# The stat index does not trust entries changed within a second of its writing (racy-git rule):
# let the tree age past that before the first build records it.
sleep 1.1

# cache_states JSON: "label=hit|miss" of each layer.
cache_states() { jget "' '.join(l['label'] + '=' + l['cache'] for l in j['layers'])" <<<"$1"; }
BIG_LABEL="source_root large file big.txt"
MAIN_LABEL="source_root (100 files)"

# ---- first build: everything is a miss ---------------------------------------------------------
build_ok "$T/spec.json" -o "oci:$T/out:t"
D1=$(jget "j['digest']" <<<"$OUT")
assert_eq "$BIG_LABEL=miss $MAIN_LABEL=miss" "$(cache_states "$OUT")" "first build: every layer is a miss"

# ---- a no-change rebuild: every layer is a hit ------------------------------------------------
build_ok "$T/spec.json" -o "oci:$T/out:t"
assert_eq "$BIG_LABEL=hit $MAIN_LABEL=hit" "$(cache_states "$OUT")" "no-change rebuild: every layer is a hit"
assert_eq "$D1" "$(jget "j['digest']" <<<"$OUT")" "no-change rebuild: same digest"

# ---- ...and opens no source file (only directories, to list them) ------------------------------
# opened_files LOG: files under the tree the traced process opened, directories excluded.
opened_files() { grep -F "\"$P/" "$1" | grep -v O_DIRECTORY | grep -v ENOENT | sed 's/.*"\(.*\)".*/\1/' | sort -u || true; }
strace -f -qq -e trace=openat,open -o "$T/strace-nochange.log" \
  "$KILN" build "$T/spec.json" --json --progress quiet -o "oci:$T/out:t" >"$T/nochange.json" 2>"$T/nochange.err" ||
  die "traced no-change build failed: $(cat "$T/nochange.err")"
assert_eq "$BIG_LABEL=hit $MAIN_LABEL=hit" "$(cache_states "$(cat "$T/nochange.json")")" "traced rebuild: every layer is a hit"
assert_eq "" "$(opened_files "$T/strace-nochange.log")" "no-change rebuild opens no source file"
# (strace did see the build: it listed the tree's directories and read the cache.)
assert_ne 0 "$(grep -F "\"$P" "$T/strace-nochange.log" | grep -c O_DIRECTORY || true)" "strace saw the walk of the tree"
assert_ne 0 "$(grep -cF "\"$KILN_CACHE/" "$T/strace-nochange.log" || true)" "strace saw the cache reads"
# `kiln tag` on an unchanged tree reads no source file either.
strace -f -qq -e trace=openat,open -o "$T/strace-tag.log" "$KILN" tag "$T/spec.json" >/dev/null 2>&1 || die "traced kiln tag failed"
assert_eq "" "$(opened_files "$T/strace-tag.log")" "kiln tag on an unchanged tree opens no source file"

# ---- one small file changes: only the layer holding it is rebuilt -----------------------------
echo "CHANGED = True" >>"$P/d002/f007.py"
strace -f -qq -e trace=openat,open -o "$T/strace-change.log" \
  "$KILN" build "$T/spec.json" --json --progress quiet -o "oci:$T/out:t2" >"$T/change.json" 2>"$T/change.err" ||
  die "build after a change failed: $(cat "$T/change.err")"
CHANGE=$(cat "$T/change.json")
assert_eq "$BIG_LABEL=hit $MAIN_LABEL=miss" "$(cache_states "$CHANGE")" "one small change: large-file layer hit, source layer rebuilt"
assert_ne "$D1" "$(jget "j['digest']" <<<"$CHANGE")" "one small change: new digest"
# The large file's layer is the same blob as before, and the large file was not even opened.
assert_eq "$(manifest_json "$T/out" t | jget "j['layers'][0]['digest']")" "$(jget "j['layers'][0]['digest']" <<<"$CHANGE")" "large-file layer blob reused"
assert_eq "" "$(opened_files "$T/strace-change.log" | grep -F "$P/big.txt" || true)" "the unchanged large file is not read"
oci_validate "$T/out" t2

# ---- kiln cache du ------------------------------------------------------------------------------
# Stored now: 3 layer blobs (large, source, source v2) + 2 configs + 2 manifests; 3 layer records.
kiln cache du --json
assert_eq 0 "$RC" "cache du exits 0"
assert_eq "$KILN_CACHE" "$(jget "j['path']" <<<"$OUT")" "cache du: path is \$KILN_CACHE"
assert_eq 7 "$(jget "j['blobs']" <<<"$OUT")" "cache du: blob count"
assert_eq "$(find "$KILN_CACHE/blobs/sha256" -type f | wc -l)" "$(jget "j['blobs']" <<<"$OUT")" "cache du: blob count = files in blobs/sha256"
assert_eq "$(find "$KILN_CACHE/blobs/sha256" -type f -printf '%s\n' | awk '{s += $1} END {print s}')" "$(jget "j['blob_bytes']" <<<"$OUT")" "cache du: blob bytes"
assert_eq 3 "$(jget "j['layer_records']" <<<"$OUT")" "cache du: layer records"
assert_eq 0 "$(jget "j['tmp_files']" <<<"$OUT")" "cache du: no temp files left"
# --cache DIR wins over $KILN_CACHE.
kiln cache du --json --cache "$T/other-cache"
assert_eq "0 $T/other-cache" "$(jget "str(j['blobs']) + ' ' + j['path']" <<<"$OUT")" "--cache names another store"
# The human form names the store.
kiln cache du
assert_contains "$OUT" "$KILN_CACHE" "cache du (human) names the store"

# ---- kiln cache prune ---------------------------------------------------------------------------
# Without --all, nothing this fresh is removed.
kiln cache prune --json
assert_eq "0 0" "$(jget "str(j['removed_blobs']) + ' ' + str(j['removed_layer_records'])" <<<"$OUT")" "prune keeps fresh entries"
# --all removes every blob and record.
kiln cache prune --all --json
assert_eq 0 "$RC" "prune --all exits 0"
assert_eq "7 3" "$(jget "str(j['removed_blobs']) + ' ' + str(j['removed_layer_records'])" <<<"$OUT")" "prune --all removes everything"
kiln cache du --json
assert_eq "0 0" "$(jget "str(j['blobs']) + ' ' + str(j['layer_records'])" <<<"$OUT")" "cache is empty after prune --all"
# The layouts written before do not depend on the cache (their blobs are theirs).
oci_validate "$T/out" t
# A rebuild after the prune builds every layer again and gives the same image.
build_ok "$T/spec.json" -o "oci:$T/out:t3"
assert_eq "$BIG_LABEL=miss $MAIN_LABEL=miss" "$(cache_states "$OUT")" "rebuild after prune: every layer is a miss"
assert_eq "$(jget "j['digest']" <<<"$CHANGE")" "$(jget "j['digest']" <<<"$OUT")" "rebuild after prune: same digest"
oci_validate "$T/out" t3
