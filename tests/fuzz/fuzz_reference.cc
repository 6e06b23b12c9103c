// libFuzzer target: image reference parsing. Any input parses or is refused with a ReferenceError,
// and what parses round-trips through str().
#include <cstddef>
#include <cstdint>
#include <string>

#include "registry/reference.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    kiln::registry::Reference r = kiln::registry::parse_reference(text);
    // What parses prints back as a reference that parses to the same thing.
    kiln::registry::Reference again = kiln::registry::parse_reference(r.str());
    if (again.registry != r.registry || again.repository != r.repository || again.tag != r.tag ||
        again.digest != r.digest)
      __builtin_trap();
    (void)r.api_host();
    (void)r.is_loopback();
  } catch (const kiln::registry::ReferenceError&) {
  }
  return 0;
}
