#!/usr/bin/env bash
# An ImageSpec with all four install fields, for real, with no daemon: a Debian bookworm base made
# with debootstrap (minbase) and turned into an OCI image by umoci — a base kiln did not write,
# with real owners, setuid files and a 1777 /tmp — then apt_packages (hello, python3-pip) from the
# Debian mirror, requirements + packages through the pip that apt installed (two wheels written
# here, passed in with pip_secret_mounts), and commands that use both. The image's entrypoint runs
# under bwrap and prints what the steps made; the apt layer holds the packages but no apt lists or
# caches; owners and modes of the base survive; a rebuild runs nothing; --network none fails the
# apt step with apt's own error, exit 3.
#
# Needs the Debian mirror (as scripts/install-deps.sh does). The debootstrap tree is kept in
# $KILN_TEST_CACHE (default /var/tmp/kiln-test-cache) between runs; without a mirror the test is
# skipped (exit 77), saying so.
source "$(dirname "$0")/lib.sh"
need_tools umoci bwrap skopeo oci-image-tool debootstrap
[[ $(id -u) -eq 0 ]] || {
  echo "$TEST_NAME: SKIP: debootstrap needs root" >&2
  exit 77
}

MIRROR=${KILN_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${KILN_TEST_CACHE:-/var/tmp/kiln-test-cache}
ROOTFS_TAR="$CACHE/bookworm-minbase.tar"
mkdir -p "$CACHE"
if [[ ! -s "$ROOTFS_TAR" ]]; then
  if ! debootstrap --variant=minbase bookworm "$T/debootstrap" "$MIRROR" >"$T/debootstrap.log" 2>&1; then
    if grep -qiE "resolv|connect|network|Failed getting release file" "$T/debootstrap.log"; then
      echo "$TEST_NAME: SKIP: the Debian mirror $MIRROR is unreachable:" >&2
      tail -3 "$T/debootstrap.log" >&2
      trap - EXIT
      rm -rf "$T"
      exit 77
    fi
    die "debootstrap failed:"$'\n'"$(tail -20 "$T/debootstrap.log")"
  fi
  tar -C "$T/debootstrap" --numeric-owner -cpf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$T/debootstrap"
fi

# ---- the base: umoci turns the tree into an OCI image -----------------------------------------------
D="$T/debian"
umoci init --layout "$D" >/dev/null
umoci new --image "$D:bookworm" >/dev/null
umoci unpack --image "$D:bookworm" "$T/base-bundle" >/dev/null
tar -C "$T/base-bundle/rootfs" --numeric-owner -xpf "$ROOTFS_TAR"
# As Debian's own images: no package lists, no downloaded packages.
rm -rf "$T/base-bundle/rootfs/var/lib/apt/lists/"* "$T/base-bundle/rootfs/var/cache/apt/archives/"*.deb
umoci repack --image "$D:bookworm" "$T/base-bundle" >/dev/null
umoci config --image "$D:bookworm" --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" >/dev/null
rm -rf "$T/base-bundle"

W="$T/wheels"
mkdir -p "$W"
"$PYTHON" "$(dirname "$0")/make_wheel.py" "$W" kilnhello 1.0 "GREETING = 'hello from a wheel'"
"$PYTHON" "$(dirname "$0")/make_wheel.py" "$W" kilnextra 2.0 "EXTRA = 'and an extra'"
echo "kilnhello==1.0" >"$T/requirements.txt"
cat >"$T/spec.json" <<'EOF'
{
  "name": "everything",
  "base_image": "oci:debian:bookworm",
  "apt_packages": ["hello", "python3-pip"],
  "requirements": "requirements.txt",
  "packages": ["kilnextra==2.0"],
  "pip_extra_args": "--no-index --find-links /wheels",
  "pip_secret_mounts": [["wheels", "/wheels"]],
  "workdir": "/app",
  "commands": [
    "python3 -c 'import kilnhello, kilnextra; print(kilnhello.GREETING, kilnextra.EXTRA)' > greeting.txt",
    "hello > hello.txt"
  ],
  "entrypoint": ["sh", "-c", "cat greeting.txt hello.txt"]
}
EOF
kiln build "$T/spec.json" --json --progress plain -o "oci:$T/out:all"
assert_eq 0 "$RC" "apt_packages, requirements, packages and commands build"$'\n'"$(tail -30 <<<"$ERR")"
DIGEST=$(jget "j.get('digest')" <<<"$OUT")
assert_contains "$ERR" "[apt] " "apt's output is logged with the step's name"
assert_contains "$ERR" "[pip] Successfully installed" "pip's output is logged with the step's name"
oci_validate "$T/out" all "$T/bundle"
R="$T/bundle/rootfs"
assert_eq $'hello from a wheel and an extra\nHello, world!' "$(run_entrypoint "$T/out" all "$R")" \
  "the image's entrypoint prints what the apt, pip and command steps made"
assert_eq 4 "$(manifest_json "$T/out" all | jget "len(j['layers']) - 1")" "apt, pip and two commands: four layers on the base"
D_LAYER=$(manifest_json "$T/out" all | jget "j['layers'][1]['digest']")
LISTING=$(blob_cat "$(blob_path "$T/out" "$D_LAYER")" | tar -tv | grep -v '/\.wh\.')
assert_contains "$LISTING" "usr/bin/hello" "the apt layer holds the package"
assert_not_contains "$LISTING" "var/lib/apt/lists/deb" "no apt lists in the layer"
assert_not_contains "$LISTING" ".deb" "no downloaded .deb in the layer"
assert_not_contains "$LISTING" "pkgcache.bin" "no apt cache in the layer"
assert_eq "1777" "$(stat -c %a "$R/tmp")" "the base's /tmp keeps mode 1777"
assert_eq "4755" "$(stat -c %a "$R/usr/bin/su")" "setuid files of the base survive"
assert_eq "_apt" "$(stat -c %U "$R/var/cache/apt/archives/partial" 2>/dev/null || echo missing)" \
  "a directory owned by another user keeps its owner"

assert_cmd "the wheels (a secret mount) are not in the image" test ! -e "$R/wheels"

# ---- nothing changed: no step runs --------------------------------------------------------------
kiln build "$T/spec.json" --json --progress plain
assert_eq "0 $DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "the rebuild gives the same digest"
assert_not_contains "$ERR" ": running (" "a rebuild with nothing changed runs no step"

# ---- no network: apt's own error, exit 3 ---------------------------------------------------------
kiln build "$T/spec.json" --json --progress quiet --network none --cache "$T/cache-nonet"
assert_eq 3 "$RC" "apt without a network fails the step (exit 3)"
assert_eq "step apt" "$(jget "j.get('failed_step')" <<<"$OUT")" "the failed step is apt"
assert_match "$(jget "j['message']" <<<"$OUT")" "Unable to locate package hello|Temporary failure|Could not resolve" \
  "the message quotes apt's error"
