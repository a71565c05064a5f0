#include "kernel-patches/sim/kernel_v5.hpp"

#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

namespace kvmi::sim::detail {

void fill_event_common(vcpu& c, event& e) {
  e.vcpu = c.index;
  e.mode = 8;
  e.regs = c.regs;
  e.sregs = c.sregs;
  e.msrs = event_msrs{get_msr(c, msr::sysenter_cs), get_msr(c, msr::sysenter_esp),
                      get_msr(c, msr::sysenter_eip), get_msr(c, msr::efer),
                      get_msr(c, msr::star), get_msr(c, msr::lstar), get_msr(c, msr::cstar),
                      get_msr(c, msr::pat), get_msr(c, msr::kernel_gs_base)};
}

std::unique_ptr<kernel> make_kernel_v5(shard& s) { return std::make_unique<kernel_v5>(s); }

kernel_v5::kernel_v5(shard& s) : kernel_base(s), commands_(s, *this) {}

// ---- events --------------------------------------------------------------------

void kernel_v5::encode_event(vm&, vcpu* c, event_id kind, const event_data& data,
                             uint32_t seq, std::vector<uint8_t>& out) {
  event_msg m;
  m.seq = seq;
  m.common.event = static_cast<uint32_t>(kind);
  if (c)
    fill_event_common(*c, m.common); // v5's UNHOOK carries no vCPU state
  m.data = data;
  encode(out, m, s_.o.order);
}

void kernel_v5::encode_stray_event(vm& v, std::vector<uint8_t>& out) {
  encode_event(v, &v.vcpus[0], event_id::pause_vcpu, std::monostate{}, ++v.ev_seq, out);
}

void kernel_v5::encode_stray_reply(vm&, uint32_t seq, std::vector<uint8_t>& out) {
  reply_msg r;
  r.id = msg_id::get_version;
  r.seq = seq;
  r.data = get_version_reply{kvmi::version, s_.o.allowed_commands,
                             s_.o.allowed_events & known_events, 0};
  encode(out, r, s_.o.order);
}

// ---- receiving -----------------------------------------------------------------

void kernel_v5::on_frame(vm& v, const frame& f) {
  uint16_t id = f.hdr.id;
  auto close = [&](violation k) {
    violate(v, k);
    s_.dm.end_session(v);
  };
  if (id >= num_v5_messages)
    return close(violation::unknown_id); // v5 closes on id >= 29
  auto m = decode_from_tool(f, s_.o.order);
  if (!m) {
    auto e = m.err().code;
    if (id == uint16_t(msg_id::event))
      return close(violation::reply_with_event_id);
    if (e == errc::unknown_id) {
      if (f.payload.empty())
        return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_enosys, false);
      return close(violation::unknown_id);
    }
    if (id == uint16_t(msg_id::event_reply))
      return close(e == errc::bad_padding ? violation::bad_padding : violation::reply_bad_size);
    if (e == errc::bad_padding) {
      violate(v, violation::bad_padding);
      return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_einval, false);
    }
    if (e == errc::oversize)
      return close(violation::physical_range);
    return close(violation::bad_size);
  }
  if (auto* r = std::get_if<event_reply_msg>(&*m))
    return on_event_reply(v, view_of_reply<event_pf_reply>(*r, check(*r)));
  auto& cm = std::get<command_msg>(*m);
  commands_.on_command(v, cm, static_cast<msg_id>(id));
}

// ---- replies -------------------------------------------------------------------

void kernel_v5::reply(vm& v, const reply_msg& r, bool from_vcpu) {
  encode(v.scratch, r, s_.o.order);
  send_reply(v, r.err, v.scratch, from_vcpu);
}

} // namespace kvmi::sim::detail
