#!/usr/bin/env bash
# `kiln files`: the file set a build bakes, through the CLI — git context (a .gitignore above
# source_root, a tracked file matching a pattern), Docker's .dockerignore semantics, .flyteignore
# on request, and a bad pattern as exit 2 naming the file and line (also for `kiln build`).
source "$(dirname "$0")/lib.sh"
need_tools git

export HOME="$T/home" XDG_CONFIG_HOME="$T/home/.config" GIT_CONFIG_NOSYSTEM=1
mkdir -p "$HOME"
R="$T/repo"
mkdir -p "$R/sub/app/secret" "$R/sub/app/certs" "$R/sub/app/data"
printf 'secret/\n*.log\n' >"$R/.gitignore"
printf 'print(1)\n' >"$R/sub/app/main.py"
printf 'key\n' >"$R/sub/app/secret/key.txt"
printf 'pem\n' >"$R/sub/app/certs/server.pem"
printf 'tracked\n' >"$R/sub/app/kept.log"
printf 'dropped\n' >"$R/sub/app/other.log"
printf 'd\n' >"$R/sub/app/data/x.csv"
printf '**.pem\n' >"$R/sub/app/.dockerignore"
printf 'data\n' >"$R/sub/app/.flyteignore"
git -C "$R" -c init.defaultBranch=main init -q
git -C "$R" add -f sub/app/kept.log
printf '{"name": "files", "source_root": "repo/sub/app", "source_copy_mode": "all"}\n' >"$T/spec.json"

kiln files "$T/spec.json"
assert_eq 0 "$RC" "kiln files: exit 0 ($ERR)"
assert_eq "$(printf '%s\n' /root/.dockerignore /root/.flyteignore /root/data/x.csv /root/kept.log /root/main.py)" "$OUT" \
  "the parent .gitignore applies, the tracked file is kept, **.pem reaches into certs/"

kiln files "$T/spec.json" --flyteignore
assert_not_contains "$OUT" "/root/data/x.csv" "--flyteignore applies .flyteignore (the fast-register bundle's set)"

kiln files "$T/spec.json" --json
assert_eq "$R" "$(jget "j['git_workdir']" <<<"$OUT")" "--json names the git work tree"
assert_eq "file" "$(jget "[e['type'] for e in j['source'] if e['path'] == 'main.py'][0]" <<<"$OUT")" "--json lists entries"

printf '*.md\n[a-b-c]\n' >"$R/sub/app/.dockerignore"
kiln files "$T/spec.json"
assert_eq 2 "$RC" "a bad .dockerignore pattern: exit 2"
assert_contains "$ERR" ".dockerignore:2:" "the error names the file and the line"
kiln build "$T/spec.json" --progress quiet
assert_eq 2 "$RC" "kiln build refuses it too: exit 2"
assert_contains "$ERR" ".dockerignore:2:" "kiln build names the file and the line"
