#!/usr/bin/env bash
# The git context of source_root is remembered in the store (GitRepo::open_remembered), so a
# rebuild does not load libgit2. Whatever changes, the build's file set stays the one `kiln files`
# (libgit2 asked every time) and real git give:
#   - a rebuild with nothing changed reads the memo (left as it is) and bakes the same files;
#   - a tracked file an exclude rule matches is kept from the memo too (the index is read lazily,
#     then in the background from the start once a walk needed it);
#   - a new core.excludesFile in ~/.gitconfig, a repository created between source_root and the
#     work tree (and removed again), a GIT_* variable, no repository becoming one: each is seen on
#     the next build;
#   - a config file with an include is never remembered;
#   - a damaged memo (an empty watch list, not JSON) is not trusted.
source "$(dirname "$0")/lib.sh"
need_tools git

export HOME=$T/home
unset XDG_CONFIG_HOME
mkdir -p "$HOME"
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com
export KILN_CACHE=$T/cache

R=$T/repo
mkdir -p "$R/proj/app"
git -C "$R" init -q .
printf '*.log\n' >"$R/.gitignore"
echo 'A = 1' >"$R/proj/app/a.py"
echo b >"$R/proj/app/b.txt"
echo ignored >"$R/proj/app/ignored.log"
echo keep >"$R/proj/app/keep.log"
git -C "$R" add -A
git -C "$R" add -f proj/app/keep.log
echo c >"$R/proj/app/c.txt"  # untracked, not ignored (yet)
echo "{\"name\": \"memo\", \"source_root\": \"$R/proj/app\", \"source_copy_mode\": \"all\"}" >"$T/spec.json"

# image_files: build, then the regular files the image holds under /root (sorted, one line).
image_files() {
  build_ok "$T/spec.json" -o "oci:$T/out:t"
  "$PYTHON" - "$T/out" <<'EOF'
import json, os, sys, tarfile
d = sys.argv[1]
blob = lambda dg: os.path.join(d, "blobs", "sha256", dg.split(":")[1])
idx = json.load(open(os.path.join(d, "index.json")))
man = json.load(open(blob([m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "t"][0]["digest"])))
names = set()
for l in man["layers"]:
    with tarfile.open(blob(l["digest"])) as t:
        names |= {m.name for m in t.getmembers() if m.isfile()}
print(" ".join(sorted(n for n in names if n.startswith("root/"))))
EOF
}
# files_cli: what `kiln files` bakes (no memo), in the same form.
files_cli() {
  kiln files "$T/spec.json" --json
  assert_eq 0 "$RC" "kiln files: exit 0"$'\n'"$ERR"
  jget "' '.join(sorted(e['dest'][1:] for e in j['source'] if e['type'] == 'file'))" <<<"$OUT"
}
memo() { local f; for f in "$KILN_CACHE"/stat/*.git; do [[ -e "$f" ]] && echo "$f"; break; done; return 0; }
memo_stat() { stat -c '%i %Y.%y' "$(memo)"; }
# expect WHAT FILES: the build and `kiln files` both give FILES.
expect() {
  local got
  got=$(image_files)
  assert_eq "$2" "$got" "$1: the image's files"
  assert_eq "$2" "$(files_cli)" "$1: kiln files agrees"
}

# Files written in the last second are not trusted to show a later change: let them age.
sleep 1.2
expect "first build" "root/a.py root/b.txt root/c.txt root/keep.log"
assert_cmd "a memo is written beside the stat index" test -n "$(memo)"
assert_eq "true true" "$(jget "str(j['repo']).lower() + ' ' + str(j['index_used']).lower()" <"$(memo)")" \
  "the memo: a repository, whose index the walk read (keep.log matched *.log)"
before=$(memo_stat)
expect "a rebuild from the memo" "root/a.py root/b.txt root/c.txt root/keep.log"
assert_eq "$before" "$(memo_stat)" "the rebuild read the memo and left it as it was"

# A damaged memo (an empty watch list would hold for anything) is not trusted: answered again.
"$PYTHON" - "$(memo)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
j["watch"] = []
j["excludes_file"] = "/nonexistent"
j["prefix"] = "elsewhere/"
open(sys.argv[1], "w").write(json.dumps(j))
EOF
expect "a memo with an empty watch list" "root/a.py root/b.txt root/c.txt root/keep.log"
echo 'not json' >"$(memo)"
expect "a memo that is not JSON" "root/a.py root/b.txt root/c.txt root/keep.log"

# A global excludes file, set in ~/.gitconfig.
printf 'c.txt\n' >"$T/global-ignore"
printf '[core]\n\texcludesFile = %s\n' "$T/global-ignore" >"$HOME/.gitconfig"
expect "core.excludesFile added to ~/.gitconfig" "root/a.py root/b.txt root/keep.log"
sleep 1.2
expect "after it, remembered again" "root/a.py root/b.txt root/keep.log"
before=$(memo_stat)
expect "and from the memo" "root/a.py root/b.txt root/keep.log"
assert_eq "$before" "$(memo_stat)" "the memo holds with the new config"

# A repository between source_root and the work tree: it holds source_root now (nothing tracked,
# the outer .gitignore no longer applies; the global excludes file still does).
git -C "$R/proj" init -q .
expect "a repository created in proj/" "root/a.py root/b.txt root/ignored.log root/keep.log"
sleep 1.2
expect "the inner repository, remembered" "root/a.py root/b.txt root/ignored.log root/keep.log"
rm -rf "$R/proj/.git"
expect "the inner repository removed" "root/a.py root/b.txt root/keep.log"

# A GIT_* variable set: the memo does not hold for it (answered by libgit2, then remembered).
sleep 1.2
expect "the work tree as before, remembered" "root/a.py root/b.txt root/keep.log"
env_before=$(jget "j['env']" <"$(memo)")
GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_VALUE_0=s3cr3t-token expect "GIT_CONFIG_NOSYSTEM set" "root/a.py root/b.txt root/keep.log"
assert_ne "$env_before" "$(jget "j['env']" <"$(memo)")" "the memo follows the GIT_* variables"
assert_not_contains "$(cat "$(memo)")" "s3cr3t" "the memo keeps a hash of them, never a value (it may be a credential)"
expect "GIT_CONFIG_NOSYSTEM unset again" "root/a.py root/b.txt root/keep.log"

# An include in a config file: never remembered.
printf '[include]\n\tpath = %s/extra\n' "$HOME" >>"$HOME/.gitconfig"
sleep 1.2
expect "a config with an include" "root/a.py root/b.txt root/keep.log"
assert_eq "" "$(memo)" "no memo while a config file includes another"
printf '[core]\n\texcludesFile = %s\n' "$T/global-ignore" >"$HOME/.gitconfig"

# No repository at all, then one.
N=$T/norepo
mkdir -p "$N/app"
echo 'A = 1' >"$N/app/a.py"
echo b >"$N/app/b.txt"
echo c >"$N/app/c.txt"
echo "{\"name\": \"memo\", \"source_root\": \"$N/app\", \"source_copy_mode\": \"all\"}" >"$T/spec.json"
sleep 1.2
expect "outside any repository (the global excludes file does not apply)" "root/a.py root/b.txt root/c.txt"
# (Whether this is remembered depends on every directory up to / being a second old: $T's parent,
# /tmp, rarely is. The answer must be right either way.)
expect "outside any repository, from the memo" "root/a.py root/b.txt root/c.txt"
git -C "$N" init -q .
expect "the directory above became a repository" "root/a.py root/b.txt"
