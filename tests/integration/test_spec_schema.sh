#!/usr/bin/env bash
# docs/schemas/spec.schema.json, the JSON Schema of the ImageSpec: it is a valid draft 2020-12
# schema; it names exactly the fields kiln knows (the handler table of spec/image_spec.cc); the
# examples and test specs kiln accepts validate; specs kiln refuses for a field's type or value
# do not.
source "$(dirname "$0")/lib.sh"

SCHEMA=$KILN_SOURCE_DIR/docs/schemas/spec.schema.json
"$PYTHON" -c 'import jsonschema' 2>/dev/null || skip_test "no python3-jsonschema (scripts/install-deps.sh --test)"

W=$T/ws
mkdir -p "$W/proj"
printf 'A = 1\n' >"$W/proj/a.py"

# Specs kiln accepts (checked with `kiln tag`) must validate; the refused ones must not.
good=() bad=()
for f in "$KILN_SOURCE_DIR"/examples/*/imagespec*.json "$KILN_SOURCE_DIR"/tests/fuzz/corpus/spec/*.json; do
  [[ -f "$f" ]] || continue
  kiln tag "$f"
  if ((RC == 0)); then good+=("$f"); fi
done
((${#good[@]} >= 2)) || fail "at least the example and a corpus spec are accepted by kiln (got ${#good[@]})"
i=0
while IFS= read -r spec; do
  i=$((i + 1))
  printf '%s\n' "$spec" >"$W/good$i.json"
  kiln tag "$W/good$i.json"
  assert_eq 0 "$RC" "kiln accepts $spec"$'\n'"$ERR"
  good+=("$W/good$i.json")
done <<'EOF'
{"name": "a", "source_root": "proj", "source_copy_mode": "all", "env": {"A": "1"}, "labels": {"l": "v"}}
{"name": "a", "source_root": "proj", "loaded_modules": ["a.py"], "source_copy_mode": "CopyFileDetection.LOADED_MODULES"}
{"name": "a", "base_image": {"name": "b", "base_image": "scratch", "platform": "linux/arm64"}, "platform": "linux/arm64"}
{"name": "a", "registry": "ghcr.io/org", "tag_format": "{spec_hash}-dev", "compression": "ZSTD", "compression_level": 19}
{"name": "a", "copy": ["proj/a.py"], "workdir": "/app", "user": "1000:1000", "entrypoint": [], "source_date_epoch": 0}
{"name": "a", "pip_extra_args": "--pre --no-deps", "pip_extra_index_url": ["https://example.org/simple"], "pip_secret_mounts": [["a", "/run/b"]]}
{"name": "a", "python_version": null, "cuda": "", "conda_packages": [], "builder": "kiln", "builder_options": {"x": 1}}
{"modelcar": true, "source_root": "proj", "large_file_threshold": 1048576}
EOF
i=0
while IFS= read -r spec; do
  i=$((i + 1))
  printf '%s\n' "$spec" >"$W/bad$i.json"
  kiln tag "$W/bad$i.json"
  assert_eq 2 "$RC" "kiln refuses $spec"
  bad+=("$W/bad$i.json")
done <<'EOF'
{"name": "a", "sorce_root": "proj"}
{"name": "a", "env": ["A=1"]}
{"name": "a", "env": {"A=B": "1"}}
{"name": "a", "labels": {"l": 1}}
{"name": "a", "packages": "numpy"}
{"name": "a", "compression": "lz4"}
{"name": "a", "compression_level": 20}
{"name": "a", "compression_level": 10}
{"name": "a", "user": "1000:"}
{"name": "a", "user": "-1"}
{"name": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
{"name": "a", "source_copy_mode": "some"}
{"name": "a", "tag_format": "latest"}
{"name": "a", "platform": "arm64"}
{"name": "a", "workdir": "app"}
{"name": "a", "copy": ["../x"]}
{"name": "a", "copy": ["/etc/passwd"]}
{"name": "a", "source_date_epoch": -1}
{"name": "a", "base_image": 3}
{"name": "a", "base_image": {"name": "b", "cuda_x": "1"}}
{"name": "a", "pip_secret_mounts": [["only-one"]]}
{"name": "a", "modelcar": "yes"}
{"name": "a", "entrypoint": "python"}
{"name": "a", "builder_options": "x"}
{"name": "a", "source_copy_mode": "all"}
{"name": "a", "pip_extra_index_url": "https://example.org/simple"}
EOF

"$PYTHON" - "$SCHEMA" "$KILN_SOURCE_DIR/spec/image_spec.cc" "${#good[@]}" "${good[@]}" "${bad[@]}" >"$T/schema.out" 2>&1 <<'PY' || fail "schema checks:"$'\n'"$(cat "$T/schema.out")"
import json, re, sys
import jsonschema
schema_path, source, ngood = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sys.argv[4:]
good, bad = files[:ngood], files[ngood:]
schema = json.load(open(schema_path))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
problems = []
# The schema's fields are exactly the handler table's.
known = set(re.findall(r'^      \{"([A-Za-z_]+)",', open(source).read(), re.M))
props = set(schema["properties"])
if not known:
    problems.append("no field found in " + source)
if known - props:
    problems.append("fields kiln knows, missing from the schema: %s" % sorted(known - props))
if props - known:
    problems.append("fields in the schema kiln does not know: %s" % sorted(props - known))
for f in good:
    errs = list(v.iter_errors(json.load(open(f))))
    if errs:
        problems.append("%s (accepted by kiln) does not validate: %s" % (f, errs[0].message))
for f in bad:
    if v.is_valid(json.load(open(f))):
        problems.append("%s (refused by kiln) validates: %s" % (f, open(f).read().strip()))
print("\n".join(problems))
print("checked %d good, %d bad specs" % (len(good), len(bad)))
sys.exit(1 if problems else 0)
PY
assert_contains "$(cat "$T/schema.out")" "checked" "the schema checks ran"
