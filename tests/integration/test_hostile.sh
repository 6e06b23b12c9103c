#!/usr/bin/env bash
# Hostile inputs: each is refused with a clear error (exit 2, the message naming the path or the
# field) or stored safely, and a refused build leaves a pre-existing output layout byte-for-byte as
# it was (and writes no docker-archive).
source "$(dirname "$0")/lib.sh"
need_tools umoci oci-image-tool skopeo mkfifo

# A pre-existing, good layout L that every refused build targets.
mkdir -p "$T/good/proj"
echo 'GOOD = 1' >"$T/good/proj/good.py"
echo '{"name": "hostile", "source_root": "proj", "source_copy_mode": "all"}' >"$T/good/spec.json"
L=$T/layout
build_ok "$T/good/spec.json" -o "oci:$L:t"
L_SNAPSHOT=$(snapshot "$L")

# Outside every project: a secret that must never end up in an image.
OUTSIDE=$T/outside
mkdir -p "$OUTSIDE"
SECRET="kiln-secret-$RANDOM$RANDOM$RANDOM"
echo "$SECRET" >"$OUTSIDE/secret.txt"

# expect_refused WHAT SPEC NEEDLE... [-- KILN ARGS...]: building SPEC into L (and a docker-archive)
# fails with exit 2, an error whose message contains every NEEDLE, the --json failure object, an
# untouched L and no archive.
expect_refused() {
  local what=$1 spec=$2
  shift 2
  local needles=() extra=()
  while (($#)); do
    if [[ $1 == -- ]]; then
      shift
      extra=("$@")
      break
    fi
    needles+=("$1")
    shift
  done
  kiln build "$spec" --json --progress quiet -o "oci:$L:t" -o "docker-archive:$T/never.tar" "${extra[@]}"
  assert_eq 2 "$RC" "$what: exit code"
  local n
  for n in "${needles[@]}"; do assert_contains "$ERR" "$n" "$what: error message"; done
  assert_eq "failed 2" "$(jget "j['status'] + ' ' + str(j['exit_code'])" <<<"$OUT")" "$what: --json failure object"
  assert_eq "$L_SNAPSHOT" "$(snapshot "$L")" "$what: the existing layout is byte-for-byte unchanged"
  assert_cmd "$what: no docker-archive is written" test ! -e "$T/never.tar"
}

# grep_blobs DIR... NEEDLE: how many blobs (decompressed) of the blobs dirs contain NEEDLE.
grep_blobs() {
  local needle=${!#} n=0 dir f
  for dir in "${@:1:$#-1}"; do
    for f in "$dir"/*; do
      [[ -f "$f" ]] || continue
      if blob_cat "$f" | grep -aqF -- "$needle"; then n=$((n + 1)); fi
    done
  done
  echo "$n"
}

# ---- symlinks pointing outside source_root: stored as symlinks, never followed -------------------
P=$T/links/proj
mkdir -p "$P"
echo 'x = 1' >"$P/mod.py"
ln -s /etc/passwd "$P/passwd"
ln -s "$OUTSIDE/secret.txt" "$P/abs_secret"
ln -s ../../outside/secret.txt "$P/rel_secret"
ln -s "$OUTSIDE" "$P/outdir"
ln -s "$OUTSIDE/secret.txt" "$T/links/copied_link"
cat >"$T/links/spec.json" <<'EOF'
{"name": "links", "source_root": "proj", "source_copy_mode": "all", "copy": ["copied_link"]}
EOF
build_ok "$T/links/spec.json" -o "oci:$T/links/out:t"
# A warning names each outside link.
WARN=$(jget "' '.join(j['warnings'])" <<<"$OUT")
for l in passwd abs_secret rel_secret outdir; do assert_contains "$WARN" "'$l' points outside" "warning for $l"; done
oci_validate "$T/links/out" t "$T/links/bundle"
# The links are links, with their targets as written.
R=$T/links/bundle/rootfs/root
assert_eq "/etc/passwd" "$(readlink "$R/passwd")" "passwd stored as a symlink"
assert_eq "$OUTSIDE/secret.txt" "$(readlink "$R/abs_secret")" "absolute link stored as a symlink"
assert_eq "../../outside/secret.txt" "$(readlink "$R/rel_secret")" "relative escaping link stored as a symlink"
assert_eq "$OUTSIDE" "$(readlink "$R/outdir")" "directory link stored as a symlink"
assert_eq "$OUTSIDE/secret.txt" "$(readlink "$R/copied_link")" "a copy entry that is a symlink is stored as a symlink"
# No blob, in the layout or the cache, holds the linked contents.
PASSWD_LINE=$(head -1 /etc/passwd)
assert_eq 0 "$(grep_blobs "$T/links/out/blobs/sha256" "$KILN_CACHE/blobs/sha256" "$SECRET")" "no blob holds the outside secret"
assert_eq 0 "$(grep_blobs "$T/links/out/blobs/sha256" "$KILN_CACHE/blobs/sha256" "$PASSWD_LINE")" "no blob holds /etc/passwd's content"

# ---- copy entries that leave the spec's directory: spec errors -----------------------------------
mkdir -p "$T/copy"
echo 'x' >"$T/x"
echo '{"name": "c", "copy": ["../x"]}' >"$T/copy/dotdot.json"
expect_refused 'copy "../x"' "$T/copy/dotdot.json" "'copy'" "../x"
echo '{"name": "c", "copy": ["/etc/passwd"]}' >"$T/copy/abs.json"
expect_refused 'copy "/etc/passwd"' "$T/copy/abs.json" "'copy'" "/etc/passwd"
echo '{"name": "c", "copy": ["ok/../../x"]}' >"$T/copy/hidden.json"
expect_refused 'copy "ok/../../x"' "$T/copy/hidden.json" "ok/../../x"

# ---- a copy entry reached through a symlinked directory pointing outside: refused ---------------
ln -s "$OUTSIDE" "$T/copy/ext"
echo '{"name": "c", "copy": ["ext/secret.txt"]}' >"$T/copy/through.json"
expect_refused "copy through a symlinked dir" "$T/copy/through.json" "ext/secret.txt" "symlink"
# The same for a loaded module reached through a symlinked directory.
mkdir -p "$T/mods/proj"
echo 'm = 1' >"$T/mods/proj/m.py"
ln -s "$OUTSIDE" "$T/mods/proj/ext"
echo '{"name": "m", "source_root": "proj"}' >"$T/mods/spec.json"
expect_refused "--module through a symlinked dir" "$T/mods/spec.json" "ext/secret.txt" -- --module ext/secret.txt
# A module path with ".." is refused too.
expect_refused "--module ../x" "$T/mods/spec.json" "../x" -- --module ../x
# A copy entry that does not exist.
echo '{"name": "c", "copy": ["nope.txt"]}' >"$T/copy/missing.json"
expect_refused "missing copy entry" "$T/copy/missing.json" "nope.txt"

# ---- a fifo in source_root: refused, naming it --------------------------------------------------
mkdir -p "$T/fifo/proj"
echo 'x = 1' >"$T/fifo/proj/a.py"
mkfifo "$T/fifo/proj/pipe"
echo '{"name": "f", "source_root": "proj", "source_copy_mode": "all"}' >"$T/fifo/spec.json"
expect_refused "fifo" "$T/fifo/spec.json" "$(realpath "$T/fifo/proj")/pipe" "fifo"

# ---- a 300-byte relative path: stored, and unpacks correctly -------------------------------------
mkdir -p "$T/deep/proj"
D=""
for i in 1 2 3 4 5 6; do D="$D/$(printf 'level%d_%040d' "$i" 0)"; done # six 47-byte directory names
DEEP_REL="${D#/}/$(printf 'module_%0030d.py' 0)"                          # and a 40-byte file name
mkdir -p "$T/deep/proj/$(dirname "$DEEP_REL")"
echo "DEEP = 'ok'" >"$T/deep/proj/$DEEP_REL"
assert_eq 328 "${#DEEP_REL}" "the deep relative path is 328 bytes (over 300)"
echo '{"name": "deep", "source_root": "proj", "source_copy_mode": "all"}' >"$T/deep/spec.json"
build_ok "$T/deep/spec.json" -o "oci:$T/deep/out:t"
oci_validate "$T/deep/out" t "$T/deep/bundle"
assert_eq "DEEP = 'ok'" "$(cat "$T/deep/bundle/rootfs/root/$DEEP_REL" 2>&1)" "the deep file unpacks with its content"
assert_eq "./root/$DEEP_REL" "$(cd "$T/deep/bundle/rootfs" && find . -type f)" "the deep file is the only file, at its full path"

# ---- a file name that is not UTF-8: refused, naming it ------------------------------------------
mkdir -p "$T/utf/proj"
echo 'x = 1' >"$T/utf/proj/a.py"
echo 'bad' >"$T/utf/proj/bad$(printf '\xff')name.py"
echo '{"name": "u", "source_root": "proj", "source_copy_mode": "all"}' >"$T/utf/spec.json"
expect_refused "non-UTF-8 name" "$T/utf/spec.json" 'bad\xffname.py' "UTF-8"

# ---- a missing source_root ----------------------------------------------------------------------
echo '{"name": "m", "source_root": "does/not/exist", "source_copy_mode": "all"}' >"$T/missing.json"
expect_refused "missing source_root" "$T/missing.json" "$T/does/not/exist" "does not exist"
# source_root that is a file.
echo '{"name": "m", "source_root": "missing.json"}' >"$T/notdir.json"
expect_refused "source_root is a file" "$T/notdir.json" "$T/missing.json" "not a directory"

# ---- an unreadable file or directory (as an unprivileged user) -----------------------------------
mkdir -p "$T/unread/proj"
echo 'x = 1' >"$T/unread/proj/a.py"
echo 'hidden' >"$T/unread/proj/locked.py"
chmod 000 "$T/unread/proj/locked.py"
echo '{"name": "r", "source_root": "proj", "source_copy_mode": "all"}' >"$T/unread/spec.json"
AS_USER=()
if [[ $(id -u) -eq 0 ]]; then
  if command -v setpriv >/dev/null && setpriv --reuid=65534 --regid=65534 --clear-groups "$KILN" --version >/dev/null 2>&1; then
    AS_USER=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    chmod 755 "$T" # mktemp -d made it 0700
  else
    AS_USER=(skip)
  fi
fi
if [[ "${AS_USER[*]-}" == skip ]]; then
  echo "$TEST_NAME: SKIP unreadable-file checks: running as root, and setpriv cannot run $KILN as uid 65534" >&2
else
  # The unprivileged user gets its own cache and its own copy of the layout to protect.
  UL=$T/layout-user
  cp -a "$L" "$UL"
  mkdir -p "$T/cache-user"
  if [[ $(id -u) -eq 0 ]]; then chown -R 65534:65534 "$UL" "$T/cache-user"; fi
  UL_SNAPSHOT=$(snapshot "$UL")
  run_as_user() {
    RC=0
    "${AS_USER[@]}" env KILN_CACHE="$T/cache-user" "$KILN" build "$1" --json --progress quiet -o "oci:$UL:t" \
      >"$T/.user.out" 2>"$T/.user.err" || RC=$?
    OUT=$(<"$T/.user.out")
    ERR=$(<"$T/.user.err")
  }
  run_as_user "$T/unread/spec.json"
  assert_eq 2 "$RC" "unreadable file: exit code"
  assert_contains "$ERR" "$T/unread/proj/locked.py" "unreadable file: the message names it"
  assert_contains "$ERR" "Permission denied" "unreadable file: the message says why"
  assert_eq "$UL_SNAPSHOT" "$(snapshot "$UL")" "unreadable file: the existing layout is unchanged"
  # An unreadable directory.
  chmod 644 "$T/unread/proj/locked.py"
  mkdir "$T/unread/proj/locked_dir"
  echo 'y' >"$T/unread/proj/locked_dir/y.py"
  chmod 000 "$T/unread/proj/locked_dir"
  run_as_user "$T/unread/spec.json"
  assert_eq 2 "$RC" "unreadable directory: exit code"
  assert_contains "$ERR" "$T/unread/proj/locked_dir" "unreadable directory: the message names it"
  assert_eq "$UL_SNAPSHOT" "$(snapshot "$UL")" "unreadable directory: the existing layout is unchanged"
  chmod 755 "$T/unread/proj/locked_dir"
fi

# ---- spec errors: an unknown field, a JSON syntax error -----------------------------------------
echo '{"name": "s", "source_rot": "proj"}' >"$T/good/typo.json"
expect_refused "unknown field" "$T/good/typo.json" "unknown field 'source_rot'" "did you mean 'source_root'"
printf '{\n  "name": "s",\n  "source_root": "proj",,\n  "source_copy_mode": "all"\n}\n' >"$T/good/syntax.json"
expect_refused "JSON syntax error" "$T/good/syntax.json" "syntax.json:3:25:" "JSON syntax error"
# An unknown field inside a nested base spec is named with its path.
echo '{"name": "s", "base_image": {"name": "b", "envv": {}}}' >"$T/good/nested.json"
expect_refused "unknown nested field" "$T/good/nested.json" "base_image.envv" "did you mean 'env'"
