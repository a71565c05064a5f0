#include "actors/needed_events.hpp"

namespace kvmid {

using kvmi::event_id;

event_needs needed_events(const vm_policy& p) {
  event_needs n;
  auto rule = [&](event_id e, const std::string& what) {
    n.try_emplace(e, "policy '" + p.name + "' rule '" + what + "'");
  };
  for (auto& r : p.msrs)
    rule(event_id::msr, r.name);
  for (auto& r : p.crs)
    rule(event_id::cr, r.name);
  for (auto& r : p.pages)
    rule(event_id::pf, r.name);
  for (auto& r : p.breakpoints)
    rule(event_id::breakpoint, r.name);
  if (p.hypercalls)
    n.try_emplace(event_id::hypercall, "policy '" + p.name + "' (guest agent reports)");
  n.try_emplace(event_id::breakpoint, "kvmid (breakpoints it plants)");
  n.try_emplace(event_id::pause_vcpu, "kvmid (pausing vCPUs)");
  return n;
}

} // namespace kvmid
