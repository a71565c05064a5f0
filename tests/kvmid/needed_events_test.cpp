// Which events a policy's protections need, and why.
#include "actors/needed_events.hpp"

#include <doctest/doctest.h>

using namespace kvmid;
using kvmi::event_id;

namespace {

uint32_t mask_of(const event_needs& n) {
  uint32_t m = 0;
  for (auto& [e, why] : n)
    m |= kvmi::flag(e);
  return m;
}

} // namespace

TEST_CASE("needed events: each protection names the rule that needs its event") {
  vm_policy p;
  p.name = "demo";
  p.msrs.push_back({"lstar", 0xc0000082});
  p.msrs.push_back({"sysenter-eip", 0x176});
  p.crs.push_back(*parse_cr_pin("cr4.smep"));
  p.pages.push_back({"kernel-text", 0x100000, 0x2000, 5, pf_action::allow_once});
  p.breakpoints.push_back({"probe", 0x1000});
  auto n = needed_events(p);
  CHECK(n.at(event_id::msr) == "policy 'demo' rule 'lstar'");
  CHECK(n.at(event_id::cr) == "policy 'demo' rule 'cr4.smep'");
  CHECK(n.at(event_id::pf) == "policy 'demo' rule 'kernel-text'");
  CHECK(n.at(event_id::breakpoint) == "policy 'demo' rule 'probe'");
  CHECK(n.at(event_id::hypercall) == "policy 'demo' (guest agent reports)");
  CHECK(n.at(event_id::pause_vcpu).starts_with("kvmid"));
  CHECK_FALSE(n.count(event_id::descriptor));
  CHECK_FALSE(n.count(event_id::xsetbv));
  CHECK_FALSE(n.count(event_id::trap));
}

TEST_CASE("needed events: an empty policy still keeps what kvmid itself relies on") {
  vm_policy p;
  p.hypercalls = false;
  auto n = needed_events(p);
  CHECK(mask_of(n) == (kvmi::flag(event_id::pause_vcpu) | kvmi::flag(event_id::breakpoint)));
  CHECK(n.at(event_id::breakpoint).starts_with("kvmid"));
}

TEST_CASE("needed events: exactly the events kvmid enables for the policy") {
  // What kvmid asks the kernel for on every vCPU is what it must keep.
  vm_policy a;
  vm_policy b;
  b.hypercalls = false;
  b.msrs.push_back({"lstar", 0xc0000082});
  vm_policy c;
  c.pages.push_back({"t", 0, 0x1000, 5, pf_action::crash});
  c.crs.push_back(*parse_cr_pin("cr0.wp"));
  for (auto* p : {&a, &b, &c}) {
    CAPTURE(p->vcpu_events());
    CHECK(mask_of(needed_events(*p)) == p->vcpu_events());
  }
}
