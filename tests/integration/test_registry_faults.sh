#!/usr/bin/env bash
# A registry that misbehaves (registry/fault_proxy.py in front of a real one): 500s, 503s, 429s
# with Retry-After and connections dropped in the middle of an upload are retried and the push
# still lands, byte for byte; faults that never stop end in exit 6 ("transient") without moving
# the tag; a closed port fails the preflight in well under 2 s; a registry that does not create
# repositories on push fails it with exit 5; and a healthy preflight takes well under 2 s.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"

start_registry plain
W=$T/ws
mkdir -p "$W/src"
make_tree "$W/src" 1 3 faults
# 70 MiB: pushed in PATCH chunks, so a chunk can fail or be cut off.
head -c $((70 << 20)) /dev/urandom >"$W/src/big.bin"

# spec FILE NAME REGISTRY [SOURCE]
spec() {
  cat >"$1" <<EOF
{"name": "$2", "registry": "$3", "source_root": "${4:-src}", "source_copy_mode": "all"}
EOF
}

# fired N: how many requests rule N of the current proxy answered.
fired() { grep -c "\[rule $1\]" "$PROXY_LOG" || true; }

# ms_since EPOCHREALTIME_START: milliseconds since then.
ms_since() { "$PYTHON" -c 'import sys, time; print(int((time.time() - float(sys.argv[1])) * 1000))' "$1"; }

# ---- transient faults on every step of a push: retried, and the image lands intact ---------------
# rule 0: the first two upload POSTs fail (the preflight's, retried, and then a blob's)
# rule 1: two blob HEADs answer 503
# rule 2: a chunk PATCH answers 500
# rule 3: a chunk PATCH is cut off after 1 MiB (the connection closes mid-body)
# rule 4: a monolithic blob PUT answers 429 with Retry-After: 2
# rule 5: a monolithic blob PUT is cut off after 100 bytes
# rule 6: the manifest PUT answers 429 with Retry-After: 1
start_fault_proxy "$REG_ADDR" \
  'status=500,method=POST,path=^/v2/[^?]*/blobs/uploads/$,count=2' \
  'status=503,method=HEAD,path=/blobs/sha256:,count=2' \
  'status=500,method=PATCH,path=/blobs/uploads/,count=1' \
  'drop=1,method=PATCH,path=/blobs/uploads/,count=1,after=1048576' \
  'status=429,retry_after=2,method=PUT,path=/blobs/uploads/.*digest=,count=1' \
  'drop=1,method=PUT,path=/blobs/uploads/.*digest=,count=1,after=100' \
  'status=429,retry_after=1,method=PUT,path=/manifests/,count=1'
spec "$W/flaky.json" flaky "$PROXY_ADDR"
kiln build "$W/flaky.json" --json --progress plain
assert_eq 0 "$RC" "push through transient faults: exit 0"$'\n'"$ERR"$'\n'"$OUT"
[[ $RC == 0 ]] || die "cannot check the pushed image"
D=$(jget "j['digest']" <<<"$OUT")
IMAGE=$(jget "j['image']" <<<"$OUT")
for rule in 0 1 2 3 4 5 6; do
  if (($(fired $rule) >= 1)); then pass; else fail "fault rule $rule fired"$'\n'"$(cat "$PROXY_LOG")"; fi
done
assert_eq 2 "$(fired 0)" "both POST failures fired"
assert_contains "$ERR" "retrying" "kiln says it retries"
# The chunks went through the proxy too: the registry's absolute Location headers were rewritten.
if (($(grep -c '^[0-9.]* PATCH /v2/flaky/blobs/uploads/.* -> 202$' "$PROXY_LOG" || true) >= 3)); then pass; else
  fail "the upload chunks went through the proxy"$'\n'"$(cat "$PROXY_LOG")"; fi
# What the registry holds (asked directly, not through the proxy) is the very image built.
REPO_IMAGE=$REG_ADDR/${IMAGE#*/}
skopeo inspect --tls-verify=false "docker://$REPO_IMAGE" >"$T/inspect.json" 2>"$T/skopeo.err" ||
  die "skopeo inspect of the faulted push failed: $(cat "$T/skopeo.err")"
assert_eq "$D" "$(jget "j['Digest']" "$T/inspect.json")" "faulted push: the registry has the built digest"
skopeo copy --quiet --preserve-digests --src-tls-verify=false "docker://$REPO_IMAGE" "oci:$T/back:t" >/dev/null 2>"$T/skopeo.err" ||
  die "skopeo copy of the faulted push failed: $(cat "$T/skopeo.err")"
if layout_blobs_ok "$T/back"; then pass; else fail "faulted push: every blob read back matches its digest"; fi
BIG_LAYER=$(jget "[l['digest'] for l in j['layers'] if l['size'] > (64 << 20)][0]" <<<"$OUT")
if [[ -f "$T/back/blobs/sha256/${BIG_LAYER#sha256:}" ]]; then pass; else fail "faulted push: the chunked layer is in the registry"; fi
rm -rf "$T/back"
# Retry-After is honoured: the retried request comes at least that many seconds later.
# retry_gap RULE PATTERN: seconds between the request rule RULE answered and the next request
# matching PATTERN (a python regex on "METHOD PATH") for the same blob or manifest.
retry_gap() {
  "$PYTHON" - "$PROXY_LOG" "$1" <<'EOF'
import re, sys
lines = [l.split(" ", 3) for l in open(sys.argv[1]).read().splitlines()]
rule = "[rule %s]" % sys.argv[2]
for i, (t, method, path, rest) in enumerate(lines):
    if rule in rest:
        key = re.search(r"(digest=sha256:[0-9a-f]+|/manifests/[^?]+)", path).group(1)
        for t2, m2, p2, r2 in lines[i + 1:]:
            if m2 == method and key in p2:
                print("%.2f" % (float(t2) - float(t)))
                sys.exit(0)
print("never")
EOF
}
GAP=$(retry_gap 6)
if [[ $GAP != never ]] && "$PYTHON" -c "import sys; sys.exit(0 if float('$GAP') >= 0.95 else 1)"; then pass; else
  fail "manifest PUT after a 429 with Retry-After: 1 waits >= 1 s (waited $GAP s)"; fi
GAP=$(retry_gap 4)
if [[ $GAP != never ]] && "$PYTHON" -c "import sys; sys.exit(0 if float('$GAP') >= 1.9 else 1)"; then pass; else
  fail "blob PUT after a 429 with Retry-After: 2 waits >= 2 s (waited $GAP s)"; fi
stop_fault_proxy

# ---- faults that do not stop: exit 6, transient, and the tag is not written ---------------------
mkdir -p "$W/src2"
printf 'x = 2\n' >"$W/src2/x.py"
start_fault_proxy "$REG_ADDR" 'status=500,method=PUT,path=/blobs/uploads/,count=0'
spec "$W/broken.json" broken "$PROXY_ADDR" src2
T0=$EPOCHREALTIME
kiln build "$W/broken.json" --json --progress quiet
MS=$(ms_since "$T0")
assert_eq 6 "$RC" "blob uploads that always fail: exit 6"
assert_eq "transient" "$(jget "j.get('error_class')" <<<"$OUT")" "blob uploads that always fail: error_class transient"
if ((MS < 60000)); then pass; else fail "kiln gives up on a failing registry within a minute (took $MS ms)"; fi
if (($(fired 0) >= 2)); then pass; else fail "the upload was retried before giving up (saw $(fired 0) attempts)"; fi
assert_eq 0 "$(grep -c '^[0-9.]* PUT /v2/broken/manifests/' "$PROXY_LOG" || true)" "no manifest PUT after a failed blob upload"
stop_fault_proxy
# A registry whose /v2/ keeps answering 503: the preflight stops at once with exit 6.
start_fault_proxy "$REG_ADDR" 'status=503,method=GET,path=^/v2/$,count=0'
kiln preflight "$PROXY_ADDR/broken" --json
assert_eq 6 "$RC" "/v2/ answering 503: preflight exit 6"
assert_eq "reachable transient" "$(jget "j.get('failed_check', '') + ' ' + j.get('error_class', '')" <<<"$OUT")" \
  "/v2/ answering 503: the reachable check fails, transient"
stop_fault_proxy

# ---- a closed port: exit 6 in well under 2 s ------------------------------------------------------
CLOSED=127.0.0.1:$(free_port)
T0=$EPOCHREALTIME
kiln preflight "$CLOSED/app" --json
MS=$(ms_since "$T0")
assert_eq 6 "$RC" "closed port: preflight exit 6"
assert_eq "reachable unreachable transient" \
  "$(jget "j.get('failed_check', '') + ' ' + j.get('error_kind', '') + ' ' + j.get('error_class', '')" <<<"$OUT")" \
  "closed port: the reachable check fails (unreachable, transient)"
if ((MS < 2000)); then pass; else fail "closed port: preflight answers in < 2 s (took $MS ms)"; fi
spec "$W/closed.json" closed "$CLOSED"
T0=$EPOCHREALTIME
kiln build "$W/closed.json" --json --progress quiet --cache "$T/cache-closed"
MS=$(ms_since "$T0")
assert_eq 6 "$RC" "closed port: build exit 6"
if ((MS < 2000)); then pass; else fail "closed port: build fails in < 2 s (took $MS ms)"; fi
assert_eq 0 "$(find "$T/cache-closed" -type f -path '*/layers/*' 2>/dev/null | wc -l)" "closed port: no layer built"

# ---- a registry that does not create repositories on push: exit 5 -------------------------------
start_fault_proxy "$REG_ADDR" 'name_unknown=team/norepo'
kiln preflight "$PROXY_ADDR/team/norepo:v1" --json
assert_eq 5 "$RC" "NAME_UNKNOWN on the upload POST: preflight exit 5"
assert_eq "push name_unknown" "$(jget "j.get('failed_check', '') + ' ' + j.get('error_kind', '')" <<<"$OUT")" \
  "NAME_UNKNOWN on the upload POST: the push check fails (name_unknown)"
assert_contains "$(jget "j['checks'][-1]['message']" <<<"$OUT")" "does not exist" "NAME_UNKNOWN: the message says the repository does not exist"
assert_eq 1 "$(fired 0)" "the NAME_UNKNOWN rule fired"
# Another repository through the same proxy is fine: the rule is specific.
kiln preflight "$PROXY_ADDR/team/other" --json
assert_eq 0 "$RC" "another repository through the same proxy: preflight exit 0"
cat >"$W/norepo.json" <<EOF
{"name": "norepo", "registry": "$PROXY_ADDR/team", "source_root": "src2", "source_copy_mode": "all"}
EOF
kiln build "$W/norepo.json" --json --progress quiet --cache "$T/cache-norepo"
assert_eq 5 "$RC" "NAME_UNKNOWN on the upload POST: build exit 5"
assert_eq 0 "$(find "$T/cache-norepo" -type f -path '*/layers/*' 2>/dev/null | wc -l)" "NAME_UNKNOWN: no layer built"
stop_fault_proxy

# ---- a healthy registry: the preflight is fast ----------------------------------------------------
kiln preflight "$REG_ADDR/fast" --json # warm-up (page cache)
BEST=999999
for i in 1 2 3; do
  T0=$EPOCHREALTIME
  kiln preflight "$REG_ADDR/fast:v$i" --json
  MS=$(ms_since "$T0")
  assert_eq 0 "$RC" "healthy registry: preflight $i exit 0"
  ((MS < BEST)) && BEST=$MS
  if ((MS < 2000)); then pass; else fail "healthy registry: preflight $i takes < 2 s (took $MS ms)"; fi
  SECS=$(jget "j['seconds']" <<<"$OUT")
  if "$PYTHON" -c "import sys; sys.exit(0 if $SECS < 2 else 1)"; then pass; else fail "healthy registry: preflight reports < 2 s (said $SECS)"; fi
done
echo "healthy preflight: best of 3 = $BEST ms" >&2
