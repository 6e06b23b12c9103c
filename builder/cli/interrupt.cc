// SIGINT and SIGTERM during a build (see interrupt.h).
#include "builder/cli/interrupt.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>

namespace kiln::cli {
namespace {

std::atomic<int> g_signal{0};  // the first signal caught
int g_pipe[2] = {-1, -1};      // the handler writes the signal number; the guard's destructor a 0
struct Caught {
  int sig;
  bool installed;
  struct sigaction old;
};
Caught g_caught[] = {{SIGINT, false, {}}, {SIGTERM, false, {}}};

/// Async-signal-safe: an atomic store and a write().
void on_signal(int sig) {
  const int saved = errno;
  int none = 0;
  g_signal.compare_exchange_strong(none, sig);
  const char b = static_cast<char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_pipe[1], &b, 1);
  errno = saved;
}

const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

}  // namespace

InterruptGuard::InterruptGuard(std::function<void(int)> fallback, double grace_seconds)
    : fallback_(std::move(fallback)), grace_(grace_seconds) {
  if (::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe: " + std::string(std::strerror(errno)));
  g_signal = 0;
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // the build's system calls go on; it polls flag() to stop
  for (Caught& c : g_caught) {
    // A signal kiln was started with ignored (SIGINT for a script's background job) stays ignored,
    // as a shell leaves it: only a signal meant for kiln stops it.
    c.installed = ::sigaction(c.sig, nullptr, &c.old) == 0 && c.old.sa_handler != SIG_IGN &&
                  ::sigaction(c.sig, &sa, nullptr) == 0;
  }
  watcher_ = std::thread([this] { watch(); });
}

InterruptGuard::~InterruptGuard() {
  const char stop = 0;
  while (::write(g_pipe[1], &stop, 1) < 0 && errno == EINTR) {
  }
  if (watcher_.joinable()) watcher_.join();
  for (Caught& c : g_caught)
    if (c.installed) ::sigaction(c.sig, &c.old, nullptr);
  ::close(g_pipe[0]);
  ::close(g_pipe[1]);
  g_pipe[0] = g_pipe[1] = -1;
}

const std::atomic<int>* InterruptGuard::flag() const { return &g_signal; }

std::unique_lock<std::mutex> InterruptGuard::claim_output(int code) {
  std::unique_lock<std::mutex> lock(out_mu_);
  printed_ = true;
  code_ = code;
  return lock;
}

void InterruptGuard::watch() {
  using Clock = std::chrono::steady_clock;
  bool seen = false, timer = false;
  Clock::time_point deadline{};
  for (;;) {
    int timeout = -1;
    if (timer) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      timeout = left > 0 ? static_cast<int>(left) : 0;
    }
    struct pollfd p{g_pipe[0], POLLIN, 0};
    int r = ::poll(&p, 1, timeout);
    if (r < 0 && errno == EINTR) continue;
    bool force = false;
    if (r > 0) {
      char b = 0;
      ssize_t n = ::read(g_pipe[0], &b, 1);
      if (n <= 0) continue;
      if (b == 0) return;  // the guard is going away: the command ended
      if (!seen) {
        seen = true;
        timer = true;
        deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_));
        std::fprintf(stderr, "\nkiln: %s: stopping (nothing not yet committed is kept); again to stop at once\n",
                     signal_name(g_signal.load()));
        continue;
      }
      force = true;  // a second signal
    } else if (r == 0) {
      timer = false;
      force = true;  // the build did not stop in time
    }
    if (!force) continue;
    const int sig = g_signal.load();
    std::unique_lock<std::mutex> lock(out_mu_);
    if (!printed_) {
      printed_ = true;
      fallback_(sig);
      std::cout.flush();
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(128 + sig);
    }
    // The command has printed its result already and is on its way out: let it end, unless it is
    // told again (then with the code it printed).
    if (r > 0) {
      std::cout.flush();
      std::fflush(stdout);
      ::_exit(code_);
    }
  }
}

}  // namespace kiln::cli
