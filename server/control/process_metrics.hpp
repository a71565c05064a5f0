// The process_* families every Prometheus client library exports, with the
// same names and units: CPU seconds, resident and virtual memory, open and
// maximum fds, start time. Read from /proc/self and getrlimit at each scrape;
// a source that cannot be read leaves its families out.
#pragma once

#include "actors/metrics.hpp"

#include <optional>
#include <string_view>
#include <vector>

namespace kvmid::control {

// The fields of /proc/<pid>/stat the families come from (proc(5)).
struct proc_stat {
  double utime_ticks = 0, stime_ticks = 0, start_ticks = 0; // since boot, clock ticks
  double vsize_bytes = 0, rss_pages = 0;
};

// Parses one /proc/<pid>/stat line; the command name may hold spaces and ')'.
std::optional<proc_stat> parse_proc_stat(std::string_view line);
// The "btime" of /proc/stat: boot time in seconds since the epoch.
std::optional<double> parse_boot_time(std::string_view proc_stat_file);

std::vector<metric_family> process_metrics();

} // namespace kvmid::control
