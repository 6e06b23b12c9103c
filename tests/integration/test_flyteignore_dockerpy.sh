#!/usr/bin/env bash
# The fast-register bundle's .flyteignore is matched as pyflyte matches it (docker-py's
# PatternMatcher through flytekit's FlyteIgnore), not as Docker matches .dockerignore. Runs
# flytekit's own ls_files with its default fast-register ignores (from ../shared/flytekit-e96c720)
# and `kiln files --flyteignore` on random trees with random .flyteignore files (seeded), and
# requires 0 differences (tests/integration/fidelity/flyteignore_dockerpy.py).
# Skips (77) are decided before lib.sh, whose exit trap counts any non-zero exit as a failure.
SRC=${KILN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
FLYTEKIT=${KILN_FLYTEKIT_DIR:-$SRC/../shared/flytekit-e96c720}
if [[ ! -d "$FLYTEKIT/flytekit" ]]; then
  echo "SKIP: flytekit's source is not at $FLYTEKIT (the test compares with its own FlyteIgnore)" >&2
  exit 77
fi
/usr/bin/python3 -c 'import docker.utils.build' 2>/dev/null || {
  echo "SKIP: python3-docker is missing (flytekit's FlyteIgnore uses its PatternMatcher)" >&2
  exit 77
}
source "$(dirname "$0")/lib.sh"

SEEDS=${KILN_FLYTEIGNORE_SEEDS:-1000}
if /usr/bin/python3 "$KILN_SOURCE_DIR/tests/integration/fidelity/flyteignore_dockerpy.py" "$KILN" "$FLYTEKIT" \
  --seeds "$SEEDS" >"$T/report" 2>&1; then
  pass
else
  fail "kiln's .flyteignore selection differs from pyflyte's"
fi
cat "$T/report" >&2
assert_contains "$(tail -1 "$T/report")" ": 0 difference(s)" "0 differences from flytekit's FlyteIgnore"
