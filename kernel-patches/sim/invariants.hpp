// The rules a tool must keep towards the kernel, as the simulator checks
// them (and one the host keeps itself): each broken rule counts one
// violation of its kind (the report's "violations"); HMIs are counted where
// guest memory is touched.
#pragma once

#include <cstdint>
#include <string_view>

namespace kvmi::sim::detail {

// Violations the host detects in what the tool sends.
enum class violation : uint8_t {
  reply_unknown_seq,     // event reply for no pending event (also duplicates): closes
  reply_bad_size,        // event reply size does not fit its own event field (v7: larger
                         // than the kernel's struct; shorter is zero-filled): closes
  reply_event_mismatch,  // event field differs from the pending event: not applied
  reply_bad_action,      // action not allowed for the event: taken as CONTINUE
  reply_with_event_id,   // a reply sent with id KVMI_EVENT instead of EVENT_REPLY: closes
  pf_ctx_oversize,       // PF reply ctx_size > 256: closes
  bad_padding,           // non-zero padding: EINVAL (commands) or closes (replies)
  unknown_id,            // id >= 29, or unknown id with payload: closes
  bad_size,              // command size does not match its id/counts: closes
  physical_range,        // READ/WRITE_PHYSICAL beyond one page: closes
  invalid_command,       // a command the kernel answers with EINVAL for bad fields
  unhook_timeout,        // the tool did not close after UNHOOK in time
  // The host's own rule: it sent an event the tool had not enabled (v7:
  // CONTROL_EVENTS / CONTROL_VM_EVENTS per id; PAUSE_VCPU answers a command).
  // Counted so a simulator bug fails the run like a tool's would.
  event_not_enabled,
  // An event still waiting for its reply when a drained close gave up
  // (faults.reconnect_drain): the tool lost a reply.
  reply_lost,
  count_
};
std::string_view name(violation v);

} // namespace kvmi::sim::detail
