// libFuzzer target: the ignore rules. The input is split at the first two NUL bytes into a
// .gitignore, a .dockerignore and a path list (one per line). The .dockerignore text is read both
// as Docker reads it and as docker-py does (.flyteignore, the fast-register bundle). A bad pattern
// may be refused with an exception derived from std::runtime_error; matching must never throw or
// crash.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "layers/ignore.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto take = [&in]() {
    std::size_t nul = in.find('\0');
    std::string_view part = in.substr(0, nul);
    in = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);
    return part;
  };
  std::string_view gitignore = take(), dockerignore = take(), paths = in;

  kiln::layers::IgnoreRules rules;
  rules.add_builtin();
  rules.add_gitignore("", gitignore);
  rules.add_gitignore("sub/dir", gitignore);
  bool docker_ok = true;
  try {
    rules.add_dockerignore(dockerignore);
  } catch (const std::runtime_error&) {
    docker_ok = false;  // refused with a message: fine
  }
  kiln::layers::IgnoreRules dockerpy;
  bool dockerpy_ok = true;
  try {
    dockerpy.add_dockerpy_ignore(dockerignore, ".flyteignore");
  } catch (const std::runtime_error&) {
    dockerpy_ok = false;
  }
  if (!docker_ok && !dockerpy_ok) return 0;
  while (!paths.empty()) {
    std::size_t nl = paths.find('\n');
    std::string_view p = paths.substr(0, nl);
    paths = nl == std::string_view::npos ? std::string_view() : paths.substr(nl + 1);
    if (docker_ok) {
      (void)rules.ignored(p, false);
      (void)rules.ignored(p, true);
      (void)rules.can_prune(p);
    }
    if (dockerpy_ok) {
      (void)dockerpy.ignored(p, false);
      (void)dockerpy.can_prune(p);
    }
    (void)kiln::layers::glob_match(gitignore.substr(0, gitignore.find('\n')), p);
  }
  return 0;
}
