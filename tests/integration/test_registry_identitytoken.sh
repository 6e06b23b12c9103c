#!/usr/bin/env bash
# Identity tokens (issue 14): a docker config.json `auths` entry with "identitytoken", and a
# credential helper answering Username "<token>", are OAuth2 refresh tokens: kiln trades them at
# the token endpoint with a POSTed refresh-token grant (client_id=kiln), as docker and
# go-containerregistry do. The token server here accepts nothing else. The token never shows in
# kiln's output.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/registry/registry_lib.sh"
need_tools docker-registry openssl

W=$T/ws
mkdir -p "$W/src"
make_tree "$W/src" 1 3 idtok
start_registry token-refresh
"$PYTHON" - "$W/idtok/config.json" "$REG_ADDR" "$REG_IDTOKEN" <<'PY'
import json, os, sys
f, host, tok = sys.argv[1:]
os.makedirs(os.path.dirname(f), exist_ok=True)
json.dump({"auths": {host: {"auth": "", "identitytoken": tok}}}, open(f, "w"))
PY
"$PYTHON" - "$W/badtok/config.json" "$REG_ADDR" <<'PY'
import json, os, sys
f, host = sys.argv[1:]
os.makedirs(os.path.dirname(f), exist_ok=True)
json.dump({"auths": {host: {"identitytoken": "idtok-revoked"}}}, open(f, "w"))
PY
printf '{"name": "idtok-app", "registry": "%s", "source_root": "src", "source_copy_mode": "all"}\n' \
  "$REG_ADDR" >"$W/spec.json"

no_token() {
  assert_not_contains "$OUT$ERR" "$REG_IDTOKEN" "$1: the identity token is not in kiln's output"
}

# ---- config.json identitytoken: preflight and push through the refresh-token grant -------------
kiln preflight "$REG_ADDR/idtok-app" --json --registry-config "$W/idtok"
assert_eq 0 "$RC" "identitytoken: preflight exit 0"$'\n'"$OUT$ERR"
no_token "identitytoken preflight"
assert_contains "$(cat "$TOKEN_LOG")" '"grant": "refresh_token"' "identitytoken: the token server saw a refresh-token grant"
assert_eq "pusher kiln" "$(tail -n1 "$TOKEN_LOG" | jget "str(j['user']) + ' ' + j.get('client_id', '')")" \
  "identitytoken: granted as pusher, client_id kiln"
assert_contains "$(tail -n1 "$TOKEN_LOG" | jget "' '.join(j['scopes'])")" "repository:idtok-app:" \
  "identitytoken: the grant asks the repository's scope"
kiln build "$W/spec.json" --json --progress plain --registry-config "$W/idtok"
assert_eq 0 "$RC" "identitytoken: build --push exit 0"$'\n'"$ERR"
no_token "identitytoken push"
assert_eq "$(jget "j['digest']" <<<"$OUT")" "$(jget "(j.get('pushed') or {}).get('digest')" <<<"$OUT")" "identitytoken: pushed the image"
assert_eq 0 "$(grep -c '"grant": "get"' "$TOKEN_LOG" || true)" "identitytoken: no GET (anonymous or Basic) token request"
# The preflight before the build shows the repository it checks, not the ":latest" a bare name
# parses to (the tag is known only once the files are hashed).
assert_contains "$ERR" "preflight ok   reference: $REG_ADDR/idtok-app (tag from the spec" "build preflight: the reference without :latest"
assert_not_contains "$ERR" "idtok-app:latest" "build preflight: no :latest"

# ---- a revoked token: exit 4 (credentials), a message about the identity token -----------------
kiln preflight "$REG_ADDR/idtok-app" --json --registry-config "$W/badtok"
assert_eq 4 "$RC" "revoked identitytoken: preflight exit 4"
assert_contains "$OUT$ERR" "identity token" "revoked identitytoken: the message names the identity token"
assert_not_contains "$OUT$ERR" "idtok-revoked" "revoked identitytoken: not printed"

# ---- a credential helper answering Username "<token>": the same grant --------------------------
mkdir -p "$T/bin"
{
  echo '#!/bin/sh'
  echo '[ "$1" = get ] || exit 1'
  echo 'read -r server'
  echo "if [ \"\$server\" = '$REG_ADDR' ]; then"
  echo "  printf '{\"ServerURL\": \"%s\", \"Username\": \"<token>\", \"Secret\": \"%s\"}\\n' \"\$server\" \"\$KILNTOK_SECRET\""
  echo 'else echo "credentials not found in native keychain"; exit 1; fi'
} >"$T/bin/docker-credential-kilntok"
chmod +x "$T/bin/docker-credential-kilntok"
"$PYTHON" -c 'import json, sys; json.dump({"credHelpers": {sys.argv[2]: "kilntok"}}, open(sys.argv[1], "w"))' "$W/helper.json" "$REG_ADDR"
: >"$TOKEN_LOG"
KILNTOK_SECRET=$REG_IDTOKEN PATH="$T/bin:$PATH" kiln build "$W/spec.json" --json --progress plain --force --registry-config "$W/helper.json"
assert_eq 0 "$RC" "helper <token>: build --push exit 0"$'\n'"$ERR"
no_token "helper <token> push"
assert_contains "$(cat "$TOKEN_LOG")" '"grant": "refresh_token"' "helper <token>: a refresh-token grant"
assert_eq 0 "$(grep -c '"ok": false' "$TOKEN_LOG" || true)" "helper <token>: no refused token request"

# ---- -v / KILN_DEBUG=1: each registry request logged (method, URL, status), never a credential --
kiln -v preflight "$REG_ADDR/idtok-app" --registry-config "$W/idtok"
assert_eq 0 "$RC" "-v preflight: exit 0"
assert_contains "$ERR" "http GET http://$REG_ADDR/v2/ 401" "-v: the registry's challenge logged"
assert_contains "$ERR" "http POST http://$TOKEN_ADDR/token 200" "-v: the token grant logged"
assert_match "$ERR" "http POST http://$REG_ADDR/v2/idtok-app/blobs/uploads/ 202" "-v: the dry push's upload session logged"
no_token "-v preflight"
assert_not_contains "$ERR" "Authorization" "-v: no Authorization header"
assert_not_contains "$ERR" "Bearer" "-v: no bearer token"
assert_not_contains "$ERR" "_state=" "-v: no upload state (query strings are cut)"
KILN_DEBUG=1 kiln build "$W/spec.json" --progress plain --force --registry-config "$W/idtok"
assert_eq 0 "$RC" "KILN_DEBUG=1 build --push: exit 0"
assert_match "$ERR" "http PUT http://$REG_ADDR/v2/idtok-app/manifests/[0-9a-f]{32} 201" "KILN_DEBUG=1: the manifest PUT logged"
no_token "KILN_DEBUG=1 build"
assert_not_contains "$ERR" "Authorization" "KILN_DEBUG=1: no Authorization header"
assert_not_contains "$ERR" "eyJ" "KILN_DEBUG=1: no JWT"
kiln build "$W/spec.json" --progress plain --force --registry-config "$W/idtok"
assert_not_contains "$ERR" "http GET" "without -v or KILN_DEBUG: no request log"

# ---- KILN_DEFAULT_REPO: where --push sends a spec without "registry" ----------------------------
printf '{"name": "norepo-app", "source_root": "src", "source_copy_mode": "all"}\n' >"$W/norepo.json"
KILN_DEFAULT_REPO="$REG_ADDR/team/" kiln build "$W/norepo.json" --push --json --progress quiet --registry-config "$W/idtok"
assert_eq 0 "$RC" "KILN_DEFAULT_REPO + --push: exit 0"$'\n'"$ERR"
assert_match "$(jget "j['pushed']['reference']" <<<"$OUT")" "^$REG_ADDR/team/norepo-app:[0-9a-f]{32}@sha256:" "KILN_DEFAULT_REPO: pushed to REPO/name:tag"
NOREPO_TAG=$(jget "j['tag']" <<<"$OUT")
kiln tag "$W/norepo.json"
assert_eq "norepo-app:$NOREPO_TAG" "$OUT" "KILN_DEFAULT_REPO does not change the tag"
# Without --push it is not used (the image is not pushed).
KILN_DEFAULT_REPO="$REG_ADDR/team" kiln build "$W/norepo.json" --json --progress quiet --registry-config "$W/idtok"
assert_eq "0 null" "$RC $(jget "j.get('pushed')" <<<"$OUT")" "KILN_DEFAULT_REPO without --push: no push"
# A spec's own registry wins.
KILN_DEFAULT_REPO="127.0.0.1:1/elsewhere" kiln build "$W/spec.json" --push --force --json --progress quiet --registry-config "$W/idtok"
assert_eq 0 "$RC" "a spec's registry wins over KILN_DEFAULT_REPO"$'\n'"$ERR"
# --push without either: the error names both ways.
kiln build "$W/norepo.json" --push --progress quiet
assert_eq 2 "$RC" "--push with no registry: exit 2"
assert_contains "$ERR" "KILN_DEFAULT_REPO" "--push with no registry: mentions KILN_DEFAULT_REPO"
