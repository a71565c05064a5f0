// The kvmi-v7 kernel branch, as libkvmi drives it (docs/protocol.md, "The
// v7 dialect"): its frames of up to 8184 bytes, events with their common
// part's size first, replies shorter than the full struct zero-filled and
// longer ones refused, CONTROL_CMD_RESPONSE batches in which only the
// replies the tool left on go out, and VCPU_CONTROL_SINGLESTEP. The rest is
// kernel_base's; its commands are in kernel_v7_commands.hpp.
#pragma once

#include "kernel-patches/sim/kernel_base.hpp"
#include "kernel-patches/sim/kernel_v7_commands.hpp"

namespace kvmi::sim::detail {

class kernel_v7 final : public kernel_base, public command_replies<kernel_v7, v7::reply_msg> {
public:
  explicit kernel_v7(shard& s);

  entry on_vcpu_entry(vm& v, vcpu& c) override;
  void encode_stray_event(vm& v, std::vector<uint8_t>& out) override;
  void encode_stray_reply(vm& v, uint32_t seq, std::vector<uint8_t>& out) override;

  // Command replies, unless CONTROL_CMD_RESPONSE switched them off for the
  // command being served; a vCPU's go out after the batch.
  void reply(vm& v, const v7::reply_msg& r, bool from_vcpu);
  // Whether the command being served gets its reply.
  void set_replying(bool on) { replying_ = on; }

protected:
  uint32_t max_payload() const override { return v7::max_payload; }
  void on_frame(vm& v, const frame& f) override;
  void encode_event(vm& v, vcpu* c, event_id kind, const event_data& data, uint32_t seq,
                    std::vector<uint8_t>& out) override;

private:
  void on_decode_error(vm& v, const frame& f, errc e);

  v7_commands commands_;
  bool replying_ = true;
};

} // namespace kvmi::sim::detail
