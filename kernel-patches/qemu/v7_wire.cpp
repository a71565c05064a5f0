// kvmi-qemu's host end in the v7 dialect: QEMU's handshake, the v7
// commands that mean what a v5 one means served in v5's terms (on_command),
// the ones only v7 has served here, and v5 replies and events written as
// the v7 kernel branch writes them.
#include "kernel-patches/qemu/kvmi_host.hpp"
#include "kernel-patches/qemu/served.hpp"
#include "proto/overloaded.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace kvmi::qemu {

namespace {

using v7id = v7::msg_id;

bool served_v7(v7id id) {
  switch (id) {
  case v7id::get_version:
  case v7id::check_command:
  case v7id::check_event:
  case v7id::get_guest_info:
  case v7id::pause_vcpu:
  case v7id::control_vm_events:
  case v7id::control_events:
  case v7id::get_registers:
  case v7id::set_registers:
  case v7id::read_physical:
  case v7id::write_physical:
  case v7id::get_page_access:
  case v7id::set_page_access:
  case v7id::control_cmd_response:
  case v7id::get_max_gfn:
  case v7id::vcpu_control_singlestep:
    return true;
  default:
    return false;
  }
}

bool event_in(uint32_t mask, uint16_t id) { return id < 32 && (mask & (1u << id)); }

constexpr uint32_t v7_version = 1; // KVMI_VERSION of the kvmi-v7 branch and libkvmi

} // namespace

void kvmi_host::start_handshake() {
  // The PC's legacy hole is no RAM: VGA and BIOS ROMs.
  const hs::region ram_low{0, 0xa0000, uint32_t(hs::region_type::ram), 0, 0};
  const hs::region rom{0xa0000, 0x60000, uint32_t(hs::region_type::mmio), 0, 0};
  const hs::region ram{0x100000, o_.ram_bytes - 0x100000,
                              uint32_t(hs::region_type::ram), 0, 0};
  if (o_.protocol == dialect::v7) {
    // QEMU's struct with the E820 map: its RAM ranges usable (1), the hole
    // reserved (2).
    v7::hs::qemu_hello h;
    std::copy(o_.uuid.begin(), o_.uuid.end(), h.uuid.begin());
    h.start_time = ::time(nullptr);
    h.name = o_.name;
    h.cpu_type = v7::hs::cpu_type_x86_64;
    for (auto& r : {ram_low, rom, ram})
      h.e820.push_back({r.gpa, r.size, r.type == uint32_t(hs::region_type::ram) ? 1u : 2u, 0});
    dm_ = sim::detail::make_dm_handshake_v7(o_.cookie, h, sim::qemu_v7_hello::e820);
  } else {
    hs::guest_info g;
    g.id = o_.uuid;
    g.vcpu_count = o_.vcpus;
    g.start_time = ::time(nullptr);
    g.name = o_.name;
    g.regions = {ram_low, rom, ram};
    dm_ = sim::detail::make_dm_handshake_v5(o_.cookie, g, hs::mode::kvmi);
  }
  send_frame(dm_->out());
  dm_->out().clear();
}

void kvmi_host::on_frame_v7(const frame& f) {
  // CONTROL_CMD_RESPONSE's switch as it stands when the command arrives.
  replying_ = cmd_replies_;
  auto m = v7::decode_from_tool(f);
  auto id = static_cast<v7id>(f.hdr.id);
  if (!m) {
    if (id == v7id::event || id == v7id::event_reply)
      return end_session(join({"undecodable ", v7::name(id), ": ", m.err().reason}));
    // The kernel consumes a command it cannot serve and answers it.
    if (m.err().code == errc::unknown_id)
      return reply_err_v7(id, f.hdr.seq, v7::is_known(id) ? kvm_eopnotsupp : kvm_enosys);
    if (m.err().code == errc::bad_padding)
      return reply_err_v7(id, f.hdr.seq, kvm_einval);
    return end_session(join({"undecodable message: ", m.err().reason}));
  }
  if (auto* r = std::get_if<v7::event_reply_msg>(&*m)) {
    auto p = pending_.find(r->seq);
    if (p != pending_.end() && p->second != r->vcpu)
      return end_session(join({"reply for vCPU ", std::to_string(r->vcpu), " to vCPU ",
                               std::to_string(p->second), "'s event"}));
    auto act = static_cast<action>(r->common.action);
    return on_event_reply(r->seq, r->common.event, v7::check(*r) ? action::continue_ : act);
  }
  on_command_v7(std::get<v7::command_msg>(*m));
}

void kvmi_host::on_command_v7(v7::command_msg& m) {
  auto id = v7::id_of(m.body);
  uint32_t seq = m.seq;
  if (std::getenv("KVMI_QEMU_TRACE"))
    std::fprintf(stderr, "kvmi-qemu: command %s seq %u\n", std::string(v7::name(id)).c_str(), seq);
  if (!served_v7(id))
    return reply_err_v7(id, seq, kvm_eperm);
  if (auto e = v7::check(m)) {
    if (e.code == errc::bad_range)
      return end_session("READ/WRITE_PHYSICAL out of range"); // the kernel ends the session
    return reply_err_v7(id, seq, kvm_einval);
  }
  if (v7::scope_of(id) == v7::scope::vcpu && m.vcpu >= vcpus_.size())
    return reply_err_v7(id, seq, kvm_einval);
  v7_id_ = id;
  // A v7 command in v5's terms, answered through send_reply.
  auto as_v5 = [&](command body) {
    command_msg c;
    c.seq = seq;
    c.body = std::move(body);
    on_command(c);
  };
  uint16_t vcpu = m.vcpu;
  std::visit(
    overloaded{
      [&](const v7::get_version&) {
        // No SPP, VMFUNC, EPTP switching or #VE.
        reply_v7(id, seq, v7::version_reply{{v7_version, 0, {}}, true});
      },
      [&](const v7::check_command& x) {
        auto c = static_cast<v7id>(x.id);
        bool ok = served_v7(c) && c != v7id::event && c != v7id::event_reply;
        ok ? reply_v7(id, seq) : reply_err_v7(id, seq, kvm_eperm);
      },
      [&](const v7::check_event& x) {
        bool ok = event_in(served_v7_vcpu_events | served_vm_events, x.id);
        ok ? reply_v7(id, seq) : reply_err_v7(id, seq, kvm_eperm);
      },
      [&](const v7::get_guest_info&) {
        reply_v7(id, seq, v7::get_guest_info_reply{o_.vcpus, {}});
      },
      [&](const v7::pause_vcpu&) {
        ++vcpus_[vcpu].pauses; // one PAUSE_VCPU event per command
        reply_v7(id, seq);
      },
      [&](const v7::control_vm_events& x) {
        if (!event_in(served_vm_events, x.event_id))
          return reply_err_v7(id, seq, kvm_eperm);
        uint32_t bit = 1u << x.event_id;
        vm_events_ = x.enable ? vm_events_ | bit : vm_events_ & ~bit;
        reply_v7(id, seq);
      },
      [&](const v7::control_events& x) {
        if (!event_in(served_v7_vcpu_events, x.event_id))
          return reply_err_v7(id, seq, kvm_eperm);
        uint32_t bit = 1u << x.event_id;
        auto& c = vcpus_[vcpu];
        c.events = x.enable ? c.events | bit : c.events & ~bit;
        reply_v7(id, seq);
      },
      [&](const v7::control_cmd_response& x) {
        // `now`: the switch applies to this command's own reply too.
        bool before = cmd_replies_;
        cmd_replies_ = x.enable != 0;
        replying_ = x.now ? cmd_replies_ : before;
        reply_v7(id, seq);
      },
      [&](const v7::get_max_gfn&) {
        reply_v7(id, seq, v7::get_max_gfn_reply{(o_.ram_bytes - 1) >> 12});
      },
      [&](const v7::vcpu_control_singlestep& x) {
        vcpus_[vcpu].singlestep = x.enable != 0;
        reply_v7(id, seq);
      },
      [&](const v7::get_registers_cmd& x) {
        as_v5(get_registers_cmd{{vcpu, x.req.nmsrs, {}}, x.msrs_idx});
      },
      [&](const v7::set_registers& x) { as_v5(set_registers{vcpu, {}, x.regs}); },
      [&](const v7::read_physical& x) { as_v5(x); },
      [&](const v7::write_physical_cmd& x) { as_v5(write_physical_cmd{x.req, x.data}); },
      [&](const v7::get_page_access_cmd& x) {
        if (x.req.view != 0) // no EPT views besides the default one
          return reply_err_v7(id, seq, kvm_einval);
        as_v5(get_page_access_cmd{{0, x.req.count, 0, 0}, x.gpa});
      },
      [&](const v7::set_page_access_cmd& x) {
        if (x.req.view != 0)
          return reply_err_v7(id, seq, kvm_einval);
        set_page_access_cmd c{{0, x.req.count, 0, 0}, {}};
        for (auto& e : x.entries)
          c.entries.push_back(page_access_entry{e.gpa, e.access, {}});
        as_v5(std::move(c));
      },
      [&](const auto&) { reply_err_v7(id, seq, kvm_eperm); },
    },
    m.body);
}

void kvmi_host::reply_v7(v7id id, uint32_t seq, v7::reply_data d) {
  if (!replying_)
    return; // CONTROL_CMD_RESPONSE switched it off
  v7::reply_msg r;
  r.id = id;
  r.seq = seq;
  r.data = std::move(d);
  v7::encode(scratch_, r);
  send_frame(scratch_);
}

void kvmi_host::reply_err_v7(v7id id, uint32_t seq, int32_t kvm_e) {
  if (!replying_)
    return;
  v7::reply_msg r;
  r.id = id;
  r.seq = seq;
  r.err = -kvm_e;
  v7::encode(scratch_, r);
  send_frame(scratch_);
}

// The reply on_command gave a v7 command it served in v5's terms.
void kvmi_host::encode_reply_v7(const reply_msg& r) {
  if (r.err)
    return reply_err_v7(v7_id_, r.seq, -r.err);
  reply_v7(v7_id_, r.seq,
           std::visit(overloaded{
                        [](const registers_reply& x) -> v7::reply_data {
                          return v7::registers_reply{x.fixed, x.msrs};
                        },
                        [](const physical_data& x) -> v7::reply_data {
                          return v7::physical_data{x.data};
                        },
                        [](const page_access_reply& x) -> v7::reply_data {
                          return v7::page_access_reply{x.access};
                        },
                        [](const auto&) -> v7::reply_data { return std::monostate{}; },
                      },
                      r.data));
}

void kvmi_host::encode_event_v7(const event_msg& m) {
  v7::event_msg o;
  o.seq = m.seq;
  o.common.size = sizeof(v7::event);
  o.common.vcpu = m.common.vcpu;
  o.common.event = static_cast<uint8_t>(m.common.event);
  o.common.arch.mode = static_cast<uint8_t>(m.common.mode);
  o.common.arch.regs = m.common.regs;
  o.common.arch.sregs = m.common.sregs;
  o.common.arch.msrs = m.common.msrs;
  if (m.common.event == uint32_t(singlestep_event))
    o.data = v7::event_singlestep{};
  else
    o.data = std::visit(overloaded{
                          [](const event_breakpoint& x) -> v7::event_data {
                            return v7::event_breakpoint{x.gpa, 1, {}}; // INT3 is one byte
                          },
                          [](const event_pf& x) -> v7::event_data {
                            return v7::event_pf{x.gva, x.gpa, static_cast<uint8_t>(x.mode),
                                                0, 0, 0};
                          },
                          [](const auto&) -> v7::event_data { return std::monostate{}; },
                        },
                        m.data);
  v7::encode(scratch_, o);
}

} // namespace kvmi::qemu
