#!/usr/bin/env bash
# The human command line (issue 14): flags before or after the spec, usage errors that exit 2,
# errors that point the right way, help that says only what is true, "did you mean", version,
# --verbose without credentials, --platform, KILN_DEFAULT_REPO.
source "$(dirname "$0")/lib.sh"

W=$T/ws
mkdir -p "$W/proj/pkg"
printf 'A = 1\n' >"$W/proj/pkg/a.py"
printf 'B = 2\n' >"$W/proj/pkg/b.py"
echo '{"name": "args-app", "source_root": "proj"}' >"$W/spec.json"

# ---- flags in any order: -o, --module, --insecure-* take one value, never the spec ---------------
build_ok "$W/spec.json" -o "oci:$T/ref:t" --module pkg/a.py
REF_DIGEST=$(jget "j['digest']" <<<"$OUT")
for order in "-o oci:$T/o1:t --module pkg/a.py $W/spec.json" \
  "--module pkg/a.py -o oci:$T/o2:t $W/spec.json" \
  "$W/spec.json -o oci:$T/o3:t --module pkg/a.py" \
  "-o oci:$T/o4:t $W/spec.json --module pkg/a.py" \
  "--insecure-allow-http reg.invalid:5000 -o oci:$T/o5:t --module pkg/a.py $W/spec.json" \
  "--insecure-skip-tls-verify reg.invalid:5000 --insecure-allow-http r2.invalid --module pkg/a.py $W/spec.json -o oci:$T/o6:t"; do
  # shellcheck disable=SC2086
  kiln build $order --json --progress quiet
  assert_eq "0 $REF_DIGEST" "$RC $(jget "j.get('digest')" <<<"$OUT" 2>/dev/null)" "order: $order"
done
[[ -f "$T/o1/index.json" && -f "$T/o4/index.json" && -f "$T/o6/index.json" ]] || fail "-o before the spec: layouts written"
# Two -o before the spec: both written.
kiln build -o "oci:$T/two-a:x" -o "oci:$T/two-b:y" "$W/spec.json" --module pkg/a.py --json --progress quiet
assert_eq "0 2" "$RC $(jget "len(j['outputs'])" <<<"$OUT")" "two -o before the spec: two outputs"
# Two --module before the spec: both baked.
kiln build --module pkg/a.py --module pkg/b.py "$W/spec.json" --json --progress quiet
assert_eq 0 "$RC" "two --module before the spec"
assert_ne "$REF_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "two --module: another image than one"
# kiln tag and kiln files with --module first.
kiln tag --module pkg/a.py "$W/spec.json"
assert_eq 0 "$RC" "kiln tag --module M SPEC"
kiln files --module pkg/a.py "$W/spec.json"
assert_eq 0 "$RC" "kiln files --module M SPEC"
# `-o oci:` with no directory, after or before the spec: a usage error (2), not an internal one.
kiln build "$W/spec.json" -o oci: --progress quiet
assert_eq 2 "$RC" "-o oci: after the spec exits 2"
assert_contains "$ERR" "oci:DIR" "-o oci: says what to write"
kiln build -o oci: "$W/spec.json" --progress quiet
assert_eq 2 "$RC" "-o oci: before the spec exits 2"
kiln build "$W/spec.json" -o oci: --progress quiet --json
assert_eq "usage" "$(jget "j['error_kind']" <<<"$OUT")" "-o oci: is a usage error in --json"
