// Every CAF message of the core in one place (CAF 0.17: atoms plus plain
// structs; local-only types are allowed unsafe, i.e. never serialised).
#pragma once

#include "actors/control_api.hpp"
#include "actors/core.hpp"
#include "actors/policy.hpp"
#include "actors/protocol_fault.hpp"
#include "actors/rule_hits.hpp"
#include "actors/setup_gate.hpp"
#include "proto/codec.hpp"
#include "proto/handshake.hpp"

#include <caf/all.hpp>

#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace kvmid {

class kvmi_link;

// ring -> vCPU actor (or VM actor when the vCPU has no actor yet)
using event_atom = caf::atom_constant<caf::atom("event")>;
// ring -> VM actor: a command reply frame (header+payload as received)
using reply_atom = caf::atom_constant<caf::atom("reply")>;
// ring -> VM actor: the socket closed
using closed_atom = caf::atom_constant<caf::atom("closed")>;
// anyone -> VM actor: close the session for a protocol error
using proto_err_atom = caf::atom_constant<caf::atom("protoerr")>;
// vCPU -> VM actor: send this command, answer with cmd_result
using command_atom = caf::atom_constant<caf::atom("command")>;
// VM actor -> itself: time out the commands whose deadline passed
using cmd_sweep_atom = caf::atom_constant<caf::atom("cmdsweep")>;
// vCPU -> VM actor: run this vCPU's CONTROL_* commands (from the VM's
// policy and the host's event mask), then make sure the VM-wide set-up ran
// (pages, breakpoints); answers bool
using configure_atom = caf::atom_constant<caf::atom("configure")>;
using unprotect_atom = caf::atom_constant<caf::atom("unprotect")>;
using restore_bp_atom = caf::atom_constant<caf::atom("restorebp")>;
using rearm_bp_atom = caf::atom_constant<caf::atom("rearmbp")>;
using held_atom = caf::atom_constant<caf::atom("held")>;
// registry -> VM actor: a new policy
using policy_atom = caf::atom_constant<caf::atom("policy")>;
// VM -> vCPU: a vcpu_update
using update_atom = caf::atom_constant<caf::atom("update")>;
// control plane -> VM actor / registry
using api_atom = caf::atom_constant<caf::atom("api")>;
using info_atom = caf::atom_constant<caf::atom("info")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using find_atom = caf::atom_constant<caf::atom("find")>;
using register_atom = caf::atom_constant<caf::atom("register")>;
using unregister_atom = caf::atom_constant<caf::atom("unregister")>;
using reload_atom = caf::atom_constant<caf::atom("reload")>;
// VM actor -> registry: record (or forget) an INT3 kvmid planted
using persist_bp_atom = caf::atom_constant<caf::atom("persistbp")>;
// setup gate -> VM actor: its set-up may start, with this place
// (setup_gate::place_ptr, setup_gate.hpp)
using setup_go_atom = caf::atom_constant<caf::atom("setupgo")>;
// VM actor -> itself: its set-up held a place at the gate for its bound
using setup_bound_atom = caf::atom_constant<caf::atom("setupbnd")>;
// VM actor -> registry: a burst of allocations just ended (a VM's vCPUs
// configured, or gone); the registry trims the heap once the fleet is quiet
using heap_settle_atom = caf::atom_constant<caf::atom("heapsettle")>;
using heap_trim_atom = caf::atom_constant<caf::atom("heaptrim")>;
// anyone -> VM actor: undo what kvmid set in the guest, answer every waiting
// vCPU, close; answers std::vector<std::string> (what could not be undone)
// once the socket closed. Its int64_t is a now_ns() deadline, 0 for none.
using unhook_atom = caf::atom_constant<caf::atom("unhook")>;
// VM actor -> itself: a wait of the unhook (vCPUs stopping, vCPUs released)
// reached its bound
using unhook_wait_atom = caf::atom_constant<caf::atom("unhookwait")>;
// VM actor -> itself: look again whether every vCPU released by an unhook
// has had the PAUSE_VCPU events still owed to it
using released_check_atom = caf::atom_constant<caf::atom("relcheck")>;
// vCPU -> VM actor: released by an unhook, it has no event waiting
using released_atom = caf::atom_constant<caf::atom("released")>;
// core -> registry: unhook every VM by the int64_t now_ns() deadline;
// answers std::vector<unhook_result>
using unhook_all_atom = caf::atom_constant<caf::atom("unhookall")>;

struct raw_frame {
  std::vector<uint8_t> bytes;
};

// What a command produced: sent and answered (err 0 or -KVM_E*), or not
// sent / not answered (failure non-empty).
struct cmd_result {
  kvmi::reply_msg reply;
  std::string failure;
  api_errc code = api_errc::internal;
  bool ok() const { return failure.empty() && reply.err == 0; }
};

// A VM's history, kept by the registry across reconnects of its uuid.
struct vm_history {
  std::string uuid, name;
  // From the registry: totals. From a closing VM actor (unregister): this
  // session's own counts only, which the registry adds (it owns the totals,
  // so a session that closed before it saw the history cannot reset them).
  uint64_t sessions = 0, events = 0, alerts = 0, protocol_errors = 0;
  bool saw_history = false; // unregister: breakpoints include the history's
  std::map<uint64_t, breakpoint_state> breakpoints; // hits survive reconnects
  rule_counts rule_hits; // alerts by rule: totals, or (unregister) this session's
  vm_info last;                                     // as it was at disconnect
};

// Operator requests to a VM actor.
namespace op {
struct info {};
struct vcpus {};
struct pause {};
struct resume {};
struct get_registers {
  uint16_t vcpu;
  std::vector<uint32_t> msrs;
};
struct read_phys {
  uint64_t gpa, size;
};
struct write_phys {
  uint64_t gpa;
  std::vector<uint8_t> data;
};
struct get_access {};
struct set_access {
  uint64_t gpa;
  uint8_t access;
};
struct list_bps {};
struct add_bp {
  uint64_t gpa;
};
struct remove_bp {
  uint64_t gpa;
};
struct set_events {
  uint16_t vcpu;
  uint32_t mask;
};
struct unhook {};
struct forget {}; // answered by the registry, never a VM actor
} // namespace op

using api_request =
  std::variant<op::info, op::vcpus, op::pause, op::resume, op::get_registers, op::read_phys,
               op::write_phys, op::get_access, op::set_access, op::list_bps, op::add_bp,
               op::remove_bp, op::set_events, op::unhook, op::forget>;

using api_value = std::variant<done, vm_info, std::vector<vcpu_info>, registers_info,
                               std::vector<uint8_t>, std::vector<page_access_info>,
                               std::vector<breakpoint_info>, breakpoint_info>;

struct api_response {
  std::optional<api_value> value;
  api_error error;
};

using link_ptr = std::shared_ptr<kvmi_link>;
using policy_ptr = std::shared_ptr<const vm_policy>;
using state_ptr = std::shared_ptr<const vm_state>;

// VM actor -> vCPU actor: what changed. One message type, so a vCPU's
// behavior has two handlers, not five: CAF keeps each handler (~40 bytes)
// in every idle vCPU actor.
struct vcpu_update {
  policy_ptr policy;     // a new policy (re-applied at the next event)
  state_ptr snapshot;    // a new snapshot of the VM's state
  bool reconfig = false; // the host's event mask changed: re-apply at the next event
  bool resume = false;   // reply CONTINUE if held in a pause
  bool release = false;  // unhook: reply if held, then report released_atom once no event waits
};

} // namespace kvmid

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmi::event_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmi::command)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::vcpu_update)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::raw_frame)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::protocol_fault)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::cmd_result)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::vm_history)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::api_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::api_response)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::link_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::policy_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::state_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::setup_gate::place_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmid::vm_info)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<kvmid::vm_info>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<kvmid::unhook_result>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvmi::hs::guest_info)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<const kvmid::policy_set>)
