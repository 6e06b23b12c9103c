#!/usr/bin/env bash
# The stat index is shared correctly: specs that walk different roots, or the same root with
# different file sets, alternate builds on one cache and each no-change rebuild still reads no
# source file (before, each alternate build dropped the other's entries and re-hashed everything).
source "$(dirname "$0")/lib.sh"
need_tools strace

make_tree "$T/proj_a" 3 10
make_tree "$T/proj_b" 3 10
echo "extra = 1" >"$T/extra.py"
# a and b: two roots next to each other; c: a's root with another file set (a copy entry too).
cat >"$T/a.json" <<'EOF2'
{"name": "a", "source_root": "proj_a", "source_copy_mode": "all"}
EOF2
cat >"$T/b.json" <<'EOF2'
{"name": "b", "source_root": "proj_b", "source_copy_mode": "all"}
EOF2
cat >"$T/c.json" <<'EOF2'
{"name": "c", "source_root": "proj_a", "source_copy_mode": "all", "copy": ["extra.py"]}
EOF2
# The index does not trust entries changed within a second of its writing (racy-git rule).
sleep 1.1

# opened_files LOG: regular files of the trees the traced process opened.
opened_files() { grep -E "\"$T/(proj_a|proj_b|extra.py)" "$1" | grep -v O_DIRECTORY | grep -v ENOENT | sed 's/.*"\(.*\)".*/\1/' | sort -u || true; }

for s in a b c; do "$KILN" tag "$T/$s.json" >/dev/null 2>&1 || die "kiln tag $s failed"; done
for round in 1 2; do
  for s in a b c; do
    strace -f -qq -e trace=openat,open -o "$T/strace-$s-$round.log" "$KILN" tag "$T/$s.json" >"$T/tag-$s-$round" 2>"$T/tagerr-$s-$round" ||
      die "traced kiln tag $s failed: $(cat "$T/tagerr-$s-$round")"
    assert_eq "" "$(opened_files "$T/strace-$s-$round.log")" "round $round, spec $s: no source file re-read"
    assert_ne 0 "$(grep -cF "\"$T/proj_" "$T/strace-$s-$round.log" || true)" "round $round, spec $s: strace saw the walk"
  done
done

# A changed file is still noticed by every spec that bakes it (the shared entries are not stale).
echo "CHANGED = True" >>"$T/proj_a/d001/f003.py"
before_a=$(cat "$T/tag-a-2"); before_c=$(cat "$T/tag-c-2")
assert_ne "$before_a" "$("$KILN" tag "$T/a.json" 2>/dev/null)" "a's tag follows the edit"
assert_ne "$before_c" "$("$KILN" tag "$T/c.json" 2>/dev/null)" "c's tag follows the edit"
assert_eq "$(cat "$T/tag-b-2")" "$("$KILN" tag "$T/b.json" 2>/dev/null)" "b's tag is unchanged"
