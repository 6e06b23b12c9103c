#!/usr/bin/env bash
# The tag and the image do not depend on where the files or the spec are (issue 11 §2, tag v2):
# two identical checkouts at different absolute paths (different mtimes and umask), a spec next to
# the code with relative paths, a spec in a third directory with absolute paths (as pyflyte writes
# one to a temporary directory, context_dir for `copy`), and the spec on stdin from two working
# directories all give the same tag and the same manifest digest; an oci: base at two paths too.
# A changed byte, or a changed requirements file, still gives another tag.
source "$(dirname "$0")/lib.sh"

# ---- two identical checkouts ------------------------------------------------------------------
make_checkout() {
  local d=$1
  mkdir -p "$d/src/pkg" "$d/lib" "$d/data"
  echo 'VALUE = 1' >"$d/src/pkg/mod.py"
  printf '#!/bin/sh\necho serve\n' >"$d/src/serve.sh"
  chmod +x "$d/src/serve.sh"
  echo 'helper' >"$d/lib/helper.py"
  echo 'weights' >"$d/data/w.txt"
  echo 'numpy==1.26.4' >"$d/requirements.txt"
}
A="$T/alice/repo"
B="$T/ci/work/deep/checkout"
make_checkout "$A"
(umask 077 && make_checkout "$B")
touch -d '2001-01-01' "$B/src/pkg/mod.py" "$B/data/w.txt"

# ---- a base layout, copied to two places --------------------------------------------------------
mkdir -p "$T/basesrc/etc"
echo base >"$T/basesrc/etc/base.txt"
echo '{"name": "base", "source_root": "basesrc", "source_dest": "/", "source_copy_mode": "all"}' >"$T/base.json"
build_ok "$T/base.json" -o "oci:$A/layout:base"
cp -a "$A/layout" "$B/layout"

# A spec next to the code, relative paths (the nested base spec has a source_root of its own).
SPEC_REL='{"name": "app", "source_root": "src", "source_copy_mode": "all", "copy": ["data"],
  "base_image": {"name": "mid", "source_root": "lib", "source_copy_mode": "all", "base_image": "oci:layout:base"},
  "env": {"MODE": "x"}}'
echo "$SPEC_REL" >"$A/spec.json"
echo "$SPEC_REL" >"$B/spec.json"

# The same spec in a third directory with absolute paths; copy resolves against context_dir.
abs_spec() {
  cat <<EOF
{"name": "app", "source_root": "$1/src", "source_copy_mode": "all", "copy": ["data"], "context_dir": "$1",
  "base_image": {"name": "mid", "source_root": "$1/lib", "source_copy_mode": "all", "base_image": "oci:$1/layout:base"},
  "env": {"MODE": "x"}}
EOF
}
mkdir -p "$T/tmp/pyflyte-1" "$T/tmp/pyflyte-2"
abs_spec "$A" >"$T/tmp/pyflyte-1/spec.json"
abs_spec "$B" >"$T/tmp/pyflyte-2/spec.json"

# ---- every way gives one tag and one digest -----------------------------------------------------
declare -A TAGS DIGESTS
n=0
build_as() {  # build_as NAME [kiln build args...]: records the tag and digest
  local name=$1
  shift
  n=$((n + 1))
  build_ok "$@" -o "oci:$T/out$n:t"
  TAGS[$name]=$(jget "j['tag']" <<<"$OUT")
  DIGESTS[$name]=$(jget "j['digest']" <<<"$OUT")
}
build_as rel-a "$A/spec.json"
build_as rel-b "$B/spec.json"
build_as abs-a "$T/tmp/pyflyte-1/spec.json"
build_as abs-b "$T/tmp/pyflyte-2/spec.json"
(cd "$A" && "$KILN" build - --json --progress quiet -o "oci:$T/out-stdin-a:t" <"$A/spec.json" >"$T/stdin-a.json")
(cd "$B" && "$KILN" build - --json --progress quiet -o "oci:$T/out-stdin-b:t" <"$B/spec.json" >"$T/stdin-b.json")
# Absolute paths on stdin, from an unrelated working directory.
(cd "$T/tmp" && "$KILN" build - --json --progress quiet <"$T/tmp/pyflyte-2/spec.json" >"$T/stdin-abs.json")
for f in stdin-a stdin-b stdin-abs; do
  TAGS[$f]=$(jget "j['tag']" "$T/$f.json")
  DIGESTS[$f]=$(jget "j['digest']" "$T/$f.json")
done

REF_TAG=${TAGS[rel-a]}
REF_DIGEST=${DIGESTS[rel-a]}
for k in rel-b abs-a abs-b stdin-a stdin-b stdin-abs; do
  assert_eq "$REF_TAG" "${TAGS[$k]}" "tag of $k equals the tag of the spec next to checkout A"
  assert_eq "$REF_DIGEST" "${DIGESTS[$k]}" "manifest digest of $k equals checkout A's"
done
# kiln tag agrees with the builds, from anywhere.
kiln tag "$T/tmp/pyflyte-2/spec.json"
assert_eq "app:$REF_TAG" "$OUT" "kiln tag on the absolute-path spec"
# No host path in the config or the manifest.
CFG=$(config_json "$T/out3" t)
MAN=$(manifest_json "$T/out3" t)
assert_not_contains "$CFG$MAN" "$T" "no host path in the config or manifest"
assert_not_contains "$MAN" "oci:" "an oci: base (a host path) is not named in the annotations"
assert_match "$(jget "j['annotations']['org.opencontainers.image.base.name']" <<<"$MAN")" '^mid:[0-9a-f]{32}$' \
  "a nested spec base is named by its name:tag"
assert_contains "$MAN" "org.opencontainers.image.base.digest" "the base digest is"
oci_validate "$T/out3" t

# ---- requirements: the content counts, not the path --------------------------------------------
echo '{"name": "r", "requirements": "requirements.txt", "base_image": "oci:layout:base"}' >"$A/req.json"
echo "{\"name\": \"r\", \"requirements\": \"$B/requirements.txt\", \"base_image\": \"oci:$B/layout:base\"}" \
  >"$T/tmp/pyflyte-2/req.json"
kiln tag "$A/req.json"
REQ_A=$OUT
kiln tag "$T/tmp/pyflyte-2/req.json"
assert_eq "$REQ_A" "$OUT" "a requirements file at another path with the same bytes: same tag"
echo 'numpy==2.0.0' >"$B/requirements.txt"
kiln tag "$T/tmp/pyflyte-2/req.json"
assert_ne "$REQ_A" "$OUT" "a requirements file with other bytes: another tag"

# ---- content still counts -----------------------------------------------------------------------
echo 'VALUE = 2' >"$B/src/pkg/mod.py"
kiln tag "$T/tmp/pyflyte-2/spec.json"
assert_ne "app:$REF_TAG" "$OUT" "a changed source byte gives another tag"
echo 'VALUE = 1' >"$B/src/pkg/mod.py"
echo 'other' >"$B/data/w.txt"
kiln tag "$T/tmp/pyflyte-2/spec.json"
assert_ne "app:$REF_TAG" "$OUT" "a changed copy-entry byte gives another tag"
echo 'weights' >"$B/data/w.txt"
echo 'helper2' >"$B/lib/helper.py"
kiln tag "$T/tmp/pyflyte-2/spec.json"
assert_ne "app:$REF_TAG" "$OUT" "a changed byte in the nested base spec's source gives another tag"
