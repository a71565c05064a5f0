// Telling a service manager (systemd, Type=notify) how kvmid is doing,
// through sd_notify: nothing happens unless it started kvmid with
// $NOTIFY_SOCKET set.
#pragma once

#include <chrono>

namespace kvmid::systemd {

void ready();     // the listeners accept connections
void reloading(); // SIGHUP: policies being re-read (ready() follows)
void stopping();  // shutting down: unhooking the VMs
void watchdog();  // alive: sent from the reactor's loop

// How often watchdog() must be sent, if the manager asks for it at all: half
// its WatchdogSec, so one late ping is not yet a missed deadline. 0 when no
// watchdog is enabled for this process.
std::chrono::milliseconds watchdog_period();

} // namespace kvmid::systemd
