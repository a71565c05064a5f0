// The guest: vCPUs that run scripted and workload actions, stop in the
// events the kernel raises for them and go on with what the reply decided.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;

class guest {
public:
  explicit guest(shard& s);

  void add_vcpu(vm& v);
  // The vCPU runs whatever it has: kernel jobs, queued and workload actions.
  void step(vm& v, vcpu& c);
  void step_all(vm& v);
  // The event the vCPU waited in is over (aborted: the session ended):
  // the current action takes the reply's action and new value.
  void resume(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val, bool aborted);
  // Single-stepping: the current action, if any, runs as the one
  // instruction. True: it stopped in an event of its own first.
  bool run_one(vm& v, vcpu& c);
  void on_workload_due(vm& v, uint32_t vcpu);
  void start_vcpu(vm& v, uint32_t vcpu); // the guest starts a hot-plugged vCPU
  outcome hotplug(vm& v);
  void crash(vm& v); // the guest dies: its actions fail, the session ends

private:
  bool run(vm& v, vcpu& c); // true: the current action waits in an event
  void complete(vm& v, vcpu& c);

  shard& s_;
};

} // namespace kvmi::sim::detail
