// The cost of kvmid's design hop on its own: a thread outside CAF (the ring)
// sends a message to an actor and polls for its answer, with the scheduler
// configured exactly as kvmid's core configures it. kvmid's 1-vCPU round
// trip is about the socket floor plus this.
#include "bench/floor.hpp"

#include "actors/core.hpp"

#include <caf/all.hpp>

#include <atomic>

namespace bench {

samples actor_hop(size_t rounds, size_t workers) {
  caf::actor_system_config cfg;
  kvmid::configure_scheduler(cfg, workers);
  caf::actor_system sys{cfg};
  std::atomic<uint64_t> answered{0};
  auto responder = sys.spawn([&answered](caf::event_based_actor*) -> caf::behavior {
    return {[&answered](uint64_t i) { answered.store(i, std::memory_order_release); }};
  });
  samples s;
  s.reserve(rounds);
  for (uint64_t i = 1; i <= rounds; ++i) {
    uint64_t t0 = now_ns();
    caf::anon_send(responder, i);
    while (answered.load(std::memory_order_acquire) != i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    s.push_back(now_ns() - t0);
  }
  caf::anon_send_exit(responder, caf::exit_reason::user_shutdown);
  return s;
}

} // namespace bench
