// run/exec_check: which platforms' programs this machine can run in the RUN sandbox, read from a
// binfmt_misc directory laid out as the kernel shows it (entries as Debian's qemu-user-static
// registers them).
#include "run/exec_check.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <string>

namespace fs = std::filesystem;
using kiln::run::why_cannot_execute;

namespace {

struct BinfmtDir {
  fs::path dir = fs::temp_directory_path() / ("kiln-binfmt-" + std::to_string(::getpid()) + "-" + std::to_string(++n));
  static inline int n = 0;
  BinfmtDir() { fs::create_directories(dir); }
  ~BinfmtDir() { fs::remove_all(dir); }
  void put(const std::string& name, const std::string& text) const { std::ofstream(dir / name) << text; }
  /// An entry as /proc/sys/fs/binfmt_misc shows one.
  void handler(const std::string& name, bool enabled, const std::string& flags, const std::string& magic) const {
    put(name, std::string(enabled ? "enabled" : "disabled") + "\ninterpreter /usr/libexec/qemu-binfmt/" + name +
                  "-binfmt-P\nflags: " + flags + "\noffset 0\nmagic " + magic + "\nmask ffffffffffffff00fffffffffffffffffeffffff\n");
  }
};

// ELF headers' first 20 bytes: class, byte order, e_type, e_machine (0xb7 AArch64, LE; 0x0016 s390, BE).
const std::string kAarch64 = "7f454c460201010000000000000000000200b700";
const std::string kS390x = "7f454c4602020100000000000000000000020016";
const std::string kRiscv64 = "7f454c460201010000000000000000000200f300";

}  // namespace

TEST_CASE("exec check: the host's own architecture, and 32-bit x86 on x86_64, run natively", "[run]") {
  const BinfmtDir none;  // no status file: binfmt_misc not mounted
  CHECK(why_cannot_execute("linux/amd64", "amd64", none.dir).empty());
  CHECK(why_cannot_execute("linux/amd64/v3", "amd64", none.dir).empty());
  CHECK(why_cannot_execute("linux/386", "amd64", none.dir).empty());
  CHECK(why_cannot_execute("linux/arm64/v8", "arm64", none.dir).empty());
  CHECK(why_cannot_execute("linux/arm/v7", "arm64", none.dir).empty());
  const std::string arm = why_cannot_execute("linux/arm64", "amd64", none.dir);
  CHECK(arm ==
        "RUN steps run the base image's own linux/arm64 programs, and this linux/amd64 machine cannot execute them "
        "(binfmt_misc is not mounted): register an emulator for them with binfmt_misc (Debian: apt-get install "
        "qemu-user-static), build on a linux/arm64 machine, or build this platform without RUN steps");
  CHECK(why_cannot_execute("windows/amd64", "amd64", none.dir) ==
        "RUN steps run Linux programs, and windows/amd64 is not a Linux platform");
}

TEST_CASE("exec check: an emulator registered with binfmt_misc counts only enabled, for its architecture, with F", "[run]") {
  const BinfmtDir d;
  d.put("status", "enabled\n");
  d.put("register", "");
  d.handler("qemu-aarch64", true, "POCF", kAarch64);
  d.handler("qemu-s390x", true, "POC", kS390x);
  d.handler("qemu-riscv64", false, "POCF", kRiscv64);
  CHECK(why_cannot_execute("linux/arm64", "amd64", d.dir).empty());
  CHECK(why_cannot_execute("linux/arm64/v8", "amd64", d.dir).empty());
  // Registered without F: the interpreter's path is looked up inside the sandbox's root, where it is not.
  const std::string s390 = why_cannot_execute("linux/s390x", "amd64", d.dir);
  CHECK_THAT(s390, Catch::Contains("binfmt_misc's qemu-s390x (/usr/libexec/qemu-binfmt/qemu-s390x-binfmt-P) handles "
                                   "them, but without the F flag"));
  // A disabled entry, and an architecture nothing handles.
  CHECK_THAT(why_cannot_execute("linux/riscv64", "amd64", d.dir), Catch::Contains("register an emulator"));
  CHECK_THAT(why_cannot_execute("linux/ppc64le", "amd64", d.dir), Catch::Contains("register an emulator"));
  // The aarch64 emulator does not run 32-bit ARM programs.
  CHECK_FALSE(why_cannot_execute("linux/arm/v7", "amd64", d.dir).empty());

  // binfmt_misc switched off as a whole: no entry counts.
  d.put("status", "disabled\n");
  CHECK_THAT(why_cannot_execute("linux/arm64", "amd64", d.dir), Catch::Contains("(binfmt_misc is disabled)"));
}
