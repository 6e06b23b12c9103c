// parallel_for: runs fn(i) for i in [0, n) on up to `jobs` threads (the caller's included). The
// first exception stops the handing out of new work and is rethrown once every thread is done.
// Handoff: a thread of its own that runs one job at a time beside the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::layers {

inline void parallel_for(std::size_t n, int jobs, const std::function<void(std::size_t)>& fn) {
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  std::exception_ptr failure;
  auto work = [&] {
    for (;;) {
      std::size_t i = next++;
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failure) failure = std::current_exception();
        next = n;  // hand out nothing more
        return;
      }
    }
  };
  int t = std::max(1, std::min<int>(jobs, static_cast<int>(std::min<std::size_t>(n, 1u << 16))));
  std::vector<std::thread> threads;
  for (int k = 1; k < t; ++k) threads.emplace_back(work);
  work();
  for (auto& th : threads) th.join();
  if (failure) std::rethrow_exception(failure);
}

/// A thread of its own that runs the jobs handed to it one at a time, in order, while the caller
/// goes on: the side hasher of a big file (tar_writer.cc), the direct writes of a big file
/// (store.cc). start() waits for the job before; wait() waits for the last one. A job's exception
/// is kept and rethrown by every later start() and wait(). The destructor waits for the job in
/// hand, so what a job reads must outlive the Handoff (declare the Handoff after it).
class Handoff {
 public:
  Handoff() : thread_([this] { run(); }) {}
  ~Handoff() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Handoff(const Handoff&) = delete;
  Handoff& operator=(const Handoff&) = delete;
  void start(std::function<void()> job) {
    wait();
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = std::move(job);
    }
    cv_.notify_all();
  }
  void wait() {
    drain();
    std::lock_guard<std::mutex> lk(mu_);
    if (error_) std::rethrow_exception(error_);
  }
  /// Waits for the job in hand without rethrowing (for a destructor).
  void drain() noexcept {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !job_; });
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || job_; });
      if (!job_) return;  // stopped with nothing in hand
      lk.unlock();
      std::exception_ptr err;
      try {
        job_();
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      if (err && !error_) error_ = err;
      job_ = nullptr;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;  // set while a job is in hand
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace kiln::layers
