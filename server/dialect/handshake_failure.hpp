// Why a KVMI handshake failed: a short token that stays the same across
// releases (the label of kvmid_handshake_failures_total and the reason of
// the handshake-failed record) and a sentence for the log line.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace kvmid {

struct handshake_failure {
  std::string_view token; // one of handshake_failure_reasons
  std::string sentence;
};

// Every token a failed handshake is counted under
// (kvmid_handshake_failures_total{reason}, all exported from start-up): the
// v5 handshake's (proto/handshake.cpp), the v7 one's and the session's own.
inline constexpr std::array<std::string_view, 15> handshake_failure_reasons{
  "bad_mac",     "bad_magic", "byte_order",       "bad_version", "bad_padding",
  "bad_name",    "bad_region", "too_many_regions", "bad_size",    "bad_value",
  "bad_range",   "timeout",    "peer_closed",      "too_many_pending", "not_admitted",
};

} // namespace kvmid
