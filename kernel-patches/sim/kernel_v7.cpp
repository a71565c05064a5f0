#include "kernel-patches/sim/kernel_v7.hpp"

#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/kernel_v5.hpp"
#include "proto/overloaded.hpp"

namespace kvmi::sim::detail {

namespace {

// v7's SINGLESTEP, in the model's event ids (v5's 0..10 are v7's too).
constexpr auto singlestep_event = static_cast<event_id>(v7::event_id::singlestep);

// The guest's event data, in v5's structs, as the v7 kernel lays it out.
v7::event_data to_v7(event_id kind, const event_data& d) {
  if (kind == singlestep_event)
    return v7::event_singlestep{};
  return std::visit(
    overloaded{
      [](std::monostate) -> v7::event_data { return std::monostate{}; },
      [](const event_cr& x) -> v7::event_data { return x; },
      [](const event_msr& x) -> v7::event_data { return x; },
      [](const event_breakpoint& x) -> v7::event_data {
        return v7::event_breakpoint{x.gpa, 1, {}}; // INT3 is one byte
      },
      [](const event_pf& x) -> v7::event_data {
        return v7::event_pf{x.gva, x.gpa, static_cast<uint8_t>(x.mode), 0, 0, 0};
      },
      [](const event_trap& x) -> v7::event_data {
        return v7::event_trap{static_cast<uint8_t>(x.vector), 0, 0, x.error_code, x.cr2};
      },
      [](const event_descriptor& x) -> v7::event_data {
        return v7::event_descriptor{x.descriptor, x.write, {}};
      },
    },
    d);
}

} // namespace

std::unique_ptr<kernel> make_kernel_v7(shard& s) { return std::make_unique<kernel_v7>(s); }

kernel_v7::kernel_v7(shard& s) : kernel_base(s), commands_(s, *this) {}

// ---- events --------------------------------------------------------------------

kernel::entry kernel_v7::on_vcpu_entry(vm& v, vcpu& c) {
  auto e = kernel_base::on_vcpu_entry(v, c);
  if (e != entry::enter || !c.singlestep || !event_on(v, c, singlestep_event))
    return e;
  // One instruction (the current action, else an idle one), then the exit
  // the tool asked for; an instruction that raises an event of its own
  // (an INT3 put back too early) stops there, not executed.
  if (s_.guest.run_one(v, c))
    return entry::stopped;
  c.regs.rip += 1;
  send_event(v, c, singlestep_event, std::monostate{}, false);
  return entry::stopped;
}

void kernel_v7::encode_event(vm& v, vcpu* c, event_id kind, const event_data& data,
                             uint32_t seq, std::vector<uint8_t>& out) {
  // UNHOOK is a VM event; its common part still carries a vCPU's state.
  event common;
  fill_event_common(c ? *c : v.vcpus[0], common);
  v7::event_msg m;
  m.seq = seq;
  m.common.size = sizeof(v7::event);
  m.common.vcpu = c ? c->index : 0;
  m.common.event = static_cast<uint8_t>(kind);
  m.common.arch.mode = common.mode;
  m.common.arch.regs = common.regs;
  m.common.arch.sregs = common.sregs;
  m.common.arch.msrs = common.msrs;
  m.data = to_v7(kind, data);
  v7::encode(out, m, s_.o.order);
}

void kernel_v7::encode_stray_event(vm& v, std::vector<uint8_t>& out) {
  encode_event(v, &v.vcpus[0], event_id::pause_vcpu, std::monostate{}, ++v.ev_seq, out);
}

void kernel_v7::encode_stray_reply(vm&, uint32_t seq, std::vector<uint8_t>& out) {
  v7::reply_msg r;
  r.id = v7::msg_id::get_version;
  r.seq = seq;
  r.data = v7::version_reply{v7::get_version_reply{v7_commands::version, 0, {}}, true};
  v7::encode(out, r, s_.o.order);
}

// ---- receiving -----------------------------------------------------------------

void kernel_v7::on_frame(vm& v, const frame& f) {
  // The reply switch as it stands when the command arrives; CONTROL_CMD_
  // RESPONSE changes it for itself and what follows.
  replying_ = v.cmd_replies;
  auto m = v7::decode_from_tool(f, s_.o.order);
  if (!m)
    return on_decode_error(v, f, m.err().code);
  if (auto* r = std::get_if<v7::event_reply_msg>(&*m)) {
    // A short reply's missing new_val reads 0, as the kernel zero-fills it.
    auto rv = view_of_reply<v7::event_pf_reply>(*r, v7::check(*r));
    rv.vcpu = r->vcpu;
    return on_event_reply(v, rv);
  }
  commands_.on_command(v, std::get<v7::command_msg>(*m));
}

void kernel_v7::on_decode_error(vm& v, const frame& f, errc e) {
  auto id = static_cast<v7::msg_id>(f.hdr.id);
  auto close = [&](violation k) {
    violate(v, k);
    s_.dm.end_session(v);
  };
  if (id == v7::msg_id::event)
    return close(violation::reply_with_event_id);
  if (id == v7::msg_id::event_reply)
    return close(e == errc::bad_padding ? violation::bad_padding : violation::reply_bad_size);
  if (e == errc::unknown_id) {
    // The kernel consumes the message and answers: ENOSYS for an id it
    // does not have, EOPNOTSUPP for one this host's features leave out.
    if (f.hdr.id < v.c.commands.size())
      ++v.c.commands[f.hdr.id];
    return reply_err(v, id, f.hdr.seq, v7::is_known(id) ? kvm_eopnotsupp : kvm_enosys, false);
  }
  if (e == errc::bad_padding) {
    violate(v, violation::bad_padding);
    return reply_err(v, id, f.hdr.seq, kvm_einval, false);
  }
  if (e == errc::oversize)
    return close(violation::physical_range);
  close(violation::bad_size);
}

// ---- replies -------------------------------------------------------------------

void kernel_v7::reply(vm& v, const v7::reply_msg& r, bool from_vcpu) {
  if (!replying_) {
    if (r.err < 0)
      ++v.c.errors[vm_counts::error_slot(r.err)]; // counted, not sent
    return;
  }
  v7::encode(v.scratch, r, s_.o.order);
  send_reply(v, r.err, v.scratch, from_vcpu);
}

} // namespace kvmi::sim::detail
