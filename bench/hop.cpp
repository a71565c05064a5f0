// The cost of kvmid's design hop on its own: a thread outside CAF (the ring)
// sends a message to an actor and polls for its answer, with the scheduler
// configured exactly as kvmid's core configures it. kvmid's 1-vCPU round
// trip is about the socket floor plus this.
#include "bench/floor.hpp"

#include "actors/core.hpp"

#include <caf/all.hpp>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

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

namespace {

// As big as a vCPU actor's state.
struct idle_st {
  static inline const char* name = "bench.idle";
  char bytes[128] = {};
};

uint64_t own_rss_kib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6));
  return 0;
}

} // namespace

double idle_actor_kib(size_t n, size_t workers) {
  caf::actor_system_config cfg;
  kvmid::configure_scheduler(cfg, workers);
  caf::actor_system sys{cfg};
  std::atomic<size_t> started{0};
  std::vector<caf::actor> actors;
  actors.reserve(n);
  uint64_t before = own_rss_kib();
  for (size_t i = 0; i < n; ++i)
    actors.push_back(sys.spawn(
      [&started](caf::stateful_actor<idle_st>* self) -> caf::behavior {
        return {[self, &started](int x) {
          self->state.bytes[0] = char(x);
          started.fetch_add(1, std::memory_order_relaxed);
        }};
      }));
  for (auto& a : actors)
    caf::anon_send(a, 1); // each has run once, as a configured vCPU has
  while (started.load(std::memory_order_relaxed) < n)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  uint64_t after = own_rss_kib();
  for (auto& a : actors)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  return n ? double(after - before) / double(n) : 0;
}

} // namespace bench
