#!/usr/bin/env bash
# The README's first command: install the build dependencies (Debian packages), build kiln, and
# build the bundled example project into a local OCI layout, printing its digest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target kiln

export KILN_CACHE="${KILN_CACHE:-$PWD/.cache/kiln}"
echo "== kiln build examples/flyte-project/imagespec.json -o oci:examples/out" >&2
ref=$(build/kiln build examples/flyte-project/imagespec.json -o oci:examples/out)
echo "== image: $ref" >&2
echo "== tag:   $(build/kiln tag examples/flyte-project/imagespec.json)" >&2
echo "$ref"
