#!/usr/bin/env bash
# The README's second command: install the build and test dependencies (Debian packages), build
# kiln with its tests, and run the whole suite (unit tests, then tests that drive the real binary
# against umoci, skopeo, oci-image-tool, docker-registry and bwrap).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_BUILD_TESTS=ON >/dev/null
cmake --build build -j"$(nproc)"
# The fuzz targets (tests/fuzz) need clang's libFuzzer; without it their test skips.
if command -v clang++ >/dev/null && compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a" >/dev/null; then
  cmake -S tests/fuzz -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ >/dev/null
  cmake --build build/fuzz -j"$(nproc)"
fi
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
