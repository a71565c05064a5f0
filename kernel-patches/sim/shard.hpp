// A shard: one event loop and the VMs it owns. Its parts cooperate through
// it: the transport moves bytes, the device manager runs connections, the
// kernel runs sessions, the guest runs vCPUs, the fault injector breaks
// things on purpose. The shard mutex guards all of it; the public API takes
// it too.
#pragma once

#include "kernel-patches/sim/device_manager.hpp"
#include "kernel-patches/sim/fault_injector.hpp"
#include "kernel-patches/sim/guest.hpp"
#include "kernel-patches/sim/kernel.hpp"
#include "kernel-patches/sim/latency.hpp"
#include "kernel-patches/sim/transport.hpp"
#include "kernel-patches/sim/workload.hpp"

#include <mutex>
#include <thread>

namespace kvmi::sim::detail {

struct shard {
  shard(host::impl* hi, unsigned i);
  ~shard();
  shard(const shard&) = delete;
  shard& operator=(const shard&) = delete;

  bool stopping() const;
  bool quiesced() const; // no workload, storms or random faults
  void on_timer(const timer& t);
  void shut_down(); // the loop ended: close every session, fail every waiter

  host::impl* h;
  const options& o;
  unsigned id;
  std::mutex mu;
  std::vector<std::unique_ptr<vm>> vms;
  histogram lat; // event sent -> reply received
  std::thread th;

  transport net;
  fault_injector faults;
  workload work;
  detail::guest guest;
  device_manager dm;
  std::unique_ptr<kernel> kern;
};

} // namespace kvmi::sim::detail
