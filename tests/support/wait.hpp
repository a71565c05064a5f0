// Waiting on conditions, never on the clock: every wait has a generous
// deadline (the machine may be saturated by other tests) and names what it
// waited for when that deadline passes.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <string>
#include <thread>

namespace kvmid::test {

using namespace std::chrono_literals;

inline constexpr std::chrono::milliseconds default_deadline = 30s;

// Polls `cond` until it holds; false (and a failed check naming `what`)
// once `deadline` has passed.
template <class F>
bool wait_until(F&& cond, const std::string& what,
                std::chrono::milliseconds deadline = default_deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  auto pause = 1ms;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= end) {
      FAIL_CHECK("gave up after " << deadline.count() << " ms waiting for: " << what);
      return false;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, 50ms);
  }
  return true;
}

// The future's value; a test failure naming `what` if it is not ready
// within `deadline` (a stall is reported, not hung on).
template <class T>
T get_within(std::future<T> f, std::chrono::milliseconds deadline, const std::string& what) {
  if (f.wait_for(deadline) != std::future_status::ready)
    FAIL("no result after " << deadline.count() << " ms for: " << what);
  return f.get();
}
template <class T>
T get_within(std::future<T> f, const std::string& what) {
  return get_within(std::move(f), default_deadline, what);
}

} // namespace kvmid::test
