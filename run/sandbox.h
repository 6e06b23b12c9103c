// Running one command in an isolated root file system with bubblewrap (bwrap): the sandbox that
// RUN steps execute in. Root inside, a fresh /proc, /dev and /tmp, the given environment only,
// the network shared unless turned off, the host's resolv.conf for name lookups.
//
// Confinement: always a user namespace (also when kiln runs as root: the step's root is then a
// high, unused host id range where the store's file system takes idmapped mounts, else the host
// ids but with no capability outside the namespace), Docker's default capability set minus
// CAP_MKNOD and CAP_NET_RAW, no_new_privs, and the seccomp filter of run/seccomp.h.
//
// Two ways to provide the root:
//   rootfs            a directory bound read-write at / (the snapshot-diff capture)
//   overlay           lowers (top first) + upper + work: kiln mounts overlayfs in a private mount
//                     namespace of a child process, so the mount disappears with it (even on
//                     SIGKILL), and binds the merged view at /. Needs root.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::run {

/// A host file or directory bound into the sandbox (not part of what the step changes).
struct Mount {
  std::filesystem::path source;  // on the host
  std::string target;            // absolute path inside the sandbox
  bool read_only = true;
};

struct SandboxSpec {
  std::filesystem::path rootfs;                  // bound read-write at / (when lowers is empty)
  std::vector<std::filesystem::path> lowers;     // overlay: lower dirs, topmost first
  std::filesystem::path upper, work;             // overlay: upper and work dirs (same file system)
  std::vector<std::string> argv;                 // e.g. {"/bin/sh", "-c", "…"}
  std::vector<std::pair<std::string, std::string>> env;  // the environment (on bwrap's command line)
  /// More environment, for credentials (index URLs with a token): handed to bwrap in its own
  /// environment, which only its owner can read, never on its command line, which any user on the
  /// host can (/proc/PID/cmdline, `ps`). A name in both wins over `env`'s.
  std::vector<std::pair<std::string, std::string>> secret_env;
  std::string workdir = "/";                     // must exist in the root
  bool network = true;
  std::vector<Mount> mounts;
  std::string hostname = "kiln";
};

struct SandboxResult {
  int exit_code = 0;     // the command's status; 128+N when killed by signal N
  std::vector<std::string> tail;  // the last lines of output (at most tail_lines)
  bool stopped = false;           // killed because io.stop asked for it
  bool timed_out = false;         // killed because it ran longer than io.timeout
};

struct SandboxIo {
  /// Each line of output (stdout and stderr merged, in order, without the newline). Partial last
  /// lines are delivered at the end. Called on the calling thread.
  std::function<void(std::string_view)> on_line;
  /// Raw output is appended here too (created if needed) when not empty.
  std::filesystem::path log_file;
  std::size_t tail_lines = 20;
  /// Polled about five times a second while the command runs: true kills the sandbox, and
  /// run_sandboxed returns with `stopped` set.
  std::function<bool()> stop;
  /// Seconds the command may run (0: no limit). Past it the whole sandbox is killed and
  /// run_sandboxed returns with `timed_out` set.
  double timeout = 0;
};

/// The bwrap program: $KILN_BWRAP, else `bwrap` on PATH. Empty when there is none.
std::filesystem::path find_bwrap();

/// Runs the command and waits for it. Throws std::runtime_error when the sandbox itself cannot
/// start (no bwrap, overlay mount refused, a bad mount source): the message says what to install
/// or change. A command that fails is not an exception: see exit_code.
SandboxResult run_sandboxed(const SandboxSpec& spec, const SandboxIo& io);

/// Can this process mount overlayfs with upper and work dirs under `scratch_dir` (a directory on
/// the file system the store lives on)? Probed once per directory, in a throwaway child.
bool overlay_supported(const std::filesystem::path& scratch_dir);

}  // namespace kiln::run
