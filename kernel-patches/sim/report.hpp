// Views and the report: what the host shows of its VMs and counters.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

counters to_counters(const vm_counts& c, protocol dialect);
vcpu_view view_of(const vcpu& c, time_point now);
// The progress line kvmi-sim prints every options::progress_every.
std::string progress_line(const report& r);

} // namespace kvmi::sim::detail
