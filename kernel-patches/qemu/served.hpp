// What kvmi-qemu's host end serves, in either dialect; the rest is refused
// as a kernel whose host allows less refuses it (v5: -KVM_EACCES and absent
// from GET_VERSION's masks; v7: -KVM_EPERM, and CHECK_COMMAND/CHECK_EVENT
// say no).
#pragma once

#include "proto/ids.hpp"
#include "proto/v7/ids.hpp"

namespace kvmi::qemu {

constexpr uint32_t served_commands =
  flag(msg_id::get_version) | flag(msg_id::get_guest_info) | flag(msg_id::get_registers)
  | flag(msg_id::set_registers) | flag(msg_id::read_physical) | flag(msg_id::write_physical)
  | flag(msg_id::control_events) | flag(msg_id::event) | flag(msg_id::event_reply)
  | flag(msg_id::pause_all_vcpus) | flag(msg_id::control_vm_events)
  | flag(msg_id::get_page_access) | flag(msg_id::set_page_access);
constexpr uint32_t served_vcpu_events =
  flag(event_id::breakpoint) | flag(event_id::pause_vcpu) | flag(event_id::pf);
constexpr uint32_t served_vm_events = flag(event_id::create_vcpu) | flag(event_id::unhook);

// v7's SINGLESTEP in v5's event ids (0..10 are the same in both).
constexpr auto singlestep_event = static_cast<event_id>(v7::event_id::singlestep);
constexpr uint32_t served_v7_vcpu_events = served_vcpu_events | flag(singlestep_event);

} // namespace kvmi::qemu
