// libFuzzer target: the spec parser. Any input must parse or be refused with a SpecError; any other
// exception, a crash, a stack overflow or a sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "spec/image_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    kiln::spec::ImageSpec s = kiln::spec::parse_spec(text, "/nonexistent-kiln-fuzz", "fuzz.json");
    (void)s.canonical().dump();  // the canonical form of whatever was accepted must serialize
  } catch (const kiln::spec::SpecError&) {
  }
  return 0;
}
