// The RUN sandbox: bwrap in fresh namespaces, over a bound root directory or over an overlayfs that
// a forked child mounts in its own private mount namespace just before it execs bwrap.
//
// Between fork() and execve() the child only makes system calls (kiln may have other threads, and
// only async-signal-safe functions are allowed there): every string and array it needs is built
// before the fork.
#include "run/sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <grp.h>
#include <linux/close_range.h>
#include <linux/mount.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <system_error>

#include "layers/unique_fd.h"
#include "run/seccomp.h"

namespace fs = std::filesystem;

namespace kiln::run {

namespace {

const char* kNoBwrap = "RUN steps need bubblewrap: apt-get install bubblewrap";

/// Longest line handed to on_line: longer ones (progress bars redrawn with \r) come in pieces.
constexpr std::size_t kMaxLine = 64 * 1024;

/// mount(2) takes at most a page of options.
constexpr std::size_t kMaxMountOptions = 4095;

/// The exit status of a child that failed before it could exec bwrap (the reason is on the error
/// pipe; the status only shows up if that pipe somehow got lost).
constexpr int kSetupFailedStatus = 125;

using Fd = layers::UniqueFd;

struct Pipe {
  Fd read, write;
};

Pipe make_pipe() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe");
  return {Fd(p[0]), Fd(p[1])};
}

/// Writes everything, retrying on EINTR; throws naming `what`.
void write_fully(int fd, const char* p, std::size_t n, const fs::path& what) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "cannot write " + what.string());
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// NUL-terminated copies of strings, kept alive for execve.
class CArgv {
 public:
  explicit CArgv(std::vector<std::string> v) : strings_(std::move(v)) {
    for (auto& s : strings_) ptrs_.push_back(s.data());
    ptrs_.push_back(nullptr);
  }
  char* const* get() const { return ptrs_.data(); }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> ptrs_;
};

// ---------------------------------------------------------------------------------------------
// The child side. What went wrong before exec travels back on a close-on-exec pipe: nothing on it
// means bwrap started, so a setup failure is never confused with the command's own output.

enum Stage : int {
  kStagePdeathsig = 1,
  kStageUnshare,
  kStagePrivate,
  kStageChdir,
  kStageMount,
  kStageFds,
  kStageExec,
  kStageIdmap,
  kStageUserns,
};

struct ChildError {
  int stage;
  int err;
};

struct ChildPlan {
  const char* program = nullptr;
  char* const* argv = nullptr;
  // When the root's /etc/resolv.conf (this path) exists but is not a plain file, bwrap could not
  // bind the host's over it (a dangling symlink fails the whole sandbox): run argv_no_resolv.
  const char* resolv_in_root = nullptr;
  char* const* argv_no_resolv = nullptr;
  char* const* envp = nullptr;
  pid_t parent = 0;
  int null_fd = -1, out_fd = -1, err_fd = -1;
  int max_fd = 1024;  // for the fallback that marks fds close-on-exec one by one
  // Overlay mode (merged != nullptr).
  const char* merged = nullptr;
  const char* options = nullptr;        // with redirect_dir/index/metacopy/xino turned off
  const char* basic_options = nullptr;  // without them, for kernels that reject one
  const char* mount_cwd = nullptr;      // relative lower/upper/work paths are relative to this
  // Confinement of a root caller (see "user namespaces" below). userns_fd >= 0: join it before
  // exec'ing bwrap, as its root. shift: the ids are shifted (idmap_fd is the namespace whose
  // mapping the idmapped mounts use; it is also handed to bwrap as --userns2), the paths in
  // idmap[] are made idmapped mounts first, those in idmap_try[] when their file system allows,
  // and the overlay is mounted from inside the user namespace.
  int userns_fd = -1;
  int idmap_fd = -1;
  bool shift = false;
  const char* const* idmap = nullptr;
  const char* const* idmap_try = nullptr;
  int seccomp_fd = -1;  // handed to bwrap as kSeccompFd
};

/// Where bwrap finds the descriptors it is given (--seccomp, --userns2).
constexpr int kSeccompFd = 3;
constexpr int kUserns2Fd = 4;
/// Scratch descriptors are moved above this while the fixed ones are set up.
constexpr int kHighFd = 10;

[[noreturn]] void child_fail(int err_fd, int stage, int err) {
  ChildError e{stage, err};
  ssize_t ignored = ::write(err_fd, &e, sizeof e);
  (void)ignored;
  ::_exit(kSetupFailedStatus);
}

/// Parses the decimal fd number of a /proc/self/fd entry; -1 for "." and "..".
int parse_fd_name(const char* s) {
  if (*s < '0' || *s > '9') return -1;
  int v = 0;
  for (; *s >= '0' && *s <= '9'; ++s) v = v * 10 + (*s - '0');
  return v;
}

/// Marks every fd from `low` on close-on-exec, so bwrap gets only 0, 1 and 2.
void cloexec_from(int low, int max_fd) {
  if (::close_range(static_cast<unsigned>(low), ~0u, CLOSE_RANGE_CLOEXEC) == 0) return;
  // Older kernels: walk /proc/self/fd with raw getdents64 (opendir may allocate).
  int dfd = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    alignas(8) char buf[4096];
    for (;;) {
      long n = ::syscall(SYS_getdents64, dfd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        // struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, char d_name[].
        unsigned short reclen;
        std::memcpy(&reclen, buf + off + 16, sizeof reclen);
        int fd = parse_fd_name(buf + off + 19);
        if (fd >= low) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        off += reclen;
      }
    }
    ::close(dfd);
    return;
  }
  for (int fd = low; fd < max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/// Signal dispositions the command should not inherit from kiln: handlers (reset by exec anyway,
/// but one could run in this child before it) and an ignored SIGPIPE, which breaks `yes | head`.
void reset_signals() {
  for (int s = 1; s < NSIG; ++s) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    struct sigaction sa{};
    if (::sigaction(s, nullptr, &sa) != 0) continue;
    if (sa.sa_handler == SIG_DFL || (sa.sa_handler == SIG_IGN && s != SIGPIPE)) continue;
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(s, &dfl, nullptr);
  }
}

/// A private mount namespace in which propagation to and from the host is off, so what this
/// process mounts stays invisible outside and goes away with it.
int private_mount_ns(int* stage) {
  *stage = kStageUnshare;
  if (::unshare(CLONE_NEWNS) != 0) return errno;
  *stage = kStagePrivate;
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return errno;
  return 0;
}

/// Mounts overlayfs at `merged`; 0 or the errno.
int mount_overlay(const char* merged, const char* options, const char* basic_options) {
  if (::mount("overlay", merged, "overlay", 0, options) == 0) return 0;
  // Some kernels reject one of the feature options (xino on a file system without inode numbers
  // to spare, index with some uppers): fall back to the kernel's defaults.
  if (errno != EINVAL) return errno;
  if (::mount("overlay", merged, "overlay", 0, basic_options) == 0) return 0;
  return errno;
}

/// Replaces the mount at `path` (in this private mount namespace) with an idmapped clone of it:
/// files owned by id N on disk appear owned by N as seen from `userns_fd`'s namespace.
int idmap_over(const char* path, int userns_fd) {
  int fd = static_cast<int>(::syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC));
  if (fd < 0) return errno;
  struct mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<std::uint64_t>(userns_fd);
  int err = 0;
  if (::syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0 ||
      ::syscall(SYS_move_mount, fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) != 0)
    err = errno;
  ::close(fd);
  return err;
}

/// Becomes root of the user namespace `fd` (this process holds every capability in it after
/// setns, and so may set its ids there).
int enter_userns(int fd) {
  if (::setns(fd, CLONE_NEWUSER) != 0) return errno;
  if (::setgroups(0, nullptr) != 0 || ::setresgid(0, 0, 0) != 0 || ::setresuid(0, 0, 0) != 0) return errno;
  return 0;
}

/// Everything a root caller's child does before bwrap: the private mount namespace, idmapped
/// mounts, the overlay, entering the user namespace. Also used by the probe. 0 or the errno,
/// with the stage in *stage.
int prepare_root(const ChildPlan& p, int* stage) {
  const bool confined = p.userns_fd >= 0;
  if (p.merged || confined)
    if (int e = private_mount_ns(stage)) return e;
  if (p.shift) {
    *stage = kStageIdmap;
    for (const char* const* d = p.idmap; d && *d; ++d)
      if (int e = idmap_over(*d, p.idmap_fd)) return e;
    for (const char* const* d = p.idmap_try; d && *d; ++d) (void)idmap_over(*d, p.idmap_fd);
  }
  // Not shifted, the overlay is mounted as the host's root, before the user namespace.
  if (p.merged && !p.shift) {
    *stage = kStageChdir;
    if (p.mount_cwd && ::chdir(p.mount_cwd) != 0) return errno;
    *stage = kStageMount;
    if (int e = mount_overlay(p.merged, p.options, p.basic_options)) return e;
  }
  if (confined) {
    *stage = kStageUserns;
    if (int e = enter_userns(p.userns_fd)) return e;
  }
  // Shifted, the overlay is mounted by the namespace's root (on idmapped layers, with user.*
  // xattrs), in a mount namespace that namespace owns.
  if (p.merged && p.shift) {
    *stage = kStageUnshare;
    if (::unshare(CLONE_NEWNS) != 0) return errno;
    *stage = kStageChdir;
    if (p.mount_cwd && ::chdir(p.mount_cwd) != 0) return errno;
    *stage = kStageMount;
    if (int e = mount_overlay(p.merged, p.options, p.basic_options)) return e;
  }
  return 0;
}

[[noreturn]] void child_main(const ChildPlan& p) {
  reset_signals();
  // If kiln dies (even by SIGKILL) this process, which becomes bwrap, is killed; bwrap's
  // --die-with-parent carries that on to the command.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(p.err_fd, kStagePdeathsig, errno);
  if (::getppid() != p.parent) ::_exit(kSetupFailedStatus);  // kiln already gone

  {
    int stage = 0;
    if (int e = prepare_root(p, &stage)) child_fail(p.err_fd, stage, e);
  }

  // Move the fds high first, so that the dup2s below cannot clobber one of them.
  int err = ::fcntl(p.err_fd, F_DUPFD_CLOEXEC, kHighFd);
  if (err < 0) child_fail(p.err_fd, kStageFds, errno);
  int out = ::fcntl(p.out_fd, F_DUPFD_CLOEXEC, kHighFd);
  int nul = ::fcntl(p.null_fd, F_DUPFD_CLOEXEC, kHighFd);
  int sec = p.seccomp_fd >= 0 ? ::fcntl(p.seccomp_fd, F_DUPFD_CLOEXEC, kHighFd) : -1;
  int ns2 = p.shift ? ::fcntl(p.idmap_fd, F_DUPFD_CLOEXEC, kHighFd) : -1;
  if (out < 0 || nul < 0 || (p.seccomp_fd >= 0 && sec < 0) || (p.shift && ns2 < 0)) child_fail(err, kStageFds, errno);
  if (::dup2(nul, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0) child_fail(err, kStageFds, errno);
  if (sec >= 0 && ::dup2(sec, kSeccompFd) < 0) child_fail(err, kStageFds, errno);
  if (ns2 >= 0 && ::dup2(ns2, kUserns2Fd) < 0) child_fail(err, kStageFds, errno);
  // bwrap gets exactly these. It closes the seccomp fd once read, but keeps --userns2's open into
  // the command: a descriptor of the step's own user namespace, which gives nothing the step does
  // not have (setns and the mount calls it could feed are denied by the seccomp filter).
  cloexec_from(kUserns2Fd + 1, p.max_fd);
  if (sec < 0) ::fcntl(kSeccompFd, F_SETFD, FD_CLOEXEC);
  if (ns2 < 0) ::fcntl(kUserns2Fd, F_SETFD, FD_CLOEXEC);

  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  char* const* argv = p.argv;
  struct stat st{};
  if (p.resolv_in_root && ::lstat(p.resolv_in_root, &st) == 0 && !S_ISREG(st.st_mode)) argv = p.argv_no_resolv;
  ::execve(p.program, argv, p.envp);
  child_fail(err, kStageExec, errno);
}

/// Forks and runs child_main in the child. All signals stay blocked across the fork, so no
/// handler of kiln's runs in the child before it resets them.
pid_t spawn(const ChildPlan& plan) {
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::fork();
  if (pid == 0) child_main(plan);
  int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) throw std::system_error(fork_errno, std::generic_category(), "cannot fork the sandbox");
  return pid;
}

/// Waits for a child; kills it first when the wait did not happen normally (an exception).
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// bwrap takes everything in the sandbox with it (--die-with-parent inside).
  void kill() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
  }
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) {
        status = -1;
        break;
      }
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
};

/// Reads one ChildError from the error pipe; false when it closed empty (bwrap was exec'd).
bool read_child_error(int fd, ChildError* e) {
  std::size_t got = 0;
  char* p = reinterpret_cast<char*>(e);
  while (got < sizeof *e) {
    ssize_t r = ::read(fd, p + got, sizeof *e - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "reading the sandbox's status");
    }
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  if (got == 0) return false;
  if (got < sizeof *e) *e = {kStageExec, EIO};
  return true;
}

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// ---------------------------------------------------------------------------------------------
// Output: split into lines, copied to the log, the tail kept.

class LineSplitter {
 public:
  explicit LineSplitter(const SandboxIo& io) : io_(io) {}

  void feed(const char* p, std::size_t n) {
    while (n > 0) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
      std::size_t seg = nl ? static_cast<std::size_t>(nl - p) : n;
      while (line_.size() + seg > kMaxLine) {
        std::size_t fit = kMaxLine - line_.size();
        line_.append(p, fit);
        p += fit;
        n -= fit;
        seg -= fit;
        emit();
      }
      line_.append(p, seg);
      p += seg;
      n -= seg;
      if (nl) {
        emit();
        ++p;
        --n;
      }
    }
  }

  void finish() {
    if (!line_.empty()) emit();
  }

  std::vector<std::string> take_tail() { return {std::make_move_iterator(tail_.begin()), std::make_move_iterator(tail_.end())}; }

 private:
  void emit() {
    if (io_.on_line) io_.on_line(line_);
    if (io_.tail_lines > 0) {
      tail_.push_back(std::move(line_));
      if (tail_.size() > io_.tail_lines) tail_.pop_front();
    }
    line_.clear();
  }

  const SandboxIo& io_;
  std::string line_;
  std::deque<std::string> tail_;
};

// ---------------------------------------------------------------------------------------------
// Overlay options.

/// overlayfs splits its options at ',' and lowerdir at ':', with '\' escaping either: a path with
/// one of these cannot be passed through mount(2) as is.
void check_overlay_path(const fs::path& p, const char* role) {
  if (p.string().find_first_of(":,\\") != std::string::npos)
    throw std::runtime_error("cannot use " + p.string() + " as an overlay " + role +
                             " dir: overlayfs mount options cannot hold ':', ',' or '\\' in a path");
}

std::string join_options(const std::vector<std::string>& lowers, const std::string& upper, const std::string& work) {
  std::string o = "lowerdir=";
  for (std::size_t i = 0; i < lowers.size(); ++i) o += (i ? ":" : "") + lowers[i];
  return o + ",upperdir=" + upper + ",workdir=" + work;
}

/// The deepest directory containing all of `paths` (absolute and normal).
fs::path common_dir(const std::vector<fs::path>& paths) {
  fs::path common = paths.front().parent_path();
  for (const auto& p : paths) {
    fs::path c;
    auto a = common.begin(), b = p.begin();
    for (; a != common.end() && b != p.end() && *a == *b; ++a, ++b) c /= *a;
    common = c;
  }
  return common;
}

struct OverlayOptions {
  std::string options, basic_options;
  std::string mount_cwd;  // empty: the paths are absolute
};

/// The overlay mount options; relative to the lowers' common directory when the absolute paths
/// do not fit in mount(2)'s page (many layers with long store paths).
OverlayOptions overlay_options(const std::vector<fs::path>& lowers, const fs::path& upper, const fs::path& work) {
  const std::string extra = ",redirect_dir=off,index=off,metacopy=off,xino=off";
  std::vector<std::string> ls;
  for (const auto& l : lowers) ls.push_back(l.string());
  OverlayOptions o;
  o.basic_options = join_options(ls, upper.string(), work.string());
  if (o.basic_options.size() + extra.size() > kMaxMountOptions) {
    std::vector<fs::path> all(lowers.begin(), lowers.end());
    all.push_back(upper);
    all.push_back(work);
    fs::path base = common_dir(all);
    ls.clear();
    for (const auto& l : lowers) ls.push_back(l.lexically_relative(base).string());
    o.basic_options = join_options(ls, upper.lexically_relative(base).string(), work.lexically_relative(base).string());
    o.mount_cwd = base.string();
    if (o.basic_options.size() + extra.size() > kMaxMountOptions)
      throw std::runtime_error("too many layers (" + std::to_string(lowers.size()) +
                               ") for one overlayfs mount: its options exceed a page");
  }
  o.options = o.basic_options + extra;
  return o;
}

/// overlayfs mounted from a user namespace keeps its whiteout and opaque markers in user.*
/// xattrs (trusted.* is the host root's).
std::string insert_userxattr(const std::string& options) { return options + ",userxattr"; }

fs::path absolute_normal(const fs::path& p) {
  fs::path a = fs::absolute(p).lexically_normal();
  if (a.filename().empty() && a.has_parent_path() && a != a.root_path()) a = a.parent_path();
  return a;
}

bool is_dir(const fs::path& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

/// Removes a directory this run created, once the run is over.
class CreatedDir {
 public:
  CreatedDir() = default;
  ~CreatedDir() {
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  void set(fs::path p) { path_ = std::move(p); }

 private:
  fs::path path_;
};

// ---------------------------------------------------------------------------------------------
// User namespaces for a root caller.
//
// Run as root, kiln never hands a step the host's root. Every step runs in a user namespace, so
// it has no capability outside it (no mknod of real devices, no mount of a disk, no module):
//
//   shifted (where the store's file system takes idmapped mounts): ids 0…2^31-2 of the step are
//     host ids 2^31…2^32-2, which own nothing on the host. Two namespaces: U1 maps those and
//     also the host's root (at id 2^31-1), so that bwrap, running as U1's root, can reach the
//     paths it binds (a store under a 0700 /root); U2, U1's child, maps the range only, and the
//     step runs in it (bwrap --userns2). The step's root and store trees are idmapped mounts
//     (through U2), so a file owned by N on disk is owned by N in the step, and what the step
//     writes lands on disk with the ids it chose: capture needs no translation.
//   identity (elsewhere): one namespace mapping every id to itself. The step's root is the
//     host's uid 0 for file permissions on what it can see, but holds no capability outside.

constexpr std::uint32_t kShiftBase = 0x80000000u;  // host id of the step's root when shifted
constexpr std::uint32_t kShiftCount = 0x7fffffffu;  // ids 0…2^31-2

struct UserNamespaces {
  Fd outer;  // U1: joined before exec'ing bwrap
  Fd inner;  // U2 (shifted only): the step's namespace, and the idmapping of its mounts
};

/// Writes `text` to /proc/<pid>/<file>; only system calls (used in forked children too).
bool write_proc(pid_t pid, const char* file, const char* text) {
  char path[64] = "/proc/";
  char digits[16];
  int n = 0;
  for (unsigned v = static_cast<unsigned>(pid); n == 0 || v > 0; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
  std::size_t at = 6;
  while (n > 0) path[at++] = digits[--n];
  path[at++] = '/';
  for (const char* f = file; *f; ++f) path[at++] = *f;
  path[at] = '\0';
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::size_t len = std::strlen(text);
  bool ok = ::write(fd, text, len) == static_cast<ssize_t>(len);
  ::close(fd);
  return ok;
}

/// Reads exactly one byte (EINTR retried); false at end of file or on error.
bool read_byte(int fd, char* c) {
  for (;;) {
    ssize_t r = ::read(fd, c, 1);
    if (r == 1) return true;
    if (r < 0 && errno == EINTR) continue;
    return false;
  }
}

int max_fd_hint();

/// In a forked helper that never execs: closes every descriptor but 0, 1, 2 and `keep_a`,
/// `keep_b`. kiln forks from several threads at once (builds run side by side): a helper keeps
/// whatever descriptors the fork copied, among them another thread's pipe ends, and a write end
/// it holds keeps that thread's helper from ever reading the end of file it waits for. Two such
/// helpers then wait on each other forever. `max_fd`: computed before the fork.
void close_all_but(int keep_a, int keep_b, int max_fd) {
  const int lo = std::min(keep_a, keep_b), hi = std::max(keep_a, keep_b);
  auto close_between = [max_fd](int from, int to) {
    if (from > to) return;
    if (::close_range(static_cast<unsigned>(from), static_cast<unsigned>(to), 0) == 0) return;
    for (int fd = from; fd <= std::min(to, max_fd); ++fd) ::close(fd);  // kernels before 5.9
  };
  close_between(3, lo - 1);
  close_between(lo + 1, hi - 1);
  close_between(hi + 1, INT_MAX);
}

/// Makes the namespaces (see above) with two short-lived helper processes: A unshares U1, whose
/// maps kiln writes; A forks B, which unshares U2, whose map A writes (only a process of U1 or
/// of U2 may); kiln opens both namespaces and lets the helpers go.
UserNamespaces make_user_namespaces(bool shift) {
  Pipe up = make_pipe();    // helpers → kiln: 'a' (U1 made), 'c' + pid of B (U2 mapped)
  Pipe down = make_pipe();  // kiln → A: 'g' (U1 mapped); end of file: exit
  const pid_t parent = ::getpid();
  const int max_fd = max_fd_hint();
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t a = ::fork();
  if (a == 0) {
    close_all_but(up.write.get(), down.read.get(), max_fd);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    char c;
    if (::unshare(CLONE_NEWUSER) != 0) ::_exit(1);
    if (::write(up.write.get(), "a", 1) != 1 || !read_byte(down.read.get(), &c) || c != 'g') ::_exit(1);
    if (shift) {
      int b2a[2], hold[2];
      if (::pipe2(b2a, O_CLOEXEC) != 0 || ::pipe2(hold, O_CLOEXEC) != 0) ::_exit(1);
      pid_t b = ::fork();
      if (b == 0) {
        ::close(b2a[0]);
        ::close(hold[1]);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::unshare(CLONE_NEWUSER) != 0) ::_exit(1);
        if (::write(b2a[1], "b", 1) != 1) ::_exit(1);
        read_byte(hold[0], &c);  // until A exits
        ::_exit(0);
      }
      if (b < 0) ::_exit(1);
      ::close(b2a[1]);
      ::close(hold[0]);
      // U2's ids 0…2^31-2 are U1's 0…2^31-2 (host 2^31…): U1's id for the host's root stays out.
      if (!read_byte(b2a[0], &c) || !write_proc(b, "uid_map", "0 0 2147483647\n") ||
          !write_proc(b, "gid_map", "0 0 2147483647\n"))
        ::_exit(1);
      char msg[1 + sizeof(pid_t)];
      msg[0] = 'c';
      std::memcpy(msg + 1, &b, sizeof b);
      if (::write(up.write.get(), msg, sizeof msg) != static_cast<ssize_t>(sizeof msg)) ::_exit(1);
    }
    while (read_byte(down.read.get(), &c)) {
    }
    ::_exit(0);
  }
  int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (a < 0) throw std::system_error(fork_errno, std::generic_category(), "cannot fork");
  Child helper(a);
  up.write.reset();
  down.read.reset();
  auto fail = [](const std::string& why) {
    return std::runtime_error("cannot confine RUN steps in a user namespace: " + why +
                              " (kiln runs steps as root only inside one; see docs/run-steps.md)");
  };
  char c = 0;
  if (!read_byte(up.read.get(), &c) || c != 'a') throw fail("unshare(CLONE_NEWUSER) failed");
  const std::string map = shift ? "0 2147483648 2147483647\n2147483647 0 1\n" : "0 0 4294967295\n";
  if (!write_proc(a, "uid_map", map.c_str()) || !write_proc(a, "gid_map", map.c_str()))
    throw fail("cannot write its id maps: " + errno_text(errno));
  if (::write(down.write.get(), "g", 1) != 1) throw fail("the helper process is gone");
  UserNamespaces ns;
  const std::string proc_a = "/proc/" + std::to_string(a);
  ns.outer = Fd(::open((proc_a + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.outer.get() < 0) throw fail("cannot open it: " + errno_text(errno));
  if (shift) {
    char msg[1 + sizeof(pid_t)];
    std::size_t got = 0;
    while (got < sizeof msg && read_byte(up.read.get(), msg + got)) ++got;
    if (got != sizeof msg || msg[0] != 'c') throw fail("cannot make the inner namespace");
    pid_t b;
    std::memcpy(&b, msg + 1, sizeof b);
    ns.inner = Fd(::open(("/proc/" + std::to_string(b) + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
    if (ns.inner.get() < 0) throw fail("cannot open the inner namespace: " + errno_text(errno));
  }
  down.write.reset();  // the helpers exit
  helper.wait();
  return ns;
}

/// Does the file system of `dir` take idmapped mounts (and overlayfs, from a user namespace, on
/// idmapped layers)? Probed once per file system, in a throwaway child.
bool shift_supported(const fs::path& dir);

int max_fd_hint() {
  long m = ::sysconf(_SC_OPEN_MAX);
  return m > 0 && m < 65536 ? static_cast<int>(m) : 65536;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

fs::path find_bwrap() {
  auto executable = [](const fs::path& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
  };
  if (const char* b = std::getenv("KILN_BWRAP"); b && *b) return executable(b) ? fs::path(b) : fs::path();
  const char* path = std::getenv("PATH");
  std::string dirs = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    if (dir.empty()) dir = ".";
    fs::path candidate = fs::path(dir) / "bwrap";
    if (executable(candidate)) return candidate;
    start = end + 1;
  }
  return {};
}

SandboxResult run_sandboxed(const SandboxSpec& spec, const SandboxIo& io) {
  const fs::path bwrap = find_bwrap();
  if (bwrap.empty()) {
    std::string msg = kNoBwrap;
    if (const char* b = std::getenv("KILN_BWRAP"); b && *b) msg += std::string(" (KILN_BWRAP=") + b + " is not an executable)";
    throw std::runtime_error(msg);
  }
  if (spec.argv.empty()) throw std::runtime_error("nothing to run in the sandbox (empty command)");
  for (const auto* env : {&spec.env, &spec.secret_env})
    for (const auto& [k, v] : *env)
      if (k.empty() || k.find('=') != std::string::npos)
        throw std::runtime_error("invalid environment variable name '" + k + "' for the sandbox");
  for (const auto& m : spec.mounts) {
    struct stat st{};
    if (::stat(m.source.c_str(), &st) != 0)
      throw std::runtime_error("cannot mount " + m.source.string() + " into the sandbox: " + errno_text(errno));
    if (m.target.empty() || m.target.front() != '/')
      throw std::runtime_error("sandbox mount target must be an absolute path: '" + m.target + "'");
  }

  // The root: the directory itself, or the overlay's merged view.
  const bool overlay = !spec.lowers.empty();
  fs::path root;
  OverlayOptions ov;
  CreatedDir created_merged;  // declared before the child, so removed only after it is reaped
  if (overlay) {
    if (spec.upper.empty() || spec.work.empty()) throw std::runtime_error("overlay sandbox needs upper and work dirs");
    std::vector<fs::path> lowers;
    for (const auto& l : spec.lowers) {
      fs::path a = absolute_normal(l);
      check_overlay_path(a, "lower");
      if (!is_dir(a)) throw std::runtime_error("overlay lower dir does not exist: " + a.string());
      lowers.push_back(a);
    }
    fs::path upper = absolute_normal(spec.upper), work = absolute_normal(spec.work);
    check_overlay_path(upper, "upper");
    check_overlay_path(work, "work");
    fs::create_directories(upper);
    fs::create_directories(work);
    ov = overlay_options(lowers, upper, work);
    root = upper.parent_path() / "merged";
    if (::mkdir(root.c_str(), 0755) == 0)
      created_merged.set(root);
    else if (errno != EEXIST)
      throw std::system_error(errno, std::generic_category(), "cannot create " + root.string());
  } else {
    root = absolute_normal(spec.rootfs);
    if (!is_dir(root)) throw std::runtime_error("sandbox root does not exist: " + root.string());
  }

  // How a root caller confines the step (see "User namespaces"): shifted where the store's file
  // system takes idmapped mounts, else the identity map. Rootless, bwrap maps us to root.
  const bool as_root = ::geteuid() == 0;
  const bool shift = as_root && shift_supported(overlay ? absolute_normal(spec.upper).parent_path() : root.parent_path());
  std::vector<std::string> idmap, idmap_try;
  if (shift) {
    if (overlay) {
      for (const auto& l : spec.lowers) idmap.push_back(absolute_normal(l).string());
      // upper and work must share one mount: idmap their common directory.
      idmap.push_back(common_dir({absolute_normal(spec.upper), absolute_normal(spec.work)}).string());
    } else {
      idmap.push_back(root.string());
    }
    for (const auto& m : spec.mounts) idmap_try.push_back(absolute_normal(m.source).string());
    if (overlay) {
      ov.options = insert_userxattr(ov.options);
      ov.basic_options = insert_userxattr(ov.basic_options);
    }
  }
  UserNamespaces userns;
  if (as_root) userns = make_user_namespaces(shift);
  // The seccomp filter, in a memfd bwrap reads.
  Fd seccomp(::memfd_create("kiln-seccomp", MFD_CLOEXEC));
  if (seccomp.get() < 0) throw std::system_error(errno, std::generic_category(), "memfd_create");
  {
    const std::string& prog = step_seccomp_program();
    write_fully(seccomp.get(), prog.data(), prog.size(), "the seccomp filter");
    if (::lseek(seccomp.get(), 0, SEEK_SET) != 0) throw std::system_error(errno, std::generic_category(), "lseek");
  }

  std::vector<std::string> args = {bwrap.string(), "--die-with-parent", "--unshare-ipc", "--unshare-pid",
                                   "--unshare-uts", "--unshare-cgroup-try"};
  if (!spec.network) args.push_back("--unshare-net");
  if (as_root) {
    // Already inside the namespace: bwrap is its root. The step keeps Docker's default
    // capabilities minus CAP_MKNOD and CAP_NET_RAW, each meaningful only inside.
    if (shift) args.insert(args.end(), {"--userns2", std::to_string(kUserns2Fd)});
    args.insert(args.end(), {"--cap-drop", "ALL"});
    for (const char* cap : {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
                            "CAP_SETUID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
                            "CAP_AUDIT_WRITE"})
      args.insert(args.end(), {"--cap-add", cap});
  } else {
    // Unprivileged, bwrap needs a user namespace anyway; map us to root in it.
    args.insert(args.end(), {"--unshare-user", "--uid", "0", "--gid", "0"});
  }
  args.insert(args.end(), {"--seccomp", std::to_string(kSeccompFd)});
  args.insert(args.end(), {"--hostname", spec.hostname, "--bind", root.string(), "/", "--proc", "/proc", "--dev",
                           "/dev", "--perms", "1777", "--tmpfs", "/tmp"});  // 1777: apt's _apt user writes there
  const std::size_t resolv_at = args.size();
  const bool bind_resolv = spec.network && ::access("/etc/resolv.conf", R_OK) == 0;
  for (const auto& m : spec.mounts)
    args.insert(args.end(), {m.read_only ? "--ro-bind" : "--bind", m.source.string(), m.target});
  // The environment is exactly env + secret_env. bwrap passes its own environment on to the
  // command, so that is where the secrets go (only their owner can read /proc/PID/environ); the
  // rest goes on the command line (--setenv), except names a secret sets. No --clearenv: it would
  // drop the secrets, and bwrap's environment holds nothing else.
  std::vector<std::string> secret_envp;
  for (std::size_t i = 0; i < spec.secret_env.size(); ++i) {
    const auto& [k, v] = spec.secret_env[i];
    bool later = false;  // a name given twice: the last one wins, as with --setenv
    for (std::size_t j = i + 1; j < spec.secret_env.size() && !later; ++j) later = spec.secret_env[j].first == k;
    if (!later) secret_envp.push_back(k + "=" + v);
  }
  for (const auto& [k, v] : spec.env) {
    bool secret = false;
    for (const auto& s : spec.secret_env) secret = secret || s.first == k;
    if (!secret) args.insert(args.end(), {"--setenv", k, v});
  }
  args.insert(args.end(), {"--chdir", spec.workdir.empty() ? std::string("/") : spec.workdir, "--"});
  args.insert(args.end(), spec.argv.begin(), spec.argv.end());
  // Two variants, with and without the host's resolv.conf: which one fits the root is known only
  // once the overlay is mounted, in the child.
  std::vector<std::string> args_resolv = args;
  if (bind_resolv)
    args_resolv.insert(args_resolv.begin() + static_cast<std::ptrdiff_t>(resolv_at),
                       {"--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"});
  const CArgv argv(std::move(args_resolv)), argv_no_resolv(std::move(args)), envp(std::move(secret_envp));
  const std::string resolv_in_root = (root / "etc" / "resolv.conf").string();
  const CArgv idmap_c(std::move(idmap)), idmap_try_c(std::move(idmap_try));

  Fd log;
  if (!io.log_file.empty()) {
    if (io.log_file.has_parent_path()) fs::create_directories(io.log_file.parent_path());
    log = Fd(::open(io.log_file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
    if (log.get() < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + io.log_file.string());
  }
  Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null.get() < 0) throw std::system_error(errno, std::generic_category(), "cannot open /dev/null");
  Pipe out = make_pipe(), err = make_pipe();

  const std::string root_str = root.string();
  ChildPlan plan;
  plan.program = bwrap.c_str();
  plan.argv = argv.get();
  if (bind_resolv) {
    plan.resolv_in_root = resolv_in_root.c_str();
    plan.argv_no_resolv = argv_no_resolv.get();
  }
  plan.envp = envp.get();
  plan.parent = ::getpid();
  plan.null_fd = null.get();
  plan.out_fd = out.write.get();
  plan.err_fd = err.write.get();
  plan.max_fd = max_fd_hint();
  plan.seccomp_fd = seccomp.get();
  if (as_root) {
    plan.userns_fd = userns.outer.get();
    plan.shift = shift;
    plan.idmap_fd = userns.inner.get();
    plan.idmap = idmap_c.get();
    plan.idmap_try = idmap_try_c.get();
  }
  if (overlay) {
    plan.merged = root_str.c_str();
    plan.options = ov.options.c_str();
    plan.basic_options = ov.basic_options.c_str();
    if (!ov.mount_cwd.empty()) plan.mount_cwd = ov.mount_cwd.c_str();
  }

  Child child(spawn(plan));
  out.write.reset();
  err.write.reset();
  null.reset();
  seccomp.reset();
  userns = {};

  ChildError ce{};
  if (read_child_error(err.read.get(), &ce)) {
    child.wait();
    const std::string e = errno_text(ce.err);
    switch (ce.stage) {
      case kStageUnshare:
        throw std::runtime_error("cannot mount overlayfs: no private mount namespace (unshare: " + e +
                                 "); overlay mode needs root");
      case kStagePrivate:
        throw std::runtime_error("cannot mount overlayfs: cannot make / private: " + e);
      case kStageChdir:
        throw std::runtime_error("cannot mount overlayfs: cannot enter " + ov.mount_cwd + ": " + e);
      case kStageMount:
        throw std::runtime_error("cannot mount overlayfs at " + root_str + ": " + e +
                                 (ce.err == EINVAL ? " (the kernel log says why; upper and work must be separate "
                                                     "dirs on one file system that can hold an overlay upper)"
                                                   : ""));
      case kStageExec:
        throw std::runtime_error("cannot run " + bwrap.string() + ": " + e);
      case kStageIdmap:
        throw std::runtime_error("cannot confine the step: an idmapped mount of its root failed: " + e);
      case kStageUserns:
        throw std::runtime_error("cannot confine the step: cannot enter its user namespace: " + e);
      default:
        throw std::runtime_error("cannot start the sandbox: " + e);
    }
  }

  LineSplitter lines(io);
  std::vector<char> buf(64 * 1024);
  bool stopped = false, timed_out = false;
  using Clock = std::chrono::steady_clock;
  const bool limited = io.timeout > 0;
  const Clock::time_point deadline =
      limited ? Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(io.timeout))
              : Clock::time_point::max();
  for (;;) {
    if (io.stop || limited) {  // wait for output at most 200 ms, then ask whether to go on
      int wait_ms = 200;
      if (limited) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
          timed_out = true;
          child.kill();
          break;
        }
        if (left < wait_ms) wait_ms = static_cast<int>(left);
      }
      struct pollfd p{out.read.get(), POLLIN, 0};
      int n = ::poll(&p, 1, wait_ms);
      if (n < 0 && errno != EINTR) throw std::system_error(errno, std::generic_category(), "poll");
      if (n <= 0) {
        if (io.stop && io.stop()) {
          stopped = true;
          child.kill();
          break;
        }
        continue;
      }
    }
    ssize_t r = ::read(out.read.get(), buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "reading the sandbox's output");
    }
    if (r == 0) break;
    if (log.get() >= 0) write_fully(log.get(), buf.data(), static_cast<std::size_t>(r), io.log_file);
    lines.feed(buf.data(), static_cast<std::size_t>(r));
  }
  lines.finish();

  const int status = child.wait();
  SandboxResult result;
  if (status < 0)
    result.exit_code = 128 + SIGKILL;  // cannot happen: only a lost child makes waitpid fail
  else if (WIFEXITED(status))
    result.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    result.exit_code = 128 + WTERMSIG(status);
  result.tail = lines.take_tail();
  result.stopped = stopped;
  result.timed_out = timed_out;
  return result;
}

namespace {

/// Mounts an overlay in a throwaway child the way a step's would be (shifted or not), deletes a
/// lower file and creates one owned by 100:100: the things a RUN step does that a bare mount
/// test would not show failing (e.g. an upper without xattrs, a file system without idmapping).
bool probe_overlay(const fs::path& scratch, bool shift) {
  std::error_code ec;
  fs::create_directories(scratch, ec);
  std::string tmpl = (scratch / "overlay-probe.XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) return false;
  const fs::path dir = tmpl;
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } cleanup{dir};
  for (const char* d : {"lower", "run", "run/upper", "run/work", "run/merged"}) fs::create_directory(dir / d, ec);
  if (ec) return false;
  {
    Fd f(::open((dir / "lower" / "f").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    if (f.get() < 0) return false;
  }
  OverlayOptions ov;
  try {
    ov = overlay_options({dir / "lower"}, dir / "run" / "upper", dir / "run" / "work");
  } catch (const std::exception&) {
    return false;  // the scratch path holds ':' or ','
  }
  if (shift) {
    ov.options = insert_userxattr(ov.options);
    ov.basic_options = insert_userxattr(ov.basic_options);
  }
  UserNamespaces userns;
  if (shift) {
    try {
      userns = make_user_namespaces(true);
    } catch (const std::exception&) {
      return false;
    }
  }
  const std::string merged = (dir / "run" / "merged").string();
  const std::string removed = merged + "/f", added = merged + "/g";
  const CArgv idmap({(dir / "lower").string(), (dir / "run").string()});
  ChildPlan p;
  p.merged = merged.c_str();
  p.options = ov.options.c_str();
  p.basic_options = ov.basic_options.c_str();
  if (!ov.mount_cwd.empty()) p.mount_cwd = ov.mount_cwd.c_str();
  if (shift) {
    p.userns_fd = userns.outer.get();
    p.idmap_fd = userns.inner.get();
    p.shift = true;
    p.idmap = idmap.get();
  }

  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int stage = 0;
    if (prepare_root(p, &stage) != 0) ::_exit(1);
    if (::unlink(removed.c_str()) != 0) ::_exit(3);
    int fd = ::open(added.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) ::_exit(4);
    if (::fchown(fd, 100, 100) != 0) ::_exit(5);
    ::close(fd);
    ::_exit(0);
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return false;
  int status = Child(pid).wait();
  if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return false;
  // What the step wrote must be on disk with the ids it chose.
  struct stat st{};
  return ::lstat((dir / "run" / "upper" / "g").c_str(), &st) == 0 && st.st_uid == 100 && st.st_gid == 100 &&
         ::lstat((dir / "run" / "upper" / "f").c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

/// Probes cached per directory (overlay) or per file system (shifting).
template <class Key>
bool cached_probe(const Key& key, std::map<Key, bool>& cache, std::mutex& mu, const std::function<bool()>& probe) {
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  bool ok = probe();
  cache[key] = ok;
  return ok;
}

bool shift_supported(const fs::path& dir) {
  if (::geteuid() != 0) return false;
  if (const char* e = std::getenv("KILN_SANDBOX_SHIFT"); e && std::string(e) == "0") return false;
  struct stat st{};
  if (::stat(dir.c_str(), &st) != 0) return false;
  static std::mutex mu;
  static std::map<dev_t, bool> cache;
  return cached_probe<dev_t>(st.st_dev, cache, mu, [&] { return probe_overlay(dir, true); });
}

}  // namespace

bool overlay_supported(const fs::path& scratch_dir) {
  if (::geteuid() != 0) return false;
  std::error_code ec;
  const std::string key = fs::weakly_canonical(fs::absolute(scratch_dir), ec).string();
  fs::create_directories(key, ec);
  if (shift_supported(key)) return true;
  static std::mutex mu;
  static std::map<std::string, bool> cache;
  return cached_probe<std::string>(key, cache, mu, [&] { return probe_overlay(key, false); });
}

}  // namespace kiln::run
