#include "kernel-patches/sim/kernel_v5_commands.hpp"

#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/kernel_ops.hpp"
#include "kernel-patches/sim/kernel_v5.hpp"

namespace kvmi::sim::detail {

void v5_commands::on_command(vm& v, command_msg& cm, msg_id id) {
  ++v.c.commands[static_cast<size_t>(id)];
  uint32_t seq = cm.seq;
  if (!allowed_command(id, s_.o.allowed_commands) && id != msg_id::get_version)
    return k_.reply_err(v, id, seq, kvm_eacces, false);
  if (auto e = check(cm.body)) {
    if (e.code == errc::bad_range) {
      k_.violate(v, violation::physical_range); // v5 ends the receive loop
      return s_.dm.end_session(v);
    }
    k_.violate(v, e.code == errc::bad_padding ? violation::bad_padding : violation::invalid_command);
    return k_.reply_err(v, id, seq, kvm_einval, vcpu_of(cm.body).has_value());
  }
  std::visit([&](auto& x) { exec(v, seq, x); }, cm.body);
}

void v5_commands::exec(vm& v, uint32_t seq, get_version&) {
  k_.ok(v, msg_id::get_version, seq,
     get_version_reply{kvmi::version, (s_.o.allowed_commands & known_commands) | flag(msg_id::get_version),
                       s_.o.allowed_events & known_events, 0},
     false);
}
void v5_commands::exec(vm& v, uint32_t seq, pause_all_vcpus&) {
  k_.ok(v, msg_id::pause_all_vcpus, seq, pause_all_vcpus_reply{uint32_t(v.vcpus.size()), 0}, false);
  for (auto& c : v.vcpus) {
    ++c.pauses;
    s_.guest.step(v, c);
  }
}
void v5_commands::exec(vm& v, uint32_t seq, get_map_token&) {
  get_map_token_reply t{};
  if (auto e = map_token(v, s_.o.max_tokens, t.token))
    return k_.reply_err(v, msg_id::get_map_token, seq, e, false);
  k_.ok(v, msg_id::get_map_token, seq, t, false);
}
void v5_commands::exec(vm& v, uint32_t seq, get_guest_info& x) {
  with_vcpu(v, msg_id::get_guest_info, seq, x.vcpu, [&](vcpu&) {
    k_.ok(v, msg_id::get_guest_info, seq, get_guest_info_reply{uint32_t(v.vcpus.size()), 0, 0}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, get_registers_cmd& x) {
  with_vcpu(v, msg_id::get_registers, seq, x.req.vcpu, [&](vcpu& c) {
    registers_reply r{};
    if (!read_registers(c, x.msrs_idx, r.fixed, r.msrs))
      return k_.reply_err(v, msg_id::get_registers, seq, kvm_einval, true);
    k_.ok(v, msg_id::get_registers, seq, std::move(r), true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, set_registers& x) {
  with_vcpu(v, msg_id::set_registers, seq, x.vcpu, [&](vcpu& c) {
    // Applied when the event reply arrives; a running vCPU drops them (the
    // kernel logs "Dropped KVMI_SET_REGISTERS") and still answers 0.
    if (c.waiting)
      c.set_regs = x.regs;
    k_.ok(v, msg_id::set_registers, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, get_cpuid& x) {
  with_vcpu(v, msg_id::get_cpuid, seq, x.vcpu, [&](vcpu&) {
    auto r = cpuid(x.function, x.index);
    if (!r)
      return k_.reply_err(v, msg_id::get_cpuid, seq, kvm_enoent, true);
    k_.ok(v, msg_id::get_cpuid, seq, *r, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, get_page_access_cmd& x) {
  with_vcpu(v, msg_id::get_page_access, seq, x.req.vcpu, [&](vcpu&) {
    page_access_reply r;
    for (uint64_t gpa : x.gpa) {
      uint8_t a = 0;
      if (auto e = get_access(v, gpa, a))
        return k_.reply_err(v, msg_id::get_page_access, seq, e, true);
      r.access.push_back(a);
    }
    k_.ok(v, msg_id::get_page_access, seq, std::move(r), true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, set_page_access_cmd& x) {
  with_vcpu(v, msg_id::set_page_access, seq, x.req.vcpu, [&](vcpu&) {
    // v5 applies entries in order and stops at the first error.
    for (auto& e : x.entries)
      if (auto err = set_access(v, e.gpa, e.access))
        return k_.reply_err(v, msg_id::set_page_access, seq, err, true);
    k_.ok(v, msg_id::set_page_access, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, inject_exception& x) {
  with_vcpu(v, msg_id::inject_exception, seq, x.vcpu, [&](vcpu& c) {
    c.inject = injection{x.nr, x.has_error != 0, x.error_code, x.address};
    k_.ok(v, msg_id::inject_exception, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, read_physical& x) {
  physical_data d;
  if (auto e = read_memory(v, x.gpa, x.size, d.data))
    return k_.reply_err(v, msg_id::read_physical, seq, e, false);
  k_.ok(v, msg_id::read_physical, seq, std::move(d), false);
}
void v5_commands::exec(vm& v, uint32_t seq, write_physical_cmd& x) {
  if (auto e = write_memory(v, x.req.gpa, x.data))
    return k_.reply_err(v, msg_id::write_physical, seq, e, false);
  k_.ok(v, msg_id::write_physical, seq, std::monostate{}, false);
}
void v5_commands::exec(vm& v, uint32_t seq, control_events& x) {
  with_vcpu(v, msg_id::control_events, seq, x.vcpu, [&](vcpu& c) {
    if (x.events & ~(s_.o.allowed_events & known_vcpu_events))
      return k_.reply_err(v, msg_id::control_events, seq, kvm_eperm, true);
    c.events = x.events;
    k_.ok(v, msg_id::control_events, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_cr& x) {
  with_vcpu(v, msg_id::control_cr, seq, x.vcpu, [&](vcpu& c) {
    watch_cr(c, x.cr, x.enable != 0);
    k_.ok(v, msg_id::control_cr, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_msr& x) {
  with_vcpu(v, msg_id::control_msr, seq, x.vcpu, [&](vcpu& c) {
    watch_msr(c, x.msr, x.enable != 0);
    k_.ok(v, msg_id::control_msr, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_vm_events& x) {
  if (x.events & ~(s_.o.allowed_events & known_vm_events))
    return k_.reply_err(v, msg_id::control_vm_events, seq, kvm_eperm, false);
  v.vm_events = x.events;
  k_.ok(v, msg_id::control_vm_events, seq, std::monostate{}, false);
  if (x.events & flag(event_id::create_vcpu))
    s_.guest.step_all(v);
}
void v5_commands::exec(vm& v, uint32_t seq, get_xsave& x) {
  with_vcpu(v, msg_id::get_xsave, seq, x.vcpu, [&](vcpu& c) {
    xsave_reply r;
    r.region = xsave_area(c);
    k_.ok(v, msg_id::get_xsave, seq, std::move(r), true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_ve_cmd&) {
  // Unreachable for a v5 host (id 29 closes before decoding); kept total.
  k_.reply_err(v, msg_id::control_ve, seq, kvm_enosys, false);
}

} // namespace kvmi::sim::detail
