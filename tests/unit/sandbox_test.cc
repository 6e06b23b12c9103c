// Unit tests for run/sandbox: real bwrap over a tiny busybox root. Output lines, the log and the
// tail; exit codes and signals; the environment, workdir, uid, hostname and network isolation;
// mounts; overlay mode (lowers untouched, whiteouts in the upper, no mount left behind); the
// overlay probe; setup errors; and that killing kiln kills the sandbox.
#include "run/sandbox.h"
#include "run/seccomp.h"

#include <fcntl.h>
#include <signal.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "testutil.h"

using namespace kiln::run;
using kiln::testutil::contains;
using kiln::testutil::read_file;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
namespace fs = std::filesystem;

namespace {

const char* kBusybox = "/usr/bin/busybox";

/// Whether the tools these tests drive exist here; tests return early (with a warning) if not.
bool have_tools() {
  if (find_bwrap().empty() || !fs::exists(kBusybox)) {
    WARN("bwrap or busybox missing: sandbox test skipped");
    return false;
  }
  return true;
}

bool is_root() {
  if (::geteuid() == 0) return true;
  WARN("not root: overlay test skipped");
  return false;
}

/// A minimal root: busybox and a few applet links in bin/, and the usual empty dirs.
void make_rootfs(const fs::path& dir) {
  fs::create_directories(dir / "bin");
  fs::copy_file(kBusybox, dir / "bin" / "busybox");
  for (const char* a : {"sh", "echo", "cat", "ls", "touch", "rm", "id", "pwd", "env", "sleep", "mkdir", "seq",
                        "yes", "head", "tr", "hostname", "printf", "kill", "grep", "mount", "mknod", "unshare", "stat",
                        "chown", "chmod", "readlink"})
    fs::create_symlink("busybox", dir / "bin" / a);
  for (const char* d : {"proc", "dev", "tmp", "etc"}) fs::create_directories(dir / d);
}

SandboxSpec sh_spec(const fs::path& rootfs, const std::string& script) {
  SandboxSpec s;
  s.rootfs = rootfs;
  s.argv = {"/bin/sh", "-c", script};
  s.env = {{"PATH", "/bin"}};
  return s;
}

struct Run {
  SandboxResult result;
  std::vector<std::string> lines;
};

Run run(const SandboxSpec& spec, std::size_t tail_lines = 20, const fs::path& log = {}) {
  Run r;
  SandboxIo io;
  io.on_line = [&](std::string_view l) { r.lines.emplace_back(l); };
  io.tail_lines = tail_lines;
  io.log_file = log;
  r.result = run_sandboxed(spec, io);
  return r;
}

/// Sets an environment variable for the scope, restoring the old value afterwards.
class EnvVar {
 public:
  EnvVar(const char* name, const char* value) : name_(name) {
    if (const char* v = std::getenv(name)) old_ = v;
    ::setenv(name, value, 1);
  }
  ~EnvVar() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

/// The text of the exception run_sandboxed throws for `spec` (fails the test if none).
std::string error_of(const SandboxSpec& spec) {
  try {
    run_sandboxed(spec, {});
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  FAIL("no exception");
  return {};
}

/// Any process whose command line is exactly `argv`?
bool process_exists(const std::vector<std::string>& argv) {
  std::string want;
  for (const auto& a : argv) want += a + '\0';
  std::error_code ec;
  for (auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    try {
      if (read_file(e.path() / "cmdline") == want) return true;
    } catch (const std::exception&) {
      // gone meanwhile
    }
  }
  return false;
}

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

bool is_whiteout(const fs::path& p) {
  struct stat st{};
  return ::lstat(p.c_str(), &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 0 && minor(st.st_rdev) == 0;
}

bool mounts_mention(const fs::path& p) { return contains(read_file("/proc/self/mounts"), p.string()); }

/// An overlay over a busybox root (bottom) and a second lower on top of it.
struct OverlaySetup {
  TempDir tmp{"kiln-sandbox"};
  fs::path base = tmp / "base", top = tmp / "top", upper = tmp / "upper", work = tmp / "work";

  OverlaySetup() {
    make_rootfs(base);
    write_file(base / "keep.txt", "base\n");
    write_file(base / "del.txt", "doomed\n");
    write_file(base / "shadowed.txt", "from base\n");
    write_file(top / "shadowed.txt", "from top\n");
    fs::create_directories(upper);
    fs::create_directories(work);
  }

  SandboxSpec spec(const std::string& script) const {
    SandboxSpec s = sh_spec({}, script);
    s.lowers = {top, base};
    s.upper = upper;
    s.work = work;
    return s;
  }
};

}  // namespace

TEST_CASE("find_bwrap honours KILN_BWRAP and PATH", "[sandbox]") {
  {
    EnvVar e("KILN_BWRAP", "/nonexistent");
    CHECK(find_bwrap().empty());
  }
  if (fs::exists("/usr/bin/bwrap")) {
    EnvVar e("KILN_BWRAP", "/usr/bin/bwrap");
    CHECK(find_bwrap() == "/usr/bin/bwrap");
  }
  TempDir tmp("kiln-sandbox");
  write_file(tmp / "bin" / "bwrap", "#!/bin/sh\n", 0755);
  EnvVar path("PATH", (tmp.str() + "/nothing:" + tmp.str() + "/bin").c_str());
  EnvVar none("KILN_BWRAP", "");
  CHECK(find_bwrap() == tmp / "bin" / "bwrap");
}

TEST_CASE("a missing bwrap throws with the install hint", "[sandbox]") {
  TempDir tmp("kiln-sandbox");
  EnvVar e("KILN_BWRAP", "/nonexistent");
  const std::string msg = error_of(sh_spec(tmp.path(), "true"));
  CHECK(contains(msg, "apt-get install bubblewrap"));
  CHECK(contains(msg, "/nonexistent"));
}

TEST_CASE("output lines arrive in order, go to the log, and the last partial line too", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  const fs::path log = tmp / "logs" / "step.log";

  Run r = run(sh_spec(tmp / "root", "echo one; echo two >&2; echo; echo three; printf 'no newline'"), 20, log);
  CHECK(r.result.exit_code == 0);
  CHECK(r.lines == std::vector<std::string>{"one", "two", "", "three", "no newline"});
  CHECK(r.result.tail == r.lines);
  CHECK(read_file(log) == "one\ntwo\n\nthree\nno newline");

  // The log is appended to, not replaced.
  run(sh_spec(tmp / "root", "echo again"), 20, log);
  CHECK(read_file(log) == "one\ntwo\n\nthree\nno newlineagain\n");

  struct stat st{};
  REQUIRE(::stat(log.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);
}

TEST_CASE("the exit code propagates, and a signal becomes 128+N", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  CHECK(run(sh_spec(tmp / "root", "exit 7")).result.exit_code == 7);
  CHECK(run(sh_spec(tmp / "root", "true")).result.exit_code == 0);
  CHECK(run(sh_spec(tmp / "root", "kill -KILL $$")).result.exit_code == 128 + SIGKILL);
  // A command that does not exist: bwrap's own failure is just output and a status.
  SandboxSpec missing = sh_spec(tmp / "root", "");
  missing.argv = {"/bin/no-such-program"};
  Run r = run(missing);
  CHECK(r.result.exit_code != 0);
  REQUIRE(!r.lines.empty());
  CHECK(contains(r.lines.front(), "bwrap"));
}

TEST_CASE("the environment is exactly the given one", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  EnvVar host("KILN_SANDBOX_TEST_HOST_VAR", "leak");
  EnvVar home("HOME", "/host/home");

  SandboxSpec s = sh_spec(tmp / "root", "env");
  s.env = {{"PATH", "/bin"}, {"FOO", "bar baz"}, {"EMPTY", ""}};
  Run r = run(s);
  CHECK(r.result.exit_code == 0);
  std::set<std::string> got(r.lines.begin(), r.lines.end());
  CHECK(got.count("PATH=/bin"));
  CHECK(got.count("FOO=bar baz"));
  CHECK(got.count("EMPTY="));
  for (const auto& l : r.lines) {
    const std::string key = l.substr(0, l.find('='));
    INFO(l);
    // Only the given variables, plus what sh itself sets.
    CHECK((key == "PATH" || key == "FOO" || key == "EMPTY" || key == "PWD" || key == "SHLVL" || key == "_"));
  }

  s.env.emplace_back("HOME", "/root");
  got.clear();
  for (const auto& l : run(s).lines) got.insert(l);
  CHECK(got.count("HOME=/root"));

  SandboxSpec bad = sh_spec(tmp / "root", "true");
  bad.env = {{"A=B", "c"}};
  CHECK(contains(error_of(bad), "A=B"));
}

TEST_CASE("secret environment reaches the command, never a command line on the host", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  // Built at run time, so this test's own command line never holds it.
  const std::string secret = "kiln-secret-" + std::to_string(::getpid()) + "-t0k3n";
  SandboxSpec s = sh_spec(tmp / "root", "touch /ready; while [ ! -e /go ]; do sleep 0.05; done; env");
  s.env = {{"PATH", "/bin"}, {"SHOWN", "plain"}, {"PIP_INDEX_URL", "https://overridden.example/simple"}};
  s.secret_env = {{"PIP_INDEX_URL", "https://user:" + secret + "@pypi.example/simple"}, {"KILN_PIP_ARG_2", secret}};
  Run r;
  std::thread t([&] { r = run(s); });
  // While the step runs, no process on the host (bwrap, its child) shows the secret in
  // /proc/PID/cmdline, which every user can read (`ps`).
  const bool started = wait_until([&] { return fs::exists(tmp / "root" / "ready"); });
  std::vector<std::string> exposed;
  std::error_code ec;
  for (auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    try {
      if (contains(read_file(e.path() / "cmdline"), secret)) exposed.push_back(name);
    } catch (const std::exception&) {
      // gone meanwhile
    }
  }
  write_file(tmp / "root" / "go", "");
  t.join();
  CHECK(started);
  CHECK(exposed.empty());
  CHECK(r.result.exit_code == 0);
  std::set<std::string> got(r.lines.begin(), r.lines.end());
  CHECK(got.count("SHOWN=plain"));
  CHECK(got.count("KILN_PIP_ARG_2=" + secret));
  // A secret wins over a plain variable of the same name.
  CHECK(got.count("PIP_INDEX_URL=https://user:" + secret + "@pypi.example/simple"));
  CHECK(!got.count("PIP_INDEX_URL=https://overridden.example/simple"));
  for (const auto& l : r.lines) {
    const std::string key = l.substr(0, l.find('='));
    INFO(l);
    CHECK((key == "PATH" || key == "SHOWN" || key == "PIP_INDEX_URL" || key == "KILN_PIP_ARG_2" || key == "PWD" ||
           key == "SHLVL" || key == "_"));
  }

  SandboxSpec bad = sh_spec(tmp / "root", "true");
  bad.secret_env = {{"A=B", "c"}};
  CHECK(contains(error_of(bad), "A=B"));
}

TEST_CASE("workdir, uid, hostname, stdin and fds inside the sandbox", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  fs::create_directories(tmp / "root" / "work" / "dir");

  SandboxSpec s = sh_spec(tmp / "root", "pwd");
  s.workdir = "/work/dir";
  CHECK(run(s).lines == std::vector<std::string>{"/work/dir"});

  CHECK(run(sh_spec(tmp / "root", "id -u; id -g")).lines == std::vector<std::string>{"0", "0"});

  s = sh_spec(tmp / "root", "hostname");
  CHECK(run(s).lines == std::vector<std::string>{"kiln"});
  s.hostname = "builder";
  CHECK(run(s).lines == std::vector<std::string>{"builder"});

  // stdin is /dev/null: cat ends at once.
  CHECK(run(sh_spec(tmp / "root", "cat; echo done")).lines == std::vector<std::string>{"done"});

  // An fd kiln has open without O_CLOEXEC does not reach the command.
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  int leak = ::fcntl(fd, F_DUPFD, 100);  // without FD_CLOEXEC, and not a number ls might use
  ::close(fd);
  REQUIRE(leak >= 100);
  Run r = run(sh_spec(tmp / "root", "ls /proc/self/fd"));
  ::close(leak);
  INFO("fds: " << Catch::Detail::stringify(r.lines));
  CHECK(std::find(r.lines.begin(), r.lines.end(), std::to_string(leak)) == r.lines.end());
  // 0, 1, 2 and ls's own directory fd; as root also bwrap's --userns2 descriptor (the step's own
  // user namespace, which bwrap leaves open).
  Run l = run(sh_spec(tmp / "root", "for f in /proc/self/fd/*; do echo \"$f $(readlink $f)\"; done"));
  std::size_t others = 0;
  for (const auto& line : l.lines)
    if (!contains(line, "/fd/0 ") && !contains(line, "/fd/1 ") && !contains(line, "/fd/2 ") && !contains(line, "user:["))
      ++others;
  INFO("fds: " << Catch::Detail::stringify(l.lines));
  CHECK(others <= 1);  // the glob's directory
  CHECK(r.lines.size() <= (::geteuid() == 0 ? 5u : 4u));
}

TEST_CASE("what the command writes lands in the bound root", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  Run r = run(sh_spec(tmp / "root", "echo hi > /out.txt && mkdir -p /a/b && touch /a/b/c && rm /bin/rm"));
  CHECK(r.result.exit_code == 0);
  CHECK(read_file(tmp / "root" / "out.txt") == "hi\n");
  CHECK(fs::exists(tmp / "root" / "a" / "b" / "c"));
  CHECK(!fs::exists(fs::symlink_status(tmp / "root" / "bin" / "rm")));
  // /tmp is a fresh tmpfs: not the root's tmp dir.
  run(sh_spec(tmp / "root", "touch /tmp/scratch"));
  CHECK(!fs::exists(tmp / "root" / "tmp" / "scratch"));
}

TEST_CASE("without network there is only loopback", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  SandboxSpec s = sh_spec(tmp / "root", "cat /proc/net/dev");
  s.network = false;
  Run r = run(s);
  CHECK(r.result.exit_code == 0);
  std::set<std::string> ifaces;
  for (const auto& l : r.lines) {
    auto colon = l.find(':');
    if (colon == std::string::npos) continue;
    std::string name = l.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    ifaces.insert(name);
  }
  CHECK(ifaces == std::set<std::string>{"lo"});
}

TEST_CASE("with network the host's resolv.conf is visible", "[sandbox]") {
  if (!have_tools()) return;
  if (::access("/etc/resolv.conf", R_OK) != 0) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  SandboxSpec s = sh_spec(tmp / "root", "cat /etc/resolv.conf");
  SandboxIo io;
  std::string seen;
  io.on_line = [&](std::string_view l) { seen.append(l).append("\n"); };
  CHECK(run_sandboxed(s, io).exit_code == 0);
  std::string host = read_file("/etc/resolv.conf");
  if (!host.empty() && host.back() != '\n') host += '\n';
  CHECK(seen == host);
}

TEST_CASE("a root whose resolv.conf is a symlink still starts", "[sandbox]") {
  if (!have_tools()) return;
  // Some images link /etc/resolv.conf to a resolver's runtime file that does not exist in the root;
  // bwrap cannot bind over such a link, so the host's is left out.
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  fs::create_symlink("../run/systemd/resolve/stub-resolv.conf", tmp / "root" / "etc" / "resolv.conf");
  Run r = run(sh_spec(tmp / "root", "echo ok"));
  CHECK(r.result.exit_code == 0);
  CHECK(r.lines == std::vector<std::string>{"ok"});
  CHECK(fs::is_symlink(tmp / "root" / "etc" / "resolv.conf"));

  if (::geteuid() != 0) return;
  TempDir o("kiln-sandbox");
  make_rootfs(o / "lower");
  fs::create_symlink("../run/systemd/resolve/stub-resolv.conf", o / "lower" / "etc" / "resolv.conf");
  SandboxSpec s = sh_spec({}, "echo ok");
  s.lowers = {o / "lower"};
  s.upper = o / "upper";
  s.work = o / "work";
  r = run(s);
  CHECK(r.result.exit_code == 0);
  CHECK(r.lines == std::vector<std::string>{"ok"});
}

TEST_CASE("mounts: read-only ones are visible and not writable, read-write ones are", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  write_file(tmp / "ro" / "f", "data\n");
  fs::create_directories(tmp / "rw");

  SandboxSpec s = sh_spec(tmp / "root",
                          "cat /data/f; if touch /data/new 2>/dev/null; then echo writable; else echo read-only; fi; "
                          "echo out > /out/new");
  s.mounts = {{tmp / "ro", "/data", true}, {tmp / "rw", "/out", false}};
  Run r = run(s);
  CHECK(r.result.exit_code == 0);
  CHECK(r.lines == std::vector<std::string>{"data", "read-only"});
  CHECK(!fs::exists(tmp / "ro" / "new"));
  CHECK(read_file(tmp / "rw" / "new") == "out\n");

  s.mounts = {{tmp / "missing-source", "/x", true}};
  CHECK(contains(error_of(s), (tmp / "missing-source").string()));
}

TEST_CASE("the tail keeps the last lines; long lines come in bounded pieces", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");

  Run r = run(sh_spec(tmp / "root", "seq 1 1000"), 5);
  CHECK(r.lines.size() == 1000);
  CHECK(r.result.tail == std::vector<std::string>{"996", "997", "998", "999", "1000"});
  CHECK(run(sh_spec(tmp / "root", "seq 1 10"), 0).result.tail.empty());

  // 200000 bytes without a newline (a progress bar): pieces of at most 64 KiB, nothing lost.
  r = run(sh_spec(tmp / "root", "yes x | head -n 200000 | tr -d '\\n'"));
  CHECK(r.result.exit_code == 0);
  std::string all;
  for (const auto& l : r.lines) {
    CHECK(l.size() <= 64 * 1024);
    all += l;
  }
  CHECK(r.lines.size() >= 4);
  CHECK(all == std::string(200000, 'x'));

  r = run(sh_spec(tmp / "root", "printf '10%%\\r50%%\\r100%%\\n'"));
  CHECK(r.lines == std::vector<std::string>{"10%\r50%\r100%"});
}

TEST_CASE("overlay mode leaves the lowers alone and records changes in the upper", "[sandbox]") {
  if (!have_tools() || !is_root()) return;
  OverlaySetup o;

  Run r = run(o.spec("cat /shadowed.txt; echo new > /new.txt; rm /del.txt; echo changed >> /keep.txt; "
                     "mkdir -p /made/dir; ls /"));
  CHECK(r.result.exit_code == 0);
  REQUIRE(!r.lines.empty());
  CHECK(r.lines.front() == "from top");  // the first lower is the topmost

  // The lowers are untouched.
  CHECK(read_file(o.base / "keep.txt") == "base\n");
  CHECK(read_file(o.base / "del.txt") == "doomed\n");
  CHECK(!fs::exists(o.base / "new.txt"));
  CHECK(!fs::exists(o.top / "new.txt"));
  CHECK(!fs::exists(o.base / "made"));

  // The upper holds the changes: new and copied-up files, and a whiteout for the deleted one.
  CHECK(read_file(o.upper / "new.txt") == "new\n");
  CHECK(read_file(o.upper / "keep.txt") == "base\nchanged\n");
  CHECK(is_whiteout(o.upper / "del.txt"));
  CHECK(fs::is_directory(o.upper / "made" / "dir"));

  // The mount lived in the child's namespace only, and the mountpoint dir is gone.
  CHECK(!mounts_mention(o.tmp.path()));
  CHECK(!fs::exists(o.tmp / "merged"));

  // A second run sees the first one's upper on top.
  r = run(o.spec("cat /new.txt; ls /del.txt 2>/dev/null || echo deleted"));
  CHECK(r.lines == std::vector<std::string>{"new", "deleted"});
}

TEST_CASE("overlay mode rejects what overlayfs cannot take", "[sandbox]") {
  if (!have_tools() || !is_root()) return;
  OverlaySetup o;

  fs::create_directories(o.tmp / "a:b");
  SandboxSpec s = o.spec("true");
  s.lowers = {o.tmp / "a:b", o.base};
  CHECK(contains(error_of(s), "':'"));

  s = o.spec("true");
  s.lowers.push_back(o.tmp / "missing");
  CHECK(contains(error_of(s), (o.tmp / "missing").string()));

  // A work dir inside the upper dir: the kernel refuses the mount, which is not the command's
  // failure but a setup error.
  s = o.spec("true");
  s.work = o.upper / "work";
  const std::string msg = error_of(s);
  CHECK(contains(msg, "cannot mount overlayfs"));
  CHECK(!mounts_mention(o.tmp.path()));
}

TEST_CASE("overlay_supported is true for root here, and leaves nothing behind", "[sandbox]") {
  TempDir tmp("kiln-sandbox");
  const bool expected = ::geteuid() == 0;
  CHECK(overlay_supported(tmp.path()) == expected);
  CHECK(overlay_supported(tmp.path()) == expected);  // cached
  CHECK(fs::is_empty(tmp.path()));
  CHECK(!mounts_mention(tmp.path()));
}

namespace {

/// Forks a stand-in for kiln that runs `spec`, waits until `ready` exists, kills the stand-in
/// with SIGKILL and checks that the sandboxed command dies too.
void check_dies_with_kiln(const SandboxSpec& spec, const fs::path& ready, const std::vector<std::string>& cmdline) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    try {
      run_sandboxed(spec, {});
    } catch (...) {
    }
    ::_exit(0);
  }
  const bool started = wait_until([&] { return fs::exists(ready); });
  CHECK(started);
  // The script touches `ready` and then execs the command: give the exec its moment.
  CHECK(wait_until([&] { return process_exists(cmdline); }));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(wait_until([&] { return !process_exists(cmdline); }));
}

}  // namespace

TEST_CASE("killing kiln kills the sandbox", "[sandbox]") {
  if (!have_tools()) return;
  // A distinctive argument, so the check does not see anyone else's sleep.
  const std::string secs = std::to_string(7000 + ::getpid() % 1000);
  const std::string script = "touch /ready; exec sleep " + secs;
  const std::vector<std::string> cmdline = {"sleep", secs};

  SECTION("bound root") {
    TempDir tmp("kiln-sandbox");
    make_rootfs(tmp / "root");
    check_dies_with_kiln(sh_spec(tmp / "root", script), tmp / "root" / "ready", cmdline);
  }
  SECTION("overlay") {
    if (!is_root()) return;
    OverlaySetup o;
    check_dies_with_kiln(o.spec(script), o.upper / "ready", cmdline);
    // The overlay went with the mount namespace (only the empty mountpoint dir is left).
    CHECK(!mounts_mention(o.tmp.path()));
    CHECK(fs::is_empty(o.tmp / "merged"));
  }
}

// ---- confinement: the seccomp filter, capabilities, user namespaces, the timeout ---------------

namespace {

/// Runs `f` in a forked child after loading the RUN-step seccomp filter (unless `filtered` is
/// false); returns the child's exit status.
template <class F>
int in_child(bool filtered, F f) {
  const std::string& prog = step_seccomp_program();
  pid_t pid = ::fork();
  if (pid == 0) {
    if (filtered) {
      struct sock_fprog fp{};
      fp.len = static_cast<unsigned short>(prog.size() / sizeof(struct sock_filter));
      fp.filter = reinterpret_cast<struct sock_filter*>(const_cast<char*>(prog.data()));
      if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp) != 0)
        ::_exit(100);
    }
    ::_exit(f());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 200;
}

/// errno of a call that is expected to fail (0 when it succeeded).
int err_of(int rc) { return rc == 0 ? 0 : errno; }

}  // namespace

TEST_CASE("the seccomp filter denies mount, new user namespaces and device nodes with EPERM", "[sandbox][seccomp]") {
  REQUIRE(step_seccomp_program().size() % sizeof(struct sock_filter) == 0);
  REQUIRE(!step_seccomp_program().empty());
  TempDir tmp("kiln-seccomp");
  const std::string missing = (tmp / "no-such-dir").string();
  const std::string blk = (tmp / "blk").string(), chr = (tmp / "chr").string(), wh = (tmp / "wh").string();
  auto mount_errno = [&] { return err_of(::mount("none", missing.c_str(), "tmpfs", 0, nullptr)); };

  // The filter answers before the kernel looks at the path: EPERM, not ENOENT.
  CHECK(in_child(true, mount_errno) == EPERM);
  CHECK(in_child(true, [&] { return err_of(::umount2(missing.c_str(), 0)); }) == EPERM);
  CHECK(in_child(true, [] { return err_of(::unshare(CLONE_NEWUSER)); }) == EPERM);
  CHECK(in_child(true, [] { return err_of(::unshare(CLONE_NEWNS | CLONE_NEWUSER)); }) == EPERM);
  CHECK(in_child(true, [&] { return err_of(::mknod(blk.c_str(), S_IFBLK | 0600, makedev(8, 0))); }) == EPERM);
  CHECK(in_child(true, [&] { return err_of(::mknod(chr.c_str(), S_IFCHR | 0600, makedev(1, 3))); }) == EPERM);
  CHECK(in_child(true, [] { return err_of(::syscall(SYS_init_module, nullptr, 0, "")); }) == EPERM);
  CHECK(in_child(true, [] { return err_of(::syscall(SYS_bpf, 0, nullptr, 0)); }) == EPERM);
  CHECK(in_child(true, [] { return err_of(::syscall(SYS_clone3, nullptr, 0)); }) == ENOSYS);
  // What builds need still works: files, fifos, a plain unshare of the uts namespace when allowed.
  CHECK(in_child(true, [&] { return err_of(::mkfifo((tmp / "fifo").c_str(), 0600)); }) == 0);
  CHECK(fs::exists(tmp / "fifo"));
  if (::geteuid() == 0) {
    // Root may make the 0/0 whiteout; and without the filter the same mount call reaches the
    // kernel, which finds no such directory: the EPERM above came from the filter.
    CHECK(in_child(true, [&] { return err_of(::mknod(wh.c_str(), S_IFCHR | 0600, makedev(0, 0))); }) == 0);
    CHECK(in_child(false, mount_errno) == ENOENT);
  }
}

TEST_CASE("a step has no capability outside its user namespace, even when kiln runs as root", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  fs::create_directories(tmp / "root" / "mnt");
  Run r = run(sh_spec(tmp / "root",
                      "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; "
                      "mount -t tmpfs none /mnt && echo MOUNTED; mknod /blk b 8 0 && echo MKNOD; "
                      "mount -t proc proc /mnt && echo PROC; unshare -U true && echo USERNS; "
                      "echo x > /proc/sysrq-trigger && echo SYSRQ; touch /mine; chown 100:101 /mine; echo done"));
  CHECK(r.result.exit_code == 0);
  std::string all;
  for (const auto& l : r.lines) all += l + "\n";
  INFO(all);
  CHECK(contains(all, "NoNewPrivs:\t1"));
  CHECK(!contains(all, "MOUNTED"));
  CHECK(!contains(all, "MKNOD"));
  CHECK(!contains(all, "PROC"));
  CHECK(!contains(all, "USERNS"));
  CHECK(!contains(all, "SYSRQ"));
  CHECK(!fs::exists(tmp / "root" / "blk"));
  CHECK(contains(all, "done"));
  if (::geteuid() == 0) {
    // Docker's default set minus CAP_MKNOD and CAP_NET_RAW: no CAP_SYS_ADMIN (bit 21).
    CHECK(contains(all, "CapEff:\t00000000a00405fb"));
    // Files the step gives to other users land on disk with those ids.
    struct stat st{};
    REQUIRE(::lstat((tmp / "root" / "mine").c_str(), &st) == 0);
    CHECK(st.st_uid == 100);
    CHECK(st.st_gid == 101);
  }
}

TEST_CASE("as root, the step's root is not the host's root where the store takes idmapped mounts", "[sandbox]") {
  if (!have_tools() || !is_root()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  // A 0700 host directory the step's root may not read unless it were the host's root.
  Run r = run(sh_spec(tmp / "root", "cat /proc/self/uid_map"));
  REQUIRE(r.result.exit_code == 0);
  REQUIRE(!r.lines.empty());
  // Shifted: uid 0 inside is not uid 0 of the parent namespace's parent (the map shows the step's
  // range inside bwrap's namespace); identity (KILN_SANDBOX_SHIFT=0): the whole range.
  CHECK(contains(r.lines.front(), "2147483647"));
  {
    EnvVar off("KILN_SANDBOX_SHIFT", "0");
    // The probe is cached per file system; the variable is read before it.
    Run id = run(sh_spec(tmp / "root", "cat /proc/self/uid_map; touch /f; chown 7:8 /f"));
    REQUIRE(id.result.exit_code == 0);
    CHECK(contains(id.lines.front(), "4294967295"));
    struct stat st{};
    REQUIRE(::lstat((tmp / "root" / "f").c_str(), &st) == 0);
    CHECK(st.st_uid == 7);
  }
}

TEST_CASE("a command that outlives the timeout is killed with everything it started", "[sandbox]") {
  if (!have_tools()) return;
  TempDir tmp("kiln-sandbox");
  make_rootfs(tmp / "root");
  SandboxIo io;
  io.timeout = 0.3;
  // Distinctive durations, so the check never sees another test's (or another checkout's) sleep.
  const std::string a = std::to_string(100000 + ::getpid() % 100000), b = std::to_string(200000 + ::getpid() % 100000);
  SandboxSpec spec = sh_spec(tmp / "root", "sleep " + a + " & sleep " + b + "; echo never");
  SandboxResult res = run_sandboxed(spec, io);
  CHECK(res.timed_out);
  CHECK(res.exit_code != 0);
  CHECK(wait_until([&] { return !process_exists({"sleep", a}) && !process_exists({"sleep", b}); }));
  // Without a timeout (or a generous one) the same kind of command finishes normally.
  io.timeout = 60;
  SandboxResult ok = run_sandboxed(sh_spec(tmp / "root", "true"), io);
  CHECK(!ok.timed_out);
  CHECK(ok.exit_code == 0);
}
