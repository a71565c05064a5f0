// The seeded guest workload: when each vCPU acts next (exponential gaps at
// workload.rate_per_vcpu) and what it does (drawn from workload.mix).
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;

class workload {
public:
  explicit workload(shard& s);
  void schedule(vm& v, vcpu& c);        // the vCPU's next action, unless stopping or quiesced
  guest_action draw(vm& v, vcpu& c);    // one action from the mix

private:
  shard& s_;
  std::vector<double> mix_cdf_;
};

} // namespace kvmi::sim::detail
