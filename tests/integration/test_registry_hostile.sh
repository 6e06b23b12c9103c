#!/usr/bin/env bash
# Credentials stay with their registry, and request bodies can be sent again. A token registry
# (the pusher's credentials in a docker config) behind fault_proxy.py:
#   - an upload whose 202 Location points at another address (a recorder that answers 401 with a
#     Basic challenge, the bait): no Authorization header ever reaches the recorder, nor do the
#     credentials reach any token server it could name; the push fails cleanly;
#   - blob GETs answered with a 307 to another address (a CDN serving the registry's blobs): the
#     pull completes, the CDN gets no Authorization header, the registry itself does;
#   - a proxy that closes every kept-alive connection when its second request arrives (after
#     reading it): the push completes, and what the registry holds matches.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"

W=$T/ws
mkdir -p "$W/src"
make_tree "$W/src" 2 3 hostile
head -c 300000 /dev/urandom >"$W/src/blob.bin"

# start_proxy VAR_PREFIX ARGS...: a fault_proxy.py with ARGS (rules are --rule R), its address in
# ${VAR_PREFIX}_ADDR, its logs in ${VAR_PREFIX}_LOG and ${VAR_PREFIX}_AUTH.
start_proxy() {
  local prefix=$1 d pid
  shift
  d=$(mktemp -d "$T/$prefix.XXXX")
  : >"$d/log"
  : >"$d/auth"
  "$PYTHON" "$REGLIB_DIR/fault_proxy.py" "$@" --port-file "$d/port" --log "$d/log" --auth-log "$d/auth" \
    --time-limit 300 >"$d/out" 2>&1 &
  pid=$!
  _REG_PIDS+=("$pid")
  _wait_port_file "$d/port" "$pid" "$prefix" "$d/out"
  printf -v "${prefix}_ADDR" '127.0.0.1:%s' "$(<"$d/port")"
  printf -v "${prefix}_LOG" '%s' "$d/log"
  printf -v "${prefix}_AUTH" '%s' "$d/auth"
}

# no_credentials WHAT AUTHLOG: AUTHLOG lists requests, none with an Authorization header.
no_credentials() {
  local n
  n=$(grep -c . "$2" || true)
  if ((n >= 1)); then pass; else fail "$1: the address got requests (the Location or redirect was followed)"; fi
  assert_eq 0 "$(grep -vc 'auth=none$' "$2" || true)" "$1: no request carried an Authorization header"$'\n'"$(cat "$2")"
}

start_registry token
STORAGE=$REG_DIR/storage/docker/registry/v2

# A recorder: no upstream; serves blobs from the registry's storage, answers 401 otherwise.
start_proxy REC --record-only --blob-root "$STORAGE"

# ---- 1. a 202 whose Location points at the recorder ------------------------------------------------
start_proxy RELOC --upstream "$REG_ADDR" --rule "relocate=$REC_ADDR,method=POST,path=/blobs/uploads/,count=0"
docker_config "$W/cfg-reloc/config.json" pusher "$REG_PASS" "$RELOC_ADDR"
cat >"$W/reloc.json" <<EOF
{"name": "reloc", "registry": "$RELOC_ADDR", "source_root": "src", "source_copy_mode": "all"}
EOF
tokens_before=$(wc -l <"$TOKEN_LOG")
kiln build "$W/reloc.json" --push --skip-preflight --json --progress plain --registry-config "$W/cfg-reloc"
assert_ne 0 "$RC" "a push whose upload Location leads elsewhere (answering 401) fails"$'\n'"$ERR"
assert_contains "$(cat "$RELOC_LOG")" "relocated [rule 0]" "the proxy did send the upload elsewhere"
no_credentials "upload Location on another address" "$REC_AUTH"
assert_match "$(cat "$RELOC_AUTH")" "auth=Bearer" "the registry itself got the token"
assert_not_contains "$OUT$ERR" "$REG_PASS" "the password is not in kiln's output"
# The token server only ever heard from kiln for the registry's own challenge (its log is one
# JSON line per request; the recorder names no token server, so there is nothing else to see).
assert_cmd "token requests were made for the registry" test "$(wc -l <"$TOKEN_LOG")" -gt "$tokens_before"

# ---- 2. blob GETs redirected to a CDN on another address ------------------------------------------
# A base pushed straight to the registry, pulled through a proxy that redirects its blobs.
docker_config "$W/cfg-direct/config.json" pusher "$REG_PASS" "$REG_ADDR"
cat >"$W/base.json" <<EOF
{"name": "cdnbase", "registry": "$REG_ADDR", "source_root": "src", "source_copy_mode": "all"}
EOF
kiln build "$W/base.json" --push --json --progress quiet --registry-config "$W/cfg-direct"
assert_eq 0 "$RC" "the base is pushed"$'\n'"$ERR"
BASE_TAG=$(jget "j['tag']" <<<"$OUT")
start_proxy CDN --upstream "$REG_ADDR" --rule "redirect=$REC_ADDR,method=GET,path=/blobs/sha256:,count=0"
docker_config "$W/cfg-cdn/config.json" pusher "$REG_PASS" "$CDN_ADDR"
: >"$REC_AUTH"
cat >"$W/app.json" <<EOF
{"name": "cdnapp", "base_image": "$CDN_ADDR/cdnbase:$BASE_TAG", "env": {"A": "1"}}
EOF
# A fresh cache: the push above left every blob in the default one.
KILN_CACHE=$T/cache-cdn kiln build "$W/app.json" --json --progress plain -o "oci:$T/cdn-out" --registry-config "$W/cfg-cdn"
assert_eq 0 "$RC" "a base whose blobs are redirected to a CDN is pulled"$'\n'"$ERR"
assert_match "$(cat "$CDN_LOG")" "GET /v2/cdnbase/blobs/sha256:[0-9a-f]* -> 307" "blob GETs were redirected"
no_credentials "blob GET redirected to a CDN" "$REC_AUTH"
assert_match "$(cat "$CDN_AUTH")" "GET /v2/cdnbase/manifests/.* auth=Bearer" "the registry itself got the token"
layout_blobs_ok "$T/cdn-out"

# ---- 3. kept-alive connections closed by the server: bodies are sent again ---------------------------
start_proxy DROP --upstream "$REG_ADDR" --drop-reused
docker_config "$W/cfg-drop/config.json" pusher "$REG_PASS" "$DROP_ADDR"
cat >"$W/drop.json" <<EOF
{"name": "dropped", "registry": "$DROP_ADDR", "source_root": "src", "source_copy_mode": "all", "large_file_threshold": 100000}
EOF
kiln build "$W/drop.json" --push --json --progress plain --registry-config "$W/cfg-drop"
assert_eq 0 "$RC" "a push through a server that closes kept-alive connections completes"$'\n'"$ERR"
DIGEST=$(jget "j['digest']" <<<"$OUT")
TAG=$(jget "j['tag']" <<<"$OUT")
drops=$(grep -c "drop reused connection" "$DROP_LOG" || true)
if ((drops >= 1)); then pass; else fail "the proxy did close reused connections"$'\n'"$(cat "$DROP_LOG")"; fi
drops_put=$(grep -Ec "^[0-9.]* (PUT|PATCH|POST) .* -> drop reused connection" "$DROP_LOG" || true)
if ((drops_put >= 1)); then pass; else fail "a request with a body was dropped (so it had to be re-sent)"$'\n'"$(cat "$DROP_LOG")"; fi
# What the registry holds is the image kiln reported, every blob intact.
skopeo copy --quiet --src-tls-verify=false --src-creds "pusher:$REG_PASS" \
  "docker://$REG_ADDR/dropped:$TAG" "oci:$T/drop-copy:t" >"$T/skopeo.out" 2>&1 ||
  fail "skopeo reads the pushed image back"$'\n'"$(cat "$T/skopeo.out")"
skopeo inspect --raw --tls-verify=false --creds "pusher:$REG_PASS" "docker://$REG_ADDR/dropped:$TAG" >"$T/raw.json" 2>"$T/skopeo.err" ||
  fail "skopeo reads the pushed manifest"$'\n'"$(cat "$T/skopeo.err")"
assert_eq "$DIGEST" "sha256:$(sha256sum <"$T/raw.json" | cut -d' ' -f1)" "the registry holds the manifest kiln pushed"
layout_blobs_ok "$T/drop-copy"
