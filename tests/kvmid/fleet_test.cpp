// kvmid (core + reactor + KVMI listener) against kvmi-sim over real UNIX
// sockets, in one process. Every policy outcome is checked on the guest
// side, through the simulator's state.
#include "tests/support/test_dialect.hpp"
#include "tests/support/constants.hpp"
#include "tests/support/drain.hpp"
#include "tests/support/inproc_fleet.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/wait.hpp"

#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace kvmid;
using namespace std::chrono_literals;
namespace sim = kvmi::sim;
using kvmi::event_id;

namespace {

using test::cr0_wp;
using test::cr4_smap;
using test::cr4_smep;
using test::msr_lstar;
using test::wait_until;
constexpr uint64_t text = test::sim_kernel_text;

struct fleet : testing::inproc_fleet {
  // before_start: guest state that must exist before the first hook.
  explicit fleet(policy_set ps, const std::function<void(sim::options&)>& tweak = {},
                 std::vector<uint8_t> kvmid_cookie = {},
                 const std::function<void(sim::host&)>& before_start = {},
                 const std::function<void(core_options&, kvmi_listener_options&)>& kvmid_tweak = {})
      : inproc_fleet(options(std::move(ps), tweak, std::move(kvmid_cookie), before_start,
                             kvmid_tweak)) {}

  static testing::inproc_options options(
    policy_set ps, const std::function<void(sim::options&)>& tweak,
    std::vector<uint8_t> kvmid_cookie, const std::function<void(sim::host&)>& before_start,
    const std::function<void(core_options&, kvmi_listener_options&)>& kvmid_tweak) {
    testing::inproc_options o;
    o.name = "fleet";
    auto cookie = std::vector<uint8_t>(32, 0x42); // the simulated device manager's
    o.core.policies = std::move(ps);
    o.core.command_timeout = 5000ms;
    o.listener.cookie = kvmid_cookie.empty() ? cookie : std::move(kvmid_cookie);
    if (kvmid_tweak)
      kvmid_tweak(o.core, o.listener);
    o.sim.cookie = cookie;
    o.sim.vms = 1;
    o.sim.vcpus_per_vm = 2;
    o.sim.reconnect_delay = 20ms;
    if (tweak)
      tweak(o.sim);
    o.before_start = before_start;
    return o;
  }
};

vm_policy guard() {
  vm_policy p;
  p.name = "guard";
  p.match = {"*"};
  p.msrs.push_back({"lstar", msr_lstar});
  for (auto n : {"cr0.wp", "cr4.smep", "cr4.smap"})
    p.crs.push_back(*parse_cr_pin(n));
  return p;
}

policy_set one(vm_policy p) {
  policy_set ps;
  ps.policies.push_back(std::move(p));
  return ps;
}

uint32_t guard_mask() {
  return kvmi::flag(event_id::pause_vcpu) | kvmi::flag(event_id::msr) | kvmi::flag(event_id::cr);
}

void check_msr_denied(fleet& f, uint32_t vm) {
  auto before = *f.h->msr(vm, 0, msr_lstar);
  double alerts = f.metric("kvmid_alerts_total", "rule", "msr-protection");
  auto o = f.get(f.h->write_msr(vm, 0, msr_lstar, before ^ 0xdead000));
  CHECK(o.ok);
  CHECK(o.event == event_id::msr);
  CHECK(o.reply == kvmi::action::continue_);
  CHECK(o.value == before);
  CHECK(*f.h->msr(vm, 0, msr_lstar) == before);
  CHECK(f.metric("kvmid_alerts_total", "rule", "msr-protection") == alerts + 1);
}

} // namespace

TEST_CASE("msr protection: a denied write leaves the MSR's value") {
  fleet f(one(guard()));
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  // An MSR nobody protects is not even intercepted: the write goes through.
  auto o = f.get(f.h->write_msr(0, 1, 0x174, 0x10));
  CHECK(o.value == 0x10);
  CHECK(*f.h->msr(0, 1, 0x174) == 0x10);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("cr pins: WP - SMEP and SMAP stay set") {
  fleet f(one(guard()));
  REQUIRE(f.ready(0, guard_mask()));
  auto cr4 = *f.h->cr(0, 1, 4);
  auto cr0 = *f.h->cr(0, 1, 0);
  REQUIRE((cr4 & (cr4_smep | cr4_smap)) == (cr4_smep | cr4_smap));
  REQUIRE((cr0 & cr0_wp) == cr0_wp);
  auto o4 = f.get(f.h->write_cr(0, 1, 4, (cr4 & ~(cr4_smep | cr4_smap)) | (1ull << 7)));
  CHECK(o4.event == event_id::cr);
  CHECK((*f.h->cr(0, 1, 4) & (cr4_smep | cr4_smap)) == (cr4_smep | cr4_smap));
  CHECK((*f.h->cr(0, 1, 4) & (1ull << 7)) != 0); // the unpinned change went through
  f.get(f.h->write_cr(0, 1, 0, cr0 & ~cr0_wp));
  CHECK((*f.h->cr(0, 1, 0) & cr0_wp) == cr0_wp);
  CHECK(f.metric("kvmid_alerts_total", "rule", "cr-pin") == 2);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("page protection: alert and each chosen action - seen by the guest") {
  vm_policy p;
  p.name = "pages";
  p.match = {"*"};
  p.pages.push_back({"once", text, 0x1000, kvmi::page_access_r | kvmi::page_access_x,
                     pf_action::allow_once});
  p.pages.push_back({"unprotect", text + 0x1000, 0x1000,
                     kvmi::page_access_r | kvmi::page_access_x, pf_action::allow_and_unprotect});
  p.pages.push_back({"fatal", text + 0x2000, 0x1000, kvmi::page_access_r | kvmi::page_access_x,
                     pf_action::crash});
  auto sub = [&](fleet& f) { return f.c->bus().subscribe(bus_filter{{}, {bus_kind::alert}, {}}, 64); };
  fleet f(one(p));
  auto alerts = sub(f);
  REQUIRE(f.ready(0, kvmi::flag(event_id::pf)));
  REQUIRE(f.h->wait_until([&] { return f.h->page_access(0, text + 0x2000) == 5; }, 30000ms));
  CHECK(f.h->page_access(0, text) == (kvmi::page_access_r | kvmi::page_access_x));

  auto once = f.get(f.h->access(0, 0, text + 8, kvmi::page_access_w));
  CHECK(once.event == event_id::pf);
  CHECK(once.reply == kvmi::action::continue_);
  CHECK(once.allowed);
  CHECK(f.h->page_access(0, text) == 5); // still protected
  // Reads stay allowed and raise nothing.
  auto rd = f.get(f.h->access(0, 0, text + 8, kvmi::page_access_r));
  CHECK(rd.events == 0);

  auto un = f.get(f.h->access(0, 1, text + 0x1008, kvmi::page_access_w));
  CHECK(un.event == event_id::pf);
  CHECK(un.allowed);
  CHECK(f.h->page_access(0, text + 0x1000) == kvmi::page_access_rwx);
  auto again = f.get(f.h->access(0, 1, text + 0x1010, kvmi::page_access_w));
  CHECK(again.events == 0); // unprotected: no second alert

  auto dead = f.get(f.h->access(0, 0, text + 0x2008, kvmi::page_access_w));
  CHECK(dead.reply == kvmi::action::crash);
  CHECK(dead.crashed);
  CHECK(f.metric("kvmid_alerts_total", "rule", "page-protection") == 3);
  std::vector<bus_record> got;
  REQUIRE(wait_until(
    [&] {
      alerts->poll(got);
      return got.size() >= 3;
    },
    "three alerts on the bus"));
  CHECK(got.size() == 3);
  CHECK(got[0].name == "page-protection");
  CHECK(got[0].vm == f.uuid(0));
  CHECK(f.h->make_report().total.hmis == 0);
}

TEST_CASE("breakpoints: kvmid's INT3 is planted - a hit counted and the byte restored - the guest's own INT3 is re-injected") {
  vm_policy p;
  p.name = "bp";
  p.match = {"*"};
  p.breakpoints.push_back({"probe", text + 0x40});
  fleet f(
    one(p),
    [](sim::options& o) {
      o.vms = 1;
      o.vcpus_per_vm = 1;
    },
    {},
    [](sim::host& h) {
      // The guest's code there, before kvmid hooks.
      h.guest_write(0, text + 0x40, {0x55});
      h.guest_write(0, text + 0x80, {0xcc}); // the guest's own INT3
    });
  REQUIRE(f.ready(0, kvmi::flag(event_id::breakpoint)));
  REQUIRE(f.h->wait_until([&] { return f.h->memory(0, text + 0x40, 1)[0] == 0xcc; }, 30000ms));
  auto hit = f.get(f.h->execute(0, 0, text + 0x40));
  CHECK(hit.event == event_id::breakpoint);
  CHECK(hit.reply == kvmi::action::retry);
  CHECK_FALSE(hit.guest_exception);
  auto bps = f.call<std::vector<breakpoint_info>>(
    [&](control_api& a, auto cb) { a.list_breakpoints(f.uuid(0), cb); });
  REQUIRE(bps.ok());
  REQUIRE(bps.value().size() == 1);
  CHECK(bps.value()[0].hits == 1);
  CHECK(bps.value()[0].original == 0x55);
  if (test::test_dialect() == test::dialect::v5) { // no single-stepping: left out for the session
    CHECK(f.h->memory(0, text + 0x40, 1)[0] == 0x55);
    CHECK_FALSE(bps.value()[0].planted);
  }

  auto own = f.get(f.h->execute(0, 0, text + 0x80));
  CHECK(own.event == event_id::breakpoint);
  CHECK(own.reply == kvmi::action::continue_);
  CHECK(own.guest_exception);
  CHECK(f.h->memory(0, text + 0x80, 1)[0] == 0xcc); // not kvmid's: untouched
  CHECK(f.h->make_report().ok());
}

uint64_t breakpoint_hits(fleet& f, uint64_t gpa) {
  auto bps = f.call<std::vector<breakpoint_info>>(
    [&](control_api& a, auto cb) { a.list_breakpoints(f.uuid(0), cb); });
  REQUIRE(bps.ok());
  for (auto& b : bps.value())
    if (b.gpa == gpa)
      return b.hits;
  FAIL("no breakpoint at " << gpa);
  return 0;
}

// v7 single-steps the vCPU past the restored byte and plants the INT3
// again; v5 cannot, so its breakpoint fires once per session.
TEST_CASE("breakpoints: a policy breakpoint hit N times is counted N times - once per session in v5 - planted again after a reconnect - its byte back after unhook") {
  constexpr uint64_t at = text + 0x40;
  constexpr uint8_t original = 0x55;
  vm_policy p;
  p.name = "bp";
  p.match = {"*"};
  p.breakpoints.push_back({"probe", at});
  fleet f(one(p), [](sim::options& o) { o.vcpus_per_vm = 2; }, {},
          [](sim::host& h) { h.guest_write(0, at, {original}); });
  REQUIRE(f.ready(0, kvmi::flag(event_id::breakpoint)));
  bool rearms = test::test_dialect() == test::dialect::v7;
  auto planted = [&] { return f.h->memory(0, at, 1)[0] == 0xcc; };
  constexpr int n = 6;
  uint64_t fired = 0;
  for (int i = 0; i < n; ++i) {
    INFO("execution " << i);
    bool fires = rearms || i == 0;
    if (fires)
      REQUIRE(f.h->wait_until(planted, 30000ms));
    auto o = f.get(f.h->execute(0, uint32_t(i % 2), at));
    CHECK_FALSE(o.guest_exception);
    if (fires) {
      CHECK(o.event == event_id::breakpoint);
      CHECK(o.reply == kvmi::action::retry);
      ++fired;
    } else {
      CHECK(o.events == 0);
    }
    CHECK(breakpoint_hits(f, at) == fired);
  }
  CHECK(fired == (rearms ? uint64_t(n) : 1u));
  CHECK(f.h->vm_counters(0).breakpoint_hits == fired); // the guest ran into it as often

  // v7 writes the INT3 back after the last hit's single step; a plain
  // disconnect leaves it in the guest (counted at that close), and the next
  // session adopts it.
  if (rearms)
    REQUIRE(f.h->wait_until(planted, 30000ms));
  f.get(f.h->inject_fault(0, "disconnect"));
  REQUIRE(f.h->wait_until([&] { return f.h->vm_counters(0).sessions >= 2; }, 30000ms));
  REQUIRE(f.ready(0, kvmi::flag(event_id::breakpoint)));
  REQUIRE(f.h->wait_until(planted, 30000ms));
  auto again = f.get(f.h->execute(0, 1, at));
  CHECK(again.event == event_id::breakpoint);
  CHECK(again.reply == kvmi::action::retry);
  CHECK(breakpoint_hits(f, at) == fired + 1);

  uint64_t left_before = f.h->vm_counters(0).int3_at_close;
  CHECK(left_before == (rearms ? 1u : 0u));
  REQUIRE(f.get(f.h->request_unhook(0)).ok);
  REQUIRE(f.h->wait_until([&] { return f.h->vm(0).unhooked; }, 30000ms));
  CHECK(f.h->memory(0, at, 1)[0] == original);
  CHECK(f.h->vm_counters(0).int3_at_close == left_before); // the unhook's close left none
  CHECK(f.h->make_report().ok());
}

TEST_CASE("pause holds every vCPU until resume - paused and running vCPUs answer register reads") {
  fleet f(one(guard()), [](sim::options& o) { o.vcpus_per_vm = 3; });
  REQUIRE(f.ready(0, guard_mask()));
  auto pr = f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(0), cb); });
  REQUIRE(pr.ok());
  auto v = f.h->vm(0);
  for (auto& c : v.vcpus)
    CHECK(c.state == sim::vcpu_state::paused);
  auto fut = f.h->write_msr(0, 2, 0x174, 0x99);
  CHECK(fut.wait_for(300ms) == std::future_status::timeout); // the guest is held
  auto regs = f.call<registers_info>(
    [&](control_api& a, auto cb) { a.get_registers(f.uuid(0), 1, {msr_lstar}, cb); });
  REQUIRE(regs.ok());
  CHECK(regs.value().sregs.cr4 == *f.h->cr(0, 1, 4));
  REQUIRE(regs.value().msrs.size() == 1);
  CHECK(regs.value().msrs[0].second == *f.h->msr(0, 1, msr_lstar));
  auto vinfo = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
  REQUIRE(vinfo.ok());
  CHECK(vinfo.value().paused);
  CHECK(vinfo.value().protocol == test::dialect_name()); // the API names the dialect
  for (auto& c : vinfo.value().vcpus)
    CHECK(c.state == vcpu_state::paused);
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(0), cb); }).ok());
  auto o = f.get(std::move(fut));
  CHECK(o.value == 0x99);
  // Running again: the kernel kicks the vCPU out of the guest to serve a
  // register read, and it runs on.
  REQUIRE(f.ready(0, guard_mask()));
  auto kicked = f.h->vm_counters(0).commands_on_running_vcpus;
  auto late = f.call<registers_info>(
    [&](control_api& a, auto cb) { a.get_registers(f.uuid(0), 1, {msr_lstar}, cb); });
  REQUIRE(late.ok());
  CHECK(late.value().regs.rip == f.h->vcpu(0, 1)->regs.rip);
  REQUIRE(late.value().msrs.size() == 1);
  CHECK(late.value().msrs[0].second == *f.h->msr(0, 1, msr_lstar));
  CHECK(f.h->vcpu(0, 1)->state == sim::vcpu_state::running);
  CHECK(f.h->vm_counters(0).commands_on_running_vcpus == kicked + 1);
  CHECK(f.h->make_report().ok());
}

// An operator pause holds each vCPU in its PAUSE_VCPU event for as long as
// the pause lasts: that is no slow reply. The hold is counted apart, so a
// latency alert does not fire whenever someone pauses a VM.
TEST_CASE("an operator pause is not reply latency - its hold is counted apart") {
  fleet f(one(guard()), [](sim::options& o) { o.vcpus_per_vm = 2; });
  REQUIRE(f.ready(0, guard_mask()));
  auto histogram = [&](const std::string& name) {
    for (auto& fam : f.c->metrics().snapshot())
      if (fam.name == name && !fam.samples.empty())
        return fam.samples.front();
    return metric_sample{};
  };
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(0), cb); }).ok());
  std::this_thread::sleep_for(1200ms); // the hold under test: longer than the last bucket
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(0), cb); }).ok());
  REQUIRE(f.ready(0, guard_mask()));
  auto hold = histogram("kvmid_vcpu_hold_seconds");
  CHECK(hold.count == 2); // one hold per vCPU
  CHECK(hold.sum >= 2 * 1.2);
  auto reply = histogram("kvmid_event_reply_seconds");
  REQUIRE(reply.count > 0);
  REQUIRE(reply.bounds.back() == 1.0);
  INFO("replies over 1 s: " << reply.cumulative.back() - reply.cumulative[reply.bounds.size() - 1]);
  CHECK(reply.cumulative[reply.bounds.size() - 1] == reply.count); // none over 1 s
}

TEST_CASE("unhook removes what kvmid planted and closes - the VM may come back with its history") {
  vm_policy p = guard();
  p.breakpoints.push_back({"probe", text + 0x40});
  p.pages.push_back({"text", text + 0x3000, 0x2000, 5, pf_action::allow_once});
  fleet f(one(p), [](sim::options& o) { o.vcpus_per_vm = 2; }, {},
          [](sim::host& h) { h.guest_write(0, text + 0x40, {0x90}); });
  REQUIRE(f.ready(0, guard_mask()));
  REQUIRE(f.h->wait_until([&] { return f.h->memory(0, text + 0x40, 1)[0] == 0xcc; }, 30000ms));
  CHECK(f.h->page_access(0, text + 0x3000) == 5);
  check_msr_denied(f, 0);
  auto o = f.get(f.h->request_unhook(0));
  CHECK(o.ok);
  REQUIRE(f.h->wait_until([&] { return f.h->vm(0).unhooked; }, 30000ms));
  CHECK(f.h->memory(0, text + 0x40, 1)[0] == 0x90);
  CHECK(f.h->page_access(0, text + 0x3000) == kvmi::page_access_rwx);
  CHECK(f.h->page_access(0, text + 0x4000) == kvmi::page_access_rwx);
  // kvmid learns of the close through the ring: wait for it, do not assume.
  std::optional<vm_info> info;
  REQUIRE(wait_until(
    [&] {
      auto r = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
      REQUIRE(r.ok());
      if (!r.value().connected)
        info = r.value();
      return info.has_value();
    },
    "kvmid to see the VM disconnected"));
  CHECK(info->alerts >= 1);
  CHECK(f.h->make_report().ok());
}

// What the guest held when its session ended, before the kernel's own
// clean-up: nothing of kvmid's, and no vCPU waiting for an answer.
void check_nothing_left(fleet& f, uint32_t vm) {
  INFO("vm " << vm);
  auto c = f.h->vm_counters(vm);
  CHECK(c.int3_at_close == 0);
  CHECK(c.restricted_at_close == 0);
  CHECK(c.unanswered_at_close == 0);
  CHECK(c.violation_count() == 0);
}

TEST_CASE("UNHOOK during a guest workload restores every INT3 - lifts every restriction - answers every vCPU - before the close") {
  constexpr uint64_t probe = 0x180000; // RAM the workload never executes
  vm_policy p = guard();
  p.breakpoints.push_back({"probe", probe});
  p.pages.push_back({"text", text, 0x4000, 5, pf_action::allow_once});
  fleet f(
    one(p),
    [](sim::options& o) {
      o.vms = 2;
      o.vcpus_per_vm = 4;
      o.workload.rate_per_vcpu = 200;
      o.reconnect = false;
    },
    {},
    [](sim::host& h) {
      for (uint32_t v = 0; v < 2; ++v)
        h.guest_write(v, probe, {0x90});
    });
  for (uint32_t v = 0; v < 2; ++v)
    REQUIRE(f.h->wait_until(
      [&] {
        return f.h->memory(v, probe, 1)[0] == 0xcc && f.h->page_access(v, text + 0x3000) == 5;
      },
      10000ms));
  std::vector<std::future<sim::outcome>> un;
  for (uint32_t v = 0; v < 2; ++v)
    un.push_back(f.h->request_unhook(v));
  for (uint32_t v = 0; v < 2; ++v) {
    CHECK(f.get(std::move(un[v])).ok);
    CHECK(f.h->vm(v).unhooked);
    CHECK(f.h->memory(v, probe, 1)[0] == 0x90);
    check_nothing_left(f, v);
  }
}

TEST_CASE("an operator unhook of a paused VM drops operator page access and breakpoints and releases the held vCPUs before the close") {
  fleet f(
    one(guard()), [](sim::options& o) { o.reconnect = false; }, {},
    [](sim::host& h) { h.guest_write(0, text + 0x200, {0x41}); });
  REQUIRE(f.ready(0, guard_mask()));
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(0), cb); }).ok());
  REQUIRE(f.call<done>([&](control_api& a, auto cb) {
    a.set_page_access(f.uuid(0), text + 0x5000, kvmi::page_access_r, cb);
  }).ok());
  REQUIRE(f.call<breakpoint_info>([&](control_api& a, auto cb) {
    a.add_breakpoint(f.uuid(0), text + 0x200, cb);
  }).ok());
  CHECK(f.h->page_access(0, text + 0x5000) == kvmi::page_access_r);
  CHECK(f.h->memory(0, text + 0x200, 1)[0] == 0xcc);
  auto msr = f.h->write_msr(0, 1, 0x174, 0x99); // waits behind the pause
  auto un = f.call<done>([&](control_api& a, auto cb) { a.unhook(f.uuid(0), cb); });
  INFO("unhook: " << (un.ok() ? std::string("ok") : un.error().message));
  REQUIRE(un.ok());
  // Answered once kvmid closed the socket; the host sees it close next.
  REQUIRE(f.h->wait_until([&] { return !f.h->hooked(0); }, 10000ms));
  CHECK(f.h->memory(0, text + 0x200, 1)[0] == 0x41);
  check_nothing_left(f, 0);
  CHECK(f.get(std::move(msr)).value == 0x99); // released, not aborted
}

TEST_CASE("reconnects of the same uuid keep the VM's history") {
  fleet f(one(guard()));
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  f.get(f.h->inject_fault(0, "disconnect"));
  REQUIRE(f.h->wait_until([&] { return f.h->vm_counters(0).sessions >= 2; }, 30000ms));
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
  REQUIRE(info.ok());
  CHECK(info.value().connected);
  CHECK(info.value().sessions == 2);
  CHECK(info.value().alerts == 2);
}

TEST_CASE("handshake failures: a wrong cookie costs only the socket - counted - no VM") {
  fleet f(one(guard()), [](sim::options& o) { o.reconnect_delay = 50ms; },
          std::vector<uint8_t>(32, 0x17));
  REQUIRE(f.h->wait_until([&] { return f.h->vm_counters(0).handshake_failures >= 1; }, 30000ms));
  REQUIRE(f.h->wait_until(
    [&] { return f.metric("kvmid_handshake_failures_total") >= 1; }, 30000ms));
  CHECK_FALSE(f.h->hooked(0));
  auto list = f.call<std::vector<vm_info>>([&](control_api& a, auto cb) { a.list_vms(cb); });
  REQUIRE(list.ok());
  CHECK(list.value().empty());
  CHECK(f.metric("kvmid_vms") == 0);
}

TEST_CASE("a host with the other byte order gets the same policy outcomes"
          * doctest::skip(test::only_in(test::dialect::v5, "v7 frames have one byte order: the host's"))) {
  fleet f(one(guard()), [](sim::options& o) { o.order = kvmi::byte_order::swapped; });
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  auto cr4 = *f.h->cr(0, 0, 4);
  f.get(f.h->write_cr(0, 0, 4, cr4 & ~cr4_smep));
  CHECK((*f.h->cr(0, 0, 4) & cr4_smep) == cr4_smep);
  auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
  REQUIRE(info.ok());
  CHECK(info.value().byte_order == "swapped");
  CHECK(f.h->make_report().ok());
}

TEST_CASE("a malformed frame closes only that VM's session") {
  fleet f(one(guard()), [](sim::options& o) {
    o.vms = 3;
    o.reconnect = false;
  });
  for (uint32_t i = 0; i < 3; ++i)
    REQUIRE(f.ready(i, guard_mask()));
  f.get(f.h->inject_fault(1, "garbage"));
  REQUIRE(f.h->wait_until([&] { return !f.h->vm(1).connected; }, 30000ms));
  REQUIRE(f.h->wait_until([&] { return f.metric("kvmid_protocol_errors_total") >= 1; }, 30000ms));
  check_msr_denied(f, 0);
  check_msr_denied(f, 2);
  CHECK(f.h->vm(0).hooked);
  CHECK(f.h->vm(2).hooked);
  CHECK(f.metric("kvmid_vms") == 2);
}

TEST_CASE("unsafe regions are refused with a clear error and never touched"
          * doctest::skip(test::only_in(test::dialect::v5, "v7 hosts send no MMIO or GPU regions in their memory map"))) {
  fleet f(one(guard()), [](sim::options& o) {
    o.memory.gpus.push_back(sim::gpu_spec{16ull << 30, std::nullopt}); // never online
  });
  REQUIRE(f.ready(0, guard_mask()));
  auto regions = f.h->vm(0).regions;
  uint64_t mmio = 0, gpu = 0, atsd = 0;
  for (auto& r : regions) {
    if (r.type == uint32_t(kvmi::hs::region_type::mmio))
      mmio = r.gpa;
    if (r.type == uint32_t(kvmi::hs::region_type::nvlink2_gpu_ram))
      gpu = r.gpa;
    if (r.type == uint32_t(kvmi::hs::region_type::nvlink2_atsd))
      atsd = r.gpa;
  }
  REQUIRE(mmio != 0);
  REQUIRE(gpu != 0);
  REQUIRE(atsd != 0); // every simulated GPU has its ATSD registers
  for (uint64_t gpa : {mmio, gpu, atsd}) {
    auto rd = f.call<std::vector<uint8_t>>(
      [&](control_api& a, auto cb) { a.read_physical(f.uuid(0), gpa + 16, 8, cb); });
    REQUIRE_FALSE(rd.ok());
    CHECK(rd.error().code == api_errc::unsafe_region);
    auto bp = f.call<breakpoint_info>(
      [&](control_api& a, auto cb) { a.add_breakpoint(f.uuid(0), gpa, cb); });
    REQUIRE_FALSE(bp.ok());
    CHECK(bp.error().code == api_errc::unsafe_region);
  }
  // RAM across pages is fine.
  f.h->guest_write(0, 0x7ffc, {1, 2, 3, 4, 5, 6, 7, 8});
  auto ok = f.call<std::vector<uint8_t>>(
    [&](control_api& a, auto cb) { a.read_physical(f.uuid(0), 0x7ffc, 8, cb); });
  REQUIRE(ok.ok());
  CHECK(ok.value() == std::vector<uint8_t>{1, 2, 3, 4, 5, 6, 7, 8});
  auto bad = f.call<std::vector<uint8_t>>(
    [&](control_api& a, auto cb) { a.read_physical("no-such-vm", 0, 8, cb); });
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == api_errc::not_found);
  CHECK(f.h->make_report().total.hmis == 0);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("1000 vCPUs under a seeded workload - zero invariant violations and zero HMIs" * doctest::test_suite("no-sanitize")) {
  vm_policy p = guard();
  p.pages.push_back({"text", text, 0x8000, 5, pf_action::allow_once});
  fleet f(one(p), [](sim::options& o) {
    o.vms = 10;
    o.vcpus_per_vm = 100;
    o.workload.rate_per_vcpu = 20;
    o.seed = 7;
  });
  for (uint32_t i = 0; i < 10; ++i)
    REQUIRE(f.ready(i, guard_mask()));
  CHECK(f.metric("kvmid_vcpus") == 1000);
  auto base = f.h->make_report().total.events;
  uint64_t sent0 = 0;
  for (auto e : base)
    sent0 += e;
  // Run until the guests have raised a thousand more events, however long
  // that takes on a busy machine.
  kvmi::sim::report rep;
  uint64_t sent = 0;
  REQUIRE(wait_until(
    [&] {
      rep = f.h->make_report();
      sent = 0;
      for (auto e : rep.total.events)
        sent += e;
      return sent > sent0 + 1000;
    },
    "1000 more events from the seeded workload", 120s));
  // Every event answered exactly once: the workload stops, kvmid catches
  // up, and each VM's events equal its replies (no session ended).
  auto d = test::drain(*f.h, {5000ms}); // the fleet's command_timeout
  CHECK(d.aborted == 0);
  CHECK(d.replied == d.sent);
  CHECK(d.sent > sent0 + 1000);
  CHECK(f.metric("kvmid_protocol_errors_total") == 0);
}

// Two rings: the main one accepts, and each new socket goes to the ring
// that serves fewer; a VM's actors then run on its socket's ring. Every
// event is still answered once, and the API reaches a VM on either ring.
TEST_CASE("two rings share the VMs - every event answered once - the API reaches each VM") {
  vm_policy p = guard();
  p.pages.push_back({"text", text, 0x8000, 5, pf_action::allow_once});
  auto o = fleet::options(
    one(p),
    [](sim::options& s) {
      s.vms = 6;
      s.vcpus_per_vm = 4;
      s.workload.rate_per_vcpu = 50;
      s.seed = 11;
    },
    {}, {}, {});
  o.rings = 2;
  testing::inproc_fleet f(std::move(o));
  for (uint32_t i = 0; i < 6; ++i)
    REQUIRE(f.ready(i, guard_mask()));
  // Accepted one after another, each to the ring with fewer: three each.
  CHECK(f.rings->connections(0) == 3);
  CHECK(f.rings->connections(1) == 3);
  for (uint32_t i = 0; i < 6; ++i) {
    auto before = *f.h->msr(i, 0, msr_lstar);
    auto out = f.get(f.h->write_msr(i, 0, msr_lstar, before ^ 0xdead000));
    CHECK(out.ok);
    CHECK(out.reply == kvmi::action::continue_);
    CHECK(*f.h->msr(i, 0, msr_lstar) == before);
    REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(i), cb); }).ok());
    auto regs = f.call<registers_info>(
      [&](control_api& a, auto cb) { a.get_registers(f.uuid(i), 1, {msr_lstar}, cb); });
    REQUIRE(regs.ok());
    REQUIRE(regs.value().msrs.size() == 1);
    CHECK(regs.value().msrs[0].second == *f.h->msr(i, 1, msr_lstar));
    REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(i), cb); }).ok());
    REQUIRE(f.ready(i, guard_mask()));
  }
  auto d = test::drain(*f.h, {5000ms}); // the fleet's command_timeout
  CHECK(d.aborted == 0);
  CHECK(d.replied == d.sent);
  CHECK(d.sent > 0);
  CHECK(f.metric("kvmid_protocol_errors_total") == 0);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("hot-plugged vCPUs are configured from their CREATE_VCPU event") {
  fleet f(one(guard()));
  REQUIRE(f.ready(0, guard_mask()));
  auto o = f.get(f.h->hotplug(0));
  REQUIRE(o.ok);
  uint32_t v = o.vcpu;
  REQUIRE(f.h->wait_until(
    [&] {
      auto c = f.h->vcpu(0, v);
      return c && (c->enabled_events & guard_mask()) == guard_mask()
             && c->state == sim::vcpu_state::running;
    },
    30000ms));
  auto before = *f.h->msr(0, v, msr_lstar);
  auto w = f.get(f.h->write_msr(0, v, msr_lstar, before + 0x1000));
  CHECK(w.event == event_id::msr);
  CHECK(*f.h->msr(0, v, msr_lstar) == before);
  CHECK(f.metric("kvmid_vcpus") == 3);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("a silent peer times out in the handshake and is counted") {
  fleet f(one(guard()), [](sim::options& o) { o.vms = 1; }, {}, {},
          [](core_options&, kvmi_listener_options& lo) { lo.handshake_timeout = 1s; });
  REQUIRE(f.ready(0, guard_mask()));
  // The simulated VM's own handshake may have timed out once on a busy
  // machine before it got through: count from here.
  const char* reason = "timeout";
  double before = f.metric("kvmid_handshake_failures_total", "reason", reason);
  int fd = test::connect_unix((f.dir / "kvmi.sock").string());
  // kvmid closes without a word.
  char b[64];
  ssize_t got;
  do // some other thread's signal may interrupt the wait
    got = ::recv(fd, b, sizeof b, 0);
  while (got < 0 && errno == EINTR);
  int err = errno;
  INFO("recv: " << got << " errno " << err);
  CHECK(got == 0);
  ::close(fd);
  REQUIRE(wait_until(
    [&] { return f.metric("kvmid_handshake_failures_total", "reason", reason) >= before + 1; },
    "the silent peer's handshake timeout counted"));
  CHECK(f.metric("kvmid_handshake_failures_total", "reason", reason) == before + 1);
  CHECK(f.metric("kvmid_vms") == 1); // the real VM is untouched
  check_msr_denied(f, 0);
}

TEST_CASE("the qemu-v5 compatibility handshake - when configured - gives a working session without a memory map"
          * doctest::skip(test::only_in(test::dialect::v5, "the qemu-v5 handshake is a v5 listener mode"))) {
  fleet f(one(guard()), [](sim::options& o) { o.handshake = kvmi::hs::mode::qemu_v5; }, {}, {},
          [](core_options&, kvmi_listener_options& lo) { lo.mode = kvmi::hs::mode::qemu_v5; });
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  // No memory map: kvmid refuses every memory access rather than guess.
  auto rd = f.call<std::vector<uint8_t>>(
    [&](control_api& a, auto cb) { a.read_physical(f.uuid(0), 0x1000, 8, cb); });
  REQUIRE_FALSE(rd.ok());
  CHECK(rd.error().code == api_errc::unsafe_region);
  CHECK(f.h->make_report().ok());
}

TEST_CASE("policy reload applies new rules to a connected VM") {
  auto next = std::make_shared<policy_set>();
  vm_policy open;
  open.name = "open";
  open.match = {"*"};
  fleet f(one(open), {}, {}, {}, [next](core_options& co, kvmi_listener_options&) {
    co.reload = [next](std::string&) -> std::optional<policy_set> { return *next; };
  });
  REQUIRE(f.ready(0));
  auto before = *f.h->msr(0, 0, msr_lstar);
  f.get(f.h->write_msr(0, 0, msr_lstar, before + 1));
  CHECK(*f.h->msr(0, 0, msr_lstar) == before + 1); // not protected yet
  *next = one(guard());
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.reload_policies(cb); }).ok());
  REQUIRE(f.ready(0, guard_mask()));
  check_msr_denied(f, 0);
  auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
  REQUIRE(info.ok());
  CHECK(info.value().policy == "guard");
}

// The reload comes while the VM's first set-up still runs: its
// SET_PAGE_ACCESS has reached the host, whose reply is slowed down. The new
// policy's page rule must be applied once that set-up ends, and the old
// one's undone, not the new policy dropped for the set-up it interrupted.
TEST_CASE("a policy reload during a VM's set-up applies the new page rules") {
  auto next = std::make_shared<policy_set>();
  auto rx = uint8_t(kvmi::page_access_r | kvmi::page_access_x);
  vm_policy first;
  first.name = "first";
  first.match = {"*"};
  first.pages.push_back({"old", text + 0x1000, 0x1000, rx, pf_action::allow_once});
  fleet f(
    one(first),
    [](sim::options& o) {
      o.faults.slow_reply_fraction = 1;
      o.faults.slow_reply_delay = std::chrono::milliseconds(100);
    },
    {}, {},
    [next](core_options& co, kvmi_listener_options&) {
      co.reload = [next](std::string&) -> std::optional<policy_set> { return *next; };
    });
  REQUIRE(f.h->wait_until([&] { return f.h->page_access(0, text + 0x1000) == rx; },
                          std::chrono::milliseconds(30000)));
  vm_policy second = first;
  second.name = "second";
  second.pages = {{"new", text, 0x1000, rx, pf_action::allow_once}};
  *next = one(second);
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.reload_policies(cb); }).ok());
  CHECK(f.h->wait_until([&] { return f.h->page_access(0, text) == rx; },
                        std::chrono::milliseconds(30000)));
  CHECK(f.h->wait_until([&] { return f.h->page_access(0, text + 0x1000) == kvmi::page_access_rwx; },
                        std::chrono::milliseconds(30000)));
  REQUIRE(f.ready(0));
  auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
  REQUIRE(info.ok());
  CHECK(info.value().policy == "second");
  CHECK(f.h->make_report().ok());
}

TEST_CASE("operator breakpoints and page access through the control API") {
  fleet f(one(guard()), {}, {}, [](sim::host& h) { h.guest_write(0, text + 0x200, {0x41}); });
  REQUIRE(f.ready(0, guard_mask()));
  auto bp = f.call<breakpoint_info>(
    [&](control_api& a, auto cb) { a.add_breakpoint(f.uuid(0), text + 0x200, cb); });
  REQUIRE(bp.ok());
  CHECK(bp.value().original == 0x41);
  CHECK(f.h->memory(0, text + 0x200, 1)[0] == 0xcc);
  auto dup = f.call<breakpoint_info>(
    [&](control_api& a, auto cb) { a.add_breakpoint(f.uuid(0), text + 0x200, cb); });
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().code == api_errc::conflict);
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.remove_breakpoint(f.uuid(0), text + 0x200, cb); }).ok());
  CHECK(f.h->memory(0, text + 0x200, 1)[0] == 0x41);
  // SET_PAGE_ACCESS needs a stopped vCPU.
  auto running = f.call<done>(
    [&](control_api& a, auto cb) { a.set_page_access(f.uuid(0), text + 0x5000, 5, cb); });
  REQUIRE_FALSE(running.ok());
  CHECK(running.error().code == api_errc::conflict);
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(0), cb); }).ok());
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.set_page_access(f.uuid(0), text + 0x5000, 5, cb); }).ok());
  CHECK(f.h->page_access(0, text + 0x5000) == 5);
  auto bad = f.call<done>(
    [&](control_api& a, auto cb) { a.set_vcpu_events(f.uuid(0), 0, 1u << 30, cb); });
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == api_errc::invalid);
  REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(0), cb); }).ok());
  CHECK(f.h->make_report().ok());
}
