// What the v5 kernel and the kvmi-v7 kernel branch do alike: session start
// and end, the vCPU jobs (CREATE_VCPU, PAUSE_VCPU, injected exceptions),
// event bookkeeping and the applying of event replies, vCPU replies sent
// after the batch. A dialect adds its frames: how it decodes what the tool
// sends, encodes events and replies (kernel_v5.hpp, kernel_v7.hpp).
#pragma once

#include "kernel-patches/sim/kernel.hpp"

namespace kvmi::sim::detail {

// An event reply as every dialect reads it.
struct reply_view {
  uint32_t seq = 0;
  std::optional<uint16_t> vcpu; // v7 names the vCPU; v5 does not
  uint32_t event = 0;
  uint32_t action = 0;
  error verdict;                // the dialect's check() of the reply
  std::optional<uint64_t> new_val;
  uint32_t pf_ctx_size = 0;
};

// The reply_view of a dialect's decoded event reply (PfReply: its PF reply
// struct); verdict is the dialect's check() of it.
template <class PfReply, class Reply>
reply_view view_of_reply(const Reply& r, error verdict) {
  reply_view rv;
  rv.seq = r.seq;
  rv.event = r.common.event;
  rv.action = r.common.action;
  rv.verdict = verdict;
  if (auto* pf = std::get_if<PfReply>(&r.extra))
    rv.pf_ctx_size = pf->ctx_size;
  if (auto* x = std::get_if<event_cr_reply>(&r.extra))
    rv.new_val = x->new_val;
  if (auto* x = std::get_if<event_msr_reply>(&r.extra))
    rv.new_val = x->new_val;
  return rv;
}

class kernel_base : public kernel {
public:
  explicit kernel_base(shard& s);

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

  void violate(vm& v, violation k);
  // A command reply frame goes out (a vCPU's after the batch).
  void send_reply(vm& v, int32_t err, std::vector<uint8_t>& frame, bool from_vcpu);

protected:
  // The largest payload the dialect frames.
  virtual uint32_t max_payload() const = 0;
  virtual void on_frame(vm& v, const frame& f) = 0;
  // The event's frame: c is null for a VM event with no vCPU behind it.
  virtual void encode_event(vm& v, vcpu* c, event_id kind, const event_data& data,
                            uint32_t seq, std::vector<uint8_t>& out) = 0;

  void on_event_reply(vm& v, const reply_view& r);
  // The reply (or its absence) decided: apply it and let the vCPU go on.
  void finish_event(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val, bool aborted);
  // The event is one the tool enabled (PAUSE_VCPU answers a command).
  bool enabled(const vm& v, vcpu* c, event_id kind) const;

  shard& s_;
};

} // namespace kvmi::sim::detail
