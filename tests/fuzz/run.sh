#!/usr/bin/env bash
# Runs each libFuzzer target for SECONDS (default 20) from the checked-in corpus (tests/fuzz/corpus/
# <target>, copied: the repository is never written). Exit 0 when every target ran clean, 1 with the
# crashing input kept under FUZZ_BUILD/findings/<target>/ otherwise, 77 when the targets are not built
# (no clang here: scripts/test.sh builds them only when clang++ and libFuzzer are installed).
#   tests/fuzz/run.sh FUZZ_BUILD [SECONDS]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run.sh FUZZ_BUILD [SECONDS]}
secs=${2:-20}
status=0
for t in spec ignore reference; do
  bin="$build/fuzz_$t"
  if [[ ! -x "$bin" ]]; then
    echo "SKIP: $bin is not built (install clang and libclang-rt-14-dev, then rerun scripts/test.sh)" >&2
    exit 77
  fi
  work="$build/corpus-work/$t" findings="$build/findings/$t"
  rm -rf "$work" && mkdir -p "$work" "$findings"
  cp "$here/corpus/$t"/* "$work"/ 2>/dev/null || true
  dict=()
  [[ -f "$here/$t.dict" ]] && dict=(-dict="$here/$t.dict")
  echo "fuzz_$t: ${secs}s from $(ls "$work" | wc -l) seed(s)" >&2
  if ! ASAN_OPTIONS=detect_leaks=1 "$bin" "$work" "${dict[@]}" -max_total_time="$secs" -max_len=8192 \
      -timeout=10 -rss_limit_mb=1024 -artifact_prefix="$findings/" -print_final_stats=1 >"$build/fuzz_$t.log" 2>&1; then
    echo "FAIL: fuzz_$t found a problem; input(s) in $findings/:" >&2
    ls "$findings" >&2
    tail -40 "$build/fuzz_$t.log" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|cov:" "$build/fuzz_$t.log" | tail -2 >&2
  fi
done
exit $status
