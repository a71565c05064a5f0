// v7: frames of the KVM-VMI kernel branch, translated to and from the v5
// messages the actors speak (v7_translate.hpp). What a translation needs to
// remember lives here: the plan of each command waiting for its reply, the
// vCPU of each event waiting for its reply (v5 replies do not name it) and
// the vCPU count a pause stops.
#include "server/dialect/dialect.hpp"
#include "server/dialect/v7_translate.hpp"

#include <map>
#include <mutex>
#include <unordered_map>

namespace kvmid {

namespace {

namespace v7 = kvmi::v7;

// Bounds on what the host can make kvmid remember: commands whose replies
// never come (kvmid timed them out and forgot them), and events (one per
// vCPU at a time).
constexpr size_t max_pending = 16384;
constexpr size_t max_events = 65536;

// The messages of one write, one after another.
void append(std::vector<uint8_t>& out, const std::vector<v7::command_msg>& msgs) {
  std::vector<uint8_t> one;
  for (auto& msg : msgs) {
    v7::encode(one, msg);
    out.insert(out.end(), one.begin(), one.end());
  }
}

struct pending {
  kvmi::msg_id v5_id{};
  v7x::plan plan;
};

class v7_dialect final : public dialect {
public:
  uint32_t max_payload() const override { return v7::max_payload; }

  from_host decode(const kvmi::frame& f) override {
    from_host out;
    if (f.hdr.id == static_cast<uint16_t>(v7::msg_id::event)) {
      auto ev = v7::decode_event(f);
      if (!ev) {
        out.error = protocol_fault{protocol_error_reason::bad_event,
                                   std::string("bad event: ") + std::string(ev.err().reason)};
        return out;
      }
      auto v5 = v7x::to_v5(*ev);
      if (!v5) {
        out.error = protocol_fault{protocol_error_reason::bad_event,
                                   std::string("bad event: ") + std::string(v5.err().reason)};
        return out;
      }
      std::lock_guard lk(mu_);
      if (ev->kind() == v7::event_id::create_vcpu)
        vcpu_count_ = std::max<uint32_t>(vcpu_count_, uint32_t(ev->common.vcpu) + 1);
      if (ev->kind() != v7::event_id::unhook) { // UNHOOK takes no reply
        if (events_.size() >= max_events && !events_.count(ev->seq)) {
          out.error = protocol_fault{protocol_error_reason::too_many_events,
                                     "more events waiting for replies than kvmid keeps"};
          return out;
        }
        events_[ev->seq] = ev->common.vcpu;
      }
      out.event = std::move(*v5);
      return out;
    }
    pending p;
    {
      std::lock_guard lk(mu_);
      auto it = pending_.find(f.hdr.seq);
      if (it == pending_.end()) {
        out.error = protocol_fault{protocol_error_reason::unknown_seq, "reply with an unknown seq"};
        return out;
      }
      p = std::move(it->second);
      pending_.erase(it);
    }
    if (f.hdr.id != static_cast<uint16_t>(p.plan.shape.id)) {
      out.error = protocol_fault{protocol_error_reason::reply_mismatch,
                                 "reply id does not match its command"};
      return out;
    }
    auto r = v7::decode_reply(f, p.plan.shape);
    if (!r) {
      out.error = protocol_fault{protocol_error_reason::bad_reply,
                                 std::string("bad reply: ") + std::string(r.err().reason)};
      return out;
    }
    if (auto* g = std::get_if<v7::get_guest_info_reply>(&r->data)) {
      std::lock_guard lk(mu_);
      vcpu_count_ = std::max(vcpu_count_, std::min<uint32_t>(g->vcpu_count, UINT16_MAX));
    }
    raw_frame rf;
    kvmi::encode(rf.bytes, v7x::to_v5(p.v5_id, p.plan, std::move(*r)));
    out.reply = std::move(rf);
    return out;
  }

  void encode(std::vector<uint8_t>& out, const kvmi::command_msg& m,
              std::optional<raw_frame>& local) override {
    out.clear();
    pending p;
    p.v5_id = kvmi::id_of(m.body);
    {
      std::lock_guard lk(mu_);
      p.plan = v7x::to_v7(m, vcpu_count_, inner_seq_);
    }
    // Never send what a v7 kernel would refuse: such a command fails here
    // as the kernel would fail it.
    int32_t refuse = p.plan.refused.empty() ? 0 : -kvmi::kvm_eopnotsupp;
    for (auto& msg : p.plan.msgs)
      if (!refuse && v7::check(msg))
        refuse = -kvmi::kvm_einval;
    if (refuse || p.plan.msgs.empty()) {
      // Answered here: nothing goes to the host.
      kvmi::reply_msg r;
      r.id = p.v5_id;
      r.seq = m.seq;
      r.err = refuse;
      if (!refuse) // a pause with no vCPU to stop
        r = v7x::to_v5(p.v5_id, p.plan, v7::reply_msg{{}, m.seq, 0, {}});
      local.emplace();
      kvmi::encode(local->bytes, r);
      return;
    }
    append(out, p.plan.msgs);
    std::lock_guard lk(mu_);
    if (pending_.size() >= max_pending)
      pending_.erase(pending_.begin());
    pending_[m.seq] = std::move(p);
  }

  void encode(std::vector<uint8_t>& out, const kvmi::event_reply_msg& m) override {
    uint16_t vcpu = 0;
    {
      std::lock_guard lk(mu_);
      auto it = events_.find(m.seq);
      if (it != events_.end()) {
        vcpu = it->second;
        events_.erase(it);
      }
    }
    v7::encode(out, v7x::to_v7(m, vcpu));
  }

  bool can_singlestep() const override { return true; }
  bool encode_singlestep(std::vector<uint8_t>& out, uint16_t vcpu, bool enable) override {
    std::vector<v7::command_msg> msgs;
    {
      std::lock_guard lk(mu_);
      msgs = v7x::singlestep(vcpu, enable, inner_seq_);
    }
    out.clear();
    append(out, msgs);
    return true;
  }

  std::vector<uint8_t> prologue(const kvmi::hs::guest_info& g) override {
    std::vector<uint8_t> out;
    if (!g.regions.empty())
      return out;
    max_gfn_seq_ = inner_seq_++;
    v7::encode(out, v7::command_msg{max_gfn_seq_, 0, v7::get_max_gfn{}});
    return out;
  }

  std::optional<protocol_fault> on_prologue(const kvmi::frame& f,
                                            kvmi::hs::guest_info& g) override {
    v7::command c = v7::get_max_gfn{};
    if (f.hdr.id != uint16_t(v7::msg_id::get_max_gfn) || f.hdr.seq != max_gfn_seq_)
      return protocol_fault{protocol_error_reason::bad_prologue,
                            "a frame other than the GET_MAX_GFN reply before the session started"};
    auto r = v7::decode_reply(f, v7::expected_reply(c));
    if (!r)
      return protocol_fault{protocol_error_reason::bad_prologue,
                            std::string("bad GET_MAX_GFN reply: ") + std::string(r.err().reason)};
    // A host without GET_MAX_GFN leaves the VM without a map: memory
    // rules are refused, the rest works.
    if (r->err != 0)
      return {};
    uint64_t gfn = std::get<v7::get_max_gfn_reply>(r->data).gfn;
    if (gfn < (UINT64_MAX >> 12)) // the first gfn past the guest, as a byte bound
      g.regions.push_back(kvmi::hs::region{0, (gfn + 1) << 12,
                                           uint32_t(kvmi::hs::region_type::ram),
                                           kvmi::hs::region_online, 0});
    return {};
  }

private:
  uint32_t max_gfn_seq_ = 0;
  std::mutex mu_; // the ring thread decodes while actors encode
  std::map<uint32_t, pending> pending_;
  std::unordered_map<uint32_t, uint16_t> events_; // event seq -> vCPU
  uint32_t vcpu_count_ = 0;
  // The unanswered messages of a batch: a seq range of their own (the VM
  // actor counts up from 1), never matched by a reply.
  uint32_t inner_seq_ = 0x80000000u;
};

} // namespace

std::unique_ptr<dialect> make_v7_dialect() { return std::make_unique<v7_dialect>(); }

} // namespace kvmid
