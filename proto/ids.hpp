// KVMI v5 numbers: message ids, event ids, flags, actions, access bits,
// descriptor kinds and KVM_E* codes (docs/protocol.md).
#pragma once

#include <cstdint>
#include <string_view>

namespace kvmi {

inline constexpr uint32_t version = 0x00000001;

// Message ids (hdr.id). Unused in v5: 2, 4, 5, 8, 9, 16, 20, 21, 22.
enum class msg_id : uint16_t {
  get_version = 1,
  get_guest_info = 3,
  get_registers = 6,
  set_registers = 7,
  get_page_access = 10,
  set_page_access = 11,
  inject_exception = 12,
  read_physical = 13,
  write_physical = 14,
  get_map_token = 15,
  control_events = 17,
  control_cr = 18,
  control_msr = 19,
  event = 23,
  event_reply = 24,
  get_cpuid = 25,
  get_xsave = 26,
  pause_all_vcpus = 27,
  control_vm_events = 28,
  // This project's assignment (docs/protocol.md): only sent when the host
  // sets bit 29 in GET_VERSION's command mask; a v5 kernel closes on id >= 29.
  control_ve = 29,
};

// Every id the protocol knows, in id order: tests enumerate this list.
inline constexpr msg_id all_msg_ids[] = {
  msg_id::get_version,     msg_id::get_guest_info,    msg_id::get_registers,
  msg_id::set_registers,   msg_id::get_page_access,   msg_id::set_page_access,
  msg_id::inject_exception, msg_id::read_physical,    msg_id::write_physical,
  msg_id::get_map_token,   msg_id::control_events,    msg_id::control_cr,
  msg_id::control_msr,     msg_id::event,             msg_id::event_reply,
  msg_id::get_cpuid,       msg_id::get_xsave,         msg_id::pause_all_vcpus,
  msg_id::control_vm_events, msg_id::control_ve,
};

inline constexpr uint16_t num_v5_messages = 29; // ids >= this close a v5 session
inline constexpr uint16_t num_messages = 30;    // with CONTROL_VE

constexpr uint32_t flag(msg_id id) { return 1u << static_cast<uint16_t>(id); }

// OR of the v5 flags (CONTROL_VE excluded: v5 has no id for it).
inline constexpr uint32_t known_commands =
  flag(msg_id::get_version) | flag(msg_id::get_guest_info) | flag(msg_id::get_registers)
  | flag(msg_id::set_registers) | flag(msg_id::get_page_access)
  | flag(msg_id::set_page_access) | flag(msg_id::inject_exception)
  | flag(msg_id::read_physical) | flag(msg_id::write_physical)
  | flag(msg_id::get_map_token) | flag(msg_id::control_events) | flag(msg_id::control_cr)
  | flag(msg_id::control_msr) | flag(msg_id::event) | flag(msg_id::event_reply)
  | flag(msg_id::get_cpuid) | flag(msg_id::get_xsave) | flag(msg_id::pause_all_vcpus)
  | flag(msg_id::control_vm_events);
static_assert(known_commands == 0x1F8EFCCA);

constexpr bool allowed_command(msg_id id, uint32_t mask) {
  if (id == msg_id::control_ve)
    return (mask & flag(msg_id::control_ve)) != 0;
  return (flag(id) & (mask & known_commands)) != 0;
}

bool is_known(msg_id id);
std::string_view name(msg_id id);

// Event ids (kvmi_event.event).
enum class event_id : uint32_t {
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
  // Not a v5 event: kvmid's id for the SINGLESTEP a dialect with
  // single-stepping delivers (v7's number). Outside num_events and every
  // mask, so no v5 message ever carries it.
  singlestep = 11,
};
inline constexpr uint32_t num_events = 11;

constexpr uint32_t flag(event_id e) { return 1u << static_cast<uint32_t>(e); }

inline constexpr uint32_t known_vcpu_events =
  flag(event_id::cr) | flag(event_id::msr) | flag(event_id::xsetbv)
  | flag(event_id::breakpoint) | flag(event_id::hypercall) | flag(event_id::pf)
  | flag(event_id::trap) | flag(event_id::descriptor) | flag(event_id::pause_vcpu);
inline constexpr uint32_t known_vm_events =
  flag(event_id::create_vcpu) | flag(event_id::unhook);
inline constexpr uint32_t known_events = known_vcpu_events | known_vm_events;
static_assert(known_vcpu_events == 0x5FE && known_vm_events == 0x201
              && known_events == 0x7FF);

constexpr bool allowed_vcpu_event(event_id e, uint32_t mask) {
  return (flag(e) & (mask & known_vcpu_events)) != 0;
}
constexpr bool allowed_vm_event(event_id e, uint32_t mask) {
  return (flag(e) & (mask & known_vm_events)) != 0;
}

std::string_view name(event_id e);

// Event reply actions.
enum class action : uint32_t { continue_ = 0, retry = 1, crash = 2 };
constexpr uint32_t flag(action a) { return 1u << static_cast<uint32_t>(a); }

// Which actions each event accepts (v5 doc ":Actions:"); UNHOOK takes no reply.
constexpr uint32_t allowed_actions(event_id e) {
  switch (e) {
    case event_id::breakpoint:
    case event_id::pf:
      return flag(action::continue_) | flag(action::retry) | flag(action::crash);
    case event_id::unhook:
      return 0;
    default:
      return flag(action::continue_) | flag(action::crash);
  }
}

std::string_view name(action a);

// Page access bits.
inline constexpr uint8_t page_access_r = 1 << 0;
inline constexpr uint8_t page_access_w = 1 << 1;
inline constexpr uint8_t page_access_x = 1 << 2;
inline constexpr uint8_t page_access_rwx = page_access_r | page_access_w | page_access_x;
// "r-x": the rwx bits as ls shows them (higher bits ignored).
std::string_view access_name(uint8_t access);

// Descriptor kinds (kvmi_event_descriptor.descriptor).
inline constexpr uint8_t desc_idtr = 1;
inline constexpr uint8_t desc_gdtr = 2;
inline constexpr uint8_t desc_ldtr = 3;
inline constexpr uint8_t desc_tr = 4;

// KVM_E* codes; the wire carries their negation in kvmi_error_code.err.
inline constexpr int32_t kvm_enosys = 1000;
inline constexpr int32_t kvm_efault = 14;
inline constexpr int32_t kvm_einval = 22;
inline constexpr int32_t kvm_e2big = 7;
inline constexpr int32_t kvm_eperm = 1;
inline constexpr int32_t kvm_eopnotsupp = 95;
inline constexpr int32_t kvm_eagain = 11;
inline constexpr int32_t kvm_ebusy = 16;
inline constexpr int32_t kvm_enoent = 2;
inline constexpr int32_t kvm_enomem = 12;
inline constexpr int32_t kvm_eacces = 13; // value chosen by this project

// "EINVAL" for -22 and the like, "E?" otherwise.
std::string_view kvm_error_name(int32_t err);

// Hypercall numbers of the series.
inline constexpr uint64_t kvm_hc_mem_map = 32;
inline constexpr uint64_t kvm_hc_mem_unmap = 33;
inline constexpr uint64_t kvm_hc_xen_hvm_op = 34;
inline constexpr uint64_t xen_hvm_op_guest_request_vm_event = 24;

// Message size limits. KVMI_MSG_SIZE bounds ordinary messages, but
// WRITE_PHYSICAL (16 + 4096) and the GET_XSAVE reply (8 + 4096) exceed it:
// the frame splitter's bound is the largest legal payload.
inline constexpr uint32_t msg_size = 4096;
inline constexpr uint32_t page_size = 4096;
inline constexpr uint32_t max_payload = 16 + page_size; // WRITE_PHYSICAL
inline constexpr uint32_t max_frame = 8 + max_payload;

} // namespace kvmi
