#include "kernel-patches/sim/kernel_v5_commands.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/kernel_v5.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

#include <cstring>

namespace kvmi::sim::detail {

namespace {
// The CPUID leaves the simulated CPU answers.
get_cpuid_reply cpuid(uint32_t fn, uint32_t idx, bool& found) {
  found = true;
  switch (fn) {
    case 0: return {0xd, 0x756e6547, 0x6c65746e, 0x49656e69}; // GenuineIntel
    case 1: return {0x000906ea, 0x00100800, 0xfffa3223, 0x0f8bfbff};
    case 7:
      if (idx == 0)
        return {0, 0x009c27ab, 0x00000004, 0xbc000400};
      break;
    case 0xd:
      if (idx == 0)
        return {0x7, 0x340, 0x340, 0};
      if (idx == 1)
        return {0xf, 0x340, 0, 0};
      break;
    case 0x80000000: return {0x80000008, 0, 0, 0};
    case 0x80000001: return {0, 0, 0x121, 0x2c100800};
    case 0x80000008: return {0x3027, 0, 0, 0};
  }
  found = false;
  return {};
}

} // namespace

v5_commands::v5_commands(shard& s, kernel_v5& k) : s_(s), k_(k) {}

template <class F>
void v5_commands::with_vcpu(vm& v, msg_id id, uint32_t seq, uint16_t idx, F&& f) {
  if (idx >= v.vcpus.size())
    return k_.reply_err(v, id, seq, kvm_einval, false);
  auto& c = v.vcpus[idx];
  if (!c.initialised)
    return k_.reply_err(v, id, seq, kvm_eagain, false);
  if (!c.waiting) {
    // The kernel queues the command to the vCPU and kicks it out of the
    // guest: it serves the command on its own thread and re-enters.
    ++v.c.commands_on_running_vcpus;
    c.kicked = true;
  }
  f(c);
}

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
  if (v.tokens >= s_.o.max_tokens)
    return k_.reply_err(v, msg_id::get_map_token, seq, kvm_eagain, false);
  ++v.tokens;
  get_map_token_reply t{};
  for (auto& w : t.token.token)
    w = v.rng();
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
    r.fixed.mode = 8;
    r.fixed.regs = c.regs;
    r.fixed.sregs = c.sregs;
    r.fixed.msrs.nmsrs = x.req.nmsrs;
    for (uint32_t idx : x.msrs_idx) {
      auto* p = find_msr(c, idx);
      if (!p)
        return k_.reply_err(v, msg_id::get_registers, seq, kvm_einval, true);
      r.msrs.push_back(kvm_msr_entry{idx, 0, *p});
    }
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
    bool found = false;
    auto r = cpuid(x.function, x.index, found);
    if (!found)
      return k_.reply_err(v, msg_id::get_cpuid, seq, kvm_enoent, true);
    k_.ok(v, msg_id::get_cpuid, seq, r, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, get_page_access_cmd& x) {
  with_vcpu(v, msg_id::get_page_access, seq, x.req.vcpu, [&](vcpu&) {
    page_access_reply r;
    for (uint64_t gpa : x.gpa) {
      if (introspect_touch(v, gpa) == touch::none)
        return k_.reply_err(v, msg_id::get_page_access, seq, kvm_einval, true);
      r.access.push_back(access_of(v, gpa));
    }
    k_.ok(v, msg_id::get_page_access, seq, std::move(r), true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, set_page_access_cmd& x) {
  with_vcpu(v, msg_id::set_page_access, seq, x.req.vcpu, [&](vcpu&) {
    // v5 applies entries in order and stops at the first error.
    for (auto& e : x.entries) {
      if (introspect_touch(v, e.gpa) == touch::none)
        return k_.reply_err(v, msg_id::set_page_access, seq, kvm_einval, true);
      if (e.access == page_access_rwx)
        v.access.erase(e.gpa >> 12);
      else
        v.access[e.gpa >> 12] = e.access;
    }
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
  if (introspect_touch(v, x.gpa) == touch::none)
    return k_.reply_err(v, msg_id::read_physical, seq, kvm_einval, false);
  physical_data d;
  d.data.resize(x.size);
  auto it = v.memory.find(x.gpa >> 12);
  if (it != v.memory.end())
    std::memcpy(d.data.data(), it->second->bytes + (x.gpa & 4095), x.size);
  k_.ok(v, msg_id::read_physical, seq, std::move(d), false);
}
void v5_commands::exec(vm& v, uint32_t seq, write_physical_cmd& x) {
  if (introspect_touch(v, x.req.gpa) == touch::none)
    return k_.reply_err(v, msg_id::write_physical, seq, kvm_einval, false);
  std::memcpy(page_for_write(v, x.req.gpa).bytes + (x.req.gpa & 4095), x.data.data(),
              x.data.size());
  for (size_t k = 0; k < x.data.size(); ++k)
    if (x.data[k] == 0xcc)
      v.tool_int3.insert(x.req.gpa + k);
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
    if (x.enable)
      c.cr_watch |= cr_bit(x.cr);
    else
      c.cr_watch &= static_cast<uint8_t>(~cr_bit(x.cr));
    k_.ok(v, msg_id::control_cr, seq, std::monostate{}, true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_msr& x) {
  with_vcpu(v, msg_id::control_msr, seq, x.vcpu, [&](vcpu& c) {
    auto it = std::find(c.msr_watch.begin(), c.msr_watch.end(), x.msr);
    if (x.enable && it == c.msr_watch.end())
      c.msr_watch.push_back(x.msr);
    if (!x.enable && it != c.msr_watch.end())
      c.msr_watch.erase(it);
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
    r.region.assign(xsave_size, 0);
    uint16_t fcw = 0x37f;
    uint32_t mxcsr = 0x1f80;
    std::memcpy(r.region.data(), &fcw, 2);
    std::memcpy(r.region.data() + 24, &mxcsr, 4);
    std::memcpy(r.region.data() + 512, &c.xcr0, 8); // XSTATE_BV
    k_.ok(v, msg_id::get_xsave, seq, std::move(r), true);
  });
}
void v5_commands::exec(vm& v, uint32_t seq, control_ve_cmd&) {
  // Unreachable for a v5 host (id 29 closes before decoding); kept total.
  k_.reply_err(v, msg_id::control_ve, seq, kvm_enosys, false);
}

} // namespace kvmi::sim::detail
