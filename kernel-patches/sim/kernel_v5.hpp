// The KVMI v5 kernel (docs/protocol.md): its frames, how it encodes events
// and replies, and what in the tool's frames ends a session. The rest is
// kernel_base's; its commands are in kernel_v5_commands.hpp.
#pragma once

#include "kernel-patches/sim/kernel_base.hpp"
#include "kernel-patches/sim/kernel_v5_commands.hpp"

namespace kvmi::sim::detail {

// The registers and MSRs every v5 event carries.
void fill_event_common(vcpu& c, event& e);

class kernel_v5 final : public kernel_base, public command_replies<kernel_v5, reply_msg> {
public:
  explicit kernel_v5(shard& s);

  void encode_stray_event(vm& v, std::vector<uint8_t>& out) override;
  void encode_stray_reply(vm& v, uint32_t seq, std::vector<uint8_t>& out) override;

  // Command replies; a vCPU's go out after the batch, as the kernel sends
  // them from the vCPU thread after the receive thread's.
  void reply(vm& v, const reply_msg& r, bool from_vcpu);

protected:
  uint32_t max_payload() const override { return kvmi::max_payload; }
  void on_frame(vm& v, const frame& f) override;
  void encode_event(vm& v, vcpu* c, event_id kind, const event_data& data, uint32_t seq,
                    std::vector<uint8_t>& out) override;

private:
  v5_commands commands_;
};

} // namespace kvmi::sim::detail
