// The system call filter RUN steps run under (passed to bwrap with --seccomp): everything is
// allowed except what lets a process reach past its container — mounting and mount-API calls,
// module loading, kexec, reboot, new user namespaces and setns, the kernel keyring, bpf,
// perf_event_open, userfaultfd, io_uring, open_by_handle_at, swap, the clock, ioperm/iopl, and
// mknod of block or character devices (the 0/0 overlay whiteout excepted). Denied calls fail
// with EPERM (clone3 with ENOSYS, so libc falls back to clone, whose flags the filter can see);
// nothing is killed, so a tool that probes for a feature just sees it missing.
#pragma once

#include <string>

namespace kiln::run {

/// The filter as a classic BPF program (an array of struct sock_filter), for the native
/// architecture and its 32-bit compat ABIs. Built once; throws std::runtime_error if libseccomp
/// fails.
const std::string& step_seccomp_program();

/// Names of the system calls the filter denies outright (for docs and tests).
const char* const* step_seccomp_denied();

}  // namespace kiln::run
