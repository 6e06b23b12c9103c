#!/usr/bin/env bash
# apt_packages for real: a Debian bookworm base made with debootstrap (minbase) and turned into an
# OCI image by umoci — a base kiln did not write, with real owners, setuid files and a 1777 /tmp —
# then `apt_packages: ["hello"]` from the Debian mirror. The image runs `hello` under bwrap; the
# layer holds the package but no apt lists or caches; owners and modes of the base survive;
# --network none fails the step with apt's own error, exit 3.
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

cat >"$T/spec.json" <<EOF
{"name": "hello", "base_image": "oci:debian:bookworm", "apt_packages": ["hello"], "entrypoint": ["hello"]}
EOF
kiln build "$T/spec.json" --json --progress plain -o "oci:$T/out:hello"
assert_eq 0 "$RC" "apt_packages builds"$'\n'"$(tail -30 <<<"$ERR")"
assert_contains "$ERR" "[apt] " "apt's output is logged with the step's name"
oci_validate "$T/out" hello "$T/bundle"
R="$T/bundle/rootfs"
RUN_OUT=$(bwrap --bind "$R" / --proc /proc --dev /dev --tmpfs /tmp --unshare-all --die-with-parent --clearenv \
  --setenv PATH /usr/bin:/bin hello 2>&1) || true
assert_eq "Hello, world!" "$RUN_OUT" "the installed package runs in the image"
D_LAYER=$(manifest_json "$T/out" hello | jget "j['layers'][-1]['digest']")
LISTING=$(blob_cat "$(blob_path "$T/out" "$D_LAYER")" | tar -tv | grep -v '/\.wh\.')
assert_contains "$LISTING" "usr/bin/hello" "the apt layer holds the package"
assert_not_contains "$LISTING" "var/lib/apt/lists/deb" "no apt lists in the layer"
assert_not_contains "$LISTING" ".deb" "no downloaded .deb in the layer"
assert_not_contains "$LISTING" "pkgcache.bin" "no apt cache in the layer"
assert_eq "1777" "$(stat -c %a "$R/tmp")" "the base's /tmp keeps mode 1777"
assert_eq "4755" "$(stat -c %a "$R/usr/bin/su")" "setuid files of the base survive"
assert_eq "_apt" "$(stat -c %U "$R/var/cache/apt/archives/partial" 2>/dev/null || echo missing)" \
  "a directory owned by another user keeps its owner"

# ---- no network: apt's own error, exit 3 ---------------------------------------------------------
kiln build "$T/spec.json" --json --progress quiet --network none --cache "$T/cache-nonet"
assert_eq 3 "$RC" "apt without a network fails the step (exit 3)"
assert_eq "step apt" "$(jget "j.get('failed_step')" <<<"$OUT")" "the failed step is apt"
assert_match "$(jget "j['message']" <<<"$OUT")" "Unable to locate package hello|Temporary failure|Could not resolve" \
  "the message quotes apt's error"
