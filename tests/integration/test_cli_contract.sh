#!/usr/bin/env bash
# The subprocess contract an SDK relies on, where a QA probe found it broken: a failing build moves
# no tag; a layout blob is kept only when it is right; --json prints the failure object for flag
# errors too; stdin is read once; `kiln tag --platform` gives `kiln build --platform`'s tag. And a
# second probe's findings: success objects say exit_code 0, -j and history -n are checked, readers
# create no store, tag_format errors start with SPEC: (A15); an unreadable source file is exit 2 on
# every path (A7); source_root, copy and base_image errors name their field (A9); kiln preflight
# fails with the common failure object (A12); references with credentials are refused and never
# echoed (A11b); a signal during a build still gives one failure object (A14).
source "$(dirname "$0")/lib.sh"

W=$T/ws
mkdir -p "$W/proj/pkg"
printf 'A = 1\n' >"$W/proj/pkg/a.py"
echo '{"name": "contract-app", "source_root": "proj", "source_copy_mode": "all"}' >"$W/spec.json"
echo '{"name": "contract-app", "source_root": "proj", "source_copy_mode": "all", "env": {"V": "2"}}' >"$W/v2.json"

# ---- --image-refs that cannot be written: refused before the build, no tag moves ---------------
build_ok "$W/spec.json" -o "oci:$T/lay:latest"
FIRST=$(jget "j['digest']" <<<"$OUT")
mkdir -p "$W/refs-is-a-dir"
kiln build "$W/v2.json" -o "oci:$T/lay:latest" --image-refs "$W/refs-is-a-dir" --json --progress quiet
assert_eq 2 "$RC" "--image-refs on a directory: exit 2 (input), not 1"
assert_eq "input" "$(jget "j['error_kind']" <<<"$OUT")" "--image-refs on a directory: an input error"
assert_contains "$(jget "j['message']" <<<"$OUT")" "--image-refs $W/refs-is-a-dir" "the message names the flag and the path"
assert_eq "$FIRST" "$(jget "[m['digest'] for m in j['manifests'] if m.get('annotations',{}).get('org.opencontainers.image.ref.name')=='latest'][0]" "$T/lay/index.json")" \
  "the failed build left 'latest' where it was"
# A writable one gets name:tag@digest, appended.
build_ok "$W/v2.json" -o "oci:$T/lay:latest" --image-refs "$W/refs.txt"
V2=$(jget "j['digest']" <<<"$OUT")
build_ok "$W/spec.json" --image-refs "$W/refs.txt"
assert_eq "2" "$(wc -l <"$W/refs.txt" | tr -d ' ')" "--image-refs appends a line per build"
assert_contains "$(head -1 "$W/refs.txt")" "@$V2" "--image-refs: name:tag@digest"

# ---- a blob already in the layout is kept only when it is right --------------------------------
build_ok "$W/spec.json" -o "oci:$T/blobs:t"
LAYER=$(jget "j['layers'][0]['digest']" <<<"$OUT")
P=$(blob_path "$T/blobs" "$LAYER")
cp "$P" "$W/good.blob"
rm -f "$P"
"$PYTHON" -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[50] ^= 1; open(sys.argv[2], "wb").write(b)' "$W/good.blob" "$P"
[[ $(stat -c %s "$P") == $(stat -c %s "$W/good.blob") ]] || die "the corrupt blob has the good one's size"
build_ok "$W/spec.json" -o "oci:$T/blobs:t"
assert_eq "${LAYER#sha256:}" "$(sha256sum "$P" | cut -d' ' -f1)" "a same-size corrupt layer blob in the layout is replaced"
# A corrupt config blob (bytes kiln writes itself) is replaced too.
CFG=$(blob_path "$T/blobs" "$(jget "j['config_digest']" <<<"$OUT")")
cp "$CFG" "$W/cfg"
rm -f "$CFG"
tr 'a' 'b' <"$W/cfg" >"$CFG"
cmp -s "$CFG" "$W/cfg" && die "the corrupt config differs from the good one"
build_ok "$W/spec.json" -o "oci:$T/blobs:t"
assert_files_equal "$W/cfg" "$CFG" "a corrupt config blob in the layout is replaced"
# The store's own file, hardlinked, is kept as it is (no copy, no rewrite).
INODE=$(stat -c %i "$P")
build_ok "$W/spec.json" -o "oci:$T/blobs:t"
assert_eq "$INODE" "$(stat -c %i "$P")" "a right blob stays (same inode)"

# ---- --json: a flag error prints the failure object on stdout too --------------------------------
for args in "--bogus" "-j abc" "--progress loud" "--jsn"; do
  # shellcheck disable=SC2086
  kiln build --json $args "$W/spec.json"
  assert_eq 2 "$RC" "build --json $args: exit 2"
  assert_eq "failed usage 2" "$(jget "j['status'] + ' ' + j['error_kind'] + ' ' + str(j['exit_code'])" <<<"$OUT")" \
    "build --json $args: one failure object on stdout"
done
kiln build --jsn "$W/spec.json"
assert_eq "2 " "$RC $OUT" "no --json given: exit 2, stdout stays empty"
assert_contains "$ERR" "did you mean '--json'" "a misspelt flag: did you mean"
kiln tag --json --bogus "$W/spec.json"
assert_eq "usage" "$(jget "j['error_kind']" <<<"$OUT")" "tag --json --bogus: the failure object"

# ---- stdin is read once --------------------------------------------------------------------------
kiln build - --modules-from - --json --progress quiet <"$W/spec.json"
assert_eq 2 "$RC" "build - --modules-from -: a usage error"
assert_contains "$(jget "j['message']" <<<"$OUT")" "both read stdin" "build - --modules-from -: says why"
kiln tag - --modules-from - <"$W/spec.json"
assert_eq 2 "$RC" "tag - --modules-from -: a usage error"

# ---- kiln tag --platform gives kiln build --platform's tag ---------------------------------------
build_ok "$W/spec.json" --platform linux/arm64
ARM=$(jget "j['image']" <<<"$OUT")
kiln tag "$W/spec.json" --platform linux/arm64
assert_eq "0 $ARM" "$RC $OUT" "kiln tag --platform = kiln build --platform"
kiln tag "$W/spec.json"
assert_ne "$ARM" "$OUT" "the platform changes the tag"
kiln tag "$W/spec.json" --platform linux
assert_eq 2 "$RC" "kiln tag --platform linux: a usage error"

# ---- a layout kiln cannot use is bad input (exit 2), found before the build ----------------------
build_ok "$W/spec.json" -o "oci:$T/multi:a"
build_ok "$W/v2.json" -o "oci:$T/multi:b"
echo "{\"name\": \"onbase\", \"base_image\": \"oci:$T/multi\"}" >"$W/onbase.json"
kiln build "$W/onbase.json" --json --progress quiet
assert_eq "2 input" "$RC $(jget "j['error_kind']" <<<"$OUT")" "a base layout holding two images, no :TAG: exit 2"
assert_contains "$(jget "j['message']" <<<"$OUT")" "holds 2 images; name one" "says to name one"
kiln inspect "oci:$T/multi" --json
assert_eq 2 "$RC" "inspect of an ambiguous layout: exit 2"
mkdir -p "$T/corrupt"
echo '{broken' >"$T/corrupt/index.json"
kiln build "$W/spec.json" -o "oci:$T/corrupt" --json --progress quiet
assert_eq "2 input null" "$RC $(jget "j['error_kind']" <<<"$OUT") $(jget "j['failed_step']" <<<"$OUT")" \
  "-o on a layout with a corrupt index.json: exit 2, before the build"
assert_not_contains "$(jget "j['message']" <<<"$OUT")" "[json.exception" "no library exception text"
echo "{\"name\": \"onbase\", \"base_image\": \"oci:$T/corrupt\"}" >"$W/oncorrupt.json"
kiln build "$W/oncorrupt.json" --json --progress quiet
assert_eq 2 "$RC" "a base layout with a corrupt index.json: exit 2"
echo x >"$W/afile"
kiln inspect "oci:$W/afile" --json
assert_eq "2 input" "$RC $(jget "j['error_kind']" <<<"$OUT")" "inspect oci:FILE: exit 2"

# ---- cache prune waits for a kiln that uses the store, then removes what it may -----------------
# A process holding the store's in-use lock shared (as every running kiln does) makes prune wait.
"$PYTHON" - "$KILN_CACHE/locks/in-use" "$T/holder.ready" <<'PY' &
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
open(sys.argv[2], "w").close()
time.sleep(3)
PY
HOLDER=$!
for _ in $(seq 100); do [[ -e $T/holder.ready ]] && break; sleep 0.05; done
START=$(date +%s%N)
kiln cache prune --all --json
END=$(date +%s%N)
wait "$HOLDER"
assert_eq 0 "$RC" "cache prune --all after the other kiln ends: exit 0"
assert_contains "$ERR" "another kiln is using" "prune says what it waits for"
(((END - START) / 1000000 >= 1500)) || die "prune did not wait for the process using the store ($(((END - START) / 1000000)) ms)"
assert_ne "0" "$(jget "j['removed_blobs']" <<<"$OUT")" "then it pruned"
kiln cache prune --all --json
assert_not_contains "$ERR" "another kiln is using" "nobody else: no wait"

# ---- small contract points (QA A15) -------------------------------------------------------------
# A success object says exit_code 0, as a failure object and the several-spec wrapper say theirs.
build_ok "$W/spec.json"
assert_eq "success 0" "$(jget "j['status'] + ' ' + str(j['exit_code'])" <<<"$OUT")" "a success --json object: exit_code 0"
kiln build "$W/spec.json" "$W/v2.json" --json --progress quiet
assert_eq "0 0 [0, 0]" "$RC $(jget "j['exit_code']" <<<"$OUT") $(jget "[b['exit_code'] for b in j['builds']]" <<<"$OUT")" \
  "several specs: the wrapper and each build say exit_code 0"
# -j takes 1 or more threads.
for jobs in 0 -1; do
  kiln build "$W/spec.json" -j "$jobs" --json --progress quiet
  assert_eq "2 usage" "$RC $(jget "j['error_kind']" <<<"$OUT")" "-j $jobs: a usage error (exit 2)"
  assert_contains "$ERR" "positive number of threads" "-j $jobs: says what it takes"
done
# history -n 0 lists none (as head -n 0); -n -1 is a usage error.
kiln history -n 0 --json
assert_eq "0 []" "$RC $OUT" "history -n 0: no record"
kiln history -n 1 --json
assert_eq 1 "$(jget "len(j)" <<<"$OUT")" "history -n 1: one record"
kiln history -n -1
assert_eq 2 "$RC" "history -n -1: a usage error"
# Reading the cache or the history creates neither.
kiln cache du --cache "$T/no-store" --json
assert_eq "0 false 0" "$RC $(jget "j['exists']" <<<"$OUT") $(jget "j['blobs']" <<<"$OUT")" "cache du where there is no store: empty"
kiln cache prune --all --cache "$T/no-store" --json
assert_eq "0 0" "$RC $(jget "j['removed_blobs']" <<<"$OUT")" "cache prune where there is no store: nothing removed"
[[ -e $T/no-store ]] && fail "cache du / prune created a store at $T/no-store" || pass
SAVED_STATE=$KILN_STATE_DIR
export KILN_STATE_DIR=$T/no-state
kiln history --json
assert_eq "0 []" "$RC $OUT" "history without a state directory: no record"
kiln show 01ABC
assert_eq 5 "$RC" "show without a state directory: not found"
[[ -e $T/no-state ]] && fail "history / show created the state directory" || pass
export KILN_STATE_DIR=$SAVED_STATE
# A tag_format error starts with the spec's path, as every other spec error does.
echo '{"name": "contract-app", "tag_format": "latest"}' >"$W/fmt.json"
kiln build "$W/fmt.json" --json --progress quiet
assert_eq "2 tag_format" "$RC $(jget "j['field']" <<<"$OUT")" "tag_format without {spec_hash}: exit 2, the field named"
assert_contains "$(jget "j['message']" <<<"$OUT")" "$W/fmt.json: field 'tag_format'" "tag_format error: SPEC: field 'tag_format' …"

# ---- a source file kiln may not read is bad input: exit 2, on every path (QA A7) ----------------
# Root reads any file, so kiln runs as uid 65534 (setpriv) where the test runs as root; as another
# user, chmod 000 is enough.
U=$T/unread
mkdir -p "$U/proj"
echo 'A = 1' >"$U/proj/a.py"
echo 'secret' >"$U/proj/locked.py"
chmod 000 "$U/proj/locked.py"
echo '{"name": "unread", "source_root": "proj", "source_copy_mode": "all"}' >"$U/spec.json"
echo '{"name": "unread", "source_root": "proj", "source_copy_mode": "all", "compression": "zstd"}' >"$U/zstd.json"
AS_USER=()
if [[ $(id -u) -eq 0 ]]; then
  if command -v setpriv >/dev/null && setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null; then
    AS_USER=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    chmod 755 "$T"
  else
    AS_USER=(skip)
  fi
fi
if [[ "${AS_USER[*]-}" == skip ]]; then
  echo "$TEST_NAME: SKIP unreadable-file checks: running as root, and setpriv cannot switch to uid 65534" >&2
else
  # as_user CACHE SPEC: kiln build SPEC --json as the unprivileged user, with its own state.
  as_user() {
    mkdir -p "$U/state"
    if [[ $(id -u) -eq 0 ]]; then chown -R 65534:65534 "$1" "$U/state"; fi
    RC=0
    "${AS_USER[@]}" env KILN_CACHE="$1" KILN_STATE_DIR="$U/state" "$KILN" build "$2" --json --progress quiet \
      >"$T/.user.out" 2>"$T/.user.err" || RC=$?
    OUT=$(<"$T/.user.out")
    ERR=$(<"$T/.user.err")
  }
  mkdir -p "$U/cache-a"
  as_user "$U/cache-a" "$U/spec.json"
  assert_eq "2 input" "$RC $(jget "j['error_kind']" <<<"$OUT")" "an unreadable file met when hashing: exit 2, input"
  assert_contains "$(jget "j['message']" <<<"$OUT")" "$U/proj/locked.py" "the message names the file"
  if [[ $(id -u) -eq 0 ]]; then
    # The file's digest known from the stat index (root built it before; chown leaves the file's
    # ctime alone), and a layer to write (zstd): the layer writer is the first to open it. (The
    # index does not trust a file changed less than a second before it was written.)
    sleep 1.2
    KILN_CACHE=$U/cache-b build_ok "$U/spec.json"
    as_user "$U/cache-b" "$U/zstd.json"
    assert_eq "2 input" "$RC $(jget "j['error_kind']" <<<"$OUT")" \
      "an unreadable file met by the layer writer: exit 2, input (not 3)"
    assert_contains "$(jget "j['message']" <<<"$OUT")" "Permission denied" "the message says why"
  fi
fi
chmod 644 "$U/proj/locked.py"

# ---- source_root, copy and base_image errors name their field (QA A9) -----------------------------
# The failure object's `field`, and the GitHub annotation's line=, for errors met after the spec
# was read: a missing source_root or copy entry, a base layout or registry that is not there, and a
# nested base spec's own field (its line, not the outer spec's source_root).
F=$T/fields
mkdir -p "$F"
printf '{\n  "name": "fields",\n  "source_root": "missing-dir",\n  "source_copy_mode": "all"\n}\n' >"$F/root.json"
printf '{\n  "name": "fields",\n  "copy": ["missing.txt"]\n}\n' >"$F/copy.json"
printf '{\n  "name": "fields",\n  "base_image": "oci:%s/no-layout:x"\n}\n' "$F" >"$F/oci.json"
printf '{\n  "name": "fields",\n  "base_image": "127.0.0.1:1/none/base:1"\n}\n' >"$F/registry.json"
printf '{\n  "name": "fields",\n  "source_root": ".",\n  "base_image": {\n    "name": "inner",\n    "source_root": "missing-dir"\n  }\n}\n' >"$F/nested.json"
for c in "root 2 source_root 3" "copy 2 copy 3" "oci 5 base_image 3" "registry 6 base_image 3" "nested 2 base_image.source_root 6"; do
  read -r name code field line <<<"$c"
  GITHUB_ACTIONS=true GITHUB_WORKSPACE=$F kiln build "$F/$name.json" --json --progress quiet
  assert_eq "$code $field" "$RC $(jget "j['field']" <<<"$OUT")" "$name: exit $code, the failure names field $field"
  assert_contains "$ERR" "::error file=$name.json,line=$line," "$name: the annotation points at line $line"
done
# A failure about no one field says so: field is there, null.
kiln build "$W/spec.json" -o "bogus:$T/x" --json --progress quiet
assert_eq "2 None" "$RC $(jget "str(j['field'])" <<<"$OUT")" "a failure about no field: field null"

# ---- kiln preflight --json fails with the failure object every command prints (QA A12) -----------
FAILURE_KEYS="['error_class', 'error_kind', 'exit_code', 'failed_step', 'field', 'log_path', 'log_tail', 'message', 'status', 'step_exit_code']"
kiln build "$F/root.json" --json --progress quiet
assert_eq "[]" "$(jget "[k for k in $FAILURE_KEYS if k not in j]" <<<"$OUT")" "a build's failure object has every documented key"
kiln preflight 127.0.0.1:1/contract/app --json
assert_eq 6 "$RC" "preflight of a registry that does not answer: exit 6"
assert_eq "[]" "$(jget "[k for k in $FAILURE_KEYS if k not in j]" <<<"$OUT")" "preflight's failure object has the same keys"
assert_eq "failed 6 transient unreachable preflight reachable" \
  "$(jget "' '.join(str(j[k]) for k in ('status', 'exit_code', 'error_class', 'error_kind', 'failed_step', 'failed_check'))" <<<"$OUT")" \
  "preflight failure: status, exit_code, class, kind, failed_step, and the failed check"
assert_contains "$(jget "j['message']" <<<"$OUT")" "preflight failed at 'reachable'" "preflight failure: the message says which check, as a build's does"
kiln preflight 'Not/A Reference' --json
assert_eq "2 reference preflight" "$RC $(jget "j['error_kind'] + ' ' + j['failed_step']" <<<"$OUT")" "preflight of a bad reference: exit 2"
# A build's own preflight refuses a bad reference the same way: exit 2, not 8 (protocol).
KILN_DEFAULT_REPO='127.0.0.1:1/not a repo' kiln build "$W/spec.json" --push --json --progress quiet
assert_eq "2 reference preflight" "$RC $(jget "j['error_kind'] + ' ' + j['failed_step']" <<<"$OUT")" \
  "build --push to a bad reference: exit 2 at the preflight"

# ---- a reference with credentials in it is refused up front, never echoed (QA A11b) -------------
# Docker's references have no user:password@; kiln refuses one as bad input (exit 2) wherever a
# reference is taken, and shows the credentials as ***: not on stdout, stderr, the history or a log.
S=$T/secret
mkdir -p "$S/model"
echo w >"$S/model/w.bin"
build_ok "$W/spec.json" -o "oci:$S/layout:t"
printf '{"name": "sec", "registry": "user:S3CRET@127.0.0.1:1"}\n' >"$S/registry.json"
printf '{"name": "sec", "base_image": "user:S3CRET@127.0.0.1:1/base:1"}\n' >"$S/base.json"
printf '{"name": "sec", "base_image": "user:S3CRET@127.0.0.1:1"}\n' >"$S/base-host.json"
SECRET_STATE=$T/secret-state
cases=(
  "preflight user:S3CRET@127.0.0.1:1/app --json"
  "preflight user:S3CRET@127.0.0.1:1"
  "inspect user:S3CRET@127.0.0.1:1/app --json"
  "push oci:$S/layout:t user:S3CRET@127.0.0.1:1/app --json"
  "push oci:$S/layout:t tok3n:S3CRET@127.0.0.1:1/pass/word@127.0.0.1:1/app"
  "build $S/registry.json --json --progress quiet"
  "build $S/base.json --json --progress quiet"
  "build $S/base-host.json --json --progress quiet"
  "build $W/spec.json -o user:S3CRET@127.0.0.1:1/app --json"
  "modelcar $S/model --base user:S3CRET@127.0.0.1:1/busybox -o oci:$S/mc --json"
  "modelcar $S/model --base oci:$S/layout:t --push user:S3CRET@127.0.0.1:1/m:v1 --json"
  "modelcar verify user:S3CRET@127.0.0.1:1/m:v1 --json"
  "k8s-patch --modelcar user:S3CRET@127.0.0.1:1/m:v1 --mode init"
)
for c in "${cases[@]}"; do
  # shellcheck disable=SC2086
  KILN_STATE_DIR=$SECRET_STATE kiln $c
  assert_eq 2 "$RC" "kiln $c: exit 2"
  assert_not_contains "$OUT$ERR" "S3CRET" "kiln $c: the password is never printed"
  assert_contains "$OUT$ERR" "***@127.0.0.1:1" "kiln $c: *** in its place"
  if [[ "$c" == *--json* ]]; then
    assert_eq "failed 2" "$(jget "j['status'] + ' ' + str(j['exit_code'])" <<<"$OUT")" "kiln $c: the failure object"
  fi
done
KILN_DEFAULT_REPO=user:S3CRET@127.0.0.1:1 KILN_STATE_DIR=$SECRET_STATE kiln build "$W/spec.json" --push --json --progress quiet
assert_eq "2 usage" "$RC $(jget "j['error_kind']" <<<"$OUT")" "KILN_DEFAULT_REPO with credentials: exit 2"
assert_not_contains "$OUT$ERR" "S3CRET" "KILN_DEFAULT_REPO with credentials: never printed"
KILN_STATE_DIR=$SECRET_STATE kiln history --json
assert_not_contains "$OUT" "S3CRET" "the history records no credentials"
if grep -rqa S3CRET "$SECRET_STATE" 2>/dev/null; then fail "credentials in the state directory: $(grep -rla S3CRET "$SECRET_STATE")"; else pass; fi
# A digest reference, a registry with a port, and a tag with a digest are references, not credentials.
kiln inspect "127.0.0.1:1/app@sha256:$(printf '%064d' 0)" --json
assert_not_contains "$ERR" "credentials" "name@sha256:… is a digest"
kiln preflight "127.0.0.1:1/app:22.04@sha256:$(printf '%064d' 0)" --json
assert_eq "reference=ok" "$(jget "' '.join(c['check'] + '=' + ('ok' if c['ok'] else 'FAIL') for c in j['checks'][:1])" <<<"$OUT")" \
  "name:tag@sha256:… parses"

# ---- SIGTERM / SIGINT where a build cannot stop by itself: still one failure object (QA A14) -----
# A build waiting for another kiln's build of the same name cannot stop at a layer event: 3 s
# after the signal (or at a second one) kiln prints the interrupted failure itself and exits 143 /
# 130. (RUN steps stopped mid-way: test_run_steps.sh.) env --default-signal: a script's background
# job starts with SIGINT ignored, and kiln keeps a signal it was started with ignored.
"$PYTHON" - "$KILN_STATE_DIR/locks/contract-app.lock" "$T/name.held" <<'PY' &
import fcntl, os, sys, time
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(60)
PY
HOLDER=$!
for _ in $(seq 100); do [[ -e $T/name.held ]] && break; sleep 0.05; done
# interrupted_build SIG [SIG2]: kiln build --json waiting for the name, then SIG (and SIG2 at once).
interrupted_build() {
  rm -f "$T/int.err"
  env --default-signal=INT "$KILN" build "$W/spec.json" --json --progress plain >"$T/int.out" 2>"$T/int.err" &
  local pid=$!
  wait_for_text "$T/int.err" "waiting for it to finish"
  START_MS=$(($(date +%s%N) / 1000000))
  kill -"$1" "$pid"
  if [[ -n "${2:-}" ]]; then
    sleep 0.3
    kill -"$2" "$pid"
  fi
  RC=0
  wait "$pid" || RC=$?
  TOOK_MS=$(($(date +%s%N) / 1000000 - START_MS))
  OUT=$(<"$T/int.out")
  ERR=$(<"$T/int.err")
}
interrupted_build TERM
assert_eq 143 "$RC" "SIGTERM while waiting for the name: exit 143"
assert_eq 1 "$(grep -c '^{' "$T/int.out")" "SIGTERM: one JSON object on stdout"
assert_eq "failed 143 interrupted $W/spec.json" \
  "$(jget "' '.join(str(j[k]) for k in ('status', 'exit_code', 'error_kind', 'spec'))" <<<"$OUT")" \
  "SIGTERM: the interrupted failure object"
assert_eq "[]" "$(jget "[k for k in $FAILURE_KEYS if k not in j]" <<<"$OUT")" "SIGTERM: every key of the failure object"
assert_cmd "SIGTERM: kiln gave the build 3 s, no more (${TOOK_MS} ms)" test "$TOOK_MS" -ge 2500 -a "$TOOK_MS" -lt 8000
interrupted_build INT INT
assert_eq "130 interrupted" "$RC $(jget "j['error_kind']" <<<"$OUT")" "SIGINT twice: exit 130, interrupted"
assert_cmd "SIGINT twice: kiln stops at the second (${TOOK_MS} ms)" test "$TOOK_MS" -lt 2500
assert_contains "$ERR" "again to stop at once" "the first signal says a second one stops at once"
kill "$HOLDER" 2>/dev/null || true
wait "$HOLDER" 2>/dev/null || true
# Once nothing holds the name, the next build goes through.
build_ok "$W/spec.json"
