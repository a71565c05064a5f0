// Policy decisions as plain functions: every outcome without CAF or sockets.
#include "actors/policy.hpp"

#include <doctest/doctest.h>

using namespace kvmid;
using kvmi::event_id;

namespace {

kvmi::event_msg make_event(event_id e, kvmi::event_data d = std::monostate{}) {
  kvmi::event_msg m;
  m.seq = 42;
  m.common.event = static_cast<uint32_t>(e);
  m.common.vcpu = 1;
  m.common.mode = 8;
  m.data = d;
  return m;
}

vm_policy strict() {
  vm_policy p;
  p.name = "strict";
  p.match = {"web-*"};
  p.pages.push_back({"text", 0x100000, 0x2000, kvmi::page_access_r | kvmi::page_access_x,
                     pf_action::allow_once});
  p.msrs.push_back({"lstar", 0xc0000082});
  p.crs.push_back(*parse_cr_pin("cr0.wp"));
  p.crs.push_back(*parse_cr_pin("cr4.smep"));
  p.crs.push_back(*parse_cr_pin("cr4.smap"));
  return p;
}

vm_state protected_state(pf_action a) {
  vm_state st;
  st.pages[0x100000] = protected_page{kvmi::page_access_r | kvmi::page_access_x, 0, a, "text"};
  return st;
}

} // namespace

TEST_CASE("msr protection denies a write by replying the old value") {
  auto p = strict();
  vm_state st;
  auto ev = make_event(event_id::msr, kvmi::event_msr{0xc0000082, 0, 0x1111, 0x2222});
  auto d = decide(ev, p, st);
  CHECK(d.alert);
  CHECK(d.rule == "msr-protection");
  CHECK(d.act == kvmi::action::continue_);
  CHECK(d.new_val == 0x1111);
  auto r = make_reply(ev, d);
  CHECK(std::get<kvmi::event_msr_reply>(r.extra).new_val == 0x1111);
  CHECK(r.seq == 42);
  CHECK(kvmi::check(r).ok());

  // An unprotected MSR passes unchanged, without an alert.
  auto ev2 = make_event(event_id::msr, kvmi::event_msr{0x174, 0, 1, 2});
  auto d2 = decide(ev2, p, st);
  CHECK_FALSE(d2.alert);
  CHECK(d2.new_val == 2);
}

TEST_CASE("cr pins force cleared bits back and leave other bits alone") {
  auto p = strict();
  vm_state st;
  uint64_t wp = 1ull << 16, smep = 1ull << 20, smap = 1ull << 21;
  auto ev = make_event(event_id::cr, kvmi::event_cr{4, {}, smep | smap | 0x20, 0x20 | (1ull << 7)});
  auto d = decide(ev, p, st);
  CHECK(d.alert);
  CHECK(d.rule == "cr-pin");
  CHECK(d.new_val == (smep | smap | 0x20 | (1ull << 7)));
  CHECK_FALSE(kvmi::check(make_reply(ev, d)));

  auto ev0 = make_event(event_id::cr, kvmi::event_cr{0, {}, wp | 1, 1});
  auto d0 = decide(ev0, p, st);
  CHECK(d0.alert);
  CHECK(d0.new_val == (wp | 1));

  // Setting a pinned bit that was clear (boot) is fine; CR3 is never pinned.
  auto ev1 = make_event(event_id::cr, kvmi::event_cr{4, {}, 0, smep});
  CHECK_FALSE(decide(ev1, p, st).alert);
  auto ev3 = make_event(event_id::cr, kvmi::event_cr{3, {}, 0x1000, 0x2000});
  auto d3 = decide(ev3, p, st);
  CHECK_FALSE(d3.alert);
  CHECK(d3.new_val == 0x2000);
}

TEST_CASE("page protection: each violation action - and permitted accesses") {
  auto p = strict();
  auto write = make_event(event_id::pf, kvmi::event_pf{0xffff0000, 0x100123, kvmi::page_access_w, 0});
  auto read = make_event(event_id::pf, kvmi::event_pf{0xffff0000, 0x100123, kvmi::page_access_r, 0});

  auto once = decide(write, p, protected_state(pf_action::allow_once));
  CHECK(once.alert);
  CHECK(once.rule == "page-protection");
  CHECK(once.act == kvmi::action::continue_);
  CHECK(once.then == follow_up::none);

  auto unprot = decide(write, p, protected_state(pf_action::allow_and_unprotect));
  CHECK(unprot.alert);
  CHECK(unprot.act == kvmi::action::retry);
  CHECK(unprot.then == follow_up::unprotect_page);
  CHECK(unprot.gpa == 0x100000);

  auto crash = decide(write, p, protected_state(pf_action::crash));
  CHECK(crash.alert);
  CHECK(crash.act == kvmi::action::crash);
  CHECK_FALSE(kvmi::check(make_reply(write, crash)));

  CHECK_FALSE(decide(read, p, protected_state(pf_action::crash)).alert);
  // A fault on a page kvmid never restricted is not an alert.
  auto other = make_event(event_id::pf, kvmi::event_pf{0, 0x900000, kvmi::page_access_w, 0});
  CHECK_FALSE(decide(other, p, protected_state(pf_action::crash)).alert);
  auto r = make_reply(write, once);
  CHECK(std::holds_alternative<kvmi::event_pf_reply>(r.extra));
}

TEST_CASE("breakpoints: kvmid's own are restored and retried - the guest's continue") {
  vm_policy p;
  vm_state st;
  st.breakpoints[0x2000] = breakpoint_state{"probe", 0x55, true, 0};
  auto own = decide(make_event(event_id::breakpoint, kvmi::event_breakpoint{0x2000}), p, st);
  CHECK(own.breakpoint_hit);
  CHECK(own.act == kvmi::action::retry);
  CHECK(own.then == follow_up::restore_breakpoint);
  auto guest = decide(make_event(event_id::breakpoint, kvmi::event_breakpoint{0x3000}), p, st);
  CHECK_FALSE(guest.breakpoint_hit);
  CHECK(guest.act == kvmi::action::continue_);
  CHECK(guest.then == follow_up::none);
}

TEST_CASE("a SINGLESTEP puts the breakpoint back and continues - its reply is a valid one") {
  vm_policy p;
  vm_state st;
  auto d = decide(make_event(event_id::singlestep), p, st);
  CHECK(d.act == kvmi::action::continue_);
  CHECK(d.then == follow_up::rearm_breakpoint);
  CHECK_FALSE(d.alert);
  auto r = make_reply(make_event(event_id::singlestep), d);
  CHECK(r.common.event == uint32_t(event_id::singlestep));
  CHECK(kvmi::check(r).ok());
}

TEST_CASE("pause events are held while the VM is paused - otherwise continued") {
  vm_policy p;
  vm_state st;
  auto ev = make_event(event_id::pause_vcpu);
  CHECK(decide(ev, p, st).then == follow_up::none);
  st.paused = true;
  CHECK(decide(ev, p, st).then == follow_up::hold);
  CHECK(decide(make_event(event_id::hypercall), p, st).report);
  for (auto e : {event_id::xsetbv, event_id::trap, event_id::descriptor, event_id::create_vcpu}) {
    auto m = make_event(e);
    if (e == event_id::trap)
      m.data = kvmi::event_trap{};
    if (e == event_id::descriptor)
      m.data = kvmi::event_descriptor{};
    auto d = decide(m, p, st);
    CHECK(d.act == kvmi::action::continue_);
    CHECK_FALSE(kvmi::check(make_reply(m, d)));
    // A vCPU hot-plugged during the pause waits in CREATE_VCPU like the
    // others in PAUSE_VCPU (docs/protocol.md); nothing else is held.
    CHECK(d.then == (e == event_id::create_vcpu ? follow_up::hold : follow_up::none));
  }
  st.paused = false;
  CHECK(decide(make_event(event_id::create_vcpu), p, st).then == follow_up::none);
}

TEST_CASE("the event mask follows the rules") {
  vm_policy p;
  p.hypercalls = false;
  uint32_t base = kvmi::flag(event_id::pause_vcpu) | kvmi::flag(event_id::breakpoint);
  CHECK(p.vcpu_events() == base);
  auto s = strict();
  CHECK(s.vcpu_events()
        == (base | kvmi::flag(event_id::pf) | kvmi::flag(event_id::msr) | kvmi::flag(event_id::cr)
            | kvmi::flag(event_id::hypercall)));
  CHECK((s.vcpu_events() & ~kvmi::known_vcpu_events) == 0);
}

TEST_CASE("policy selection by uuid or name glob - first match wins") {
  policy_set ps;
  ps.policies.push_back(strict());
  vm_policy byid;
  byid.name = "one";
  byid.match = {"1234*"};
  ps.policies.push_back(byid);
  CHECK(ps.select("aaaa", "web-01").name == "strict");
  CHECK(ps.select("12345678-0000", "db").name == "one");
  CHECK(ps.select("ffff", "db").name == "default");
  CHECK(glob_match("*", ""));
  CHECK(glob_match("a?c*", "abcdef"));
  CHECK_FALSE(glob_match("a?c", "abcd"));
  CHECK(glob_match("*-vm-*1", "sim-vm-11"));
  CHECK_FALSE(glob_match("*x*y*z", std::string(200, 'x') + "y"));
}

TEST_CASE("memory map safety refuses mmio - atsd - offline GPU RAM and unmapped ranges") {
  using kvmi::hs::region;
  std::vector<region> map = {
    {0, 0x100000, 0, 0, 0},
    {0x100000, 0x100000, 0, 0, 0},              // adjacent RAM: crossing is fine
    {0xc0000000, 0x40000000, 1, 0, 0},          // mmio
    {0x200000000, 0x100000, 2, 0, 0x4000000000}, // GPU RAM, offline
    {0x300000000, 0x100000, 2, kvmi::hs::region_online, 0},
    {0x400000000, 0x10000, 3, 0, 0},            // atsd
  };
  CHECK(unsafe_reason(map, 0x1000, 16).empty());
  CHECK(unsafe_reason(map, 0xff000, 0x2000).empty());
  CHECK(unsafe_reason(map, 0xc0001000, 1).find("MMIO") != std::string::npos);
  CHECK(unsafe_reason(map, 0x200000000, 8).find("not online") != std::string::npos);
  CHECK(unsafe_reason(map, 0x300000000, 8).empty());
  CHECK(unsafe_reason(map, 0x400000000, 8).find("ATSD") != std::string::npos);
  CHECK(unsafe_reason(map, 0x1ff000, 0x2000).find("outside") != std::string::npos);
  CHECK_FALSE(unsafe_reason(map, ~0ull - 4, 16).empty());
  CHECK_FALSE(unsafe_reason({}, 0, 1).empty());
  CHECK(unsafe_reason({}, 0, 1, true).empty());
}

TEST_CASE("page protection deny skips the instruction inside its range and lets the rest of the page through") {
  auto p = strict();
  auto st = protected_state(pf_action::deny);
  st.pages[0x100000].deny_gpa = 0x100100;
  st.pages[0x100000].deny_size = 65;
  auto at = [](uint64_t gpa) {
    return make_event(event_id::pf, kvmi::event_pf{0xffff0000, gpa, kvmi::page_access_w, 0});
  };
  for (uint64_t gpa : {0x100100ull, 0x100140ull}) {
    CAPTURE(gpa);
    auto d = decide(at(gpa), p, st);
    CHECK(d.alert);
    CHECK(d.rule == "page-protection");
    CHECK(d.act == kvmi::action::retry);
    CHECK(d.then == follow_up::skip_instruction);
    CHECK_FALSE(kvmi::check(make_reply(at(gpa), d)));
  }
  for (uint64_t gpa : {0x1000ffull, 0x100141ull, 0x100fffull}) {
    CAPTURE(gpa);
    auto d = decide(at(gpa), p, st);
    CHECK_FALSE(d.alert);
    CHECK(d.act == kvmi::action::continue_);
    CHECK(d.then == follow_up::none);
  }
  // No range: the whole page is denied.
  auto whole = decide(at(0x100fff), p, protected_state(pf_action::deny));
  CHECK(whole.alert);
  CHECK(whole.then == follow_up::skip_instruction);
  CHECK(parse_pf_action("deny") == pf_action::deny);
  CHECK(name(pf_action::deny) == "deny");
}
