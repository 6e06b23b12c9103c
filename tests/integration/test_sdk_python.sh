#!/usr/bin/env bash
# flytekitplugins-kiln (sdk/python): runs the plugin's Python tests (sdk/python/tests, unittest)
# with /usr/bin/python3 against the real kiln binary ($KILN) and flytekit's real ImageSpec,
# ImageSpecBuilder and ImageBuildEngine: the installed flytekit, else its source in
# $KILN_SOURCE_DIR/../shared/flytekit-e96c720 (or $KILN_FLYTEKIT_SRC, or $KILN_FLYTEKIT_DIR as the other fidelity tests) with the few stubs importing
# it needs without flyteidl. The end-to-end tests build real images through ImageBuildEngine into an
# OCI layout and, when Debian's docker-registry is installed, push to a loopback registry. Then pip
# (offline) installs the package into a directory, and flytekit's entry point group
# flytekit.plugins must load it and register the builder.
#
# Skipped (exit 77), saying why, when flytekit is neither installed nor present.
set -euo pipefail
: "${KILN:?set KILN to the kiln binary (ctest does)}"
KILN_SOURCE_DIR=${KILN_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PY=/usr/bin/python3
FLYTEKIT_SRC=${KILN_FLYTEKIT_SRC:-${KILN_FLYTEKIT_DIR:-$KILN_SOURCE_DIR/../shared/flytekit-e96c720}}
if [[ ! -x $PY ]]; then
  echo "test_sdk_python: SKIP: /usr/bin/python3 is missing" >&2
  exit 77
fi
if ! "$PY" -c 'import flytekit.image_spec' >/dev/null 2>&1 && [[ ! -f $FLYTEKIT_SRC/flytekit/image_spec/image_spec.py ]]; then
  echo "test_sdk_python: SKIP: flytekit is not installed and its source is not at $FLYTEKIT_SRC" \
    "(set KILN_FLYTEKIT_SRC to a flytekit checkout)" >&2
  exit 77
fi
export KILN_FLYTEKIT_SRC=$FLYTEKIT_SRC

source "$(dirname "$0")/lib.sh"

# A loopback registry for the push test, when the registry tools are here.
if command -v docker-registry skopeo openssl htpasswd >/dev/null 2>&1; then
  source "$(dirname "$0")/registry/registry_lib.sh"
  start_registry plain
  export KILN_TEST_REGISTRY=$REG_ADDR
else
  echo "test_sdk_python: no docker-registry: the registry push test is skipped" >&2
fi

RC=0
(cd "$KILN_SOURCE_DIR/sdk/python" && KILN="$KILN" timeout 300 "$PY" tests/run_tests.py) >"$T/unittest.log" 2>&1 || RC=$?
cat "$T/unittest.log"
assert_eq 0 "$RC" "the plugin's Python tests pass (tests/run_tests.py exit code)"
assert_match "$(grep -E '^Ran [0-9]+ tests' "$T/unittest.log" || true)" "^Ran [0-9]+ tests" "unittest ran the tests"
# run_tests.py lists every skipped test as "skipped: ID: REASON".
if [[ -n ${KILN_TEST_REGISTRY:-} ]]; then
  assert_not_contains "$(cat "$T/unittest.log")" "skipped: test_builder.RegistryTest" "the registry push test ran"
fi

# The package installs, and flytekit's plugin discovery finds it: pip (offline, no build isolation,
# Debian's setuptools) installs a copy of sdk/python into a directory, and the entry point group
# flytekit.plugins, as flytekit's load_implicit_plugins() reads it, loads flytekitplugins.kiln,
# which registers the builder with flytekit's ImageBuildEngine.
if "$PY" -m pip --version >/dev/null 2>&1 && "$PY" -c 'import setuptools' >/dev/null 2>&1; then
  cp -r "$KILN_SOURCE_DIR/sdk/python" "$T/pkg-src"
  rm -rf "$T/pkg-src/tests"
  RC=0
  "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation --target "$T/site" "$T/pkg-src" \
    >"$T/pip.log" 2>&1 || RC=$?
  assert_eq 0 "$RC" "pip installs sdk/python: $(tail -3 "$T/pip.log")"
  RC=0
  OUT=$(cd "$KILN_SOURCE_DIR/sdk/python/tests" && KILN_SITE="$T/site" "$PY" - 2>&1 <<'EOF'
import os, sys
import flytekit_env  # from the working directory, sdk/python/tests
flytekit_env.SDK_DIR = os.environ["KILN_SITE"]  # setup() puts the installed copy on sys.path, not sdk/python
assert flytekit_env.setup() is not None
from importlib.metadata import entry_points
from flytekit.image_spec import ImageBuildEngine
eps = [e for e in entry_points(group="flytekit.plugins") if e.name == "kiln"]
assert len(eps) == 1, eps
module = eps[0].load()
assert module.__file__.startswith(os.environ["KILN_SITE"]), module.__file__
builder, priority = ImageBuildEngine.get_registry()["kiln"]
print("registered", type(builder).__name__, priority)
EOF
) || RC=$?
  assert_eq 0 "$RC" "the installed plugin loads through the flytekit.plugins entry point: $OUT"
  assert_contains "$OUT" "registered KilnImageSpecBuilder 2" "the entry point registers the kiln builder"
else
  echo "test_sdk_python: no pip or setuptools for /usr/bin/python3: the install check is skipped" >&2
fi
