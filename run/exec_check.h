// Can this machine run a platform's programs? RUN steps execute the base image's own binaries
// (its /bin/sh, apt, pip) inside the sandbox; kiln does not emulate. A platform's programs run
// natively (the host's architecture, or 32-bit x86 on x86_64 and 32-bit ARM on arm64, which
// their kernels usually run), or through an emulator the kernel's binfmt_misc hands them to
// (qemu-user-static). Asked before any step runs, so a foreign base fails with the way out rather
// than with "Exec format error" from inside the sandbox.
#pragma once

#include <filesystem>
#include <string>

namespace kiln::run {

/// This machine's architecture, as OCI names it (uname's x86_64 → "amd64", aarch64 → "arm64").
std::string host_architecture();

/// Empty when programs of `platform` (os/arch[/variant]) can run in the RUN sandbox on a machine
/// of `host_arch`; else why not, and what would make them (one sentence, for an error message).
/// An emulator counts when a binfmt_misc entry under `binfmt_dir` (normally
/// /proc/sys/fs/binfmt_misc) is enabled, matches the architecture's ELF header, and has the F
/// flag: the kernel then opens the interpreter when it is registered, so it works inside the
/// sandbox's root, where the host's /usr/bin/qemu-* is not.
std::string why_cannot_execute(const std::string& platform, const std::string& host_arch,
                               const std::filesystem::path& binfmt_dir);

}  // namespace kiln::run
