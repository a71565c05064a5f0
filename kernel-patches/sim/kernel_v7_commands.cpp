#include "kernel-patches/sim/kernel_v7_commands.hpp"

#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/kernel_ops.hpp"
#include "kernel-patches/sim/kernel_v7.hpp"

namespace kvmi::sim::detail {

using v7::msg_id;

bool v7_commands::event_allowed(uint16_t id) const {
  return id < 32 && v7::is_known(static_cast<v7::event_id>(id)) &&
         (s_.o.allowed_events & (1u << id));
}

void v7_commands::on_command(vm& v, v7::command_msg& cm) {
  auto id = v7::id_of(cm.body);
  ++v.c.commands[static_cast<size_t>(id)];
  bool vcpu_cmd = v7::scope_of(id) == v7::scope::vcpu;
  if (auto e = v7::check(cm)) {
    if (e.code == errc::bad_range) {
      k_.violate(v, violation::physical_range); // the kernel ends the receive loop
      return s_.dm.end_session(v);
    }
    k_.violate(v, e.code == errc::bad_padding ? violation::bad_padding : violation::invalid_command);
    return k_.reply_err(v, id, cm.seq, kvm_einval, vcpu_cmd);
  }
  std::visit([&](const auto& x) { exec(v, cm, x); }, cm.body);
}

void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_version&) {
  // No SPP, VMFUNC, EPTP switching or #VE: the features stay zero.
  k_.ok(v, msg_id::get_version, m.seq, v7::version_reply{{version, 0, {}}, true}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::check_command& x) {
  auto id = static_cast<msg_id>(x.id);
  bool ok = v7::is_supported(id) && id != msg_id::event && id != msg_id::event_reply;
  if (!ok)
    return k_.reply_err(v, msg_id::check_command, m.seq, kvm_eperm, false);
  k_.ok(v, msg_id::check_command, m.seq, std::monostate{}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::check_event& x) {
  if (!event_allowed(x.id))
    return k_.reply_err(v, msg_id::check_event, m.seq, kvm_eperm, false);
  k_.ok(v, msg_id::check_event, m.seq, std::monostate{}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_guest_info&) {
  k_.ok(v, msg_id::get_guest_info, m.seq,
        v7::get_guest_info_reply{static_cast<uint32_t>(v.vcpus.size()), {}}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_vcpu_info&) {
  with_vcpu(v, msg_id::get_vcpu_info, m.seq, m.vcpu, [&](vcpu&) {
    k_.ok(v, msg_id::get_vcpu_info, m.seq, v7::get_vcpu_info_reply{tsc_speed}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::pause_vcpu&) {
  // One PAUSE_VCPU event per command, sent as the vCPU next enters.
  with_vcpu(v, msg_id::pause_vcpu, m.seq, m.vcpu, [&](vcpu& c) {
    ++c.pauses;
    k_.ok(v, msg_id::pause_vcpu, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::control_vm_events& x) {
  if (!event_allowed(x.event_id))
    return k_.reply_err(v, msg_id::control_vm_events, m.seq, kvm_eperm, false);
  auto bit = 1u << x.event_id;
  v.vm_events = x.enable ? v.vm_events | bit : v.vm_events & ~bit;
  k_.ok(v, msg_id::control_vm_events, m.seq, std::monostate{}, false);
  if (x.enable && x.event_id == uint16_t(v7::event_id::create_vcpu))
    s_.guest.step_all(v);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::control_events& x) {
  with_vcpu(v, msg_id::control_events, m.seq, m.vcpu, [&](vcpu& c) {
    if (!event_allowed(x.event_id))
      return k_.reply_err(v, msg_id::control_events, m.seq, kvm_eperm, true);
    auto bit = 1u << x.event_id;
    c.events = x.enable ? c.events | bit : c.events & ~bit;
    k_.ok(v, msg_id::control_events, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::control_cr& x) {
  with_vcpu(v, msg_id::control_cr, m.seq, m.vcpu, [&](vcpu& c) {
    watch_cr(c, x.cr, x.enable != 0);
    k_.ok(v, msg_id::control_cr, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::control_msr& x) {
  with_vcpu(v, msg_id::control_msr, m.seq, m.vcpu, [&](vcpu& c) {
    watch_msr(c, x.msr, x.enable != 0);
    k_.ok(v, msg_id::control_msr, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_registers_cmd& x) {
  with_vcpu(v, msg_id::get_registers, m.seq, m.vcpu, [&](vcpu& c) {
    v7::registers_reply r{};
    if (!read_registers(c, x.msrs_idx, r.fixed, r.msrs))
      return k_.reply_err(v, msg_id::get_registers, m.seq, kvm_einval, true);
    k_.ok(v, msg_id::get_registers, m.seq, std::move(r), true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::set_registers& x) {
  with_vcpu(v, msg_id::set_registers, m.seq, m.vcpu, [&](vcpu& c) {
    // Applied when the event reply arrives; a running vCPU drops them.
    if (c.waiting)
      c.set_regs = x.regs;
    k_.ok(v, msg_id::set_registers, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_cpuid& x) {
  with_vcpu(v, msg_id::get_cpuid, m.seq, m.vcpu, [&](vcpu&) {
    auto r = cpuid(x.function, x.index);
    if (!r)
      return k_.reply_err(v, msg_id::get_cpuid, m.seq, kvm_enoent, true);
    k_.ok(v, msg_id::get_cpuid, m.seq, *r, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_xsave&) {
  with_vcpu(v, msg_id::get_xsave, m.seq, m.vcpu, [&](vcpu& c) {
    k_.ok(v, msg_id::get_xsave, m.seq, v7::xsave_reply{xsave_area(c)}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::read_physical& x) {
  v7::physical_data d;
  if (auto e = read_memory(v, x.gpa, x.size, d.data))
    return k_.reply_err(v, msg_id::read_physical, m.seq, e, false);
  k_.ok(v, msg_id::read_physical, m.seq, std::move(d), false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::write_physical_cmd& x) {
  if (auto e = write_memory(v, x.req.gpa, x.data))
    return k_.reply_err(v, msg_id::write_physical, m.seq, e, false);
  k_.ok(v, msg_id::write_physical, m.seq, std::monostate{}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::inject_exception& x) {
  with_vcpu(v, msg_id::inject_exception, m.seq, m.vcpu, [&](vcpu& c) {
    // v7 has no has_error flag: an error code of 0 goes in as none.
    c.inject = injection{x.nr, x.error_code != 0, static_cast<uint16_t>(x.error_code), x.address};
    k_.ok(v, msg_id::inject_exception, m.seq, std::monostate{}, true);
  });
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_page_access_cmd& x) {
  if (x.req.view != 0) // no EPT views besides the default one
    return k_.reply_err(v, msg_id::get_page_access, m.seq, kvm_einval, false);
  v7::page_access_reply r;
  for (uint64_t gpa : x.gpa) {
    uint8_t a = 0;
    if (auto e = get_access(v, gpa, a))
      return k_.reply_err(v, msg_id::get_page_access, m.seq, e, false);
    r.access.push_back(a);
  }
  k_.ok(v, msg_id::get_page_access, m.seq, std::move(r), false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::set_page_access_cmd& x) {
  if (x.req.view != 0)
    return k_.reply_err(v, msg_id::set_page_access, m.seq, kvm_einval, false);
  // Entries apply in order; the first error stops the rest.
  for (auto& e : x.entries)
    if (auto err = set_access(v, e.gpa, e.access))
      return k_.reply_err(v, msg_id::set_page_access, m.seq, err, false);
  k_.ok(v, msg_id::set_page_access, m.seq, std::monostate{}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_map_token&) {
  v7::get_map_token_reply t{};
  if (auto e = map_token(v, s_.o.max_tokens, t.token))
    return k_.reply_err(v, msg_id::get_map_token, m.seq, e, false);
  k_.ok(v, msg_id::get_map_token, m.seq, t, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::control_cmd_response& x) {
  // `now`: the switch applies to this command's own reply too; otherwise
  // this one is answered as the old setting says.
  bool before = v.cmd_replies;
  v.cmd_replies = x.enable != 0;
  k_.set_replying(x.now ? v.cmd_replies : before);
  k_.ok(v, msg_id::control_cmd_response, m.seq, std::monostate{}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::get_max_gfn&) {
  // The highest gfn backed by a memory slot: RAM and GPU RAM, not MMIO.
  uint64_t top = 0;
  for (auto& r : v.regions)
    if (r.type == uint32_t(hs::region_type::ram) || r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
      top = std::max(top, r.gpa + r.size);
  k_.ok(v, msg_id::get_max_gfn, m.seq, v7::get_max_gfn_reply{top ? (top - 1) >> 12 : 0}, false);
}
void v7_commands::exec(vm& v, const v7::command_msg& m, const v7::vcpu_control_singlestep& x) {
  with_vcpu(v, msg_id::vcpu_control_singlestep, m.seq, m.vcpu, [&](vcpu& c) {
    c.singlestep = x.enable != 0;
    k_.ok(v, msg_id::vcpu_control_singlestep, m.seq, std::monostate{}, true);
  });
}

} // namespace kvmi::sim::detail
