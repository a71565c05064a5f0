#include "server/handshake_gate.hpp"

#include "actors/log.hpp"

#include <cstdio>

namespace kvmid {

bool handshake_gate::enter() {
  size_t n = pending_.load(std::memory_order_relaxed);
  do {
    if (n >= max_) {
      if (refused_in_burst_.fetch_add(1, std::memory_order_relaxed) == 0 && log_on(log_warn))
        std::fprintf(stderr,
                     "kvmid: %zu KVMI handshakes pending (max_handshakes): refusing new "
                     "connections until some finish\n",
                     max_);
      return false;
    }
  } while (!pending_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  if (auto r = refused_in_burst_.exchange(0, std::memory_order_relaxed); r && log_on(log_warn))
    std::fprintf(stderr, "kvmid: KVMI handshakes admitted again after %llu refused connections\n",
                 static_cast<unsigned long long>(r));
  return true;
}

void handshake_gate::leave() { pending_.fetch_sub(1, std::memory_order_relaxed); }

} // namespace kvmid
