// Minimal fork-join parallel loop over std::threads (no OpenMP runtime, so the library can share
// a process with PyTorch's or any other OpenMP without clashing, and builds with any compiler).
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <cstdint>
#include <thread>
#include <vector>

namespace flexavatar {
namespace detail {

inline int resolve_thread_count(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls fn(begin, end) on chunks of [0, n), handed out dynamically to `threads` workers (the
// calling thread is one of them). An exception thrown by fn (e.g. std::bad_alloc) stops the
// hand-out and is rethrown on the calling thread after all workers have joined.
template <typename Fn>
void parallel_for(int64_t n, int64_t chunk, int threads, const Fn& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  const int workers = static_cast<int>(std::min<int64_t>(threads, num_chunks));
  if (workers <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&]() {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= num_chunks) return;
      const int64_t begin = c * chunk;
      try {
        fn(begin, std::min(n, begin + chunk));
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        next.store(num_chunks);
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (int i = 0; i < workers - 1; ++i) {
    try {
      pool.emplace_back(work);
    } catch (...) {
      break;  // no more threads available: the ones we have (at least this one) do the rest
    }
  }
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace detail
}  // namespace flexavatar
