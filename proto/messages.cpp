#include "proto/messages.hpp"

#include "proto/codec.hpp"

#include <algorithm>
#include <array>

namespace kvmi {

namespace {
constexpr uint16_t id(msg_id m) { return static_cast<uint16_t>(m); }
constexpr int32_t ev(event_id e) { return static_cast<int32_t>(e); }
constexpr uint32_t ec = sizeof(error_code);
constexpr uint16_t E = id(msg_id::event);
constexpr uint16_t R = id(msg_id::event_reply);

constexpr message_kind kinds[] = {
  {"get_version", "command", id(msg_id::get_version), -1, 0, 0},
  {"get_version", "reply", id(msg_id::get_version), -1, ec + sizeof(get_version_reply), 0},
  {"get_guest_info", "command", id(msg_id::get_guest_info), -1, sizeof(get_guest_info), 0},
  {"get_guest_info", "reply", id(msg_id::get_guest_info), -1, ec + sizeof(get_guest_info_reply), 0},
  {"get_registers", "command", id(msg_id::get_registers), -1, sizeof(get_registers), 4},
  {"get_registers", "reply", id(msg_id::get_registers), -1, ec + sizeof(get_registers_reply),
   sizeof(kvm_msr_entry)},
  {"set_registers", "command", id(msg_id::set_registers), -1, sizeof(set_registers), 0},
  {"set_registers", "reply", id(msg_id::set_registers), -1, ec, 0},
  {"get_page_access", "command", id(msg_id::get_page_access), -1, sizeof(get_page_access), 8},
  {"get_page_access", "reply", id(msg_id::get_page_access), -1, ec, 1},
  {"set_page_access", "command", id(msg_id::set_page_access), -1, sizeof(set_page_access),
   sizeof(page_access_entry)},
  {"set_page_access", "reply", id(msg_id::set_page_access), -1, ec, 0},
  {"inject_exception", "command", id(msg_id::inject_exception), -1, sizeof(inject_exception), 0},
  {"inject_exception", "reply", id(msg_id::inject_exception), -1, ec, 0},
  {"read_physical", "command", id(msg_id::read_physical), -1, sizeof(read_physical), 0},
  {"read_physical", "reply", id(msg_id::read_physical), -1, ec, 1},
  {"write_physical", "command", id(msg_id::write_physical), -1, sizeof(write_physical), 1},
  {"write_physical", "reply", id(msg_id::write_physical), -1, ec, 0},
  {"get_map_token", "command", id(msg_id::get_map_token), -1, 0, 0},
  {"get_map_token", "reply", id(msg_id::get_map_token), -1, ec + sizeof(get_map_token_reply), 0},
  {"control_events", "command", id(msg_id::control_events), -1, sizeof(control_events), 0},
  {"control_events", "reply", id(msg_id::control_events), -1, ec, 0},
  {"control_cr", "command", id(msg_id::control_cr), -1, sizeof(control_cr), 0},
  {"control_cr", "reply", id(msg_id::control_cr), -1, ec, 0},
  {"control_msr", "command", id(msg_id::control_msr), -1, sizeof(control_msr), 0},
  {"control_msr", "reply", id(msg_id::control_msr), -1, ec, 0},
  {"get_cpuid", "command", id(msg_id::get_cpuid), -1, sizeof(get_cpuid), 0},
  {"get_cpuid", "reply", id(msg_id::get_cpuid), -1, ec + sizeof(get_cpuid_reply), 0},
  {"get_xsave", "command", id(msg_id::get_xsave), -1, sizeof(get_xsave), 0},
  {"get_xsave", "reply", id(msg_id::get_xsave), -1, ec, 4},
  {"pause_all_vcpus", "command", id(msg_id::pause_all_vcpus), -1, 0, 0},
  {"pause_all_vcpus", "reply", id(msg_id::pause_all_vcpus), -1, ec + sizeof(pause_all_vcpus_reply), 0},
  {"control_vm_events", "command", id(msg_id::control_vm_events), -1, sizeof(control_vm_events), 0},
  {"control_vm_events", "reply", id(msg_id::control_vm_events), -1, ec, 0},
  {"control_ve", "command", id(msg_id::control_ve), -1, sizeof(control_ve), 8},
  {"control_ve", "reply", id(msg_id::control_ve), -1, ec, 0},
  {"unhook", "event", E, ev(event_id::unhook), 0, 0},
  {"cr", "event", E, ev(event_id::cr), 0, 0},
  {"msr", "event", E, ev(event_id::msr), 0, 0},
  {"xsetbv", "event", E, ev(event_id::xsetbv), 0, 0},
  {"breakpoint", "event", E, ev(event_id::breakpoint), 0, 0},
  {"hypercall", "event", E, ev(event_id::hypercall), 0, 0},
  {"pf", "event", E, ev(event_id::pf), 0, 0},
  {"trap", "event", E, ev(event_id::trap), 0, 0},
  {"descriptor", "event", E, ev(event_id::descriptor), 0, 0},
  {"create_vcpu", "event", E, ev(event_id::create_vcpu), 0, 0},
  {"pause_vcpu", "event", E, ev(event_id::pause_vcpu), 0, 0},
  {"cr", "event-reply", R, ev(event_id::cr), 0, 0},
  {"msr", "event-reply", R, ev(event_id::msr), 0, 0},
  {"xsetbv", "event-reply", R, ev(event_id::xsetbv), 0, 0},
  {"breakpoint", "event-reply", R, ev(event_id::breakpoint), 0, 0},
  {"hypercall", "event-reply", R, ev(event_id::hypercall), 0, 0},
  {"pf", "event-reply", R, ev(event_id::pf), 0, 0},
  {"trap", "event-reply", R, ev(event_id::trap), 0, 0},
  {"descriptor", "event-reply", R, ev(event_id::descriptor), 0, 0},
  {"create_vcpu", "event-reply", R, ev(event_id::create_vcpu), 0, 0},
  {"pause_vcpu", "event-reply", R, ev(event_id::pause_vcpu), 0, 0},
};
} // namespace

std::span<const message_kind> message_kinds() {
  // Event sizes come from the codec's own size functions, so the table
  // cannot disagree with decode().
  static auto table = [] {
    std::array<message_kind, std::size(kinds)> t;
    std::copy(std::begin(kinds), std::end(kinds), t.begin());
    for (auto& k : t) {
      if (k.direction == "event")
        k.size = event_size(static_cast<event_id>(k.event));
      else if (k.direction == "event-reply")
        k.size = event_reply_size(static_cast<event_id>(k.event));
    }
    return t;
  }();
  return table;
}

} // namespace kvmi
