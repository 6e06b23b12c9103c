#!/usr/bin/env bash
# Issue 11 §3: the files kiln bakes for source_copy_mode "all" are the files flytekit selects.
# Runs flytekit's own ls_files (from ../shared/flytekit-e96c720) and `kiln files` on random
# projects inside real git repositories, and requires 0 differences (tests/integration/fidelity/
# conformance.py says how trees and the docker-py/Docker question are handled).
# Skips (77) are decided before lib.sh, whose exit trap counts any non-zero exit as a failure.
SRC=${KILN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FLYTEKIT=${KILN_FLYTEKIT_DIR:-$SRC/../shared/flytekit-e96c720}
if [[ ! -d "$FLYTEKIT/flytekit" ]]; then
  echo "SKIP: flytekit's source is not at $FLYTEKIT (the fidelity test compares with its own ls_files)" >&2
  exit 77
fi
command -v git >/dev/null || { echo "SKIP: git is not installed" >&2; exit 77; }
/usr/bin/python3 -c 'import docker.utils.build' 2>/dev/null || {
  echo "SKIP: python3-docker is missing (flytekit's ignore module imports its matcher)" >&2
  exit 77
}
source "$(dirname "$0")/lib.sh"

SEEDS=${KILN_FIDELITY_SEEDS:-40}
if "$PYTHON" "$KILN_SOURCE_DIR/tests/integration/fidelity/conformance.py" "$KILN" "$FLYTEKIT" --seeds "$SEEDS" \
  >"$T/report" 2>&1; then
  pass
else
  fail "kiln's file set differs from flytekit's"
fi
cat "$T/report" >&2
assert_contains "$(tail -1 "$T/report")" ": 0 difference(s)" "0 differences from flytekit's ls_files"
