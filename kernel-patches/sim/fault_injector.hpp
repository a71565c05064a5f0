// Fault injection: every frame the kernel sends passes here on its way to
// the socket, where the configured random faults (and the ones armed by
// host::inject_fault) strike; also the reconnect and hot-plug storms.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;

class fault_injector {
public:
  explicit fault_injector(shard& s);

  // A random fault of this VM's fault_spec strikes (never once quiesced).
  bool strikes(vm& v, double p);
  // Appends one whole frame to v's send queue, with the frame faults.
  void send_frame(vm& v, std::span<const uint8_t> f);
  // A command reply frame, with the reply faults; a vCPU's reply waits in
  // v.deferred until the end of the batch.
  void send_reply(vm& v, std::vector<uint8_t>& frame, bool from_vcpu);

  // The promise resolves once every byte queued so far has been sent.
  void await_sent(vm& v, vm::waiter w);
  void resolve_sent(vm& v);   // the socket took more bytes
  void reject_waiters(vm& v); // the session ended: faults not yet out never will be

  std::future<outcome> inject(vm& v, const std::string& fault); // host::inject_fault
  void send_slow_reply(vm& v);  // a slow reply's delay passed
  void reconnect_storm();       // every hooked VM drops its session
  void drain_check(vm& v);      // a drained close: replies all in, or time up
  void hotplug_storm();         // every hooked VM below the bound gets a vCPU

private:
  shard& s_;
  // Slow replies wait here (fault paths only).
  struct slow_reply {
    uint32_t vm_local;
    uint64_t gen; // the session it answers: never sent on a later one
    std::vector<uint8_t> bytes;
    vm::waiter injected; // inject_fault("slow_reply"), or null
  };
  std::deque<slow_reply> slow_;
};

} // namespace kvmi::sim::detail
