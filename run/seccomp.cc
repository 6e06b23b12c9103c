// The RUN-step seccomp filter (see seccomp.h), built with libseccomp and exported as BPF.
#include "run/seccomp.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <seccomp.h>

#include <cerrno>
#include <mutex>
#include <stdexcept>

namespace kiln::run {

namespace {

// Denied with EPERM whatever the arguments.
const char* const kDenied[] = {
    // mounts and the new mount API: a step's file system is set up before it starts
    "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
    // the kernel itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "syslog", "acct", "iopl", "ioperm", "lookup_dcookie", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_settime64", "adjtimex", "clock_adjtime", "clock_adjtime64",
    "nfsservctl", "vhangup", "uselib", "_sysctl",
    // namespaces: joining one, or making a user namespace (checked on unshare/clone below)
    "setns",
    // interfaces with a long record of kernel bugs that no build needs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "open_by_handle_at", "kcmp", "process_vm_readv",
    "process_vm_writev", "fanotify_init", "name_to_handle_at",
    nullptr,
};

struct Ctx {
  scmp_filter_ctx ctx = nullptr;
  ~Ctx() {
    if (ctx) seccomp_release(ctx);
  }
};

void check(int rc, const char* what) {
  if (rc < 0) throw std::runtime_error(std::string("cannot build the RUN-step seccomp filter: ") + what);
}

/// Adds a rule for `name` if the architecture knows the call (a name unknown to libseccomp or
/// to every architecture of the filter is skipped).
void rule(scmp_filter_ctx ctx, std::uint32_t action, const char* name, unsigned n = 0,
          const scmp_arg_cmp* args = nullptr) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) return;
  int rc = seccomp_rule_add_array(ctx, action, nr, n, args);
  if (rc == -EDOM || rc == -EOPNOTSUPP) return;  // not on this architecture
  check(rc, name);
}

std::string build() {
  Ctx c;
  c.ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!c.ctx) throw std::runtime_error("cannot build the RUN-step seccomp filter: seccomp_init failed");
  // 32-bit binaries in an image would otherwise reach the compat syscall table unfiltered.
#if defined(__x86_64__)
  for (std::uint32_t a : {SCMP_ARCH_X86, SCMP_ARCH_X32}) {
    int rc = seccomp_arch_add(c.ctx, a);
    if (rc != 0 && rc != -EEXIST) check(rc, "adding a compat architecture");
  }
#elif defined(__aarch64__)
  {
    int rc = seccomp_arch_add(c.ctx, SCMP_ARCH_ARM);
    if (rc != 0 && rc != -EEXIST) check(rc, "adding a compat architecture");
  }
#endif
  // Filtering by syscall name also covers the multiplexed socketcall/ipc on x86: not needed here.
  check(seccomp_attr_set(c.ctx, SCMP_FLTATR_CTL_NNP, 0), "no_new_privs attribute");  // bwrap sets it
  const std::uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
  for (const char* const* n = kDenied; *n; ++n) rule(c.ctx, eperm, *n);

  // New user namespaces: unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER). clone3 passes its
  // flags in memory the filter cannot read: ENOSYS makes libc fall back to clone.
  const scmp_arg_cmp newuser0[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)};
  rule(c.ctx, eperm, "unshare", 1, newuser0);
#if defined(__s390x__) || defined(__s390__)
  const scmp_arg_cmp newuser_clone[] = {SCMP_A1(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)};
#else
  const scmp_arg_cmp newuser_clone[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)};
#endif
  rule(c.ctx, eperm, "clone", 1, newuser_clone);
  rule(c.ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3");

  // Device nodes: no block device, and no character device but the 0/0 whiteout.
  const scmp_arg_cmp blk1[] = {SCMP_A1(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFBLK)};
  const scmp_arg_cmp chr1[] = {SCMP_A1(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFCHR), SCMP_A2(SCMP_CMP_NE, 0)};
  rule(c.ctx, eperm, "mknod", 1, blk1);
  rule(c.ctx, eperm, "mknod", 2, chr1);
  const scmp_arg_cmp blk2[] = {SCMP_A2(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFBLK)};
  const scmp_arg_cmp chr2[] = {SCMP_A2(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFCHR), SCMP_A3(SCMP_CMP_NE, 0)};
  rule(c.ctx, eperm, "mknodat", 1, blk2);
  rule(c.ctx, eperm, "mknodat", 2, chr2);

  // Export through a memfd: libseccomp writes the program to a file descriptor.
  int fd = ::memfd_create("kiln-seccomp", MFD_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot build the RUN-step seccomp filter: memfd_create failed");
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } closer{fd};
  check(seccomp_export_bpf(c.ctx, fd), "export");
  struct stat st{};
  if (::fstat(fd, &st) != 0 || st.st_size <= 0) throw std::runtime_error("cannot build the RUN-step seccomp filter: empty program");
  std::string prog(static_cast<std::size_t>(st.st_size), '\0');
  if (::pread(fd, prog.data(), prog.size(), 0) != static_cast<ssize_t>(prog.size()))
    throw std::runtime_error("cannot build the RUN-step seccomp filter: cannot read the program back");
  return prog;
}

}  // namespace

const std::string& step_seccomp_program() {
  static std::once_flag once;
  static std::string prog;
  std::call_once(once, [] { prog = build(); });
  return prog;
}

const char* const* step_seccomp_denied() { return kDenied; }

}  // namespace kiln::run
