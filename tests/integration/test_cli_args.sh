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

# ---- errors that point the right way ------------------------------------------------------------
# A registry base_image whose host does not resolve: not transient (a typo, not an outage: exit 5,
# not 6), naming the field and the reference, and the way around (an oci: base).
echo '{"name": "b", "base_image": "nosuchhost.invalid/base:1"}' >"$W/dnsbase.json"
kiln build "$W/dnsbase.json" --json --progress quiet
assert_eq 5 "$RC" "base_image on a host that does not resolve: exit 5 (not 6, transient)"
assert_eq "permanent unknown_host" "$(jget "j['error_class'] + ' ' + j['error_kind']" <<<"$OUT")" "unresolved host: permanent, unknown_host"
assert_contains "$ERR" "cannot resolve host 'nosuchhost.invalid'" "unresolved host: says so"
assert_contains "$ERR" "field 'base_image'" "unreachable base: names the field"
assert_contains "$ERR" "nosuchhost.invalid/base:1" "unreachable base: names the reference"
assert_contains "$ERR" 'set base_image to "oci:' "unreachable base: suggests an oci: base"
# A closed port: still transient (6), with the same pointers.
echo '{"name": "b", "base_image": "127.0.0.1:1/base:1"}' >"$W/closedbase.json"
kiln build "$W/closedbase.json" --progress quiet
assert_eq 6 "$RC" "base_image on a closed port: exit 6 (transient)"
assert_contains "$ERR" "field 'base_image': cannot pull '127.0.0.1:1/base:1'" "closed-port base: field and reference"
assert_contains "$ERR" "oci:DIR" "closed-port base: suggests an oci: base"
kiln preflight nosuchhost.invalid/app --json
assert_eq "5 reachable" "$RC $(jget "j.get('failed_check')" <<<"$OUT")" "preflight of a host that does not resolve: exit 5 at 'reachable'"
# kiln inspect of a local path without oci:
mkdir -p "$T/layout-dir"
kiln inspect "$T/layout-dir"
assert_eq 2 "$RC" "inspect /path: exit 2"
assert_contains "$ERR" "use oci:$T/layout-dir" "inspect /path: says to use oci:/path"
# Several specs: each error line names the spec once, not twice.
echo '{"name": "x", "env": ["A=1"]}' >"$W/bad1.json"
echo '{"name": "x", "sorce_root": "proj"}' >"$W/bad2.json"
kiln build "$W/bad1.json" "$W/bad2.json" --progress quiet
assert_eq 2 "$RC" "two bad specs: exit 2"
assert_eq 1 "$(grep -o "bad1.json" <<<"$ERR" | wc -l)" "two bad specs, quiet: bad1.json named once"
assert_contains "$ERR" "bad2.json: unknown field 'sorce_root'" "two bad specs, quiet: the error after the path"
kiln build "$W/bad1.json" "$W/bad2.json" --progress plain
assert_eq 0 "$(grep "FAILED" <<<"$ERR" | grep -c "bad1.json.*bad1.json" || true)" "summary row names the spec once"

# ---- help that says only what is true; did you mean -------------------------------------------
kiln build --help
assert_contains "$OUT" "default or host (both: the host's network), or none" "--network help names every accepted value"
assert_contains "$OUT" "{default,host,none}" "--network values"
kiln preflight --help
assert_not_contains "$OUT" "--jobs" "preflight --help: no --jobs"
assert_not_contains "$OUT" "--cache" "preflight --help: no --cache"
kiln cache du --help
assert_not_contains "$OUT" "--jobs" "cache du --help: no --jobs"
assert_contains "$OUT" "--cache" "cache du --help: --cache"
kiln files --help
assert_not_contains "$OUT" "--jobs" "files --help: no --jobs"
# Still accepted where hidden (scripts that pass them everywhere keep working).
kiln cache du --jobs 2 --json
assert_eq 0 "$RC" "cache du --jobs 2: accepted"
kiln biuld "$W/spec.json"
assert_eq 2 "$RC" "kiln biuld: exit 2"
assert_contains "$ERR" "did you mean 'build'?" "kiln biuld: did you mean build"
kiln build "$W/spec.json" --otput "oci:$T/x"
assert_eq 2 "$RC" "--otput: exit 2"
assert_contains "$ERR" "unknown flag '--otput'; did you mean '--output'?" "--otput: did you mean --output"
kiln cache dux
assert_contains "$ERR" "did you mean 'du'?" "kiln cache dux: did you mean du"
kiln build "$W/spec.json" --zzzzzzzz
assert_eq 2 "$RC" "a flag close to nothing: exit 2"
assert_not_contains "$ERR" "did you mean" "a flag close to nothing: no suggestion"

# ---- kiln version / --version --------------------------------------------------------------------
kiln version
assert_eq 0 "$RC" "kiln version: exit 0"
assert_match "$(head -n1 <<<"$OUT")" '^kiln [0-9]+\.[0-9]+\.[0-9]+ \(git [^)]+\)$' "kiln version: version and git revision"
for lib in libarchive libdeflate zstd openssl libcurl libgit2; do
  assert_match "$OUT" "  $lib: [^ ]*[0-9]+\.[0-9]+" "kiln version: the $lib version"
done
VERSION_TEXT=$OUT
kiln --version
assert_eq "$VERSION_TEXT" "$OUT" "--version prints what kiln version prints"
kiln version --json
assert_eq "libarchive libcurl libdeflate libgit2 openssl sqlite zstd" "$(jget "' '.join(sorted(j['libraries']))" <<<"$OUT")" "kiln version --json: the libraries"
assert_eq "$(jget "j['git_revision']" <<<"$OUT")" "$(sed -nE '1s/.*\(git ([^)]+)\)$/\1/p' <<<"$VERSION_TEXT")" "kiln version --json: the same revision"

# ---- --platform overrides the spec's platform ---------------------------------------------------
build_ok "$W/spec.json" --module pkg/a.py -o "oci:$T/plat:amd"
AMD_DIGEST=$(jget "j['digest']" <<<"$OUT")
AMD_TAG=$(jget "j['tag']" <<<"$OUT")
build_ok "$W/spec.json" --module pkg/a.py --platform linux/arm64 -o "oci:$T/plat:arm"
assert_ne "$AMD_DIGEST" "$(jget "j['digest']" <<<"$OUT")" "--platform linux/arm64: another image"
assert_ne "$AMD_TAG" "$(jget "j['tag']" <<<"$OUT")" "--platform linux/arm64: another tag"
kiln inspect "oci:$T/plat:arm" --platform linux/arm64
assert_eq "linux arm64" "$(jget "j['config']['os'] + ' ' + j['config']['architecture']" <<<"$OUT")" "--platform linux/arm64: the config says arm64"
# It overrides a platform the spec sets, and a nested base spec's too.
echo '{"name": "args-app", "source_root": "proj", "platform": "linux/arm64", "base_image": {"name": "nb", "platform": "linux/arm64"}}' >"$W/arm.json"
build_ok "$W/arm.json" --module pkg/a.py --platform linux/amd64 -o "oci:$T/plat:over"
kiln inspect "oci:$T/plat:over"
assert_eq "amd64" "$(jget "j['config']['architecture']" <<<"$OUT")" "--platform linux/amd64 overrides the spec's arm64 (and its nested base's)"
kiln build "$W/spec.json" --platform arm64 --progress quiet
assert_eq 2 "$RC" "--platform arm64 (no os): exit 2"
assert_contains "$ERR" "os/arch" "--platform arm64: says the form"
kiln build "$W/spec.json" --platform linux//arm64 --progress quiet
assert_eq 2 "$RC" "--platform linux//arm64: exit 2"
