#!/usr/bin/env bash
# RUN steps (commands) without a daemon, on a busybox base made here from Debian's busybox-static:
# steps that create, modify and delete files become one layer each, the deletions whiteouts that
# umoci applies; env and workdir are visible inside steps; the image runs its entrypoint under
# bwrap and prints what the steps wrote; overlay and snapshot capture give the same digest; a
# rebuild with nothing changed runs no step; editing the last command re-runs only it; a failing
# command stops the build with its exit code and output, leaving the layout untouched;
# --network none cuts the network off.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools umoci bwrap skopeo oci-image-tool tar
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"

L="$T/layout"

# layer_listing DIR TAG N: the paths in the Nth layer (0-based) of the image, sorted.
layer_listing() {
  local d
  d=$(manifest_json "$1" "$2" | jget "j['layers'][$3]['digest']")
  blob_cat "$(blob_path "$1" "$d")" | tar -t | LC_ALL=C sort
}

# ---- the base: busybox, a few files to change and delete -----------------------------------------
B="$T/busybox"
mkdir -p "$B/bin" "$B/etc/old" "$B/var/lib/data/sub"
cp /bin/busybox "$B/bin/busybox"
for a in sh echo cat ls rm mkdir touch chmod ln env pwd id printf mv grep wc test [ true false stat sleep; do
  ln -s busybox "$B/bin/$a"
done
echo "hello from the base" >"$B/etc/greeting"
echo "old content" >"$B/etc/old/keep.txt"
echo data >"$B/var/lib/data/sub/x.txt"
cat >"$T/busybox.json" <<'EOF'
{"name": "busybox", "source_root": "busybox", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/busybox.json" -o "oci:$L:busybox"
BASE_LAYERS=$(manifest_json "$L" busybox | jget "len(j['layers'])")

# ---- three commands ---------------------------------------------------------------------------
cat >"$T/app.json" <<'EOF'
{
  "name": "app",
  "base_image": "oci:layout:busybox",
  "env": {"GREETING": "hi"},
  "workdir": "/work",
  "commands": [
    "echo step one says hi && echo \"$GREETING from $(pwd) as $(id -u)\" > out.txt && mkdir -p /opt/app && printf v1 > /opt/app/version",
    "rm /etc/greeting && rm -r /var/lib/data && echo changed > /etc/old/keep.txt && chmod 0700 /opt/app",
    "ln -s /opt/app/version /opt/app/current && ln /work/out.txt /work/link.txt && echo done > /work/step3"
  ],
  "entrypoint": ["/bin/sh", "-c", "cat /work/out.txt /opt/app/version; echo; ls /etc"]
}
EOF
kiln build "$T/app.json" --json --progress plain -o "oci:$L:app"
assert_eq 0 "$RC" "the build with three commands succeeds"$'\n'"$ERR"
DIGEST=$(jget "j['digest']" <<<"$OUT")
MODE=$(grep -o 'running ([a-z]* capture' <<<"$ERR" | head -1 | awk '{print $2}' | tr -d '(')
assert_eq 3 "$(grep -c ': running (' <<<"$ERR")" "each of the three steps ran"
assert_contains "$ERR" "[command 1] step one says hi" "step output is logged with the step's name"
oci_validate "$L" app "$T/app-bundle"
R="$T/app-bundle/rootfs"
assert_eq "hi from /work as 0" "$(cat "$R/work/out.txt")" "env, workdir and root inside the step"
assert_cmd "the deleted file is absent after umoci unpack" test ! -e "$R/etc/greeting"
assert_cmd "the deleted directory is absent after umoci unpack" test ! -e "$R/var/lib/data"
assert_cmd "its parent stays" test -d "$R/var/lib"
assert_eq "changed" "$(cat "$R/etc/old/keep.txt")" "a modified file has its new content"
assert_eq "700" "$(stat -c %a "$R/opt/app")" "a chmod is captured"
assert_eq "/opt/app/version" "$(readlink "$R/opt/app/current")" "a symlink is captured"
assert_eq "$(stat -c %i "$R/work/out.txt")" "$(stat -c %i "$R/work/link.txt")" "a hardlink stays a hardlink"
assert_eq "$((BASE_LAYERS + 3))" "$(manifest_json "$L" app | jget "len(j['layers'])")" "one layer per step"
CFG=$(config_json "$L" app)
assert_eq '["kiln: RUN echo step one says hi && echo \"$GREETING from $(pwd) as $(id -u)\" > out.txt && mkdir -p /opt/app && printf v1 > /opt/app/version", "kiln: RUN rm /etc/greeting && rm -r /var/lib/data && echo changed > /etc/old/keep.txt && chmod 0700 /opt/app", "kiln: RUN ln -s /opt/app/version /opt/app/current && ln /work/out.txt /work/link.txt && echo done > /work/step3"]' \
  "$(jget "[h['created_by'] for h in j['history']][-3:]" <<<"$CFG")" "one history entry per step, naming the command"
assert_eq "/work" "$(jget "j['config']['WorkingDir']" <<<"$CFG")" "WorkingDir is the spec's workdir"
assert_contains "$(jget "j['config']['Env']" <<<"$CFG")" "GREETING=hi" "the spec's env is in the config"
# The second step's layer: whiteouts for what it deleted, the changed file, no mount points.
L2=$(layer_listing "$L" app $((BASE_LAYERS + 1)))
assert_contains "$L2" "etc/.wh.greeting" "deleting a file gives a whiteout"
assert_contains "$L2" "var/lib/.wh.data" "deleting a directory gives one whiteout"
assert_not_contains "$L2" "var/lib/data/" "nothing below a deleted directory"
assert_contains "$L2" "etc/old/keep.txt" "the modified file is in the layer"
assert_not_contains "$L2" "bin/busybox" "unchanged files are not in the layer"
for l in 0 1 2; do
  LL=$(layer_listing "$L" app $((BASE_LAYERS + l)))
  assert_not_contains "$LL" "proc/" "layer $l: no /proc"
  assert_not_contains "$LL" "tmp/" "layer $l: no /tmp"
  assert_not_contains "$LL" "resolv.conf" "layer $l: no resolv.conf mount point"
done
# The image runs its entrypoint and prints what the steps wrote.
assert_eq $'hi from /work as 0\nv1\nold' "$(run_entrypoint "$L" app "$R")" "the image's entrypoint prints what the steps wrote"

# ---- a rebuild with nothing changed runs no step -------------------------------------------------
kiln build "$T/app.json" --json --progress plain -o "oci:$L:app"
assert_eq 0 "$RC" "the rebuild succeeds"
assert_eq "$DIGEST" "$(jget "j['digest']" <<<"$OUT")" "the rebuild gives the same digest"
assert_not_contains "$ERR" ": running (" "a rebuild with nothing changed runs no step"
assert_eq 3 "$(grep -c ': cached sha256:' <<<"$ERR")" "the three steps come from the cache"

# ---- the other capture mode gives the same image -------------------------------------------------
OTHER=snapshot
[[ "$MODE" == snapshot ]] && OTHER=overlay
if [[ "$OTHER" == overlay && $(id -u) -ne 0 ]]; then
  echo "note: not root: overlay capture not tested" >&2
else
  kiln build "$T/app.json" --json --progress quiet --capture "$OTHER" --cache "$T/cache-$OTHER" -o "oci:$T/other:app"
  assert_eq 0 "$RC" "$OTHER capture builds"$'\n'"$ERR"
  assert_eq "$DIGEST" "$(jget "j['digest']" <<<"$OUT")" "$MODE and $OTHER capture give the same digest"
fi
for m in overlay snapshot; do
  [[ "$m" == overlay && $(id -u) -ne 0 ]] && continue
  kiln build "$T/app.json" --json --progress quiet --capture "$m" --cache "$T/cache-fresh-$m"
  assert_eq "0 $DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "--capture $m from a fresh cache: same digest"
done

# ---- editing the last command re-runs only it ----------------------------------------------------
sed 's/echo done > \/work\/step3/echo again > \/work\/step3/' "$T/app.json" >"$T/app2.json"
kiln build "$T/app2.json" --json --progress plain -o "oci:$L:app2"
assert_eq 0 "$RC" "the edited spec builds"
assert_eq 1 "$(grep -c ': running (' <<<"$ERR")" "only the edited step runs"
assert_eq 2 "$(grep -c ': cached sha256:' <<<"$ERR")" "the steps before it come from the cache"
assert_eq "$(manifest_json "$L" app | jget "j['layers'][:-1]")" "$(manifest_json "$L" app2 | jget "j['layers'][:-1]")" \
  "the layers below the edited step are the same blobs"
# The edited step ran on the trees kept from the first build (overlay: earlier steps' upper dirs);
# a build from nothing, the other way, gives the same image.
APP2=$(jget "j['digest']" <<<"$OUT")
kiln build "$T/app2.json" --json --progress quiet --capture snapshot --cache "$T/cache-app2"
assert_eq "0 $APP2" "$RC $(jget "j.get('digest')" <<<"$OUT")" "a step on cached trees = the same step from scratch"

# ---- a failing command: exit 3, its exit code and output, the layout untouched -----------------
cat >"$T/fail.json" <<'EOF'
{"name": "app", "base_image": "oci:layout:busybox",
 "commands": ["echo first-step > /f1", "echo about to fail; echo 'boom: the real cause' >&2; exit 7", "echo never > /never"]}
EOF
BEFORE=$(snapshot "$L")
kiln build "$T/fail.json" --json --progress plain -o "oci:$L:failed"
assert_eq 3 "$RC" "a failing command exits 3"
assert_eq "step command 2" "$(jget "j['failed_step']" <<<"$OUT")" "--json names the failed step"
assert_eq 7 "$(jget "j['step_exit_code']" <<<"$OUT")" "--json carries the command's exit code"
assert_contains "$(jget "j['message']" <<<"$OUT")" "exited with code 7" "the message gives the exit code"
assert_contains "$(jget "j['message']" <<<"$OUT")" "boom: the real cause" "the message quotes the output's last lines"
assert_contains "$(jget "'\n'.join(j['log_tail'])" <<<"$OUT")" "boom: the real cause" "log_tail has the step's output"
assert_contains "$ERR" "[command 2] boom: the real cause" "the output streamed with the step prefix"
assert_not_contains "$ERR" "[command 3]" "nothing runs after the failed step"
LOG=$(jget "j['log_path']" <<<"$OUT")
assert_contains "$(cat "$LOG")" "boom: the real cause" "the build's log file has the step's output"
assert_eq "$BEFORE" "$(snapshot "$L")" "the output layout is untouched"
# The step before the failure is cached: fixing the command re-runs from there.
sed 's/exit 7/true/' "$T/fail.json" >"$T/fixed.json"
kiln build "$T/fixed.json" --json --progress plain -o "oci:$L:fixed"
assert_eq 0 "$RC" "the fixed spec builds"
assert_eq 1 "$(grep -c ': cached sha256:' <<<"$ERR")" "the step that succeeded before is cached"

# ---- no /bin/sh in the base: a clear error ----------------------------------------------------------
mkdir -p "$T/nosh/etc"
echo x >"$T/nosh/etc/x"
cat >"$T/nosh.json" <<'EOF'
{"name": "nosh", "source_root": "nosh", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/nosh.json" -o "oci:$L:nosh"
echo '{"name": "nosh2", "base_image": "oci:layout:nosh", "commands": ["true"]}' >"$T/nosh2.json"
kiln build "$T/nosh2.json" --json --progress quiet
assert_eq 3 "$RC" "a base without a shell: exit 3"
assert_contains "$(jget "j['message']" <<<"$OUT")" "no /bin/sh" "the message says the image has no shell"

# ---- --network none ------------------------------------------------------------------------------
cat >"$T/net.json" <<'EOF'
{"name": "net", "base_image": "oci:layout:busybox",
 "commands": ["grep -c : /proc/net/dev > /interfaces"]}
EOF
kiln build "$T/net.json" --json --progress quiet --network none -o "oci:$L:net"
assert_eq 0 "$RC" "--network none builds"
oci_validate "$L" net "$T/net-bundle"
assert_eq 1 "$(cat "$T/net-bundle/rootfs/interfaces")" "--network none: only the loopback interface"
kiln build "$T/net.json" --json --progress quiet --network default --cache "$T/cache-net" -o "oci:$L:net2"
assert_eq 0 "$RC" "the default network builds"
oci_validate "$L" net2 "$T/net2-bundle"
N=$(cat "$T/net2-bundle/rootfs/interfaces")
assert_cmd "the default network shares the host's interfaces ($N)" test "$N" -ge 2

# ---- killed mid-step: no mount, no sandbox and no half layer left behind ----------------------------
cat >"$T/slow.json" <<'EOF2'
{"name": "slow", "base_image": "oci:layout:busybox", "commands": ["echo started; sleep 60; echo never > /late"]}
EOF2
BEFORE=$(snapshot "$L")
"$KILN" build "$T/slow.json" --progress plain -o "oci:$L:slow" >"$T/slow.out" 2>"$T/slow.err" &
KPID=$!
wait_for_text "$T/slow.err" "[command] started"
assert_contains "$(cat "$T/slow.err")" "[command] started" "the slow step started"
kill -9 "$KPID"
wait "$KPID" 2>/dev/null || true
sleep 0.5
assert_eq "" "$(grep -F "$KILN_CACHE" /proc/self/mounts || true)" "no overlay mount outlives a killed build"
# (pgrep patterns name this test's own steps: a parallel test may run a "sleep 600" of its own)
assert_eq "" "$(pgrep -f "echo started; sleep 60" || true)" "the step's processes die with kiln"
assert_eq "$BEFORE" "$(snapshot "$L")" "the layout is untouched by the killed build"
sed 's/sleep 60; //' "$T/slow.json" >"$T/slow2.json"
build_ok "$T/slow2.json" -o "oci:$L:slow"
oci_validate "$L" slow "$T/slow-bundle"
assert_eq "never" "$(cat "$T/slow-bundle/rootfs/late")" "the next build after the kill works"
kiln cache du --json
assert_eq 0 "$RC" "cache du after a killed build"

# ---- SIGINT / SIGTERM mid-step: one failure object on stdout, exit 130 / 143, nothing left ----------
# (env --default-signal: a script's background job starts with SIGINT ignored, and kiln, as a shell,
# keeps a signal it was started with ignored.)
for sig in INT TERM; do
  [[ $sig == INT ]] && code=130 || code=143
  sed "s/echo started;/echo started $sig;/" "$T/slow.json" >"$T/slow-$sig.json"  # a step not cached yet
  BEFORE=$(snapshot "$L")
  # The redirection below happens in the background job, later than the wait may look: the wait
  # must not find the previous signal's log, so the file goes first and the text names the signal.
  rm -f "$T/sig.out" "$T/sig.err"
  env --default-signal=INT "$KILN" build "$T/slow-$sig.json" --json --progress plain -o "oci:$L:slow-$sig" \
    >"$T/sig.out" 2>"$T/sig.err" &
  KPID=$!
  wait_for_text "$T/sig.err" "[command] started $sig"
  assert_contains "$(cat "$T/sig.err" 2>/dev/null)" "[command] started $sig" "SIG$sig: the slow step started"
  START=$SECONDS
  kill -"$sig" "$KPID"
  st=0
  wait "$KPID" || st=$?
  OUT=$(<"$T/sig.out")
  assert_eq "$code" "$st" "SIG$sig during a RUN step: exit $code"
  assert_cmd "SIG$sig: the build stopped at once ($((SECONDS - START)) s), not after the step" test $((SECONDS - START)) -lt 10
  assert_eq "1" "$(grep -c '^{' "$T/sig.out")" "SIG$sig: one JSON object on stdout"
  assert_eq "failed $code permanent interrupted step command" \
    "$(jget "' '.join(str(j[k]) for k in ('status', 'exit_code', 'error_class', 'error_kind', 'failed_step'))" <<<"$OUT")" \
    "SIG$sig: the failure object: status, exit_code, class, kind, the step"
  assert_contains "$(jget "j['message']" <<<"$OUT")" "interrupted by SIG$sig" "SIG$sig: the message names the signal"
  assert_ne "None" "$(jget "str(j['log_path'])" <<<"$OUT")" "SIG$sig: the failure has its log"
  sleep 0.5
  assert_eq "" "$(pgrep -f "echo started $sig; sleep 60" || true)" "SIG$sig: no process of the step is left"
  assert_eq "" "$(grep -F "$KILN_CACHE" /proc/self/mounts || true)" "SIG$sig: no overlay mount is left"
  assert_eq "$BEFORE" "$(snapshot "$L")" "SIG$sig: the layout is untouched"
  kiln show "$(jget "j['build_id']" <<<"$OUT")" --json
  assert_eq "interrupted $code" "$(jget "j['status'] + ' ' + str(j['exit_code'])" <<<"$OUT")" "SIG$sig: the history says interrupted"
done

# ---- as an ordinary user: the same image ----------------------------------------------------------
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
  U="$T/user"
  mkdir -p "$U"
  cp -a "$T/app.json" "$U/app.json"
  cp -a "$L" "$U/layout"
  chown -R 65534:65534 "$U"
  chmod 755 "$T"
  as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$U" KILN_CACHE="$U/cache" KILN_STATE_DIR="$U/state" "$@"; }
  RC=0
  OUT=$(as_user "$KILN" build "$U/app.json" --json --progress plain -o "oci:$U/out:app" 2>"$T/user.err") || RC=$?
  ERR=$(<"$T/user.err")
  if grep -q "user namespace\|Operation not permitted\|setting up uid map" <<<"$ERR" && ((RC != 0)); then
    echo "note: unprivileged user namespaces are off here: rootless RUN steps not tested" >&2
  else
    assert_eq 0 "$RC" "an ordinary user runs the steps (rootless)"$'\n'"$ERR"
    assert_contains "$ERR" "snapshot capture" "rootless uses the snapshot capture"
    assert_eq "$DIGEST" "$(jget "j.get('digest')" <<<"$OUT")" "rootless gives the same digest as root"
  fi
fi

# ---- a registry base: its layers are fetched (only) when a step has to run ------------------------
start_registry plain
R=$REG_ADDR
cat >"$T/busybox-reg.json" <<EOF
{"name": "busybox", "registry": "$R", "source_root": "busybox", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/busybox-reg.json"
REG_BASE=$(jget "j['pushed']['reference']" <<<"$OUT")
REG_BASE=${REG_BASE%@*}
sed "s#\"oci:layout:busybox\"#\"$REG_BASE\"#" "$T/app.json" >"$T/app-reg.json"
kiln build "$T/app-reg.json" --json --progress quiet --cache "$T/cache-reg" -o "oci:$L:app-reg"
assert_eq 0 "$RC" "steps on a registry base"$'\n'"$ERR"
oci_validate "$L" app-reg "$T/reg-bundle"
assert_eq "hi from /work as 0" "$(cat "$T/reg-bundle/rootfs/work/out.txt")" "the steps ran on the registry base"
assert_eq "$(manifest_json "$L" app | jget "j['layers'][-3:]")" "$(manifest_json "$L" app-reg | jget "j['layers'][-3:]")" \
  "the same base bytes from a registry give the same step layers"

# ---- --fail-fast stops a running step of another build at once -------------------------------------
cat >"$T/long.json" <<'EOF'
{"name": "long", "base_image": "oci:layout:busybox", "commands": ["echo long-started; sleep 60"]}
EOF
cat >"$T/quickfail.json" <<'EOF'
{"name": "quickfail", "base_image": "oci:layout:busybox", "commands": ["sleep 1; exit 5"]}
EOF
START=$SECONDS
kiln build "$T/long.json" "$T/quickfail.json" --jobs 2 --fail-fast --json --progress plain --cache "$T/cache-ff"
assert_eq 3 "$RC" "--fail-fast with a failed step: exit 3"
assert_cmd "the running step was stopped, not waited for ($((SECONDS - START)) s)" test $((SECONDS - START)) -lt 30
assert_eq "True,False" "$(jget "','.join(str(b.get('cancelled', False)) for b in j['builds'])" <<<"$OUT")" \
  "the long build is reported cancelled, the failing one failed"
assert_eq "" "$(pgrep -f "long-started; sleep 60" || true)" "no process of the stopped step is left"
