// The transport: one io_uring ring per shard that connects, sends and
// receives for every VM of the shard, and the timers that drive them.
// loop() is the shard's thread; every completion and timer runs under the
// shard mutex.
#pragma once

#include "kernel-patches/sim/model.hpp"

#include <liburing.h>

#include <queue>

namespace kvmi::sim::detail {

struct shard;

enum class timer_kind : uint8_t { connect, workload, unhook_timeout, torn_resume, slow_send,
                                  gpu_online, reconnect_storm, hotplug_storm, handshake_timeout,
                                  vcpu_start, drain_check };

struct timer {
  time_point at;
  timer_kind kind;
  uint32_t vm, vcpu, gen;
  uint64_t seq; // FIFO among equal times
  bool operator>(const timer& o) const { return at != o.at ? at > o.at : seq > o.seq; }
};

class transport {
public:
  explicit transport(shard& s);
  ~transport();
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;

  void wake(); // from any thread: the loop looks at its work again
  void add_timer(time_point at, timer_kind k, uint32_t vm_local, uint32_t vcpu = 0,
                 uint32_t gen = 0);
  // v.out has new bytes: they go out after this batch.
  void mark_dirty(vm& v);
  void connect(vm& v);       // a new socket to the introspector, unless one is up
  void receive(vm& v);       // the next recv on v's socket
  void close(vm& v);         // the socket goes; its completions are stale from now on
  void resume_torn(vm& v);   // a torn frame's pause passed: its tail goes out
  void loop();               // until the host stops

private:
  io_uring_sqe* sqe();
  void connect_failed(vm& v, int err);
  void arm_wake();
  void flush(vm& v);
  void submit_send(vm& v);
  void on_cqe(io_uring_cqe* cqe);
  void service();

  shard& s_;
  io_uring ring_{};
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  bool wake_armed_ = false;
  std::priority_queue<timer, std::vector<timer>, std::greater<>> timers_;
  uint64_t timer_seq_ = 0;
  std::vector<uint32_t> dirty_;
};

} // namespace kvmi::sim::detail
