// Chaos fixture: kvmid's core + reactor + KVMI listener in this process,
// an embedded kvmi-sim fleet connected over a UNIX socket in a fresh temp
// dir, and the invariant checks every scenario ends with.
//
// Scale: the full sizes of issue 6 run in the release build; under
// AddressSanitizer (__SANITIZE_ADDRESS__, set by -fsanitize=address) every
// scenario runs scaled down. KVMID_CHAOS_SCALE=full|small overrides both.
#pragma once

#include "tests/support/inproc_fleet.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace kvmid::chaos {

using namespace std::chrono_literals;
namespace sim = kvmi::sim;
using kvmi::event_id;

inline bool full_scale() {
  if (const char* s = std::getenv("KVMID_CHAOS_SCALE"))
    return std::strcmp(s, "small") != 0;
#if defined(__SANITIZE_ADDRESS__)
  return false;
#else
  return true;
#endif
}
// full-size value in release, the small one under ASan.
inline uint32_t scaled(uint32_t full, uint32_t small) { return full_scale() ? full : small; }

inline constexpr uint32_t msr_lstar = 0xc0000082;
inline constexpr uint64_t hot = 0x100000;   // the sim workload's hot pages (kernel text)
inline constexpr uint64_t bp_gpa = 0x200000; // outside the hot range: the workload never runs it
inline constexpr uint8_t bp_original = 0x55;

// The policy every scenario runs: MSR, CR and page protection on what the
// workload touches, and one kvmid breakpoint.
inline vm_policy chaos_policy(bool with_breakpoint = true) {
  vm_policy p;
  p.name = "chaos";
  p.match = {"*"};
  p.msrs.push_back({"lstar", msr_lstar});
  for (auto n : {"cr0.wp", "cr4.smep", "cr4.smap"})
    p.crs.push_back(*parse_cr_pin(n));
  p.pages.push_back({"kernel-text", hot, 16 * 4096, kvmi::page_access_r | kvmi::page_access_x,
                     pf_action::allow_once});
  if (with_breakpoint)
    p.breakpoints.push_back({"probe", bp_gpa});
  return p;
}

inline uint32_t policy_mask() {
  return kvmi::flag(event_id::pause_vcpu) | kvmi::flag(event_id::msr) | kvmi::flag(event_id::cr)
         | kvmi::flag(event_id::pf);
}

inline uint64_t sum(const std::array<uint64_t, kvmi::num_events>& a) {
  uint64_t n = 0;
  for (auto x : a)
    n += x;
  return n;
}

struct fleet : testing::inproc_fleet {
  explicit fleet(const std::function<void(sim::options&)>& tweak,
                 vm_policy policy = chaos_policy())
      : inproc_fleet(options(tweak, std::move(policy))) {}

  static testing::inproc_options options(const std::function<void(sim::options&)>& tweak,
                                         vm_policy policy) {
    testing::inproc_options o;
    o.name = "chaos";
    o.call_timeout = 30s;
    o.get_timeout = 30s;
    auto cookie = std::vector<uint8_t>(32, 0x5a);
    o.core.policies.policies.push_back(std::move(policy));
    o.core.command_timeout = 10000ms;
    o.listener.cookie = cookie;
    o.sim.cookie = cookie;
    o.sim.reconnect_delay = 20ms;
    o.sim.seed = 11;
    tweak(o.sim);
    // The guest's code under kvmid's breakpoint, before the first hook.
    o.before_start = [vms = o.sim.vms](sim::host& h) {
      for (uint32_t v = 0; v < vms; ++v)
        h.guest_write(v, bp_gpa, {bp_original});
    };
    return o;
  }

  uint32_t vcpus_total() const { return so.vms * so.vcpus_per_vm; }

  // Every VM hooked and every vCPU configured by kvmid (events enabled).
  // Polled every 100 ms: with 10,000 vCPUs a per-batch check costs more
  // than the work it waits for.
  bool configured(std::chrono::milliseconds timeout, uint32_t mask = policy_mask()) {
    auto end = std::chrono::steady_clock::now() + timeout;
    uint32_t from = 0; // VMs already seen configured stay so in these scenarios
    while (std::chrono::steady_clock::now() < end) {
      while (from < so.vms) {
        auto v = h->vm(from);
        bool ok = v.hooked && !v.vcpus.empty();
        for (auto& x : v.vcpus)
          ok = ok && (x.enabled_events & mask) == mask;
        if (!ok)
          break;
        ++from;
      }
      if (from == so.vms)
        return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  bool planted(uint32_t vm) { return h->memory(vm, bp_gpa, 1)[0] == 0xcc; }

  // Waits (bounded) until kvmid's view agrees with pred; kvmid learns of
  // closes and reconnects through its ring, later than the simulator.
  bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 15000ms) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= end)
        return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  }
};

// What the simulator saw, frozen: the fleet is stopped first so the
// counters and the vCPU states form one consistent snapshot.
struct tally {
  sim::report rep;
  uint64_t sent = 0;    // events that expect a reply
  uint64_t replied = 0; // replies accepted by the simulated kernel
  uint64_t aborted = 0; // events still waiting when their session ended (kernel: CONTINUE)
  uint64_t waiting = 0; // vCPUs stopped in an event when the fleet was stopped
};

inline tally freeze(fleet& f) {
  f.h->stop();
  tally t;
  t.rep = f.h->make_report();
  auto& c = t.rep.total;
  t.sent = sum(c.events) - c.events[size_t(event_id::unhook)]; // UNHOOK expects no reply
  t.replied = c.replies[0] + c.replies[1] + c.replies[2];
  t.aborted = c.unanswered_at_close;
  for (uint32_t v = 0; v < f.h->vm_count(); ++v)
    for (auto& x : f.h->vm(v).vcpus)
      t.waiting += x.state != sim::vcpu_state::running ? 1 : 0;
  return t;
}

// The invariants of issue 6, asserted at the end of every scenario: every
// event answered exactly once (or aborted by its session's end, as the
// kernel does), no double or unknown answers, no HMI, kvmid alive and
// answering, and every expected alert recorded.
inline tally check_invariants(fleet& f) {
  auto t = freeze(f);
  auto& c = t.rep.total;
  INFO("sent " << t.sent << " replied " << t.replied << " aborted " << t.aborted << " waiting "
               << t.waiting);
  for (auto& [k, n] : c.violations)
    INFO("violation " << k << ": " << n);
  CHECK(c.violation_count() == 0); // covers double answers (reply_unknown_seq) and bad replies
  CHECK(c.hmis == 0);
  CHECK(t.sent == t.replied + t.aborted + t.waiting); // nothing lost, nothing answered twice
  CHECK(t.waiting <= f.h->vm_count() * 4096u);
  // kvmid is alive: its API still answers, about the VMs it knows.
  auto vms = f.call<std::vector<vm_info>>([](control_api& a, auto cb) { a.list_vms(cb); });
  REQUIRE(vms.ok());
  CHECK(vms.value().size() <= f.h->vm_count());
  // Alerts: every MSR event is a write to LSTAR (the only MSR kvmid
  // intercepts) and every PF event a write to protected text, so each one
  // kvmid decided is an alert; the undecided ones are at most those that
  // were aborted or still waiting.
  auto slack = t.aborted + t.waiting;
  for (auto [kind, rule] : {std::pair{event_id::msr, "msr-protection"},
                            std::pair{event_id::pf, "page-protection"}}) {
    uint64_t events = c.events[size_t(kind)];
    double alerts = f.metric("kvmid_alerts_total", "rule", rule);
    INFO(rule << ": " << events << " events, " << alerts << " alerts");
    CHECK(alerts <= double(events));
    CHECK(alerts + double(slack) >= double(events));
  }
  return t;
}

} // namespace kvmid::chaos
