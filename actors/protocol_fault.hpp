// Why kvmid stopped trusting a KVMI stream. The reason is a short token from
// a closed set, so kvmid_protocol_errors_total{reason} has every series from
// start-up (a rate() or an alert sees 0 before the first error); the detail
// is the sentence for the close line and the protocol-error record.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvmid {

enum class protocol_error_reason : uint8_t {
  bad_frame,          // bytes the frame splitter refuses: size, id, truncation
  bad_event,          // an event that does not decode
  bad_reply,          // a reply that does not decode against its command
  unknown_seq,        // a reply to no command kvmid is waiting on
  reply_mismatch,     // a reply whose id is not its command's
  second_event,       // a second event from a vCPU still waiting for its reply
  vcpu_out_of_range,  // an event from a vCPU index beyond any VM
  too_many_events,    // more events waiting for replies than kvmid keeps (v7)
  bad_prologue,       // a frame other than the expected one before the session started
  get_version_failed, // the host refused GET_VERSION, the session's first command
};

inline constexpr std::array all_protocol_error_reasons{
  protocol_error_reason::bad_frame,         protocol_error_reason::bad_event,
  protocol_error_reason::bad_reply,         protocol_error_reason::unknown_seq,
  protocol_error_reason::reply_mismatch,    protocol_error_reason::second_event,
  protocol_error_reason::vcpu_out_of_range, protocol_error_reason::too_many_events,
  protocol_error_reason::bad_prologue,      protocol_error_reason::get_version_failed,
};

inline std::string_view name(protocol_error_reason r) {
  switch (r) {
    case protocol_error_reason::bad_frame: return "bad_frame";
    case protocol_error_reason::bad_event: return "bad_event";
    case protocol_error_reason::bad_reply: return "bad_reply";
    case protocol_error_reason::unknown_seq: return "unknown_seq";
    case protocol_error_reason::reply_mismatch: return "reply_mismatch";
    case protocol_error_reason::second_event: return "second_event";
    case protocol_error_reason::vcpu_out_of_range: return "vcpu_out_of_range";
    case protocol_error_reason::too_many_events: return "too_many_events";
    case protocol_error_reason::bad_prologue: return "bad_prologue";
    case protocol_error_reason::get_version_failed: return "get_version_failed";
  }
  return "?";
}

struct protocol_fault {
  protocol_error_reason reason = protocol_error_reason::bad_frame;
  std::string detail;
};

} // namespace kvmid
