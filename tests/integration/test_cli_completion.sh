#!/usr/bin/env bash
# kiln completion bash|zsh|fish and kiln man: generated from the command tree, so every command
# and shown flag is there; the bash script completes for real in bash; the man page renders
# with groff without warnings.
source "$(dirname "$0")/lib.sh"

# ---- bash: source the script and ask it, as bash's completion does ------------------------------
kiln completion bash
assert_eq 0 "$RC" "completion bash: exit 0"
printf '%s\n' "$OUT" >"$T/kiln.bash"
bash -n "$T/kiln.bash" || fail "completion bash: not valid bash"
# complete WORDS...: the completions of the last word, one per line, sorted.
complete_words() {
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _kiln; printf "%s\n" "${COMPREPLY[@]}" | LC_ALL=C sort' \
    _ "$T/kiln.bash" "$@"
}
assert_eq "build" "$(complete_words kiln bu)" "bash: 'kiln bu' completes to build"
assert_contains "$(complete_words kiln build spec.json --ou)" "--output" "bash: 'kiln build … --ou' completes --output"
assert_eq "--plan --platform" "$(complete_words kiln build --pla | xargs)" "bash: --pla → --plan, --platform"
assert_eq "du" "$(complete_words kiln cache d)" "bash: 'kiln cache d' → du"
assert_contains "$(complete_words kiln cache du --)" "--json" "bash: cache du flags"
assert_not_contains "$(complete_words kiln cache du --)" "--jobs" "bash: a hidden flag is not offered"
assert_not_contains "$(complete_words kiln preflight --)" "--cache" "bash: preflight does not offer --cache"
# Every command of `kiln --help` is offered at the top level.
kiln --help
for cmd in $(sed -nE '/^Subcommands:/,$ s/^  ([a-z0-9-]+) .*/\1/p' <<<"$OUT"); do
  assert_contains "$(complete_words kiln "")" "$cmd" "bash: top level offers $cmd"
done

# ---- zsh and fish: the scripts are produced and name the flags ---------------------------------
kiln completion zsh
assert_eq 0 "$RC" "completion zsh: exit 0"
assert_contains "$(head -n1 <<<"$OUT")" "#compdef kiln" "zsh: #compdef kiln"
if command -v zsh >/dev/null; then
  printf '%s\n' "$OUT" >"$T/_kiln"
  zsh -n "$T/_kiln" || fail "completion zsh: not valid zsh"
fi
kiln completion fish
assert_eq 0 "$RC" "completion fish: exit 0"
assert_contains "$OUT" "complete -c kiln -n '__fish_seen_subcommand_from build' -l output -s o -r" "fish: build -o/--output takes a value"
assert_contains "$OUT" "-a build -d 'Build images" "fish: the build command with its description"
if command -v fish >/dev/null; then
  printf '%s\n' "$OUT" >"$T/kiln.fish"
  fish -n "$T/kiln.fish" || fail "completion fish: not valid fish"
fi
kiln completion tcsh
assert_eq 2 "$RC" "completion tcsh: exit 2"

# ---- the man page --------------------------------------------------------------------------------
kiln man
assert_eq 0 "$RC" "kiln man: exit 0"
assert_contains "$(head -n1 <<<"$OUT")" ".TH KILN 1" "man: a section-1 page"
assert_contains "$OUT" '\fB\-o, \-\-output\fR' "man: build's -o/--output"
assert_contains "$OUT" "KILN_DEFAULT_REPO" "man: the environment"
if command -v groff >/dev/null; then
  printf '%s\n' "$OUT" >"$T/kiln.1"
  groff -man -Tutf8 -ww -z "$T/kiln.1" 2>"$T/groff.err" || fail "groff failed on the man page"
  assert_eq "" "$(cat "$T/groff.err")" "man: groff -ww renders it without warnings"
  rendered=$(groff -man -Tutf8 "$T/kiln.1" 2>/dev/null | sed 's/.\x08//g')
  assert_contains "$rendered" "kiln build spec" "man: rendered text names kiln build"
  assert_contains "$rendered" "--insecure-allow-http" "man: rendered text shows the registry flags"
fi
# Files where a command takes a path, not where it takes a subcommand.
mkdir -p "$T/cwd/docs" && touch "$T/cwd/spec.json"
assert_eq "spec.json" "$(cd "$T/cwd" && complete_words kiln build sp)" "bash: kiln build completes a spec file"
assert_eq "du" "$(cd "$T/cwd" && complete_words kiln cache d)" "bash: kiln cache d: the subcommand, not the docs directory"
