// host's state: the options, the shards and what the public API waits on.
#pragma once

#include "kernel-patches/sim/shard.hpp"

#include <atomic>
#include <condition_variable>

#include <sys/socket.h>

namespace kvmi::sim {

struct host::impl {
  options o;
  std::vector<std::unique_ptr<detail::shard>> shards;
  std::atomic<bool> stopping{false};
  std::atomic<bool> quiesced{false}; // quiesce(): no workload, storms or random faults
  bool started = false;
  detail::time_point t0;
  std::mutex changed_mu;
  std::condition_variable changed_cv;
  uint64_t changed_gen = 0;
  std::thread progress;
  std::mutex progress_mu;
  std::condition_variable progress_cv;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;

  detail::shard& shard_of(uint32_t vm) { return *shards[vm % shards.size()]; }
  uint32_t local_of(uint32_t vm) const { return vm / static_cast<uint32_t>(shards.size()); }
  void notify() {
    {
      std::lock_guard<std::mutex> l(changed_mu);
      ++changed_gen;
    }
    changed_cv.notify_all();
  }
};

} // namespace kvmi::sim
