#!/usr/bin/env bash
# The command line as SDKs use it: stdin specs, `kiln tag` formats, exit codes and the --json
# failure object, --image-refs, quiet progress, "not supported yet" fields, and loaded_modules
# mode with --module / --modules-from.
source "$(dirname "$0")/lib.sh"
need_tools umoci oci-image-tool skopeo tar

W=$T/ws
mkdir -p "$W/proj/pkg" "$W/proj/other"
printf 'from .a import A\n' >"$W/proj/pkg/__init__.py"
printf 'A = 1\n' >"$W/proj/pkg/a.py"
printf 'B = 2\n' >"$W/proj/pkg/b.py"
printf 'C = 3\n' >"$W/proj/other/c.py"
printf 'readme\n' >"$W/proj/README.md"
cat >"$W/spec.json" <<'EOF'
{"name": "cli-app", "source_root": "proj", "source_copy_mode": "all"}
EOF

# ---- a spec on stdin: relative paths resolve against the working directory ----------------------
build_ok "$W/spec.json" -o "oci:$T/out:file"
FILE_DIGEST=$(jget "j['digest']" <<<"$OUT")
FILE_TAG=$(jget "j['tag']" <<<"$OUT")
cd "$W"
kiln build - --json --progress quiet -o "oci:$T/out:stdin" <"$W/spec.json"
cd "$T"
assert_eq 0 "$RC" "stdin spec builds"
# Same tree found through the cwd: same image as the spec file beside it.
assert_eq "$FILE_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "stdin spec (cwd = the spec's dir) gives the file's digest"
# From another working directory, "proj" is another tree: another image.
mkdir -p "$T/elsewhere/proj"
printf 'OTHER = 1\n' >"$T/elsewhere/proj/other.py"
cd "$T/elsewhere"
kiln build - --json --progress quiet -o "oci:$T/out:elsewhere" <"$W/spec.json"
cd "$T"
assert_eq 0 "$RC" "stdin spec in another cwd builds"
assert_ne "$FILE_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "stdin spec resolves source_root against the cwd"
oci_validate "$T/out" elsewhere "$T/bundle-elsewhere"
assert_eq "./root/other.py" "$(cd "$T/bundle-elsewhere/rootfs" && find . -type f)" "stdin spec baked the cwd's proj"
# Errors in a stdin spec name <stdin>, with line:col.
printf '{"name": "x",\n "env": [}' >"$T/bad-stdin.json"
kiln build - --json --progress quiet <"$T/bad-stdin.json"
assert_eq 2 "$RC" "bad stdin spec exits 2"
assert_contains "$ERR" "<stdin>:2:" "bad stdin spec: error names <stdin>:line"

# ---- kiln tag ---------------------------------------------------------------------------------
kiln tag "$W/spec.json"
assert_eq 0 "$RC" "kiln tag exits 0"
# name:tag, the tag being the build's (32 hex digits).
assert_eq "cli-app:$FILE_TAG" "$OUT" "kiln tag prints name:tag, the build's tag"
assert_match "$FILE_TAG" '^[0-9a-f]{32}$' "default tag is 32 hex digits"
kiln tag "$W/spec.json" --json
assert_eq "cli-app:$FILE_TAG cli-app $FILE_TAG" "$(jget "j['image'] + ' ' + j['repository'] + ' ' + j['tag']" <<<"$OUT")" "kiln tag --json fields"
assert_eq "$FILE_TAG" "$(jget "j['spec_hash'][:32]" <<<"$OUT")" "the tag is the spec_hash's first 32 digits"
# with_fields FILE JSON: the base spec with fields added, written to FILE.
with_fields() {
  "$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1])); s.update(json.loads(sys.argv[2])); json.dump(s, open(sys.argv[3], "w"))' \
    "$W/spec.json" "$2" "$1"
}
# A registry prefixes the reference (and is lowercased); it does not change the tag.
with_fields "$W/reg.json" '{"registry": "Reg:5000"}'
kiln tag "$W/reg.json"
assert_eq "reg:5000/cli-app:$FILE_TAG" "$OUT" "kiln tag with a registry: reg:5000/name:tag"
with_fields "$W/reg2.json" '{"registry": "ghcr.io/org/team"}'
kiln tag "$W/reg2.json"
assert_eq "ghcr.io/org/team/cli-app:$FILE_TAG" "$OUT" "kiln tag with a registry path"
# The name is lowercased.
with_fields "$W/upper.json" '{"name": "Cli-App"}'
kiln tag "$W/upper.json"
assert_eq "cli-app:$FILE_TAG" "$OUT" "name is lowercased"
# tag_format is honoured and does not change the hash.
with_fields "$W/fmt.json" '{"tag_format": "{spec_hash}-dev"}'
kiln tag "$W/fmt.json"
assert_eq "cli-app:$FILE_TAG-dev" "$OUT" "tag_format {spec_hash}-dev"
with_fields "$W/fmt2.json" '{"tag_format": "v1.{spec_hash}"}'
kiln tag "$W/fmt2.json"
assert_eq "cli-app:v1.$FILE_TAG" "$OUT" "tag_format v1.{spec_hash}"
# A tag built with tag_format lands in the layout under that tag.
build_ok "$W/fmt.json" -o "oci:$T/out-fmt"
assert_eq "$FILE_TAG-dev" "$(jget "j['manifests'][0]['annotations']['org.opencontainers.image.ref.name']" "$T/out-fmt/index.json")" "-o oci:DIR without a tag uses the spec's tag"
# tag_format without {spec_hash}: a spec error, naming the field.
with_fields "$W/fmt3.json" '{"tag_format": "latest"}'
kiln tag "$W/fmt3.json" --json
assert_eq 2 "$RC" "tag_format without {spec_hash} exits 2"
assert_eq "tag_format" "$(jget "j.get('field')" <<<"$OUT")" "tag_format error names the field"

# ---- exit codes and the --json failure object -------------------------------------------------
# A bad spec (wrong type): 2, with every field of the failure object.
with_fields "$W/badtype.json" '{"env": ["A=1"]}'
kiln build "$W/badtype.json" --json --progress quiet
assert_eq 2 "$RC" "bad spec exits 2"
assert_eq "failed|2|permanent|spec|env" \
  "$(jget "'|'.join(str(j[k]) for k in ('status', 'exit_code', 'error_class', 'error_kind', 'field'))" <<<"$OUT")" \
  "--json failure object: status, exit_code, error_class, error_kind, field"
assert_contains "$(jget "j['message']" <<<"$OUT")" "field 'env' must be an object" "--json failure message"
# The message is the one on stderr.
assert_eq "kiln: error: $(jget "j['message']" <<<"$OUT")" "$ERR" "stderr carries the same message"
# stdout holds only the JSON object.
assert_eq "dict" "$(jget "type(j).__name__" <<<"$OUT")" "stdout is one JSON object"
# An unknown output kind: 2, naming it.
kiln build "$W/spec.json" --json --progress quiet -o "tarball:$T/x.tar"
assert_eq 2 "$RC" "unknown output kind exits 2"
assert_contains "$ERR" "tarball:$T/x.tar" "unknown output kind is named"
assert_eq "usage" "$(jget "j['error_kind']" <<<"$OUT")" "unknown output kind: error_kind usage"
# docker-archive: without a file.
kiln build "$W/spec.json" --progress quiet -o docker-archive:
assert_eq 2 "$RC" "docker-archive: without a file exits 2"
# A missing spec file: 2, naming it.
kiln build "$T/no-such-spec.json" --json --progress quiet
assert_eq 2 "$RC" "missing spec file exits 2"
assert_contains "$ERR" "$T/no-such-spec.json" "missing spec file is named"
# A spec that is a directory.
kiln build "$W" --progress quiet
assert_eq 2 "$RC" "spec that is a directory exits 2"
# Bad command lines: 2.
kiln build "$W/spec.json" --no-such-flag
assert_eq 2 "$RC" "unknown flag exits 2"
kiln build "$W/spec.json" --progress loud
assert_eq 2 "$RC" "bad --progress value exits 2"
kiln
assert_eq 2 "$RC" "no subcommand exits 2"
# BUG (exit codes): an output directory that is a regular file is a usage error (2), not an
# internal one (1, "filesystem error: cannot create directories").
touch "$T/not-a-dir"
kiln build "$W/spec.json" --json --progress quiet -o "oci:$T/not-a-dir:t"
assert_eq 2 "$RC" "BUG: -o oci:FILE (a regular file) should exit 2"
assert_contains "$ERR" "$T/not-a-dir" "-o oci:FILE names the path"
kiln --version
assert_match "$OUT" '^kiln [0-9]+\.[0-9]+\.[0-9]+' "--version"

# BUG (exit codes): a missing local base layout or tag is "not found" (5, README's exit-code
# table), not an internal error (1).
mkdir -p "$T/base"
echo '{"name": "child", "base_image": "oci:../out:no-such-tag"}' >"$T/base/missing-tag.json"
kiln build "$T/base/missing-tag.json" --json --progress quiet
assert_eq 5 "$RC" "BUG: base_image oci:DIR:missing-tag should exit 5 (not found)"
assert_contains "$ERR" "no-such-tag" "missing base tag is named"
echo '{"name": "child", "base_image": "oci:../no-such-layout:t"}' >"$T/base/missing-layout.json"
kiln build "$T/base/missing-layout.json" --json --progress quiet
assert_eq 5 "$RC" "BUG: base_image oci:MISSING-DIR:t should exit 5 (not found)"
assert_contains "$ERR" "no-such-layout" "missing base layout is named"
kiln inspect "oci:$T/out:no-such-tag"
assert_eq 5 "$RC" "BUG: kiln inspect of a missing tag should exit 5 (not found)"
# An existing base tag works (and is the image inspect shows).
echo '{"name": "child", "base_image": "oci:../out:file"}' >"$T/base/ok.json"
build_ok "$T/base/ok.json"
kiln inspect "oci:$T/out:file"
assert_eq "0 $FILE_DIGEST" "$RC $(jget "j['digest']" <<<"$OUT")" "kiln inspect of an existing tag"

# ---- --image-refs: name:tag@sha256:... appended ---------------------------------------------------
build_ok "$W/spec.json" --image-refs "$T/refs.txt"
REF1="cli-app:$FILE_TAG@$FILE_DIGEST"
assert_eq "$REF1" "$(cat "$T/refs.txt")" "--image-refs gets name:tag@digest"
build_ok "$W/fmt.json" --image-refs "$T/refs.txt"
assert_eq "$REF1"$'\n'"cli-app:$FILE_TAG-dev@$(jget "j['digest']" <<<"$OUT")" "$(cat "$T/refs.txt")" "--image-refs appends one line per build"

# ---- progress quiet: nothing on stderr; stdout is the reference alone -----------------------------
kiln build "$W/spec.json" --progress quiet -o "oci:$T/out:quiet"
assert_eq 0 "$RC" "quiet build exits 0"
assert_eq "" "$ERR" "--progress quiet prints nothing on stderr"
assert_eq "cli-app@$FILE_DIGEST" "$OUT" "stdout is repo@digest"
kiln build "$W/spec.json" --progress quiet --json
assert_eq "" "$ERR" "--progress quiet --json prints nothing on stderr"
# plain progress talks on stderr only: stdout is still the reference alone.
kiln build "$W/spec.json" --progress plain -o "oci:$T/out:plain"
assert_eq "cli-app@$FILE_DIGEST" "$OUT" "--progress plain keeps stdout clean"
assert_contains "$ERR" "built cli-app:$FILE_TAG" "--progress plain logs the build on stderr"
# No -o: the image is built into the cache only.
kiln build "$W/spec.json" --progress quiet --json
assert_eq "[]" "$(jget "j['outputs']" <<<"$OUT")" "no -o: no outputs"
# Two -o: both written, same digest.
build_ok "$W/spec.json" -o "oci:$T/two-a:x" -o "oci:$T/two-b:y"
assert_eq "$FILE_DIGEST $FILE_DIGEST" "$(jget "' '.join(o['digest'] for o in j['outputs'])" <<<"$OUT")" "two outputs, one digest"
oci_validate "$T/two-b" y

# ---- fields that are "not supported yet" ------------------------------------------------------
for f in '{"conda_packages": ["numpy"]}' '{"cuda": "12.1"}' '{"runtime_packages": ["flytekit"]}'; do
  with_fields "$W/unsupported.json" "$f"
  field=$(jget "list(j)[0]" <<<"$f")
  kiln build "$W/unsupported.json" --json --progress quiet -o "oci:$T/out:unsupported"
  assert_eq 2 "$RC" "$field: exit 2"
  assert_contains "$ERR" "'$field' is not supported yet" "$field: message says not supported yet"
  assert_eq "$field" "$(jget "j.get('field')" <<<"$OUT")" "$field: --json names the field"
done
# Inside a nested base spec too, named with its path.
with_fields "$W/unsupported.json" '{"base_image": {"name": "b", "conda_packages": ["numpy"]}}'
kiln build "$W/unsupported.json" --progress quiet
assert_eq 2 "$RC" "nested conda_packages: exit 2"
assert_contains "$ERR" "'base_image.conda_packages' is not supported yet" "nested unsupported field is named with its path"
# A RUN-step value that would reach a shell is a spec error, not a failed step.
with_fields "$W/badapt.json" '{"apt_packages": ["curl; rm -rf /"]}'
kiln build "$W/badapt.json" --json --progress quiet -o "oci:$T/out:badapt"
assert_eq 2 "$RC" "bad apt package name: exit 2"
assert_eq "apt_packages" "$(jget "j.get('field')" <<<"$OUT")" "bad apt package name: --json names the field"
# Empty values are accepted.
with_fields "$W/empty.json" '{"apt_packages": [], "packages": []}'
kiln tag "$W/empty.json"
assert_eq "0 cli-app:$FILE_TAG" "$RC $OUT" "empty unsupported fields are accepted (and do not change the tag)"

# ---- loaded_modules mode: --module picks just those files -----------------------------------------
echo '{"name": "mods", "source_root": "proj"}' >"$W/mods.json"
build_ok "$W/mods.json" -o "oci:$T/mods:t" --module pkg/a.py --module other/c.py
MODS_DIGEST=$(jget "j['digest']" <<<"$OUT")
assert_eq "loaded_modules" "$(jget "j['source']['copy_mode']" <<<"$OUT")" "default copy mode is loaded_modules"
oci_validate "$T/mods" t "$T/bundle-mods"
# Exactly the two modules (and their parent directories).
assert_eq "./root ./root/other ./root/other/c.py ./root/pkg ./root/pkg/a.py" \
  "$(cd "$T/bundle-mods/rootfs" && find . -mindepth 1 | LC_ALL=C sort | xargs)" "--module: just those files"
# --modules-from gives the same image (comments and blank lines ignored); kiln tag agrees.
printf '# modules\nother/c.py\n\npkg/a.py\n' >"$T/modules.txt"
build_ok "$W/mods.json" --modules-from "$T/modules.txt"
assert_eq "$MODS_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "--modules-from = --module"
MODS_TAG=$(jget "j['tag']" <<<"$OUT")
kiln tag "$W/mods.json" --module pkg/a.py --module other/c.py
assert_eq "mods:$MODS_TAG" "$OUT" "kiln tag with --module agrees with the build"
# The spec's loaded_modules add to --module.
echo '{"name": "mods", "source_root": "proj", "loaded_modules": ["pkg/b.py"]}' >"$W/mods2.json"
build_ok "$W/mods2.json" -o "oci:$T/mods:t2" --module pkg/a.py
oci_validate "$T/mods" t2 "$T/bundle-mods2"
assert_eq "./root/pkg/a.py ./root/pkg/b.py" "$(cd "$T/bundle-mods2/rootfs" && find . -type f | LC_ALL=C sort | xargs)" "spec loaded_modules + --module"
# A directory module brings its files (minus __pycache__ / *.pyc).
mkdir -p "$W/proj/pkg/__pycache__"
echo bytecode >"$W/proj/pkg/__pycache__/a.cpython-311.pyc"
build_ok "$W/mods.json" -o "oci:$T/mods:t3" --module pkg
oci_validate "$T/mods" t3 "$T/bundle-mods3"
assert_eq "./root/pkg/__init__.py ./root/pkg/a.py ./root/pkg/b.py" "$(cd "$T/bundle-mods3/rootfs" && find . -type f | LC_ALL=C sort | xargs)" "--module DIR: its files, no bytecode"
# A module that does not exist: 2, naming it.
kiln build "$W/mods.json" --progress quiet --module pkg/nope.py
assert_eq 2 "$RC" "missing module exits 2"
assert_contains "$ERR" "pkg/nope.py" "missing module is named"
# no_copy: no source layer, no source labels.
echo '{"name": "nocopy", "source_root": "proj", "source_copy_mode": "no_copy"}' >"$W/nocopy.json"
build_ok "$W/nocopy.json" -o "oci:$T/nocopy:t"
assert_eq "0 None" "$(jget "str(len(j['layers'])) + ' ' + str(j.get('source'))" <<<"$OUT")" "no_copy: no layers, no source"
