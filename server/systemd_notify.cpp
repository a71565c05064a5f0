#include "server/systemd_notify.hpp"

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <cstdint>

namespace kvmid::systemd {

namespace {
// The environment stays: sd_notify reads it on every call, and kvmid starts
// no process that could mistake itself for the service.
void notify(const char* state) { sd_notify(0, state); }
} // namespace

void ready() { notify("READY=1"); }
void reloading() { notify("RELOADING=1"); }
void stopping() { notify("STOPPING=1"); }
void watchdog() { notify("WATCHDOG=1"); }

std::chrono::milliseconds watchdog_period() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
    return std::chrono::milliseconds(0);
  // At least 1 ms: a sub-millisecond WatchdogSec must not turn it off.
  return std::max(std::chrono::milliseconds(1),
                  std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::microseconds(usec / 2)));
}

} // namespace kvmid::systemd
