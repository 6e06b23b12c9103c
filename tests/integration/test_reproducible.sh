#!/usr/bin/env bash
# Builds are byte-reproducible: the same project made twice (other directory, mtimes, umask,
# creation order, cache) gives the same manifest digest and tag; what shapes the image (content,
# the x bit, names, SOURCE_DATE_EPOCH) changes it, and what does not (mtimes) does not.
source "$(dirname "$0")/lib.sh"

# make_project DIR ORDER UMASK MTIME: the same tree whatever the arguments. ORDER forward|reverse
# is the creation order (so inode numbers and directory order differ).
make_project() {
  local dir=$1 order=$2 mask=$3 mtime=$4
  local entries=(
    "proj/pkg/__init__.py|from .a import A"
    "proj/pkg/a.py|A = 'alpha'"
    "proj/pkg/sub/b.py|B = 'beta'"
    "proj/pkg/sub/c.py|C = 'gamma'"
    "proj/README.md|# demo"
    "proj/bin/run.sh|#!/bin/sh"
    "proj/zz_last.py|Z = 26"
  )
  local i idx
  (
    umask "$mask"
    mkdir -p "$dir"
    for ((i = 0; i < ${#entries[@]}; i++)); do
      if [[ $order == reverse ]]; then idx=$((${#entries[@]} - 1 - i)); else idx=$i; fi
      local path=${entries[$idx]%%|*} content=${entries[$idx]#*|}
      mkdir -p "$dir/$(dirname "$path")"
      printf '%s\n' "$content" >"$dir/$path"
    done
    mkdir -p "$dir/proj/empty_dir"
    chmod +x "$dir/proj/bin/run.sh" # under umask 077 this is 0700, under 022 0755
    ln -s pkg/a.py "$dir/proj/alias.py"
    cat >"$dir/spec.json" <<'EOF'
{"name": "repro", "source_root": "proj", "source_copy_mode": "all",
 "env": {"MODE": "test"}, "entrypoint": ["python", "-m", "pkg"]}
EOF
  )
  find "$dir" -exec touch -h -d "$mtime" {} +
}

# digest_of DIR: builds DIR/spec.json into DIR/out:t with the cache DIR/cache; prints the digest.
digest_of() {
  KILN_CACHE="$1/cache" build_ok "$1/spec.json" -o "oci:$1/out:t"
  jget "j['digest']" <<<"$OUT"
}
# tag_of DIR: `kiln tag` of DIR/spec.json.
tag_of() {
  KILN_CACHE="$1/cache" kiln tag "$1/spec.json"
  ((RC == 0)) || die "kiln tag $1/spec.json exited $RC: $ERR"
  echo "$OUT"
}

make_project "$T/A" forward 022 "2001-02-03 04:05:06"
make_project "$T/B" reverse 077 "2023-10-11 12:13:14"

# ---- two copies, two caches: one image ---------------------------------------------------------
DA=$(digest_of "$T/A")
DB=$(digest_of "$T/B")
# Same manifest digest, whatever the directory, mtimes, umask, creation order and cache.
assert_eq "$DA" "$DB" "same project in two places builds the same manifest digest"
TAG_A=$(tag_of "$T/A")
# Same tag too, and the tag is repro:<32 hex>.
assert_eq "$TAG_A" "$(tag_of "$T/B")" "same project in two places has the same kiln tag"
assert_match "$TAG_A" '^repro:[0-9a-f]{32}$' "tag format"
# The two layouts are byte-identical (blobs, index.json, oci-layout).
assert_eq "$(snapshot "$T/A/out")" "$(snapshot "$T/B/out")" "the two OCI layouts are byte-identical"

# The same spec spelled differently (source_root "./proj/", keys in another order) has the same tag.
cat >"$T/A/spec-respelled.json" <<'EOF2'
{"entrypoint": ["python", "-m", "pkg"], "env": {"MODE": "test"},
 "source_copy_mode": "all", "source_root": "./proj/", "name": "repro"}
EOF2
KILN_CACHE="$T/A/cache" kiln tag "$T/A/spec-respelled.json"
assert_eq "$TAG_A" "$OUT" "source_root ./proj/ and reordered keys give the same tag"

# ---- a rebuild into the same layout changes no byte ---------------------------------------------
BEFORE=$(snapshot "$T/A/out")
assert_eq "$DA" "$(digest_of "$T/A")" "rebuild gives the same digest"
assert_eq "$BEFORE" "$(snapshot "$T/A/out")" "rebuild into the same layout leaves it byte-identical (index.json included)"

# ---- SOURCE_DATE_EPOCH -----------------------------------------------------------------------
# From the environment: changes the digest (timestamps in the tars and the config), reproducibly.
D_SDE=$(SOURCE_DATE_EPOCH=1700000000 digest_of "$T/A")
assert_ne "$DA" "$D_SDE" "SOURCE_DATE_EPOCH changes the digest"
assert_eq "$D_SDE" "$(SOURCE_DATE_EPOCH=1700000000 digest_of "$T/B")" "SOURCE_DATE_EPOCH build is reproducible too"
assert_eq "2023-11-14T22:13:20Z" "$(config_json "$T/A/out" t | jget "j['created']")" "config created = SOURCE_DATE_EPOCH"
SDE_DIFF_IDS=$(config_json "$T/A/out" t | jget "j['rootfs']['diff_ids']")
# Without it, the epoch is 0.
digest_of "$T/A" >/dev/null
assert_eq "1970-01-01T00:00:00Z" "$(config_json "$T/A/out" t | jget "j['created']")" "config created defaults to the epoch"
# An invalid SOURCE_DATE_EPOCH is a usage error.
SOURCE_DATE_EPOCH=yesterday kiln build "$T/A/spec.json" --progress quiet
assert_eq 2 "$RC" "invalid SOURCE_DATE_EPOCH exits 2"
assert_contains "$ERR" "SOURCE_DATE_EPOCH" "invalid SOURCE_DATE_EPOCH is named"
# From the spec field: changes the digest and (being part of the spec) the tag.
cp -a "$T/A" "$T/A_sde"
"$PYTHON" - "$T/A_sde/spec.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1])); s["source_date_epoch"] = 1700000000
json.dump(s, open(sys.argv[1], "w"))
EOF
D_FIELD=$(digest_of "$T/A_sde")
assert_ne "$DA" "$D_FIELD" "spec source_date_epoch changes the digest"
# Same layers as with the environment variable (the config differs by its spec-hash label).
assert_eq "$SDE_DIFF_IDS" "$(config_json "$T/A_sde/out" t | jget "j['rootfs']['diff_ids']")" "spec source_date_epoch = env SOURCE_DATE_EPOCH: same layers"
assert_eq "2023-11-14T22:13:20Z" "$(config_json "$T/A_sde/out" t | jget "j['created']")" "spec source_date_epoch sets created"
# The spec field wins over the environment.
assert_eq "$D_FIELD" "$(SOURCE_DATE_EPOCH=5 digest_of "$T/A_sde")" "spec source_date_epoch overrides SOURCE_DATE_EPOCH"
assert_ne "$TAG_A" "$(tag_of "$T/A_sde")" "spec source_date_epoch changes the tag"

# ---- what changes the tag, and what does not -------------------------------------------------
# variant NAME: a copy of A (same cache, so the stat index is exercised) to modify.
variant() {
  rm -rf "$T/V"
  cp -a "$T/A" "$T/V"
  rm -rf "$T/V/out"
}
# A content change changes the tag.
variant
echo "A = 'changed'" >"$T/V/proj/pkg/a.py"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "content change changes the tag"
# A same-size content change with the mtime put back changes it too (the stat index must not trust
# size+mtime alone).
variant
tag_of "$T/V" >/dev/null # fills V's stat index
sleep 1.1                # out of the racy window, so the index entry would be trusted
printf "A = 'ALPHA'\n" >"$T/V/proj/pkg/a.py"
touch -d "2001-02-03 04:05:06" "$T/V/proj/pkg/a.py"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "same-size edit with the mtime restored changes the tag"
# The x bit changes the tag (and the digest).
variant
chmod +x "$T/V/proj/pkg/a.py"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "chmod +x changes the tag"
assert_ne "$DA" "$(digest_of "$T/V")" "chmod +x changes the digest"
# Other mode bits are normalized away: chmod 600 changes nothing.
variant
chmod 600 "$T/V/proj/pkg/a.py"
assert_eq "$TAG_A" "$(tag_of "$T/V")" "chmod 600 (no x bit change) keeps the tag"
assert_eq "$DA" "$(digest_of "$T/V")" "chmod 600 keeps the digest"
# A rename changes the tag.
variant
mv "$T/V/proj/pkg/sub/c.py" "$T/V/proj/pkg/sub/d.py"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "rename changes the tag"
# An empty directory is not baked (flytekit copies files: its image has no empty directories),
# so adding one leaves the tag alone; a directory holding a file is part of the image.
variant
mkdir "$T/V/proj/another_empty_dir"
assert_eq "$TAG_A" "$(tag_of "$T/V")" "a new empty directory does not change the tag (it is not baked)"
printf 'x\n' >"$T/V/proj/another_empty_dir/f.txt"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "a new directory with a file changes the tag"
# A symlink's target is content: retargeting it changes the tag.
variant
ln -sfn pkg/sub/b.py "$T/V/proj/alias.py"
assert_ne "$TAG_A" "$(tag_of "$T/V")" "symlink retarget changes the tag"
# An mtime-only change (touch) changes neither the tag nor the digest.
variant
touch "$T/V/proj/pkg/a.py" "$T/V/proj/pkg"
assert_eq "$TAG_A" "$(tag_of "$T/V")" "touch keeps the tag"
assert_eq "$DA" "$(digest_of "$T/V")" "touch keeps the digest"
# A file excluded by .dockerignore does not count, but the .dockerignore itself does.
variant
printf 'scratch.txt\n' >"$T/V/proj/.dockerignore"
TAG_DI=$(tag_of "$T/V")
assert_ne "$TAG_A" "$TAG_DI" "adding a .dockerignore (a file in the image) changes the tag"
echo "junk" >"$T/V/proj/scratch.txt"
assert_eq "$TAG_DI" "$(tag_of "$T/V")" "a .dockerignore'd file does not change the tag"

# ---- hardlinks ------------------------------------------------------------------------------
# BUG (reproducibility): the same file bytes must give the same image whatever the link structure
# on disk (README: "the same spec and the same file bytes give the same image digest"), or at
# least the tag must then differ. Today two independent copies and two hardlinks of one file give
# the same tag but different image digests (the tar stores the second link as a hardlink entry,
# and the tag does not cover links): one tag, two images.
mkdir -p "$T/H1/proj" "$T/H2/proj"
echo 'SAME = 1' >"$T/H1/proj/a.py"
cp "$T/H1/proj/a.py" "$T/H1/proj/b.py" # independent copies
echo 'SAME = 1' >"$T/H2/proj/a.py"
ln "$T/H2/proj/a.py" "$T/H2/proj/b.py" # one inode, two names
for h in H1 H2; do
  echo '{"name": "links", "source_root": "proj", "source_copy_mode": "all"}' >"$T/$h/spec.json"
done
TAG_H1=$(tag_of "$T/H1")
TAG_H2=$(tag_of "$T/H2")
D_H1=$(digest_of "$T/H1")
D_H2=$(digest_of "$T/H2")
if [[ "$TAG_H1" == "$TAG_H2" ]]; then
  assert_eq "$D_H1" "$D_H2" "BUG: copies vs hardlinks of the same bytes: same tag ($TAG_H1) but different image digests"
else
  pass
fi
