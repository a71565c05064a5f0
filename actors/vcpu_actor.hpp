#pragma once

#include "actors/core_impl.hpp"
#include "actors/rule_hits.hpp"

#include <atomic>
#include <deque>

namespace kvmid {

// Read by the VM actor and the control plane without a message.
struct vcpu_stats {
  std::atomic<uint8_t> state{0}; // vcpu_state
  std::atomic<int32_t> event{-1};
  std::atomic<uint64_t> events{0}, alerts{0};
  std::atomic<uint32_t> enabled{0};
  std::atomic<uint32_t> pause_events{0}; // PAUSE_VCPU events received
};

// What every vCPU actor of one VM shares: one allocation per VM instead of
// per-vCPU copies of the identity strings, counters and stats blocks.
struct vm_shared {
  core* c = nullptr;
  std::string uuid, name;
  link_ptr link;
  std::vector<kvmi::hs::region> regions; // the memory map: what a page walk may read
  std::atomic<uint64_t> events{0}, alerts{0}; // this session's, all vCPUs
  rule_hit_counter rule_hits;                 // this session's alerts by rule
  // By vCPU index; grown by the VM actor only. A deque, so a vCPU actor's
  // element never moves while it writes to it.
  std::deque<vcpu_stats> stats;
};
using vm_shared_ptr = std::shared_ptr<vm_shared>;

struct vcpu_params {
  uint16_t index = 0;
  caf::actor vm;
  vm_shared_ptr shared;
  vcpu_stats* stats = nullptr; // in shared->stats; found by the VM actor, which grows it
  policy_ptr policy;
  state_ptr snapshot;
};

// Spawned by the VM actor, so the new actor starts on the same worker (and
// its memory comes from the same allocator arena) as its VM's others.
caf::actor spawn_vcpu(caf::local_actor& vm, vcpu_params p);

// On the ring thread that runs this vCPU actor (unit): handles the event
// in the actor at once when the actor is idle and configured, the common
// case, without a mailbox element or a resume (ring_actor::run_in_place).
// False: nothing happened, send the event as a message. vcpu must be a
// handle spawn_vcpu returned.
bool deliver_event_in_place(const caf::actor& vcpu, caf::execution_unit* unit,
                            kvmi::event_msg& ev, int64_t t);

} // namespace kvmid
