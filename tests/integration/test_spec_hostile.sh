#!/usr/bin/env bash
# Hostile specs (issue 12 §5): each is refused by `kiln tag` and `kiln build` with exit 2 and a
# clear message — never a crash (SIGSEGV from a stack overflow was 139), never exit 1 "internal":
# base_image nested 10,000 deep and 33 deep, a 50,000-character apt package name (and
# python_version), JSON nested 200,000 deep elsewhere, a number that overflows a double (with its
# line and column), and a source_date_epoch past the year 9999.
source "$(dirname "$0")/lib.sh"

S="$T/specs"
mkdir -p "$S"
"$PYTHON" - "$S" <<'EOF'
import json, sys
d = sys.argv[1]
def nested(n):
    return '{"base_image": ' * n + '{}' + '}' * n
open(f"{d}/deep10000.json", "w").write(nested(10000))
open(f"{d}/deep33.json", "w").write(nested(33))
open(f"{d}/deep32.json", "w").write(nested(32))
open(f"{d}/apt.json", "w").write(json.dumps({"name": "x", "apt_packages": ["a" * 50000]}))
open(f"{d}/pyver.json", "w").write(json.dumps({"name": "x", "python_version": "3" * 50000}))
open(f"{d}/arrays.json", "w").write('{"builder_options": ' + "[" * 200000 + "]" * 200000 + "}")
open(f"{d}/overflow.json", "w").write('{\n  "name": "x",\n  "source_date_epoch": 1e999\n}\n')
open(f"{d}/epoch.json", "w").write(json.dumps({"name": "x", "source_date_epoch": 253402300800}))
open(f"{d}/epoch-max.json", "w").write(json.dumps({"name": "x", "source_date_epoch": 253402300799,
                                                   "source_root": "src", "source_copy_mode": "all"}))
import os
os.makedirs(f"{d}/src")
open(f"{d}/src/a.py", "w").write("A = 1\n")
EOF

# refused SPEC NEEDLE: kiln tag and kiln build --json both exit 2 and say NEEDLE.
refused() {
  local spec=$1 needle=$2 cmd
  for cmd in tag build; do
    if [[ $cmd == tag ]]; then kiln tag "$S/$spec"; else kiln build "$S/$spec" --json --progress quiet; fi
    assert_eq 2 "$RC" "kiln $cmd $spec: exit 2 (not a crash, not internal)"$'\n'"${ERR:0:300}"
    assert_contains "$ERR$OUT" "$needle" "kiln $cmd $spec: the message says what is wrong"
  done
  assert_eq spec "$(jget "j.get('error_kind')" <<<"$OUT")" "kiln build --json $spec: error_kind spec"
}

refused deep10000.json "JSON nested more than 128 levels deep"
refused deep33.json "nests base_image specs more than 32 deep"
refused apt.json "field 'apt_packages' has 'aaaa"
refused pyver.json "field 'python_version' must be a version"
refused arrays.json "JSON nested more than 128 levels deep"
refused overflow.json "specs/overflow.json:3:24: JSON number 1e999 is out of range"
refused epoch.json "must be at most 253402300799"

# The limits themselves are accepted.
kiln tag "$S/deep32.json"
assert_eq 0 "$RC" "32 nested base specs are accepted"$'\n'"${ERR:0:300}"
build_ok "$S/epoch-max.json" -o "oci:$T/max:t"
assert_eq 9999-12-31T23:59:59Z "$(config_json "$T/max" t | jget "j['created']")" "the largest epoch gives 9999-12-31"
oci_validate "$T/max" t
