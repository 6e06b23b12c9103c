# Registry fixtures for kiln's registry integration tests (sourced after ../lib.sh).
#
#   start_registry MODE      MODE: plain | tls-basic | token | token-refresh. Starts Debian's `docker-registry
#                            serve` (distribution 2.8) on 127.0.0.1:<free port> with fresh
#                            filesystem storage (delete enabled) and an info-level log, waits until
#                            /v2/ answers, and exports:
#       REG_ADDR   127.0.0.1:PORT            REG_DIR  the registry's temp dir (storage in REG_DIR/storage)
#       REG_LOG    its log (access lines: `"METHOD /v2/… HTTP/1.1" STATUS`, see reg_requests)
#       REG_PID
#     tls-basic: REG_CERT (self-signed for IP 127.0.0.1; also the CA to trust), REG_USER/REG_PASS
#                (htpasswd, bcrypt).
#     token:     TOKEN_ADDR, TOKEN_LOG (one JSON line per token request); users pusher/REG_PASS
#                (pull,push on every repository) and reader/REG_PASS (pull only); anonymous gets
#                pull only (as public registries do). The registry itself speaks plain HTTP.
#     token-refresh: as token, but the token server takes only the OAuth2 refresh-token grant
#                (POST); REG_IDTOKEN is an identity token for "pusher"
#   stop_registry            stops the current registry (and its token server).
#   start_fault_proxy UPSTREAM RULE...   fault_proxy.py in front of UPSTREAM; exports PROXY_ADDR,
#                            PROXY_LOG, PROXY_PID. stop_fault_proxy stops it.
#   docker_config FILE USER PASS [HOST]   a docker config.json with an "auths" entry.
#   reg_mark / reg_requests [SINCE] / reg_count METHOD PATH_ERE [SINCE]
#                            the registry's requests ("METHOD PATH STATUS", from its access log)
#                            after a mark, and how many match.
#   layout_blobs_ok LAYOUT   every blob of an OCI layout matches its digest.
#   free_port                a port nothing listens on (bind to port 0).
#
# Every server started here listens on 127.0.0.1 only and is stopped when the test exits
# (registry_lib installs an EXIT trap that stops them, then runs lib.sh's summary).
#
# skopeo (as root) keeps a blob-info cache in /var/lib/containers/cache that remembers which
# registry/repository held which blob; it can make a push "succeed" by mounting blobs a registry
# on the same address once had. Every start_registry gets fresh storage on a fresh port, and the
# tests use skopeo mostly to read (inspect, copy to an oci: layout, which checks every digest);
# the one skopeo push (an index, --preserve-digests) is verified by reading it back. The shared
# cache is left alone: other tests may be using it.

REGLIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
need_tools docker-registry skopeo openssl htpasswd

_REG_PIDS=()  # every server started, so the EXIT trap stops them all

_reg_stop_pid() {
  local pid=$1 i p keep=()
  [[ -n "$pid" ]] || return 0
  # Forget it first: a stopped pid must never be signalled again (it may be reused).
  for p in "${_REG_PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  _REG_PIDS=("${keep[@]}")
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

_reg_on_exit() {
  local rc=$? pid
  set +e # cleanup goes on whatever fails
  for pid in "${_REG_PIDS[@]}"; do _reg_stop_pid "$pid"; done
  # lib.sh's _on_exit reads the exit status from $?: hand it the script's.
  if ((rc == 0)); then _on_exit; else (exit "$rc") || _on_exit; fi
}
trap _reg_on_exit EXIT
# Killed (ctest's timeout, ^C): stop the servers too, and report a failure, not a pass.
trap 'exit 143' TERM
trap 'exit 130' INT

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# _wait_port_file FILE PID WHAT: waits (10 s at most) for a server started with --port-file.
_wait_port_file() {
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s "$1" ]] && return 0
    kill -0 "$2" 2>/dev/null || die "$3 died at start:"$'\n'"$(cat "$4" 2>/dev/null)"
    sleep 0.1
  done
  die "$3 did not start in 10 s"
}

# _wait_http URL PID: waits (20 s at most) until URL answers any HTTP status.
_wait_http() {
  local url=$1 pid=$2 i
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if "$PYTHON" - "$url" <<'PY' 2>/dev/null; then return 0; fi
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    urllib.request.urlopen(sys.argv[1], timeout=2, context=ctx)
except urllib.error.HTTPError:
    pass
PY
    sleep 0.1
  done
  return 1
}

# _make_cert DIR: DIR/key.pem and DIR/cert.pem, self-signed for IP 127.0.0.1.
_make_cert() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$1/key.pem" -out "$1/cert.pem" >"$1/openssl.log" 2>&1 ||
    die "openssl req failed: $(cat "$1/openssl.log")"
}

start_registry() {
  local mode=$1 port
  REG_DIR=$(mktemp -d "$T/registry.XXXX")
  REG_LOG=$REG_DIR/registry.log
  REG_USER="" REG_PASS="" REG_IDTOKEN="" REG_CERT="" TOKEN_ADDR="" TOKEN_LOG="" TOKEN_PID=""
  mkdir -p "$REG_DIR/storage"
  local tls="" auth=""
  case "$mode" in
    plain) ;;
    tls-basic)
      _make_cert "$REG_DIR"
      REG_CERT=$REG_DIR/cert.pem
      REG_USER=kilnuser
      REG_PASS="s3cret-$RANDOM$RANDOM-basic"
      htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$REG_DIR/htpasswd" 2>/dev/null || die "htpasswd -Bbn failed"
      tls="  tls:
    certificate: $REG_DIR/cert.pem
    key: $REG_DIR/key.pem"
      auth="auth:
  htpasswd:
    realm: kiln-test
    path: $REG_DIR/htpasswd"
      ;;
    token | token-refresh)
      # token-refresh: the token server takes only the OAuth2 refresh-token grant (POST), with
      # REG_IDTOKEN (a docker "identitytoken") standing for "pusher".
      _make_cert "$REG_DIR"  # the token signing key; its certificate is the registry's root bundle
      REG_PASS="s3cret-$RANDOM$RANDOM-token"
      REG_IDTOKEN="idtok-$RANDOM$RANDOM-refresh"
      cat >"$REG_DIR/users.json" <<JSON
{"users": {"pusher": {"password": "$REG_PASS", "access": {"*": ["pull", "push"]}},
           "reader": {"password": "$REG_PASS", "access": {"*": ["pull"]}}},
 "refresh_tokens": {"$REG_IDTOKEN": "pusher"},
 "anonymous": {"*": ["pull"]}}
JSON
      local refresh_only=()
      [[ "$mode" == token-refresh ]] && refresh_only=(--refresh-only)
      TOKEN_LOG=$REG_DIR/token.log
      : >"$TOKEN_LOG"
      "$PYTHON" "$REGLIB_DIR/token_server.py" --key "$REG_DIR/key.pem" --cert "$REG_DIR/cert.pem" \
        --users "$REG_DIR/users.json" --service kiln-test-registry --issuer kiln-test-issuer \
        --port-file "$REG_DIR/token.port" --log "$TOKEN_LOG" --time-limit 600 "${refresh_only[@]}" \
        >"$REG_DIR/token.out" 2>&1 &
      TOKEN_PID=$!
      _REG_PIDS+=("$TOKEN_PID")
      _wait_port_file "$REG_DIR/token.port" "$TOKEN_PID" "token server" "$REG_DIR/token.out"
      TOKEN_ADDR=127.0.0.1:$(<"$REG_DIR/token.port")
      auth="auth:
  token:
    realm: http://$TOKEN_ADDR/token
    service: kiln-test-registry
    issuer: kiln-test-issuer
    rootcertbundle: $REG_DIR/cert.pem"
      ;;
    *) die "start_registry: unknown mode '$mode' (plain, tls-basic, token, token-refresh)" ;;
  esac
  # The port is picked before the registry binds it: retry on the (rare) race.
  for _ in 1 2 3; do
    port=$(free_port)
    REG_ADDR=127.0.0.1:$port
    cat >"$REG_DIR/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $REG_DIR/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REG_ADDR
  secret: kiln-test-secret
$tls
$auth
YAML
    : >"$REG_LOG"
    # `timeout` bounds its life should this shell die without running its EXIT trap (SIGKILL).
    timeout --kill-after=5 900 docker-registry serve "$REG_DIR/config.yml" >>"$REG_LOG" 2>&1 &
    REG_PID=$!
    _REG_PIDS+=("$REG_PID")
    local scheme=http
    [[ "$mode" == tls-basic ]] && scheme=https
    if _wait_http "$scheme://$REG_ADDR/v2/" "$REG_PID"; then
      export REG_ADDR REG_LOG REG_DIR REG_PID REG_USER REG_PASS REG_IDTOKEN REG_CERT TOKEN_ADDR TOKEN_LOG
      return 0
    fi
    _reg_stop_pid "$REG_PID"
  done
  die "docker-registry ($mode) did not start:"$'\n'"$(tail -20 "$REG_LOG")"
}

stop_registry() {
  _reg_stop_pid "${REG_PID:-}"
  _reg_stop_pid "${TOKEN_PID:-}"
  REG_PID="" TOKEN_PID=""
}

# start_fault_proxy UPSTREAM RULE...: see fault_proxy.py for the rule syntax.
start_fault_proxy() {
  local upstream=$1
  shift
  local d rules=() r
  d=$(mktemp -d "$T/proxy.XXXX")
  for r in "$@"; do rules+=(--rule "$r"); done
  PROXY_LOG=$d/proxy.log
  : >"$PROXY_LOG"
  "$PYTHON" "$REGLIB_DIR/fault_proxy.py" --upstream "$upstream" "${rules[@]}" --port-file "$d/port" \
    --log "$PROXY_LOG" --time-limit 300 >"$d/proxy.out" 2>&1 &
  PROXY_PID=$!
  _REG_PIDS+=("$PROXY_PID")
  _wait_port_file "$d/port" "$PROXY_PID" "fault proxy" "$d/proxy.out"
  PROXY_ADDR=127.0.0.1:$(<"$d/port")
  export PROXY_ADDR PROXY_LOG PROXY_PID
}

stop_fault_proxy() {
  _reg_stop_pid "${PROXY_PID:-}"
  PROXY_PID=""
}

# stop_during_stall SIG OUT ERR CMD...: runs CMD in the background (stdout to OUT, stderr to ERR),
# waits until the fault proxy holds a request (a stall= rule), sends SIG and waits for CMD:
# STOP_RC is its exit status, STOP_SECS the seconds from the signal to its end. (env
# --default-signal: a script's background job starts with SIGINT ignored, and kiln keeps it so.)
stop_during_stall() {
  local sig=$1 out=$2 err=$3 pid start
  shift 3
  rm -f "$out" "$err"
  env --default-signal=INT "$@" >"$out" 2>"$err" &
  pid=$!
  wait_for_text "$PROXY_LOG" "stall"
  assert_contains "$(cat "$PROXY_LOG")" "stall" "the request is held by the proxy"
  start=$SECONDS
  kill -"$sig" "$pid"
  STOP_RC=0
  wait "$pid" || STOP_RC=$?
  STOP_SECS=$((SECONDS - start))
}

# docker_config FILE USER PASS [HOST]: a docker config.json with credentials for HOST (REG_ADDR).
docker_config() {
  local file=$1 user=$2 pass=$3 host=${4:-$REG_ADDR}
  mkdir -p "$(dirname "$file")"
  "$PYTHON" - "$file" "$user" "$pass" "$host" <<'PY'
import base64, json, sys
f, u, p, h = sys.argv[1:]
json.dump({"auths": {h: {"auth": base64.b64encode(("%s:%s" % (u, p)).encode()).decode()}}}, open(f, "w"))
PY
}

# reg_requests [SINCE]: the registry's requests as "METHOD PATH STATUS" lines (from the access log,
# after line SINCE of REG_LOG, see reg_mark). Waits a moment first: the registry writes an access
# line just after the response, so a client may be done before the line is.
reg_requests() {
  sleep 0.3
  tail -n "+$((${1:-0} + 1))" "$REG_LOG" |
    sed -nE 's/^[0-9.]+ - [^[]*\[[^]]*\] "([A-Z]+) ([^ ]+) HTTP\/[0-9.]+" ([0-9]{3}) .*/\1 \2 \3/p'
}

# reg_count METHOD PATH_ERE [SINCE]: how many requests of METHOD (an ERE too: "PUT|PATCH") on a
# path matching PATH_ERE the registry answered since line SINCE of its log.
reg_count() {
  reg_requests "${3:-0}" | grep -cE "^($1) ($2)" || true
}

# reg_mark: the current length (in lines) of REG_LOG, for reg_requests / reg_count.
reg_mark() { wc -l <"$REG_LOG"; }

# layout_blobs_ok LAYOUT: every blob of an OCI layout has the digest its name says (prints the
# offenders; returns 1 if any).
layout_blobs_ok() {
  local f bad=0
  for f in "$1"/blobs/sha256/*; do
    [[ -e "$f" ]] || continue
    if [[ "$(sha256sum <"$f" | cut -d' ' -f1)" != "$(basename "$f")" ]]; then
      echo "blob $f does not match its name" >&2
      bad=1
    fi
  done
  return $bad
}
