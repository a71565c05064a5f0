// The cap on KVMI connections still in their handshake. An unauthenticated
// peer holds a socket (an fd) until its handshake ends; past the cap a new
// connection is closed at once, so peers that never finish cannot take
// every fd. A burst of refusals is logged once when it starts and once when
// handshakes are admitted again.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kvmid {

class handshake_gate {
public:
  explicit handshake_gate(size_t max) : max_(max) {}
  // A new connection's handshake may start (then leave() once it ends), or
  // not: the cap is reached.
  bool enter();
  void leave();
  size_t pending() const { return pending_.load(std::memory_order_relaxed); }
  size_t max() const { return max_; }

private:
  const size_t max_;
  std::atomic<size_t> pending_{0};
  std::atomic<uint64_t> refused_in_burst_{0};
};

} // namespace kvmid
