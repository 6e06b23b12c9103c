// parallel_for: runs fn(i) for i in [0, n) on up to `jobs` threads (the caller's included). The
// first exception stops the handing out of new work and is rethrown once every thread is done.
#pragma once

#include <algorithm>
#include <atomic>
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

}  // namespace kiln::layers
