// KVMI v7 dialect numbers: the message and event ids, scopes and limits of
// the kvmi-v7 kernel branch as libkvmi speaks it (docs/protocol.md, "The v7
// dialect"). The framing (kvmi_msg_hdr, kvmi_error_code), actions, page
// access bits, descriptor kinds and KVM_E* codes are v5's (proto/ids.hpp).
#pragma once

#include "proto/ids.hpp"

#include <cstdint>
#include <string_view>

namespace kvmi::v7 {

// Message ids (hdr.id). v7 renumbered everything: 0 and 1 are the event
// reply and the event, commands start at 2.
enum class msg_id : uint16_t {
  event_reply = 0,
  event = 1,
  get_version = 2,
  check_command = 3,
  check_event = 4,
  get_guest_info = 5,
  get_vcpu_info = 6,
  pause_vcpu = 7,
  control_vm_events = 8,
  control_events = 9,
  control_cr = 10,
  control_msr = 11,
  control_ve = 12,
  get_registers = 13,
  set_registers = 14,
  get_cpuid = 15,
  get_xsave = 16,
  read_physical = 17,
  write_physical = 18,
  inject_exception = 19,
  get_page_access = 20,
  set_page_access = 21,
  get_map_token = 22,
  get_mtrr_type = 23,
  control_spp = 24,
  get_page_write_bitmap = 25,
  set_page_write_bitmap = 26,
  control_cmd_response = 27,
  set_ve_info_page = 28,
  get_max_gfn = 29,
  get_next_available_gfn = 31,
  switch_ept_view = 32,
  disable_ve = 33,
  get_ept_view = 34,
  vcpu_translate_gva = 35,
  control_ept_view = 36,
  vcpu_get_xcr = 37,
  vcpu_set_xsave = 38,
  query_physical = 39,
  vcpu_alloc_gfn = 41,
  vcpu_free_gfn = 42,
  create_ept_view = 43,
  destroy_ept_view = 44,
  vcpu_change_gfn = 60,
  vcpu_control_singlestep = 63,
};

// Every id libkvmi's header defines, in id order: tests enumerate it. The
// gaps (30, 40, 45..59, 61, 62) are ids no v7 peer sends; 30 was the
// kernel branch's VM_SET_PAGE_SVE, which libkvmi dropped.
inline constexpr msg_id all_msg_ids[] = {
  msg_id::event_reply,         msg_id::event,
  msg_id::get_version,         msg_id::check_command,
  msg_id::check_event,         msg_id::get_guest_info,
  msg_id::get_vcpu_info,       msg_id::pause_vcpu,
  msg_id::control_vm_events,   msg_id::control_events,
  msg_id::control_cr,          msg_id::control_msr,
  msg_id::control_ve,          msg_id::get_registers,
  msg_id::set_registers,       msg_id::get_cpuid,
  msg_id::get_xsave,           msg_id::read_physical,
  msg_id::write_physical,      msg_id::inject_exception,
  msg_id::get_page_access,     msg_id::set_page_access,
  msg_id::get_map_token,       msg_id::get_mtrr_type,
  msg_id::control_spp,         msg_id::get_page_write_bitmap,
  msg_id::set_page_write_bitmap, msg_id::control_cmd_response,
  msg_id::set_ve_info_page,    msg_id::get_max_gfn,
  msg_id::get_next_available_gfn, msg_id::switch_ept_view,
  msg_id::disable_ve,          msg_id::get_ept_view,
  msg_id::vcpu_translate_gva,  msg_id::control_ept_view,
  msg_id::vcpu_get_xcr,        msg_id::vcpu_set_xsave,
  msg_id::query_physical,      msg_id::vcpu_alloc_gfn,
  msg_id::vcpu_free_gfn,       msg_id::create_ept_view,
  msg_id::destroy_ept_view,    msg_id::vcpu_change_gfn,
  msg_id::vcpu_control_singlestep,
};

// One past the highest id (libkvmi's KVM_NUM_MESSAGES).
inline constexpr uint16_t num_messages = 64;

// Where a command's payload starts: vCPU commands carry kvmi_vcpu_hdr first.
enum class scope : uint8_t { vm, vcpu, none };

bool is_known(msg_id id);
// True for the commands proto/v7 decodes and encodes; the other known ids
// (EPT views, #VE, SPP, GFN allocation, ...) are refused as unsupported.
bool is_supported(msg_id id);
scope scope_of(msg_id id);
std::string_view name(msg_id id);

// Event ids (kvmi_event.event, a u8 in v7). 0..10 keep their v5 numbers.
enum class event_id : uint8_t {
  unhook = 0,
  cr = 1,
  msr = 2,
  xsetbv = 3,
  breakpoint = 4,
  hypercall = 5,
  pf = 6,
  trap = 7,
  descriptor = 8,
  create_vcpu = 9,
  pause_vcpu = 10,
  singlestep = 11,
  cpuid = 13,
};

inline constexpr event_id all_event_ids[] = {
  event_id::unhook,     event_id::cr,          event_id::msr,        event_id::xsetbv,
  event_id::breakpoint, event_id::hypercall,   event_id::pf,         event_id::trap,
  event_id::descriptor, event_id::create_vcpu, event_id::pause_vcpu, event_id::singlestep,
  event_id::cpuid,
};
inline constexpr uint8_t num_events = 14; // libkvmi's KVMI_NUM_EVENTS

// The kernel branch's KVMI_EVENT_CMD_ERROR. libkvmi has no size for it and
// fails the whole event read, so it is no event_id: decode_event refuses it
// and nothing here can encode it.
inline constexpr uint8_t kernel_only_cmd_error_event = 12;

bool is_known(event_id e);
std::string_view name(event_id e);

// VM events are switched by CONTROL_VM_EVENTS, vCPU events by CONTROL_EVENTS.
constexpr bool is_vm_event(event_id e) {
  return e == event_id::unhook || e == event_id::create_vcpu;
}

// Which actions each event's reply may carry (the v5 rules, with the two
// new vCPU events taking CONTINUE or CRASH like the others).
constexpr uint32_t allowed_actions(event_id e) {
  switch (e) {
    case event_id::breakpoint:
    case event_id::pf:
      return flag(action::continue_) | flag(action::retry) | flag(action::crash);
    default:
      return flag(action::continue_) | flag(action::crash);
  }
}

// KVMI_MSG_SIZE: the largest payload after kvmi_msg_hdr (8192 - 8).
inline constexpr uint32_t msg_size = 8192 - 8;
inline constexpr uint32_t max_payload = msg_size;
inline constexpr uint32_t max_frame = 8 + max_payload;

// v7 page access bits: v5's rwx, and SVE (suppress #VE), which needs the
// #VE support proto/v7 does not decode, so check() refuses it.
inline constexpr uint8_t page_access_sve = 1 << 3;

} // namespace kvmi::v7
