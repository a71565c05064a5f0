// Chaos fixture: kvmid's core + reactor + KVMI listener in this process,
// an embedded kvmi-sim fleet connected over a UNIX socket in a fresh temp
// dir, and the invariant checks every scenario ends with.
//
// Scale: the full sizes of issue 6 run in the release build; under
// AddressSanitizer (__SANITIZE_ADDRESS__, set by -fsanitize=address) every
// scenario runs scaled down. KVMID_CHAOS_SCALE=full|small overrides both.
#pragma once

#include "tests/support/drain.hpp"
#include "tests/chaos/guest.hpp"
#include "actors/log.hpp"
#include "server/dialect/handshake_failure.hpp"
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
using test::drain;
using test::drain_spec;
using test::drained;
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
// workload touches, page rules at the edges of the unsafe regions
// (guest.hpp), and one kvmid breakpoint.
inline vm_policy chaos_policy(bool with_breakpoint = true) {
  vm_policy p;
  p.name = "chaos";
  p.match = {"*"};
  p.msrs.push_back({"lstar", msr_lstar});
  for (auto n : {"cr0.wp", "cr4.smep", "cr4.smap"})
    p.crs.push_back(*parse_cr_pin(n));
  p.pages.push_back({"kernel-text", hot, 16 * 4096, kvmi::page_access_r | kvmi::page_access_x,
                     pf_action::allow_once});
  for (auto [gpa, size] : region_edges(chaos_memory()))
    p.pages.push_back({"edge-" + std::to_string(gpa), gpa, size,
                       kvmi::page_access_r | kvmi::page_access_x, pf_action::allow_once});
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
  static constexpr std::chrono::milliseconds default_command_timeout{10000};
  std::chrono::milliseconds command_timeout;

  explicit fleet(const std::function<void(sim::options&)>& tweak,
                 vm_policy policy = chaos_policy(),
                 std::chrono::milliseconds command_timeout = default_command_timeout)
      : inproc_fleet(options(tweak, std::move(policy), command_timeout)),
        command_timeout(command_timeout) {
    // The faults make kvmid warn per closed session and per skipped unsafe
    // page of the edge rules: thousands of lines that hide the test's own.
    // KVMID_CHAOS_LOG=1 keeps them, to see why a session closed.
    if (!std::getenv("KVMID_CHAOS_LOG"))
      log_verbosity.store(log_error);
  }

  static testing::inproc_options options(const std::function<void(sim::options&)>& tweak,
                                         vm_policy policy,
                                         std::chrono::milliseconds command_timeout) {
    testing::inproc_options o;
    o.name = "chaos";
    o.call_timeout = 30s;
    o.get_timeout = 30s;
    auto cookie = std::vector<uint8_t>(32, 0x5a);
    o.core.policies.policies.push_back(std::move(policy));
    o.core.command_timeout = command_timeout;
    o.listener.cookie = cookie;
    o.sim.cookie = cookie;
    o.sim.reconnect_delay = 20ms;
    o.sim.seed = 11;
    o.sim.memory = chaos_memory();
    if (o.dialect == protocol::v7) {
      // The chaos guests hold MMIO and GPU RAM: only QEMU's E820 map tells
      // kvmid which ranges are RAM (a bound would call all of them RAM).
      o.sim.v7_hello = sim::qemu_v7_hello::e820;
      o.listener.v7_layout = kvmi::v7::hs::layout::e820;
    }
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

// What a scenario lets the drained accounting excuse.
struct expect {
  bool host_closes = false;      // the simulator ends sessions itself (storms, drops)
  bool handshake_faults = false; // bad MACs on purpose
  bool paused = false;           // an operator pause holds every VM
};

// The invariants of issue 6, asserted at the end of every scenario, with
// the sessions still up: every event answered exactly once, or cut off by
// a session end the scenario caused or kvmid chose (drain.hpp); no double
// or unknown answers, no HMI; kvmid alive, its view of the fleet (VMs,
// connections, vCPUs) exact, and every expected alert recorded. Then the simulator stops.
inline drained check_invariants(fleet& f, expect e = {}) {
  drain_spec spec{f.command_timeout};
  spec.host_closes = e.host_closes;
  spec.handshake_faults = e.handshake_faults;
  spec.handshake_failures_seen = [&f] {
    std::string seen;
    for (auto r : handshake_failure_reasons)
      if (double n = f.metric("kvmid_handshake_failures_total", "reason", std::string(r)); n > 0)
        seen += " " + std::string(r) + "=" + std::to_string(uint64_t(n));
    return seen;
  };
  spec.paused = [p = e.paused](uint32_t) { return p; };
  spec.closed_on_purpose = [&](uint32_t v) {
    auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
    return i.ok() && i.value().protocol_errors > 0;
  };
  auto d = drain(*f.h, spec);
  // kvmid is alive and knows the fleet as the simulator has it: one entry
  // per VM that ever hooked, connected exactly when hooked now.
  size_t ever = 0, now = 0, vcpus = 0;
  for (auto& v : d.vms) {
    ever += v.c.sessions > 0 ? 1 : 0;
    now += v.hooked ? 1 : 0;
    vcpus += v.hooked ? v.vcpus.size() : 0;
  }
  size_t listed = 0, connected = 0;
  bool agree = f.eventually([&] {
    auto vms = f.call<std::vector<vm_info>>([](control_api& a, auto cb) { a.list_vms(cb); });
    if (!vms.ok())
      return false;
    listed = vms.value().size();
    connected = 0;
    for (auto& v : vms.value())
      connected += v.connected ? 1 : 0;
    return listed == ever && connected == now;
  });
  INFO("kvmid lists " << listed << " VMs, " << connected << " connected; the simulator had "
                      << ever << " ever hooked, " << now << " hooked now");
  CHECK(agree);
  double counted = 0;
  bool all_vcpus = f.eventually([&] { return (counted = f.metric("kvmid_vcpus")) == double(vcpus); });
  INFO("kvmid counts " << counted << " vCPUs, the hooked VMs have " << vcpus);
  CHECK(all_vcpus);
  // Alerts: every MSR event is a write to LSTAR (the only MSR kvmid
  // intercepts) and every PF event a write to protected text, so each one
  // kvmid decided is an alert; the undecided ones are those cut off.
  auto& c = d.rep.total;
  for (auto [kind, rule] : {std::pair{event_id::msr, "msr-protection"},
                            std::pair{event_id::pf, "page-protection"}}) {
    uint64_t events = c.events[size_t(kind)];
    double alerts = f.metric("kvmid_alerts_total", "rule", rule);
    INFO(rule << ": " << events << " events, " << alerts << " alerts, " << d.aborted << " cut off");
    CHECK(alerts <= double(events));
    CHECK(alerts + double(d.aborted) >= double(events));
  }
  f.h->stop();
  return d;
}

} // namespace kvmid::chaos
