#!/usr/bin/env bash
# packages + requirements through pip, offline (and file capabilities a step sets): a Python base made here from Debian's own
# python3.11 (and pip from python3-pip-whl), a wheel directory passed in with pip_secret_mounts
# (setuptools from /usr/share/python-wheels, plus a wheel this test writes), pip_extra_args
# "--no-index --find-links". The installed packages import in the final image under bwrap; the pip
# layer is byte-identical across fresh caches (SOURCE_DATE_EPOCH makes pip's .pyc files
# reproducible); editing requirements.txt gives a new tag and re-runs pip; a python_version the
# base does not have fails with the real cause; the secret mount is not in the image; index tokens
# (pip_index, and URL items of pip_extra_args against a local index that wants basic auth,
# auth_index.py) reach pip but not bwrap's command line, the output, the logs, the records or the
# store, and rotating one re-runs nothing.
source "$(dirname "$0")/lib.sh"
need_tools umoci bwrap skopeo oci-image-tool ldd
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"
[[ -x /usr/bin/python3.11 ]] || die "missing /usr/bin/python3.11 (Debian's python3)"
PIP_WHL=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | head -1)
SETUPTOOLS_WHL=$(ls /usr/share/python-wheels/setuptools-*.whl 2>/dev/null | head -1)
[[ -n "$PIP_WHL" && -n "$SETUPTOOLS_WHL" ]] || die "missing wheels in /usr/share/python-wheels (Debian's python3-pip-whl)"
SETUPTOOLS_VERSION=$(basename "$SETUPTOOLS_WHL" | cut -d- -f2)

L="$T/layout"

# ---- a Python base: Debian's interpreter, its standard library and shared libraries, busybox ----
P="$T/pyroot"
mkdir -p "$P/usr/bin" "$P/bin" "$P/usr/lib/python3/dist-packages" "$P/root"
cp /bin/busybox "$P/bin/busybox"
for a in sh ls cat echo mkdir rm; do ln -s busybox "$P/bin/$a"; done
cp /usr/bin/python3.11 "$P/usr/bin/python3.11"
ln -s python3.11 "$P/usr/bin/python3"
tar -C /usr/lib -cf - --exclude=__pycache__ --exclude=python3.11/test --exclude=python3.11/idlelib \
  --exclude=python3.11/tkinter --exclude=python3.11/lib2to3 --exclude=python3.11/turtledemo \
  --exclude=python3.11/ensurepip python3.11 | tar -C "$P/usr/lib" -xf -
for f in /usr/bin/python3.11 /usr/lib/python3.11/lib-dynload/*.so; do
  ldd "$f" | awk '/=> \//{print $3} /^[[:space:]]*\/lib64\//{print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$P$(dirname "$lib")"
  cp -L "$lib" "$P$lib"
done
"$PYTHON" -m zipfile -e "$PIP_WHL" "$P/usr/lib/python3/dist-packages"
cat >"$T/python.json" <<'EOF'
{"name": "python", "source_root": "pyroot", "source_dest": "/", "source_copy_mode": "all"}
EOF
build_ok "$T/python.json" -o "oci:$L:python"

# ---- the wheels: setuptools from Debian, and one written here ---------------------------------------
W="$T/wheels"
mkdir -p "$W"
cp "$SETUPTOOLS_WHL" "$W/"
"$PYTHON" "$(dirname "$0")/make_wheel.py" "$W" kilnhello 1.0 "GREETING = 'hello from a wheel'"

# ---- the app: requirements + packages, offline ---------------------------------------------------
mkdir -p "$T/app"
echo "kilnhello==1.0" >"$T/app/requirements.txt"
cat >"$T/app/spec.json" <<EOF
{
  "name": "pyapp",
  "base_image": "oci:../layout:python",
  "python_version": "3.11",
  "requirements": "requirements.txt",
  "packages": ["setuptools==$SETUPTOOLS_VERSION"],
  "pip_extra_args": "--no-index --find-links /wheels",
  "pip_secret_mounts": [["../wheels", "/wheels"]],
  "entrypoint": ["python3", "-c", "import kilnhello, setuptools; print(kilnhello.GREETING, setuptools.__version__)"]
}
EOF
kiln build "$T/app/spec.json" --json --progress plain -o "oci:$L:app"
assert_eq 0 "$RC" "the pip build succeeds"$'\n'"$ERR"
DIGEST=$(jget "j.get('digest')" <<<"$OUT")
TAG=$(jget "j.get('tag')" <<<"$OUT")
assert_contains "$ERR" "[pip] " "pip's output is logged with the step's name"
assert_contains "$ERR" "Successfully installed" "pip installed the packages"
oci_validate "$L" app "$T/app-bundle"
R="$T/app-bundle/rootfs"
OUT_RUN=$(run_entrypoint "$L" app "$R")
assert_eq "hello from a wheel $SETUPTOOLS_VERSION" "$OUT_RUN" "the image's entrypoint imports the installed packages"
assert_cmd "the secret mount is not in the image" test ! -e "$R/wheels"
assert_eq "" "$(ls "$R/tmp" 2>/dev/null)" "nothing from the sandbox's /tmp (where requirements.txt was mounted)"
PYC=$(find "$R" -path '*kilnhello/__pycache__/*.pyc' | head -1)
assert_cmd "pip compiled the module" test -n "$PYC"
# A hash-checked .pyc (flags word 3 = checked hash): it stays valid whatever the layer's mtimes.
assert_eq 3 "$("$PYTHON" -c 'import sys; d = open(sys.argv[1], "rb").read(8); print(int.from_bytes(d[4:8], "little"))' "$PYC")" \
  "pip's .pyc files check the source hash, not its mtime (SOURCE_DATE_EPOCH)"

# ---- reproducible: a fresh cache gives the same digest --------------------------------------------
kiln build "$T/app/spec.json" --json --progress quiet --cache "$T/cache2"
assert_eq "0 $DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "the pip image is byte-identical from a fresh cache"

# ---- nothing changed: pip does not run -----------------------------------------------------------
kiln build "$T/app/spec.json" --json --progress plain
assert_eq "0 $DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "the rebuild gives the same digest"
assert_not_contains "$ERR" "[pip] " "a rebuild with nothing changed does not run pip"

# ---- editing requirements.txt: a new tag, pip runs again ------------------------------------------
echo "# pinned" >>"$T/app/requirements.txt"
kiln tag "$T/app/spec.json"
assert_ne "pyapp:$TAG" "$OUT" "editing requirements.txt changes the tag"
kiln build "$T/app/spec.json" --json --progress plain
assert_eq 0 "$RC" "the build after editing requirements.txt succeeds"
assert_contains "$ERR" "[pip] " "editing requirements.txt re-runs pip"

# ---- a python_version the base does not have ------------------------------------------------------
sed 's/"python_version": "3.11"/"python_version": "3.99"/' "$T/app/spec.json" >"$T/app/bad.json"
kiln build "$T/app/bad.json" --json --progress quiet
assert_eq 3 "$RC" "a missing Python version fails the pip step (exit 3)"
assert_contains "$(jget "j['message']" <<<"$OUT")" "python_version is 3.99" "the message names the version asked for"
assert_contains "$(jget "j['message']" <<<"$OUT")" "Python 3.11" "and the one the image has"

# ---- an unreadable requirements file is an input error, before anything runs ---------------------
sed 's/"requirements.txt"/"missing.txt"/' "$T/app/spec.json" >"$T/app/missing.json"
kiln build "$T/app/missing.json" --json --progress quiet
assert_eq 2 "$RC" "a missing requirements file: exit 2"
assert_contains "$(jget "j['message']" <<<"$OUT")" "missing.txt" "the message names the file"

# ---- an index URL with a token: pip gets it, nothing prints or stores it ---------------------------
sed 's#"pip_extra_args"#"pip_index": "https://kiln:s3cr3t-t0ken@pypi.invalid/simple", "pip_extra_args"#' \
  "$T/app/spec.json" >"$T/app/token.json"
kiln build "$T/app/token.json" --json --progress plain -o "oci:$L:token"
assert_eq 0 "$RC" "a spec with an index token builds (--no-index wins)"$'\n'"$ERR"
ID=$(jget "j['build_id']" <<<"$OUT")
assert_not_contains "$OUT$ERR" "s3cr3t" "the token is not in kiln's output"
assert_not_contains "$(cat "$(jget "j['log_path']" <<<"$OUT")")" "s3cr3t" "nor in the build's log"
kiln show "$ID" --json
assert_not_contains "$OUT" "s3cr3t" "nor in the build record"
assert_not_contains "$(config_json "$L" token)" "s3cr3t" "nor in the image config"
kiln tag "$T/app/token.json"
TOKEN_REF=$OUT
sed 's/s3cr3t-t0ken/rotated-t0ken/' "$T/app/token.json" >"$T/app/rotated.json"
kiln tag "$T/app/rotated.json"
assert_eq "$TOKEN_REF" "$OUT" "rotating the token keeps the tag"
kiln build "$T/app/rotated.json" --json --progress plain
assert_not_contains "$ERR" "[pip] " "rotating the token does not re-run pip"

# ---- a token in pip_extra_args: pip gets it through the environment, nothing shows or keys it --------
# A local index that wants basic auth: kilnhello only on the extra index, so the install proves the
# "--extra-index-url=URL" item reached pip, and the server's log that the "--index-url" "URL" pair did.
mkdir -p "$T/index/simple" "$T/index/extra/kilnhello"
cp "$W"/kilnhello-1.0-*.whl "$T/index/extra/kilnhello/"
TOKEN="kiln-arg-t0ken-$$-one"
echo "$TOKEN" >"$T/index.token"
"$PYTHON" "$(dirname "$0")/auth_index.py" "$T/index" "$T/index.token" "$T/index.port" "$T/index.log" &
INDEX_PID=$!
for _ in $(seq 100); do [[ -s "$T/index.port" ]] && break; sleep 0.1; done
[[ -s "$T/index.port" ]] || die "the local index did not start"
PORT=$(cat "$T/index.port")
write_auth_spec() {  # write_auth_spec FILE TOKEN
  cat >"$1" <<EOF
{
  "name": "pyauth",
  "base_image": "oci:../layout:python",
  "python_version": "3.11",
  "packages": ["kilnhello==1.0"],
  "pip_extra_args": ["--index-url", "http://kiln:$2@127.0.0.1:$PORT/simple/",
                     "--extra-index-url=http://kiln:$2@127.0.0.1:$PORT/extra/"],
  "entrypoint": ["python3", "-c", "import kilnhello; print(kilnhello.GREETING)"]
}
EOF
}
write_auth_spec "$T/app/args-token.json" "$TOKEN"
# bwrap's command line is readable by every user on the host (/proc/PID/cmdline): record it.
cat >"$T/bwrap-record" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >>"$T/bwrap-args"
exec $(command -v bwrap) "\$@"
EOF
chmod +x "$T/bwrap-record"
export KILN_BWRAP="$T/bwrap-record"
kiln build "$T/app/args-token.json" --json --progress plain -o "oci:$L:args-token"
unset KILN_BWRAP
assert_eq 0 "$RC" "a spec with a token in pip_extra_args builds from the index that wants it"$'\n'"$ERR"
ARGS_DIGEST=$(jget "j.get('digest')" <<<"$OUT")
ID=$(jget "j['build_id']" <<<"$OUT")
LOG_PATH=$(jget "j['log_path']" <<<"$OUT")
assert_contains "$(cat "$T/index.log")" "/simple/kilnhello/ ok" "pip asked the --index-url item's index, with its credentials"
assert_contains "$(cat "$T/index.log")" "/extra/kilnhello/ ok" "and the --extra-index-url= item's"
assert_not_contains "$(cat "$T/index.log")" "denied" "with the right credentials every time"
oci_validate "$L" args-token "$T/args-token-bundle"
assert_eq "hello from a wheel" "$(run_entrypoint "$L" args-token "$T/args-token-bundle/rootfs")" \
  "the package from the index with a token is installed"
assert_contains "$(cat "$T/bwrap-args")" '"$KILN_PIP_ARG_1"' "the step's script names the argument by its variable"
assert_not_contains "$(cat "$T/bwrap-args")" "$TOKEN" "the token is not on bwrap's command line"
assert_not_contains "$OUT$ERR" "$TOKEN" "nor in kiln's output"
assert_not_contains "$(cat "$LOG_PATH")" "$TOKEN" "nor in the build's log"
kiln show "$ID" --json
assert_not_contains "$OUT" "$TOKEN" "nor in the build record"
kiln history pyauth --json
assert_eq 0 "$RC" "kiln history --json"
assert_not_contains "$OUT" "$TOKEN" "nor in kiln history --json"
assert_eq "" "$(grep -rlF -- "$TOKEN" "$KILN_CACHE" "$KILN_STATE_DIR" "$L" || true)" \
  "nor anywhere in the store, the build records or the layout"
# Rotating the token: the same tag, the cached pip layer, the same image.
kiln tag "$T/app/args-token.json"
ARGS_REF=$OUT
ROTATED="kiln-arg-t0ken-$$-two"
echo "$ROTATED" >"$T/index.token"
write_auth_spec "$T/app/args-rotated.json" "$ROTATED"
kiln tag "$T/app/args-rotated.json"
assert_eq "$ARGS_REF" "$OUT" "rotating the token in pip_extra_args keeps the tag"
kiln build "$T/app/args-rotated.json" --json --progress plain
assert_eq "0 $ARGS_DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "rotating it gives the same image"
assert_not_contains "$ERR" "[pip] " "rotating the token in pip_extra_args does not re-run pip"
assert_contains "$ERR" "step pip: cached" "the pip step comes from the cache"
# Another index is another step.
sed "s#/extra/#/extra//#" "$T/app/args-rotated.json" >"$T/app/args-other.json"
kiln build "$T/app/args-other.json" --json --progress plain
assert_eq 0 "$RC" "another index URL builds"$'\n'"$ERR"
assert_contains "$ERR" "[pip] " "another index URL in pip_extra_args re-runs pip"
assert_not_contains "$OUT$ERR" "$ROTATED" "the rotated token is not printed either"
kill "$INDEX_PID" 2>/dev/null || true
wait "$INDEX_PID" 2>/dev/null || true

# ---- file capabilities a step sets (as setcap does) are in the layer and survive unpacking --------
# vfs_cap_data v2, effective, permitted = CAP_NET_RAW (13): what `setcap cap_net_raw+ep` writes.
CAP_HEX=0100000200200000000000000000000000000000
cat >"$T/app/caps.json" <<EOF
{"name": "caps", "base_image": "oci:../layout:python",
 "commands": ["python3 -c \"import os, shutil; shutil.copy('/bin/busybox', '/bin/ping'); os.setxattr('/bin/ping', 'security.capability', bytes.fromhex('$CAP_HEX'))\""]}
EOF
kiln build "$T/app/caps.json" --json --progress quiet -o "oci:$L:caps"
assert_eq 0 "$RC" "a step that sets file capabilities builds"$'\n'"$ERR"
CAPS_DIGEST=$(jget "j.get('digest')" <<<"$OUT")
CAP_LAYER=$(manifest_json "$L" caps | jget "j['layers'][-1]['digest']")
blob_cat "$(blob_path "$L" "$CAP_LAYER")" >"$T/caps.tar"
assert_eq "$CAP_HEX" "$("$PYTHON" -c '
import sys, tarfile
t = tarfile.open(sys.argv[1])
m = t.getmember("bin/ping")
print(m.pax_headers.get("SCHILY.xattr.security.capability", "").encode("latin-1", "surrogateescape").hex())' "$T/caps.tar")" \
  "the layer carries security.capability as a SCHILY.xattr PAX record"
for m in overlay snapshot; do
  kiln build "$T/app/caps.json" --json --progress quiet --capture "$m" --cache "$T/cache-caps-$m"
  assert_eq "0 $CAPS_DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT")" "--capture $m sees the capabilities (same digest)"
done
# A later step sees them on a tree unpacked from the cached layer (snapshot capture applies the
# blob to a copy of the base).
"$PYTHON" - "$T/app/caps.json" "$T/app/caps2.json" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["commands"].append("python3 -c \"import os; print(os.getxattr('/bin/ping', 'security.capability').hex())\" > /cap.txt")
json.dump(spec, open(sys.argv[2], "w"))
EOF
kiln build "$T/app/caps2.json" --json --progress quiet --capture snapshot --cache "$T/cache-caps-overlay" -o "oci:$L:caps2"
assert_eq 0 "$RC" "a step after the capabilities builds"$'\n'"$ERR"
oci_validate "$L" caps2 "$T/caps2-bundle"
assert_eq "$CAP_HEX" "$(cat "$T/caps2-bundle/rootfs/cap.txt")" "the next step saw the capabilities (restored when the layer was unpacked)"
assert_eq "$CAP_HEX" "$("$PYTHON" -c 'import os, sys; print(os.getxattr(sys.argv[1], "security.capability").hex())' "$T/caps2-bundle/rootfs/bin/ping" 2>&1)" \
  "umoci unpack restores the capabilities kiln wrote"
