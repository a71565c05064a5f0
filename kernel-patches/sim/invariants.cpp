#include "kernel-patches/sim/invariants.hpp"

#include "kernel-patches/sim/sim.hpp"

namespace kvmi::sim {

namespace detail {
std::string_view name(violation v) {
  switch (v) {
    case violation::reply_unknown_seq: return "reply_unknown_seq";
    case violation::reply_bad_size: return "reply_bad_size";
    case violation::reply_event_mismatch: return "reply_event_mismatch";
    case violation::reply_bad_action: return "reply_bad_action";
    case violation::reply_with_event_id: return "reply_with_event_id";
    case violation::pf_ctx_oversize: return "pf_ctx_oversize";
    case violation::bad_padding: return "bad_padding";
    case violation::unknown_id: return "unknown_id";
    case violation::bad_size: return "bad_size";
    case violation::physical_range: return "physical_range";
    case violation::invalid_command: return "invalid_command";
    case violation::unhook_timeout: return "unhook_timeout";
    case violation::event_not_enabled: return "event_not_enabled";
    case violation::reply_lost: return "reply_lost";
    case violation::count_: break;
  }
  return "unknown";
}
} // namespace detail

uint64_t counters::violation_count() const {
  uint64_t n = 0;
  for (auto& [k, v] : violations)
    n += v;
  return n;
}

} // namespace kvmi::sim
