#!/usr/bin/env bash
# The image is the one flytekit's default builder makes (issue 11 §4): apt → pip → source_root →
# copy → commands, so `chmod +x /root/serve` in commands works; a source edit re-runs only the
# commands (apt and pip stay cached); WorkingDir /root and PYTHONPATH=/root whenever files are
# baked (copy entries alone too); `entrypoint: []` clears the base's, absent keeps it; _F_IMG_ID is
# the last Env entry, outside the tag and every cached layer; a platform the base does not provide
# is exit 2; source_root in loaded_modules mode with no module is a warning.
# apt-get and python3 in the base are small shell stand-ins (offline, fast): what is tested is
# kiln's order and caching of the steps, not apt or pip (test_run_apt.sh, test_run_pip.sh do that).
source "$(dirname "$0")/lib.sh"
need_tools umoci bwrap skopeo oci-image-tool tar
[[ -x /bin/busybox ]] || die "missing /bin/busybox (Debian's busybox-static; run scripts/install-deps.sh --test)"

L="$T/layout"

# ---- the base: busybox, stand-in apt-get and python3, an entrypoint -------------------------------
BB="$T/base"
mkdir -p "$BB/bin" "$BB/usr/bin" "$BB/etc"
cp /bin/busybox "$BB/bin/busybox"
for a in sh echo cat ls rm mkdir touch chmod stat printf test [ true id env; do ln -s busybox "$BB/bin/$a"; done
cat >"$BB/usr/bin/apt-get" <<'EOF'
#!/bin/sh
# A stand-in for apt-get: "install" writes one file per package.
case "$1" in
  install) shift; for p in "$@"; do case "$p" in -*) ;; *) mkdir -p /opt/apt; echo "$p" > "/opt/apt/$p";; esac; done ;;
esac
exit 0
EOF
cat >"$BB/usr/bin/python3" <<'EOF'
#!/bin/sh
# A stand-in for python3 -m pip: "install" writes one file per package, and what it saw of /root.
[ "$1 $2" = "-m pip" ] || exit 1
case "$3" in
  --version) echo "pip 0 (stand-in)" ;;
  install) shift 3; mkdir -p /opt/pip; for p in "$@"; do echo "$p" > "/opt/pip/$p"; done
           ls /root > /opt/pip/root-at-pip-time 2>/dev/null; echo "$PYTHONPATH" > /opt/pip/pythonpath ;;
esac
EOF
chmod +x "$BB/usr/bin/apt-get" "$BB/usr/bin/python3"
echo '{"name": "base", "source_root": "base", "source_dest": "/", "source_copy_mode": "all",
  "entrypoint": ["/bin/sh", "-c", "echo base entrypoint"], "env": {"PYTHONPATH": "/usr/lib/base"}}' >"$T/base.json"
build_ok "$T/base.json" -o "oci:$L:base"
BASE_LAYERS=$(manifest_json "$L" base | jget "len(j['layers'])")

# ---- the project ----------------------------------------------------------------------------------
P="$T/proj"
mkdir -p "$P/src/pkg" "$P/extra"
printf '#!/bin/sh\necho served\n' >"$P/src/serve"
chmod 0644 "$P/src/serve"   # not executable: the command makes it so, as in flytekit's docs
echo 'VALUE = 1' >"$P/src/pkg/mod.py"
echo 'notes' >"$P/extra/notes.txt"
cat >"$P/spec.json" <<'EOF'
{
  "name": "shape",
  "base_image": "oci:../layout:base",
  "source_root": "src",
  "source_copy_mode": "all",
  "copy": ["extra/notes.txt"],
  "apt_packages": ["curl"],
  "packages": ["requests"],
  "commands": ["chmod +x /root/serve", "cat /root/extra/notes.txt > /root/notes-seen && ls /root/pkg > /root/pkg-seen"],
  "entrypoint": [],
  "_F_IMG_ID": "img-id-1"
}
EOF

kiln build "$P/spec.json" --json --progress plain -o "oci:$L:v1"
assert_eq 0 "$RC" "the build succeeds"$'\n'"$ERR"
TAG1=$(jget "j['tag']" <<<"$OUT")
assert_eq 4 "$(grep -c ': running (' <<<"$ERR")" "apt, pip and both commands ran"

# Layer order: base, apt, pip, source_root, copy, command 1, command 2 (flytekit's Dockerfile order).
CFG=$(config_json "$L" v1)
ORDER=$(jget "' | '.join(h['created_by'].split(' ')[1] + ' ' + h['created_by'].split(' ')[2] for h in j['history'][$BASE_LAYERS:])" <<<"$CFG")
assert_eq "RUN apt-get | RUN pip | COPY source_root | COPY copy | RUN chmod | RUN cat" "$ORDER" \
  "layers in flytekit's order: apt, pip, source, copy, commands"

oci_validate "$L" v1 "$T/b1"
R="$T/b1/rootfs"
assert_eq 755 "$(stat -c %a "$R/root/serve")" "chmod +x /root/serve in commands works (commands run after the source layer)"
assert_eq notes "$(cat "$R/root/notes-seen")" "commands see the copy entries"
assert_eq mod.py "$(cat "$R/root/pkg-seen")" "commands see the source files"
assert_eq "" "$(cat "$R/opt/pip/root-at-pip-time")" "pip ran before the source was copied"
assert_eq /root "$(cat "$R/opt/pip/pythonpath")" "steps run with PYTHONPATH=/root (flytekit's ENV, set before its installs)"
assert_cmd "apt ran" test -f "$R/opt/apt/curl"

# Config: WorkingDir, PYTHONPATH (flytekit's value, replacing the base's), _F_IMG_ID last, no entrypoint.
assert_eq /root "$(jget "j['config'].get('WorkingDir')" <<<"$CFG")" "WorkingDir is /root"
assert_eq '["PYTHONPATH=/root", "_F_IMG_ID=img-id-1"]' "$(jget "j['config']['Env']" <<<"$CFG")" \
  "Env: PYTHONPATH=/root (as flytekit's ENV), _F_IMG_ID last"
assert_eq "None None" "$(jget "'%s %s' % (j['config'].get('Entrypoint'), j['config'].get('Cmd'))" <<<"$CFG")" \
  "entrypoint [] clears the base's entrypoint"

# ---- a source edit: apt and pip cached, the commands run again -------------------------------------
echo 'VALUE = 2' >"$P/src/pkg/mod.py"
kiln build "$P/spec.json" --json --progress plain -o "oci:$L:v2"
assert_eq 0 "$RC" "the rebuild succeeds"$'\n'"$ERR"
assert_match "$ERR" 'step apt: cached' "apt is cached across a code edit"
assert_match "$ERR" 'step pip: cached' "pip is cached across a code edit"
assert_eq 2 "$(grep -c ': running (' <<<"$ERR")" "only the two commands ran again"
assert_contains "$ERR" "step command 1: running" "command 1 re-ran on the new source"
TAG2=$(jget "j['tag']" <<<"$OUT")
assert_ne "$TAG1" "$TAG2" "the code edit gives a new tag"
oci_validate "$L" v2 "$T/b2"
assert_eq 755 "$(stat -c %a "$T/b2/rootfs/root/serve")" "serve is still executable after the rebuild"
assert_eq "$(manifest_json "$L" v1 | jget "[l['digest'] for l in j['layers'][:$BASE_LAYERS + 2]]")" \
  "$(manifest_json "$L" v2 | jget "[l['digest'] for l in j['layers'][:$BASE_LAYERS + 2]]")" \
  "base, apt and pip layers are the same blobs"

# ---- _F_IMG_ID: outside the tag and every cached layer ---------------------------------------------
sed 's/img-id-1/img-id-2/' "$P/spec.json" >"$P/spec2.json"
kiln build "$P/spec2.json" --json --progress plain -o "oci:$L:v3"
assert_eq 0 "$RC" "the build with another _F_IMG_ID succeeds"$'\n'"$ERR"
assert_eq "$TAG2" "$(jget "j['tag']" <<<"$OUT")" "another _F_IMG_ID: same tag"
assert_eq 0 "$(grep -c ': running (' <<<"$ERR" || true)" "another _F_IMG_ID: no step runs"
assert_eq "$(manifest_json "$L" v2 | jget "[l['digest'] for l in j['layers']]")" \
  "$(manifest_json "$L" v3 | jget "[l['digest'] for l in j['layers']]")" "another _F_IMG_ID: the same layers"
assert_eq '["PYTHONPATH=/root", "_F_IMG_ID=img-id-2"]' "$(config_json "$L" v3 | jget "j['config']['Env']")" \
  "the config carries the new _F_IMG_ID, last"

# ---- entrypoint absent keeps the base's; copy entries alone set WorkingDir and PYTHONPATH ----------
cat >"$P/copy-only.json" <<'EOF'
{"name": "copyonly", "base_image": "oci:../layout:base", "copy": ["extra"], "env": {"Z": "1"}}
EOF
build_ok "$P/copy-only.json" -o "oci:$L:copyonly"
CFG=$(config_json "$L" copyonly)
assert_eq '["/bin/sh", "-c", "echo base entrypoint"]' "$(jget "j['config'].get('Entrypoint')" <<<"$CFG")" \
  "no entrypoint field: the base's entrypoint is kept"
assert_eq /root "$(jget "j['config'].get('WorkingDir')" <<<"$CFG")" "copy entries alone: WorkingDir /root"
assert_eq '["PYTHONPATH=/root", "Z=1"]' "$(jget "j['config']['Env']" <<<"$CFG")" "copy entries alone: PYTHONPATH=/root"

# ---- platform the base does not provide: exit 2, nothing labelled wrongly --------------------------
echo '{"name": "arm", "base_image": "oci:../layout:base", "platform": "linux/arm64", "copy": ["extra"]}' >"$P/arm.json"
kiln build "$P/arm.json" -o "oci:$L:arm"
assert_eq 2 "$RC" "a base without the spec's platform is exit 2"
assert_contains "$ERR" "field 'platform' is linux/arm64, but the base image oci:../layout:base is linux/amd64" \
  "the error names both platforms"
assert_not_contains "$(cat "$L/index.json")" '"arm"' "no arm tag written"

# ---- an index without the spec's platform: exit 2 (not "not found"), naming the platforms it has --
/usr/bin/python3 - "$L" <<'PY'
import hashlib, json, os, sys
lay = sys.argv[1]
idx = json.load(open(os.path.join(lay, "index.json")))
base = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "base")
entry = {k: base[k] for k in ("mediaType", "digest", "size")}
entry["platform"] = {"os": "linux", "architecture": "amd64"}
blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}).encode()
hexd = hashlib.sha256(blob).hexdigest()
open(os.path.join(lay, "blobs", "sha256", hexd), "wb").write(blob)
idx["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + hexd,
                         "size": len(blob), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
json.dump(idx, open(os.path.join(lay, "index.json"), "w"))
PY
echo '{"name": "armidx", "base_image": "oci:../layout:multi", "platform": "linux/arm64", "copy": ["extra"]}' >"$P/armidx.json"
kiln build "$P/armidx.json" -o "oci:$L:armidx"
assert_eq 2 "$RC" "an index without the spec's platform is exit 2"
assert_contains "$ERR" "has no image for platform linux/arm64 (it has: linux/amd64)" "the error names the platforms the index has"
assert_not_contains "$(cat "$L/index.json")" '"armidx"' "no armidx tag written"
echo '{"name": "amdidx", "base_image": "oci:../layout:multi", "copy": ["extra"]}' >"$P/amdidx.json"
build_ok "$P/amdidx.json" -o "oci:$L:amdidx"

# ---- loaded_modules with no module: a warning in the result ----------------------------------------
echo '{"name": "nomods", "base_image": "oci:../layout:base", "source_root": "src"}' >"$P/nomods.json"
build_ok "$P/nomods.json"
assert_contains "$(jget "j['warnings']" <<<"$OUT")" "no module was given" "loaded_modules without modules: a warning"
build_ok "$P/nomods.json" --module pkg/mod.py
assert_not_contains "$(jget "j['warnings']" <<<"$OUT")" "no module was given" "with a module: no warning"
