// Typed KVMI v7 dialect messages, their check(), decode() and encode().
// Pure: bytes in, bytes out. The frame splitter, parse_frame, the error
// type and byte orders are shared with v5 (proto/codec.hpp); frames here are
// bounded by v7::max_payload.
#pragma once

#include "proto/codec.hpp"
#include "proto/v7/ids.hpp"
#include "proto/v7/wire.hpp"

#include <optional>
#include <variant>
#include <vector>

namespace kvmi::v7 {

using kvmi::error;
using kvmi::errc;
using kvmi::frame;
using kvmi::result;

// --- commands (tool -> kernel) --------------------------------------------

// Commands without parameters after their header(s).
struct get_version {};
struct get_guest_info {};
struct get_vcpu_info {}; // vCPU
struct get_xsave {};     // vCPU
struct get_map_token {};
struct get_max_gfn {};

// Commands with a variable part, as the fixed struct plus its array.
struct get_registers_cmd {
  get_registers req;
  std::vector<uint32_t> msrs_idx;
};
struct get_page_access_cmd {
  get_page_access req;
  std::vector<uint64_t> gpa;
};
struct set_page_access_cmd {
  set_page_access req;
  std::vector<page_access_entry> entries;
};
struct write_physical_cmd {
  write_physical req;
  std::vector<uint8_t> data;
};

using command =
  std::variant<get_version, check_command, check_event, get_guest_info, get_vcpu_info,
               pause_vcpu, control_vm_events, control_events, control_cr, control_msr,
               get_registers_cmd, set_registers, get_cpuid, get_xsave, read_physical,
               write_physical_cmd, inject_exception, get_page_access_cmd, set_page_access_cmd,
               get_map_token, control_cmd_response, get_max_gfn, vcpu_control_singlestep>;

msg_id id_of(const command& c);

struct command_msg {
  uint32_t seq = 0;
  uint16_t vcpu = 0; // kvmi_vcpu_hdr.vcpu of vCPU commands; 0 for VM commands
  command body;
};

// --- event replies (tool -> kernel) ---------------------------------------

struct event_reply_msg {
  uint32_t seq = 0; // the event's
  uint16_t vcpu = 0;
  event_reply common{};
  std::variant<std::monostate, event_cr_reply, event_msr_reply, event_pf_reply> extra;
  // Payload bytes on the wire, 0 for the whole reply. The kernel accepts a
  // reply shorter than the full struct and zero-fills the rest: decode
  // records the received size here, and encode sends no more than it.
  uint16_t wire_size = 0;
};

// The full reply size for an event kind (hdr.size): 16, 24 or 288.
uint16_t event_reply_size(event_id e);

using tool_msg = std::variant<command_msg, event_reply_msg>;

// --- events (kernel -> tool) ----------------------------------------------

using event_data = std::variant<std::monostate, event_cr, event_msr, event_breakpoint, event_pf,
                                event_trap, event_descriptor, event_singlestep, event_cpuid>;

struct event_msg {
  uint32_t seq = 0;
  event common{};
  event_data data;
  event_id kind() const { return static_cast<event_id>(common.event); }
};

// Payload size of an event message of this kind (kvmi_event + its data).
uint16_t event_size(event_id e);

// --- command replies (kernel -> tool) -------------------------------------

struct version_reply {
  get_version_reply fixed{};
  bool has_features = true; // false: the 8-byte reply of LKML v6 kernels
};
struct registers_reply {
  get_registers_reply fixed;
  std::vector<kvm_msr_entry> msrs;
};
struct page_access_reply {
  std::vector<uint8_t> access;
};
struct physical_data {
  std::vector<uint8_t> data;
};
struct xsave_reply {
  std::vector<uint8_t> region;
};

using reply_data =
  std::variant<std::monostate, version_reply, get_guest_info_reply, get_vcpu_info_reply,
               registers_reply, get_cpuid_reply, xsave_reply, physical_data, page_access_reply,
               get_map_token_reply, get_max_gfn_reply>;

struct reply_msg {
  msg_id id{};
  uint32_t seq = 0;
  int32_t err = 0; // 0 or -KVM_E*
  reply_data data;
};

// What a successful reply to a command must look like (see decode_reply).
struct reply_shape {
  msg_id id{};
  uint32_t size = 0;     // data bytes after kvmi_error_code
  bool variable = false; // GET_XSAVE: any multiple of 4 up to 4096
};
reply_shape expected_reply(const command& c);

// --- check(): the protocol rules of each message --------------------------

error check(const command_msg& m);
error check(const event_reply_msg& m);
error check(const event_msg& m);
error check(const reply_msg& m);

// --- decode ---------------------------------------------------------------
// Call these qualified (v7::decode_event): argument-dependent lookup also
// finds v5's functions of the same signature in kvmi, and the call would be
// ambiguous.

// Kernel side: a frame from the tool is a command or an event reply.
// Structural errors (size, padding, unknown or unsupported id) only; the
// rules of each command are in check().
result<tool_msg> decode_from_tool(const frame& f, byte_order order = byte_order::native);
result<tool_msg> decode_from_tool(std::span<const uint8_t> bytes,
                                  byte_order order = byte_order::native);

// Tool side. An event's common part must say size 544; event 12 (the kernel
// branch's CMD_ERROR) is refused as libkvmi refuses it.
result<event_msg> decode_event(const frame& f, byte_order order = byte_order::native);
result<reply_msg> decode_reply(const frame& f, const reply_shape& shape,
                               byte_order order = byte_order::native);

// --- encode ---------------------------------------------------------------
// Each writes header and payload into out (cleared first, capacity kept).

void encode(std::vector<uint8_t>& out, const command_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const event_reply_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const event_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const reply_msg& m,
            byte_order order = byte_order::native);

} // namespace kvmi::v7
