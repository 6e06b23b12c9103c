// SIGINT and SIGTERM during `kiln build`: the build stops, and the caller still gets its answer.
//
// While an InterruptGuard lives, the first SIGINT or SIGTERM only sets flag() (and says so on
// stderr). The build session polls it (session::Environment::interrupt): a build stops at its next
// layer event, a running RUN step is killed, nothing is committed from then on, the record says
// "interrupted", and the command prints the failure (exit 130 for SIGINT, 143 for SIGTERM). A build
// that is somewhere it cannot stop from (a registry upload, a wait for the name lock, hashing) is
// given `grace` seconds; then, or at a second signal, the guard prints the fallback failure itself
// and the process _exits 128 + signal, which leaves the store and the outputs as a kill -9 leaves
// them: nothing half written is visible (blobs are renamed into place whole, tags move last).
//
// A signal kiln was started with ignored (SIGINT in a script's background job) stays ignored.
//
// stdout gets exactly one result: the command claims it (claim_output) before printing, and the
// fallback prints only when nobody has.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

namespace kiln::cli {

class InterruptGuard {
 public:
  /// `fallback(signal)` prints the failure when the build did not stop in time (stdout and
  /// stderr); it runs on the guard's thread, with the output claimed.
  explicit InterruptGuard(std::function<void(int)> fallback, double grace_seconds = 3.0);
  ~InterruptGuard();  // the default dispositions again
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  /// The signal caught (0 until one is): what session::Environment::interrupt points at.
  const std::atomic<int>* flag() const;

  /// The command's result goes out now, with exit code `code`: hold the returned lock while
  /// printing it. (When the fallback printed first, this never returns: the process is exiting.)
  std::unique_lock<std::mutex> claim_output(int code);

 private:
  void watch();
  std::function<void(int)> fallback_;
  double grace_;
  std::mutex out_mu_;
  bool printed_ = false;
  int code_ = 0;
  std::thread watcher_;
};

}  // namespace kiln::cli
