#pragma once

#include "actors/core_impl.hpp"

#include <atomic>

namespace kvmid {

// Read by the VM actor and the control plane without a message.
struct vcpu_stats {
  std::atomic<uint8_t> state{0}; // vcpu_state
  std::atomic<int32_t> event{-1};
  std::atomic<uint64_t> events{0}, alerts{0};
  std::atomic<uint32_t> enabled{0};
};

struct vcpu_params {
  uint16_t index = 0;
  caf::actor vm;
  link_ptr link;
  kvmi::byte_order order = kvmi::byte_order::native;
  uint32_t allowed_events = kvmi::known_events;
  policy_ptr policy;
  state_ptr snapshot;
  std::string uuid, name;
  std::shared_ptr<vcpu_stats> stats;
  std::shared_ptr<std::atomic<uint64_t>> vm_events, vm_alerts;
};

caf::actor spawn_vcpu(core& c, vcpu_params p);

} // namespace kvmid
