// The one log gate: lines go to stderr when their level is enabled
// (--log-level / config "log_level"). 0 error, 1 warn, 2 info, 3 debug.
#pragma once

#include <atomic>

namespace kvmid {

inline std::atomic<int> log_verbosity{2};
inline bool log_on(int level) { return level <= log_verbosity.load(std::memory_order_relaxed); }

inline constexpr int log_error = 0, log_warn = 1, log_info = 2, log_debug = 3;

} // namespace kvmid
