// Chaos fixture: kvmid's core + reactor + KVMI listener in this process,
// an embedded kvmi-sim fleet connected over a UNIX socket in a fresh temp
// dir, and the invariant checks every scenario ends with.
//
// Scale: the full sizes of issue 6 run in the release build; under
// AddressSanitizer (__SANITIZE_ADDRESS__, set by -fsanitize=address) every
// scenario runs scaled down. KVMID_CHAOS_SCALE=full|small overrides both.
#pragma once

#include "actors/core.hpp"
#include "kernel-patches/sim/sim.hpp"
#include "server/kvmi_session.hpp"
#include "server/reactor.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
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

struct fleet {
  std::filesystem::path dir;
  std::vector<uint8_t> cookie = std::vector<uint8_t>(32, 0x5a);
  std::unique_ptr<core> c;
  std::unique_ptr<net::reactor> r;
  std::unique_ptr<sim::host> h;
  sim::options so;

  explicit fleet(const std::function<void(sim::options&)>& tweak,
                 vm_policy policy = chaos_policy()) {
    char t[] = "/tmp/kvmid-chaos-XXXXXX";
    REQUIRE(mkdtemp(t));
    dir = t;
    core_options co;
    co.policies.policies.push_back(std::move(policy));
    co.command_timeout = 10000ms;
    c = std::make_unique<core>(co);
    r = std::make_unique<net::reactor>();
    net::listen_spec s;
    s.path = (dir / "kvmi.sock").string();
    kvmi_listener_options lo;
    lo.cookie = cookie;
    r->add_listener(s, kvmi_handler_factory(*r, *c, lo));
    r->start();
    so.unix_path = s.path;
    so.cookie = cookie;
    so.reconnect_delay = 20ms;
    so.seed = 11;
    tweak(so);
    h = std::make_unique<sim::host>(so);
    // The guest's code under kvmid's breakpoint, before the first hook.
    for (uint32_t v = 0; v < so.vms; ++v)
      h->guest_write(v, bp_gpa, {bp_original});
    h->start();
  }
  ~fleet() {
    h->stop();
    r->stop();
    c.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
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

  template <class T, class F>
  api_result<T> call(F&& f) {
    auto p = std::make_shared<std::promise<api_result<T>>>();
    auto fut = p->get_future();
    f(c->api(), [p](api_result<T> r) { p->set_value(std::move(r)); });
    if (fut.wait_for(30s) != std::future_status::ready)
      return api_error{api_errc::timeout, "chaos test: no answer within 30 s"};
    return fut.get();
  }

  std::string uuid(uint32_t vm) { return kvmi::hs::to_string(h->vm(vm).uuid); }

  double metric(const std::string& name, const std::string& label = {},
                const std::string& value = {}) {
    double total = 0;
    for (auto& f : c->metrics().snapshot())
      if (f.name == name)
        for (auto& s : f.samples) {
          bool ok = label.empty();
          for (auto& [k, v] : s.lbls)
            ok = ok || (k == label && v == value);
          if (ok)
            total += s.value;
        }
    return total;
  }

  sim::outcome get(std::future<sim::outcome> f) {
    REQUIRE(f.wait_for(30s) == std::future_status::ready);
    return f.get();
  }

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
