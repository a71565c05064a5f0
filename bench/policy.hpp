// What every bench target introspects, so kvmid and the raw responder do
// the same work per event: LSTAR writes, CR0/CR4 writes and writes to 16
// pages of kernel text (the simulator workload's hot pages).
#pragma once

#include "proto/ids.hpp"

#include <cstdint>

namespace bench {

inline constexpr uint32_t policy_msr = 0xc0000082; // LSTAR
inline constexpr uint64_t policy_text = 0x100000;  // kvmi::sim::workload_spec::hot_gpa
inline constexpr uint32_t policy_pages = 16;

inline uint32_t policy_events() {
  using kvmi::event_id;
  return kvmi::flag(event_id::pf) | kvmi::flag(event_id::msr) | kvmi::flag(event_id::cr);
}

} // namespace bench
