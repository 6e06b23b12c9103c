#!/usr/bin/env bash
# Installs what kiln needs from Debian 12 packages (apt-get), never from anywhere else.
#   scripts/install-deps.sh          build dependencies (compiler, CMake, libraries) and bubblewrap
#   scripts/install-deps.sh --test   plus the test tools (Catch2, umoci, skopeo, oci-image-tool,
#                                    docker-registry, bubblewrap, busybox-static) and bench peers
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config
  libarchive-dev libssl-dev libzstd-dev zlib1g-dev nlohmann-json3-dev libxxhash-dev libcli11-dev
  libcurl4-openssl-dev libsqlite3-dev catch2
  libdeflate-dev  # gzip layers: portable match finders, the same bytes on every CPU (docs/store.md)
  libgit2-dev     # repository context for source_copy_mode all (.gitignore chain, info/exclude, tracked files)
  libseccomp-dev  # the RUN-step sandbox's syscall filter
  bubblewrap  # the sandbox RUN steps (apt_packages, packages, commands) run in
)
test_pkgs=(
  umoci skopeo oci-image-tool docker-registry apache2-utils bubblewrap busybox-static
  python3 python3-pip-whl python3-jsonschema zstd pigz buildah
  strace  # tests/integration/test_cache.sh: a no-change rebuild opens no source file
  time    # bench/run.sh: GNU /usr/bin/time for peak RSS
  python3-yaml  # tests/integration/test_modelcar.sh: parses kiln k8s-patch's YAML
  openssl # tests/integration/registry: self-signed TLS certificates and token signing
  debootstrap  # tests/integration/test_run_apt.sh: a real Debian base for apt_packages
  git          # fidelity tests: real git beside kiln's libgit2 use
  tmux         # tests/integration/test_progress.sh: the progress rows on a real terminal
  python3-docker python3-click python3-requests python3-packaging  # flytekit's own code in fidelity tests
  clang libclang-rt-14-dev  # tests/fuzz: libFuzzer targets (built when clang is present)
)

pkgs=("${build_pkgs[@]}")
if [[ "${1:-}" == "--test" ]]; then pkgs+=("${test_pkgs[@]}"); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present" >&2
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
