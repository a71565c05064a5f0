// The floor every kvmid figure is compared to: a raw UNIX-socket ping-pong
// with the exact sizes of a KVMI event and its reply, once with blocking
// I/O and once with io_uring, measured in the same run as kvmid. Its two
// ends run on two different cores, as a vCPU and kvmid do: left to the
// scheduler they sometimes share one, and on a virtual machine a wakeup on
// the same core costs a twentieth of one across cores (3 against 80 us a
// round trip here), which made the floor jump between the two.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <sched.h>

namespace bench {

// Round-trip times in nanoseconds, one per exchange.
using samples = std::vector<uint64_t>;

samples floor_blocking(size_t rounds, size_t event_bytes, size_t reply_bytes);
samples floor_uring(size_t rounds, size_t event_bytes, size_t reply_bytes);
// One message from a non-actor thread to an actor and its answer back, the
// caller polling: the hop kvmid's design puts on every event (hop.cpp).
samples actor_hop(size_t rounds, size_t workers);
// The memory floor of one idle vCPU: KiB of RSS per idle CAF actor with a
// vCPU actor's state size, n of them spawned in a process that does
// nothing else (kvmid-bench --idle-actor-floor).
double idle_actor_kib(size_t n, size_t workers);

struct summary {
  uint64_t p50 = 0, p99 = 0, p999 = 0, max = 0;
  double mean = 0;
};
summary summarize(samples s); // sorts its copy

uint64_t now_ns();

// The calling thread, and the threads it starts meanwhile, on the k-th CPU
// it may run on (and_later: on that one and every later one), for as long
// as it lives; where it may run before, restored by the destructor.
// Nothing changes with fewer than two such CPUs.
class on_cpu {
public:
  explicit on_cpu(int k, bool and_later = false);
  ~on_cpu();
  on_cpu(const on_cpu&) = delete;
  on_cpu& operator=(const on_cpu&) = delete;

private:
  cpu_set_t saved_{};
  bool pinned_ = false;
};

} // namespace bench
