#!/usr/bin/env bash
# RUN steps cannot reach the host, whoever runs kiln. A step (and a base image whose /bin/sh does
# the same before it runs a harmless command) tries what owned the host before: mknod of the host's
# root block device, mount it and write a canary file on the host; mount proc and sysfs; write
# /proc/sysrq-trigger; make a user namespace to get capabilities back. Run as root (and as nobody
# when bwrap works unprivileged here): no canary, every attempt denied. Also: --step-timeout kills
# a step that runs too long (exit 3, a clear message), and a 15 TiB sparse file made by a step is
# refused with a clear error instead of hanging the capture.
source "$(dirname "$0")/lib.sh"
need_tools bwrap
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"

# The host's root device, as the attacker would find it.
ROOTDEV=$(awk '$5 == "/" {print $3; exit}' /proc/self/mountinfo)
MAJ=${ROOTDEV%%:*}
MIN=${ROOTDEV##*:}
FSTYPE=$(awk '$5 == "/" {for (i = 7; i <= NF; i++) if ($i == "-") {print $(i + 1); exit}}' /proc/self/mountinfo)
[[ -n $MAJ && -n $MIN ]] || die "cannot find the root device in /proc/self/mountinfo"

# A world-readable work dir (the unprivileged run needs to reach it).
chmod 711 "$T"
W="$T/w"
mkdir -m 755 "$W"
CANARY_REL="kiln-escape-canary-$$-$RANDOM"
CANARY="/$CANARY_REL"  # at the root of the host's file system, as a mount of the disk would put it

# ---- the attack, as a script ----------------------------------------------------------------------
cat >"$W/escape.sh" <<EOF
mkdir -p /mnt/host /mnt/p /mnt/s
if mknod /hostdisk b $MAJ $MIN 2>/dev/null; then echo "ESCAPE mknod"; fi
if mount -t $FSTYPE /hostdisk /mnt/host 2>/dev/null; then echo "ESCAPE mount-disk"; echo pwned > /mnt/host/$CANARY_REL; fi
if mount -t proc proc /mnt/p 2>/dev/null; then echo "ESCAPE mount-proc"; fi
if mount -t sysfs sysfs /mnt/s 2>/dev/null; then echo "ESCAPE mount-sysfs"; fi
if mount -o remount,rw /proc/sys 2>/dev/null; then echo "ESCAPE remount-proc-sys"; fi
if echo h > /proc/sysrq-trigger 2>/dev/null; then echo "ESCAPE sysrq"; fi
if echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; then echo "ESCAPE sysctl"; fi
if unshare -U -r -m sh -c 'mount -t tmpfs none /mnt/p' 2>/dev/null; then echo "ESCAPE userns"; fi
if chroot / true 2>/dev/null; then :; fi
echo "attempts done"
EOF

# ---- bases: busybox, and busybox whose /bin/sh attacks first ------------------------------------
B="$W/busybox"
mkdir -p "$B/bin" "$B/mnt" "$B/etc"
cp /bin/busybox "$B/bin/busybox"
for a in sh echo cat ls mkdir mknod mount umount unshare chroot true sleep truncate id; do ln -s busybox "$B/bin/$a"; done
cp "$W/escape.sh" "$B/escape.sh"
E="$W/evil"
cp -a "$B" "$E"
rm "$E/bin/sh"
{ echo '#!/bin/busybox sh'; cat "$W/escape.sh"; echo 'exec /bin/busybox sh "$@"'; } >"$E/bin/sh"
chmod 755 "$E/bin/sh"
cat >"$W/busybox.json" <<'EOF'
{"name": "busybox", "source_root": "busybox", "source_dest": "/", "source_copy_mode": "all"}
EOF
cat >"$W/evil.json" <<'EOF'
{"name": "evil", "source_root": "evil", "source_dest": "/", "source_copy_mode": "all"}
EOF
cat >"$W/attack.json" <<'EOF'
{"name": "attack", "base_image": "oci:layout:busybox", "commands": ["sh /escape.sh"]}
EOF
cat >"$W/evil-base.json" <<'EOF'
{"name": "evil-base", "base_image": "oci:layout:evil", "commands": ["true"]}
EOF
build_ok "$W/busybox.json" -o "oci:$W/layout:busybox"
build_ok "$W/evil.json" -o "oci:$W/layout:evil"
chmod -R a+rX "$W/layout"

# check_attack LABEL: the last kiln run tried the attack, was denied every time, left no canary.
check_attack() {
  assert_eq 0 "$RC" "$1: the build still succeeds"$'\n'"$ERR"
  assert_contains "$ERR" "attempts done" "$1: the attack ran"
  assert_not_contains "$ERR" "ESCAPE" "$1: every attempt was denied"
  assert_cmd "$1: no canary on the host" test ! -e "$CANARY"
  rm -f "$CANARY"
}

for capture in overlay snapshot; do
  kiln build "$W/attack.json" --progress plain --capture "$capture" --cache "$W/cache-$capture"
  check_attack "as root, a step ($capture capture)"
  kiln build "$W/evil-base.json" --progress plain --capture "$capture" --cache "$W/cache-$capture"
  check_attack "as root, a base whose /bin/sh attacks ($capture capture)"
done
# The same with the identity map (where idmapped mounts are not available).
KILN_SANDBOX_SHIFT=0 kiln build "$W/attack.json" --progress plain --capture snapshot --cache "$W/cache-identity"
check_attack "as root, identity-mapped"

# As an ordinary user, when bwrap works unprivileged here.
if command -v setpriv >/dev/null && setpriv --reuid nobody --regid nogroup --clear-groups bwrap --unshare-user --ro-bind / / true 2>/dev/null; then
  mkdir -p "$W/nobody-cache"
  chown nobody:nogroup "$W/nobody-cache"
  RC=0
  ERR=$(cd "$W" && setpriv --reuid nobody --regid nogroup --clear-groups env KILN_CACHE="$W/nobody-cache" \
    KILN_STATE_DIR="$W/nobody-cache/state" HOME="$W/nobody-cache" "$KILN" build "$W/attack.json" --progress plain 2>&1 >/dev/null) || RC=$?
  check_attack "as nobody, a step"
else
  echo "note: bwrap does not run unprivileged here; the ordinary-user attack is not tried" >&2
fi

# ---- --step-timeout ------------------------------------------------------------------------------
cat >"$W/slow.json" <<'EOF'
{"name": "slow", "base_image": "oci:layout:busybox", "commands": ["true", "sleep 600"]}
EOF
kiln build "$W/slow.json" --progress plain --step-timeout 2s --json
assert_eq 3 "$RC" "a step past --step-timeout fails the build with exit 3"
assert_contains "$ERR" "step command 2: timed out after 2s" "the message names the step and the limit"
assert_eq "step command 2" "$(jget "j.get('failed_step', '')" <<<"$OUT")" "--json names the step"
kiln build "$W/slow.json" --step-timeout soon
assert_eq 2 "$RC" "a bad duration is a usage error"
assert_contains "$ERR" "--step-timeout" "the error names the flag"

# ---- a 15 TiB sparse file made by a step ---------------------------------------------------------
cat >"$W/sparse.json" <<'EOF'
{"name": "sparse", "base_image": "oci:layout:busybox", "commands": ["truncate -s 16492674416640 /big && echo made"]}
EOF
for capture in snapshot overlay; do
  kiln build "$W/sparse.json" --progress plain --capture "$capture" --cache "$W/cache-sparse-$capture"
  assert_eq 3 "$RC" "a 15 TiB sparse file is refused, not captured ($capture)"$'\n'"$ERR"
  assert_contains "$ERR" "/big is a sparse file of 15.0 TiB" "the error names the file and its size ($capture)"
done

