// parallel_for over std::thread (no OpenMP: its runtime clashes with torch's).
// Work below `grain` items per thread runs inline; the first exception thrown
// by any worker is re-thrown in the caller after all workers joined. If a
// worker thread cannot be created (std::system_error: EAGAIN under a pids or
// memory limit), the ranges it would have run run inline in the caller, so a
// call never aborts for lack of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace binllm {

int num_threads();

// fn(begin, end) is called on disjoint ranges covering [0, n).
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  int64_t t = std::min<int64_t>(num_threads(), (n + grain - 1) / std::max<int64_t>(grain, 1));
  if (t <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> workers;
  const int64_t chunk = (n + t - 1) / t;
  auto run = [&](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  int64_t inline_from = 1;  // chunks [inline_from, t) run in the caller
  try {
    workers.reserve(static_cast<size_t>(t - 1));
    for (int64_t i = 1; i < t; ++i) {
      const int64_t b = i * chunk, e = std::min(n, b + chunk);
      if (b < e) workers.emplace_back(run, b, e);
      inline_from = i + 1;
    }
  } catch (const std::system_error&) {
    // no more threads: keep those started, run the rest here
  } catch (const std::bad_alloc&) {
  }
  run(0, std::min(n, chunk));
  for (int64_t i = inline_from; i < t; ++i) {
    const int64_t b = i * chunk, e = std::min(n, b + chunk);
    if (b < e) run(b, e);
  }
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace binllm
