// The bus record of a policy alert: what an operator reads of a denied MSR
// write, a forced CR pin or a write to a protected page. Built on the ring
// thread for every alert, so it formats without printf, and straight into
// the bus's replay slot, whose strings keep their buffers from the record
// it replaces (event_bus::publish_filled).
#pragma once

#include "actors/event_bus.hpp"
#include "actors/policy.hpp"

#include <string>

namespace kvmid {

struct alert_source {
  const std::string& vm;      // uuid
  const std::string& vm_name;
  uint16_t vcpu;
};

// Overwrites every field of r but seq and time_ns.
void fill_alert(bus_record& r, const alert_source& from, const kvmi::event_msg& ev,
                const decision& d);
bus_record alert_record(const alert_source& from, const kvmi::event_msg& ev, const decision& d);

} // namespace kvmid
