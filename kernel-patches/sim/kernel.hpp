// The seam between the simulated host kernel and the rest of kvmi-sim: what
// the kernel does with a VM's session once the device manager handed it the
// socket, and how its vCPUs meet introspection. One class per KVMI dialect
// implements it (kernel_v5.hpp, kernel_v7.hpp, both on kernel_base.hpp); the
// guest, the device manager and the transport talk to the kernel only
// through this.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;

class kernel {
public:
  virtual ~kernel() = default;

  // The handshake is done: the session starts.
  virtual void hook(vm& v) = 0;
  // Bytes from the tool once the session is up.
  virtual void on_bytes(vm& v, std::span<const uint8_t> in) = 0;
  // After every batch of work: what the vCPU threads answered goes out.
  virtual void end_of_batch(vm& v) = 0;
  // The socket is gone (kvmi_end_introspection): waits end, the tool's
  // settings go. by_tool: the tool closed it, not the host.
  virtual void end_introspection(vm& v, bool by_tool) = 0;
  // QEMU asks for an unhook: false when the kernel has nothing to send and
  // the session just closes.
  virtual bool unhook(vm& v) = 0;
  virtual void on_unhook_timeout(vm& v, uint32_t gen) = 0;

  // Before the vCPU enters the guest it serves the kernel's jobs for it.
  enum class entry {
    enter,   // nothing to do: the guest runs
    again,   // a job was done without an event: look again
    stopped, // the vCPU waits in an event
  };
  virtual entry on_vcpu_entry(vm& v, vcpu& c) = 0;
  // The guest does something introspection may intercept: is the event on,
  // and raise it (for_action: the current guest action waits in it). The
  // data is in v5's structs; a dialect converts it to its own.
  virtual bool event_on(vm& v, vcpu& c, event_id e) = 0;
  virtual void send_event(vm& v, vcpu& c, event_id kind, const event_data& data,
                          bool for_action) = 0;

  // Frames for fault injection, in the dialect, with no effect on the
  // session: a PAUSE_VCPU event of vCPU 0 nothing waits for, and a
  // GET_VERSION reply with the given seq.
  virtual void encode_stray_event(vm& v, std::vector<uint8_t>& out) = 0;
  virtual void encode_stray_reply(vm& v, uint32_t seq, std::vector<uint8_t>& out) = 0;
};

std::unique_ptr<kernel> make_kernel_v5(shard& s);
std::unique_ptr<kernel> make_kernel_v7(shard& s);

} // namespace kvmi::sim::detail
