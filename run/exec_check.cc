// Can this machine run a platform's programs (run/exec_check.h)?
#include "run/exec_check.h"

#include <sys/utsname.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

namespace kiln::run {
namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return in ? s.str() : std::string();
}

/// The OCI architecture an ELF header names: its class (1: 32-bit, 2: 64-bit), byte order (1:
/// little, 2: big) and e_machine; "" for one kiln does not name.
std::string elf_architecture(unsigned elf_class, unsigned data, unsigned machine) {
  switch (machine) {
    case 62: return elf_class == 2 ? "amd64" : "";  // EM_X86_64
    case 3: return "386";                            // EM_386
    case 183: return "arm64";                        // EM_AARCH64
    case 40: return "arm";                           // EM_ARM
    case 21: return data == 1 ? "ppc64le" : "ppc64"; // EM_PPC64
    case 22: return elf_class == 2 ? "s390x" : "";   // EM_S390
    case 243: return elf_class == 2 ? "riscv64" : ""; // EM_RISCV
    case 8: return data == 1 ? (elf_class == 2 ? "mips64le" : "mipsle") : (elf_class == 2 ? "mips64" : "mips");
    case 258: return "loong64";                      // EM_LOONGARCH
    default: return "";
  }
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// The bytes of a binfmt_misc "magic"/"mask" line's hex.
std::vector<std::uint8_t> hex_bytes(std::string_view hex) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    int a = hex_digit(hex[i]), b = hex_digit(hex[i + 1]);
    if (a < 0 || b < 0) break;
    out.push_back(static_cast<std::uint8_t>(a << 4 | b));
  }
  return out;
}

struct Handler {
  std::string name, arch, interpreter;
  bool enabled = false, fix_binary = false;
};

/// A binfmt_misc entry that recognizes ELF files of one architecture (magic at offset 0).
Handler read_handler(const fs::path& file) {
  Handler h;
  h.name = file.filename().string();
  std::istringstream in(read_text(file));
  std::string line, magic;
  unsigned offset = 0;
  while (std::getline(in, line)) {
    if (line == "enabled") h.enabled = true;
    else if (line.rfind("interpreter ", 0) == 0) h.interpreter = line.substr(12);
    else if (line.rfind("flags: ", 0) == 0) h.fix_binary = line.find('F', 7) != std::string::npos;
    else if (line.rfind("offset ", 0) == 0) offset = static_cast<unsigned>(std::strtoul(line.c_str() + 7, nullptr, 10));
    else if (line.rfind("magic ", 0) == 0) magic = line.substr(6);
  }
  std::vector<std::uint8_t> m = hex_bytes(magic);
  if (offset == 0 && m.size() >= 20 && m[0] == 0x7f && m[1] == 'E' && m[2] == 'L' && m[3] == 'F') {
    const unsigned machine = m[5] == 2 ? (unsigned(m[18]) << 8 | m[19]) : (unsigned(m[19]) << 8 | m[18]);
    h.arch = elf_architecture(m[4], m[5], machine);
  }
  return h;
}

}  // namespace

std::string host_architecture() {
  struct utsname u{};
  if (::uname(&u) != 0) return "";
  const std::string m = u.machine;
  if (m == "x86_64") return "amd64";
  if (m == "aarch64" || m == "arm64") return "arm64";
  if (m == "i386" || m == "i486" || m == "i586" || m == "i686") return "386";
  if (m.rfind("armv", 0) == 0) return "arm";
  return m;  // ppc64le, s390x, riscv64, … are OCI's names too
}

std::string why_cannot_execute(const std::string& platform, const std::string& host_arch, const fs::path& binfmt_dir) {
  const std::size_t a = platform.find('/');
  const std::string os = platform.substr(0, a);
  const std::size_t b = a == std::string::npos ? a : platform.find('/', a + 1);
  const std::string arch = a == std::string::npos ? "" : platform.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  const std::string here = "this " + (host_arch.empty() ? std::string("machine") : "linux/" + host_arch + " machine");
  if (os != "linux") return "RUN steps run Linux programs, and " + platform + " is not a Linux platform";
  if (arch == host_arch || (host_arch == "amd64" && arch == "386") || (host_arch == "arm64" && arch == "arm")) return "";
  std::error_code ec;
  const bool mounted = fs::exists(binfmt_dir / "status", ec);
  bool enabled = mounted && read_text(binfmt_dir / "status").rfind("enabled", 0) == 0;
  std::string without_f;
  if (enabled)
    for (const auto& e : fs::directory_iterator(binfmt_dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n == "status" || n == "register") continue;
      Handler h = read_handler(e.path());
      if (!h.enabled || h.arch != arch) continue;
      if (h.fix_binary) return "";
      without_f = h.name + " (" + h.interpreter + ")";
    }
  std::string why = "RUN steps run the base image's own " + platform + " programs, and " + here + " cannot execute them";
  if (!without_f.empty())
    return why + ": binfmt_misc's " + without_f + " handles them, but without the F flag, so its interpreter is not "
                 "found inside the sandbox; register it with F (Debian's qemu-user-static does), build on a " +
           platform + " machine, or build this platform without RUN steps";
  return why + (!mounted ? " (binfmt_misc is not mounted)" : !enabled ? " (binfmt_misc is disabled)" : "") +
         ": register an emulator for them with binfmt_misc (Debian: apt-get install qemu-user-static), build on a " +
         platform + " machine, or build this platform without RUN steps";
}

}  // namespace kiln::run
