#!/bin/bash
# Progress on a terminal (issue 14), checked for real: kiln runs in a tmux pane of 80 (and 120)
# columns, and what it writes to the terminal is read back (the raw bytes through pipe-pane, the
# screen through capture-pane). No row is wider than the terminal, the percentages of the hashing
# and overall lines never go down, the per-layer summary is there; no escape code under
# --progress plain, NO_COLOR or TERM=dumb; and --json keeps stdout pure JSON.
source "$(dirname "$0")/lib.sh"
need_tools tmux

SOCK="$T/tmux.sock"
trap 'rc=$?; trap - ERR; set +e; tmux -S "$SOCK" kill-server >/dev/null 2>&1; (exit $rc); _on_exit' EXIT

# ~64 MiB of text that compresses like code, in ~1,000 files, and three 8 MiB files that get a
# layer each: about a second of hashing and gzip on two cores, so the rows are drawn several times.
mkdir -p "$T/p/src"
"$PYTHON" - "$T/p/src" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(14)
words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12)))) for _ in range(4000)]
def text(n):
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out)
block = text(1 << 20)
for d in range(20):
    os.makedirs(os.path.join(root, "pkg%02d" % d), exist_ok=True)
    for f in range(50):
        with open(os.path.join(root, "pkg%02d" % d, "mod%02d.py" % f), "w") as fh:
            fh.write("# %d/%d\n" % (d, f))
            fh.write(block[(d * 50 + f) * 997 % 4096:][: 56 * 1024])
for i in range(3):
    with open(os.path.join(root, "data%d.jsonl" % i), "w") as fh:
        for k in range(8):
            fh.write("# part %d.%d\n" % (i, k))
            fh.write(block)
EOF
cat >"$T/p/spec.json" <<'EOF'
{"name": "progress", "source_root": "src", "source_copy_mode": "all", "large_file_threshold": 4194304}
EOF

# in_tmux NAME COLS [VAR=VALUE...] -- ARGS...: runs `kiln ARGS` in a fresh tmux pane of COLS columns,
# stdout to $T/NAME/stdout; leaves the bytes written to the terminal in $T/NAME/raw, the screen
# (scrollback included, wrapped lines joined) in $T/NAME/screen and the exit code in $T/NAME/rc.
in_tmux() {
  local name=$1 cols=$2
  shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local d="$T/$name"
  mkdir -p "$d"
  {
    echo "while [ ! -e $(printf %q "$d/go") ]; do sleep 0.05; done"
    printf '%q ' env -u CI -u NO_COLOR -u COLUMNS TERM=tmux-256color "KILN_CACHE=$KILN_CACHE" \
      "KILN_STATE_DIR=$KILN_STATE_DIR" "${envs[@]}" "$KILN" "$@"
    echo ">$(printf %q "$d/stdout")"
    echo "echo \$? >$(printf %q "$d/rc")"
    echo "echo KILN-TTY-DONE"
  } >"$d/run.sh"
  tmux -S "$SOCK" -f /dev/null new-session -d -s "$name" -x "$cols" -y 40 "bash $(printf %q "$d/run.sh")"
  tmux -S "$SOCK" set-option -t "$name" remain-on-exit on >/dev/null
  tmux -S "$SOCK" pipe-pane -t "$name" -o "cat >$(printf %q "$d/raw")"
  touch "$d/go"
  local i
  for ((i = 0; i < 1800; i++)); do
    [[ -e $d/raw ]] && grep -q KILN-TTY-DONE "$d/raw" && break
    sleep 0.1
  done
  grep -q KILN-TTY-DONE "$d/raw" || die "$name: kiln did not finish in its tmux pane"
  tmux -S "$SOCK" capture-pane -p -J -S - -t "$name" >"$d/screen"
  tmux -S "$SOCK" kill-session -t "$name"
}

# rows FILE: the rows a terminal shows from these bytes, one per line: escape sequences removed,
# a row ends at \n or \r.
rows() {
  "$PYTHON" - "$1" <<'EOF'
import re, sys
data = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
data = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", data)
for row in re.split(r"[\r\n]", data):
    if row and row != "KILN-TTY-DONE":
        print(row)
EOF
}

widest() { awk '{ n = length($0); if (n > m) m = n } END { print m + 0 }'; }

# percentages FILE PREFIX: the percentages of the rows starting with PREFIX, in order.
percentages() { rows "$1" | grep -E "^$2" | grep -oE '[0-9]+%' | tr -d '%' || true; }

never_down() {
  awk 'NR > 1 && $1 + 0 < last + 0 { bad = 1 } { last = $1 } END { exit bad }'
}

# --- 80 columns, a cold build --------------------------------------------------------------------
in_tmux cold80 80 -- build "$T/p/spec.json" -o "oci:$T/out" -j 2
assert_eq 0 "$(cat "$T/cold80/rc")" "cold build under tmux succeeds"
assert_match "$(cat "$T/cold80/stdout")" '^progress@sha256:[0-9a-f]{64}$' "stdout: the reference only"
rows "$T/cold80/raw" >"$T/cold80/rows"
assert_cmd "the renderer moved the cursor (live rows on a terminal)" grep -q $'\033\\[[0-9]*A' "$T/cold80/raw"
W=$(widest <"$T/cold80/rows")
((W <= 80)) && pass || fail "80 columns: a row of $W columns: $(awk 'length($0) > 80' "$T/cold80/rows" | head -3)"
W=$(widest <"$T/cold80/screen")
((W <= 80)) && pass || fail "80 columns: the screen has a line of $W columns (wrapped): $(awk 'length($0) > 80' "$T/cold80/screen" | head -3)"
N=$(percentages "$T/cold80/raw" 'layers [0-9]+/[0-9]+' | wc -l)
H=$(percentages "$T/cold80/raw" 'hashing' | wc -l)
((N + H > 0)) && pass || fail "no hashing or overall row was drawn: $(head -20 "$T/cold80/rows")"
percentages "$T/cold80/raw" 'layers [0-9]+/[0-9]+' | never_down && pass ||
  fail "the overall percentage went down: $(percentages "$T/cold80/raw" 'layers [0-9]+/[0-9]+' | tr '\n' ' ')"
percentages "$T/cold80/raw" 'hashing' | never_down && pass ||
  fail "the hashing percentage went down: $(percentages "$T/cold80/raw" 'hashing' | tr '\n' ' ')"
# The overall total is announced once: every overall row has the same total.
assert_eq 1 "$(rows "$T/cold80/raw" | grep -E '^layers [0-9]+/[0-9]+' | grep -oE '/[0-9.]+ [KMG]?i?B' | sort -u | wc -l | tr -d ' ')" \
  "the overall total never changes"
SCREEN=$(cat "$T/cold80/screen")
assert_match "$SCREEN" 'walked 1,003 files \(' "the walk is reported with its file count"
assert_match "$SCREEN" 'hashed 1,003 files \([0-9.]+ MiB\) in [0-9.]+s, [0-9.]+ [KMG]iB/s' "hashing is reported with size and rate"
assert_match "$SCREEN" '[0-9]+ layer\(s\): [0-9]+ built, 0 cached, 0 from the base, in progress:[0-9a-f]+' "the summary's title"
assert_match "$SCREEN" 'LAYER +STATUS +COMPRESSED +UNCOMPRESSED +TIME +RATE' "the summary's header"
assert_match "$SCREEN" 'a0\.jsonl +built +[0-9.]+ MiB +[0-9.]+ MiB +[0-9.]+s +[0-9.]+ [KMG]iB/s' \
  "a summary row: label (elided to fit), built, sizes, time, rate"
assert_not_contains "$SCREEN" " bytes" "no raw byte counts"
# No live row is left on the screen.
assert_not_contains "$(tail -n 25 "$T/cold80/screen")" "ETA" "no live row left after the build"

# --- 120 columns, another store (so everything is hashed and written again): rows use the width ---
in_tmux wide120 120 "KILN_CACHE=$T/cache-wide" -- build "$T/p/spec.json" -j 2
assert_eq 0 "$(cat "$T/wide120/rc")" "build at 120 columns succeeds"
rows "$T/wide120/raw" >"$T/wide120/rows"
W=$(widest <"$T/wide120/rows")
((W <= 120)) && pass || fail "120 columns: a row of $W columns"
if grep -q '%' "$T/wide120/rows"; then
  W=$(grep '%' "$T/wide120/rows" | widest)
  ((W > 80)) && pass || fail "120 columns: live rows stay narrow ($W columns): the width is not the terminal's"
fi
# Finished layers collapse to one line each.
assert_match "$(cat "$T/wide120/screen")" \
  'layer source_root large file data1.jsonl: sha256:[0-9a-f]{12} \(8.0 MiB in [0-9.]+s, [0-9.]+ [KMG]iB/s\)' \
  "a finished layer's line: size, time, rate"
assert_match "$(cat "$T/wide120/screen")" 'source_root large file data0.jsonl +built +[0-9.]+ MiB' \
  "120 columns: the summary's labels whole"

# --- the same build again: every layer cached, and said so ----------------------------------------
in_tmux cached80 80 -- build "$T/p/spec.json" -j 2
assert_eq 0 "$(cat "$T/cached80/rc")" "rebuild succeeds"
assert_match "$(cat "$T/cached80/screen")" '[0-9]+ layer\(s\): 0 built, [0-9]+ cached, 0 from the base, in progress:' \
  "the rebuild's summary: all cached"

# --- no escape codes: NO_COLOR, TERM=dumb, --progress plain -----------------------------------------
in_tmux nocolor 80 NO_COLOR=1 "KILN_CACHE=$T/cache-nocolor" -- build "$T/p/spec.json" -j 2
assert_eq 0 "$(cat "$T/nocolor/rc")" "NO_COLOR build succeeds"
assert_cmd "NO_COLOR: no escape code" bash -c "! grep -q \$'\\033' '$T/nocolor/raw'"
assert_contains "$(cat "$T/nocolor/screen")" "LAYER" "NO_COLOR: the summary is printed"
in_tmux dumb 80 TERM=dumb "KILN_CACHE=$T/cache-dumb" -- build "$T/p/spec.json" -j 2
assert_cmd "TERM=dumb: no escape code" bash -c "! grep -q \$'\\033' '$T/dumb/raw'"
in_tmux plain 80 -- build "$T/p/spec.json" --progress plain
assert_cmd "--progress plain: no escape code" bash -c "! grep -q \$'\\033' '$T/plain/raw'"

# Plain lines (stderr not a terminal): phases, each layer, and the summary.
KILN_CACHE="$T/cache-plainfile" kiln build "$T/p/spec.json" -j 2 --progress plain
assert_eq 0 "$RC" "plain build succeeds"
assert_not_contains "$ERR" $'\033' "plain: no escape code"
assert_match "$ERR" 'hashing 1,003 files \([0-9.]+ MiB\) \.\.\.' "plain: hashing starts"
assert_match "$ERR" 'layer source_root large file data0.jsonl \(8.0 MiB\) \.\.\.' "plain: a layer starts, in MiB"
assert_match "$ERR" 'layer source_root large file data0.jsonl: sha256:[0-9a-f]{12} \(8.0 MiB in [0-9.]+s, [0-9.]+ [KMG]iB/s\)' \
  "plain: a layer ends with its time and rate"
assert_match "$ERR" '[0-9]+ layer\(s\): [0-9]+ built, 0 cached, 0 from the base, in progress:[0-9a-f]{32}' "plain: the summary"
assert_match "$ERR" 'source_root large file data0.jsonl +built +[0-9.]+ MiB +[0-9.]+ MiB +[0-9.]+s +[0-9.]+ [KMG]iB/s' \
  "plain: a summary row, its label whole"
assert_match "$ERR" $'\n  total +[0-9.]+ MiB +[0-9.]+ MiB' "plain: the summary's total"

# --- --json: stdout stays pure JSON, on a terminal or not -------------------------------------------
in_tmux json80 80 -- build "$T/p/spec.json" --json -j 2
assert_eq 0 "$(cat "$T/json80/rc")" "--json build under tmux succeeds"
assert_cmd "--json under tmux: stdout is one JSON document" "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' "$T/json80/stdout"
assert_contains "$(cat "$T/json80/screen")" "LAYER" "--json: the summary still goes to the terminal (stderr)"
kiln build "$T/p/spec.json" --json
assert_eq 0 "$RC" "--json build succeeds"
assert_eq '"progress"' "$("$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["image"].split(":")[0]))' <<<"$OUT")" \
  "--json: stdout parses whole"
