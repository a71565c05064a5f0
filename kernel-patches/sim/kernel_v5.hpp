// The KVMI v5 kernel (docs/protocol.md): how it reads the tool's frames,
// delivers events from vCPU threads and applies their replies, and what
// ends a session. Its commands are in kernel_v5_commands.hpp.
#pragma once

#include "kernel-patches/sim/kernel.hpp"
#include "kernel-patches/sim/kernel_v5_commands.hpp"

namespace kvmi::sim::detail {

// The registers and MSRs every v5 event carries.
void fill_event_common(vcpu& c, event& e);

class kernel_v5 final : public kernel {
public:
  explicit kernel_v5(shard& s);

  void hook(vm& v) override;
  void on_bytes(vm& v, std::span<const uint8_t> in) override;
  void end_of_batch(vm& v) override;
  void end_introspection(vm& v, bool by_tool) override;
  bool unhook(vm& v) override;
  void on_unhook_timeout(vm& v, uint32_t gen) override;
  entry on_vcpu_entry(vm& v, vcpu& c) override;
  bool event_on(vm& v, vcpu& c, event_id e) override;
  void send_event(vm& v, vcpu& c, event_id kind, const event_data& data,
                  bool for_action) override;

  // Command replies; a vCPU's go out after the batch, as the kernel sends
  // them from the vCPU thread after the receive thread's.
  void reply(vm& v, const reply_msg& r, bool from_vcpu);
  void reply_err(vm& v, msg_id id, uint32_t seq, int32_t kvm_e, bool from_vcpu);
  void ok(vm& v, msg_id id, uint32_t seq, reply_data d, bool from_vcpu);
  void violate(vm& v, violation k);

private:
  void on_frame(vm& v, const frame& f);
  void on_event_reply(vm& v, const event_reply_msg& r);
  // The reply (or its absence) decided: apply it and let the vCPU go on.
  void finish_event(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val, bool aborted);

  shard& s_;
  v5_commands commands_;
};

} // namespace kvmi::sim::detail
