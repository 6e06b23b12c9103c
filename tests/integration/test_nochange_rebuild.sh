#!/usr/bin/env bash
# A no-change rebuild reads no source file: every hash comes from the stat index (format
# KILNSTAT3), every layer from the layer cache. The index written by the first build is the
# current format and round-trips: the second build finds every file in it (and leaves it as it
# is), and an edit is still noticed (the entry of the edited file is replaced, the others kept).
source "$(dirname "$0")/lib.sh"
need_tools strace

make_tree "$T/proj/src" 12 25
mkdir -p "$T/proj/src/sub/deeper"
echo "x = 1" >"$T/proj/src/sub/deeper/m.py"
ln -s ../d000/f000.py "$T/proj/src/sub/link.py"
cat >"$T/proj/spec.json" <<'EOF2'
{"name": "nochange", "source_root": "src", "source_copy_mode": "all", "copy": ["extra.txt"]}
EOF2
echo "extra" >"$T/proj/extra.txt"
# The index does not trust entries changed within a second of its writing (racy-git rule).
sleep 1.1

build_ok "$T/proj/spec.json" -o "oci:$T/out"
first=$(jget 'j["digest"]' <<<"$OUT")
idx=("$KILN_CACHE"/stat/*.idx)
assert_eq 1 "${#idx[@]}" "one stat index for the spec's root"
assert_eq "KILNSTAT3" "$(head -c 9 "${idx[0]}")" "the index is written in format 3"
idx_id=$(stat -c '%i %Y %s' "${idx[0]}")
layout_id=$(stat -c '%i' "$T/out/index.json")

# opened_files LOG: files of the tree the traced process opened (by absolute path, or by name
# relative to a directory descriptor), directories excluded.
opened_files() {
  grep -E 'open(at)?\(' "$1" | grep -v O_DIRECTORY | grep -v ENOENT |
    grep -E "\"($T/proj/src/[^\"]*|$T/proj/extra\.txt|[^/\"]*\.(py|txt))\"" | sed 's/.*"\(.*\)".*/\1/' | sort -u || true
}
strace -f -qq -e trace=openat,open,openat2 -o "$T/strace.log" "$KILN" build "$T/proj/spec.json" -o "oci:$T/out" \
  --json --progress quiet >"$T/second.json" 2>"$T/second.err" || die "traced rebuild failed: $(cat "$T/second.err")"
assert_eq "" "$(opened_files "$T/strace.log")" "a no-change rebuild opens no source file"
assert_ne 0 "$(grep -c O_DIRECTORY "$T/strace.log" || true)" "strace saw the walk"
assert_eq "$first" "$(jget 'j["digest"]' "$T/second.json")" "same image"
assert_eq "true" "$(jget 'all(l["cache"] == "hit" for l in j["layers"])' "$T/second.json")" "every layer from the cache"
assert_eq "$idx_id" "$(stat -c '%i %Y %s' "${idx[0]}")" "the index is not rewritten when nothing changed"
# The output layout already holds this manifest under this tag: nothing in it is written.
assert_eq "$layout_id" "$(stat -c '%i' "$T/out/index.json")" "the layout's index.json is not rewritten when nothing changed"
assert_eq "" "$(grep -E "openat\(.*\"$T/out/[^\"]*\".*O_(WRONLY|CREAT)" "$T/strace.log" | grep -v '/.kiln.lock"' || true)" \
  "a no-change rebuild creates or writes no file in the output layout"

# An edit is noticed (made over a second before the build, so its new entry is not racy), and
# the next rebuild opens no file again: the rewritten index holds the new entry and kept the others.
echo "CHANGED = True" >>"$T/proj/src/d003/f007.py"
sleep 1.1
build_ok "$T/proj/spec.json" -o "oci:$T/out"
third=$(jget 'j["digest"]' <<<"$OUT")
assert_ne "$first" "$third" "the edit changes the image"
assert_ne "$idx_id" "$(stat -c '%i %Y %s' "${idx[0]}")" "the index is rewritten after an edit"
assert_ne "$layout_id" "$(stat -c '%i' "$T/out/index.json")" "the layout's index.json is rewritten for the changed image"
strace -f -qq -e trace=openat,open,openat2 -o "$T/strace3.log" "$KILN" build "$T/proj/spec.json" -o "oci:$T/out" \
  --json --progress quiet >"$T/fourth.json" 2>"$T/fourth.err" || die "fourth build failed: $(cat "$T/fourth.err")"
assert_eq "" "$(opened_files "$T/strace3.log")" "after the edit, a rebuild opens no source file again"
assert_eq "$third" "$(jget 'j["digest"]' "$T/fourth.json")" "same image after the edit"
