// The per-vCPU events a VM's protections depend on, each with the rule that
// needs it: turning one of them off through the API switches that
// protection off, so the control plane refuses it unless forced.
#pragma once

#include "actors/policy.hpp"

#include <map>
#include <string>

namespace kvmid {

// Event id -> who needs it, e.g. msr -> "policy 'demo' rule 'lstar'".
using event_needs = std::map<kvmi::event_id, std::string>;

// From the policy's rules (the first rule of each kind names the need) plus
// what kvmid itself relies on whatever the policy: pause_vcpu (operator
// pause, vCPU set-up) and breakpoint (INT3s kvmid plants).
event_needs needed_events(const vm_policy& p);

} // namespace kvmid
