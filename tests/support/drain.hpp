// The drained accounting every test of kvmid under a workload ends with.
// The simulated guests stop working (kvmi::sim::host::quiesce) while their
// sessions stay up; kvmid answers whatever still waits; then, before
// anything is stopped, every event each simulated kernel sent is accounted
// for, VM by VM:
//   sent == replied + aborted + held
// where "aborted" is an event its session's end cut off (the kernel then
// continues the vCPU) and "held" a vCPU an operator pause keeps in
// PAUSE_VCPU / CREATE_VCPU. An event kvmid never answered shows as a vCPU
// still waiting (and ever older) once the workload has stopped; one
// answered twice as a reply_unknown_seq violation.
#pragma once

#include "kernel-patches/sim/sim.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kvmid::test {

struct drain_spec {
  std::chrono::milliseconds command_timeout; // kvmid's: no event may wait longer
  std::chrono::milliseconds deadline{60000};  // for kvmid to catch up
  // kvmid closed this VM's session itself (a protocol error it counted):
  // events cut off when kvmid closed the socket are accounted for. A VM
  // whose UNHOOK completed counts as closed on purpose too.
  std::function<bool(uint32_t)> closed_on_purpose = [](uint32_t) { return false; };
  // An operator pause is in force on this VM: vCPUs held in PAUSE_VCPU or
  // CREATE_VCPU are expected to wait.
  std::function<bool(uint32_t)> paused = [](uint32_t) { return false; };
  // The simulator ends sessions itself (reconnect storms, injected drops,
  // disconnects): events those ends cut off are accounted for.
  bool host_closes = false;
  bool handshake_faults = false; // the simulator sends bad MACs on purpose
  // What the introspector counted of failed handshakes, printed when the
  // simulator saw one it did not expect.
  std::function<std::string()> handshake_failures_seen = [] { return std::string(); };
};

struct drained {
  kvmi::sim::report rep; // at the drained point, sessions still up
  std::vector<kvmi::sim::vm_view> vms;
  uint64_t sent = 0, replied = 0, aborted = 0, held = 0;
  double oldest_ms = 0; // the oldest event seen waiting while draining (holds aside)
};

namespace detail {

inline bool held_kind(const kvmi::sim::vcpu_view& c) {
  return c.event == kvmi::event_id::pause_vcpu || c.event == kvmi::event_id::create_vcpu;
}

inline uint64_t expects_reply(const kvmi::sim::counters& c) {
  uint64_t n = 0;
  for (auto x : c.events)
    n += x;
  return n - c.events[size_t(kvmi::event_id::unhook)]; // UNHOOK expects no reply
}

// A VM's vCPUs that wait but should not: not held by an operator pause.
inline std::vector<std::string> stuck(const kvmi::sim::vm_view& v, bool paused) {
  std::vector<std::string> out;
  for (size_t i = 0; i < v.vcpus.size(); ++i) {
    auto& c = v.vcpus[i];
    if (c.state == kvmi::sim::vcpu_state::running || (paused && held_kind(c)))
      continue;
    std::ostringstream s;
    s << "vm " << v.index << " vcpu " << i << " waits in "
      << (c.event ? std::string(kvmi::name(*c.event)) : "?") << " for " << c.wait_ms << " ms";
    out.push_back(s.str());
  }
  return out;
}

} // namespace detail

// Stops the workload, waits until kvmid has answered every event that is
// not an operator hold (and every VM that may reconnect is hooked again),
// then asserts the accounting above. Failing fast: a vCPU waiting longer
// than command_timeout_ms is lost, not slow.
inline drained drain(kvmi::sim::host& h, const drain_spec& spec) {
  using namespace std::chrono;
  h.quiesce();
  drained d;
  auto end = steady_clock::now() + spec.deadline;
  std::vector<std::string> why;
  for (;;) {
    d.vms.clear();
    why.clear();
    for (uint32_t v = 0; v < h.vm_count(); ++v) {
      d.vms.push_back(h.vm(v));
      auto& vm = d.vms.back();
      if (!vm.hooked && !vm.unhooked && !vm.crashed)
        why.push_back("vm " + std::to_string(v) + " not hooked");
      for (auto& s : detail::stuck(vm, spec.paused(v)))
        why.push_back(s);
      for (auto& c : vm.vcpus)
        if (c.state != kvmi::sim::vcpu_state::running && !detail::held_kind(c))
          d.oldest_ms = std::max(d.oldest_ms, c.wait_ms);
    }
    if (why.empty() || steady_clock::now() >= end
        || d.oldest_ms >= double(spec.command_timeout.count()))
      break;
    std::this_thread::sleep_for(50ms);
  }
  d.rep = h.make_report();
  std::string outstanding;
  for (size_t k = 0; k < why.size() && k < 10; ++k)
    outstanding += "\n  " + why[k];
  INFO(why.size() << " things still outstanding after the drain:" << outstanding);
  CHECK(why.empty());
  MESSAGE("drained: the oldest event waiting after the workload stopped had waited "
          << d.oldest_ms << " ms (command timeout " << spec.command_timeout.count() << " ms)");
  CHECK(d.oldest_ms < double(spec.command_timeout.count()));

  for (auto& vm : d.vms) {
    auto& c = vm.c;
    uint64_t sent = detail::expects_reply(c);
    uint64_t replied = c.replies[0] + c.replies[1] + c.replies[2];
    uint64_t held = 0;
    for (auto& x : vm.vcpus)
      held += x.state != kvmi::sim::vcpu_state::running ? 1 : 0;
    d.sent += sent;
    d.replied += replied;
    d.aborted += c.unanswered_at_close;
    d.held += held;
    INFO("vm " << vm.index << ": sent " << sent << " replied " << replied << " aborted "
               << c.unanswered_at_close << " (by kvmid closing " << c.aborted_by_tool
               << ") held " << held << " sessions " << c.sessions);
    CHECK(sent == replied + c.unanswered_at_close + held); // nothing lost, nothing answered twice
    if (!vm.unhooked && !spec.closed_on_purpose(vm.index))
      CHECK(c.aborted_by_tool == 0); // kvmid never dropped a session with events waiting
    if (!spec.host_closes)
      CHECK(c.unanswered_at_close == c.aborted_by_tool);
  }
  auto& t = d.rep.total;
  std::string violations;
  for (auto& [k, n] : t.violations)
    violations += " " + k + "=" + std::to_string(n);
  INFO("violations:" << violations);
  CHECK(t.violation_count() == 0); // covers double answers (reply_unknown_seq) and bad replies
  CHECK(t.hmis == 0);
  if (!spec.handshake_faults && t.handshake_failures != 0) {
    std::string vms;
    for (auto& vm : d.vms)
      if (vm.c.handshake_failures)
        vms += " vm " + std::to_string(vm.index) + " x" + std::to_string(vm.c.handshake_failures);
    INFO("failed handshakes:" << vms << "; the introspector counted:"
                              << spec.handshake_failures_seen());
    CHECK(t.handshake_failures == 0);
  }
  MESSAGE("drained: sent " << d.sent << " replied " << d.replied << " aborted " << d.aborted
                           << " held " << d.held);
  return d;
}

} // namespace kvmid::test
