// The kernel ABI of kernel-patches/uapi against proto/: the build extracts
// the headers from the patch, compiles them in C and dumps every constant,
// struct size, field offset and allow-macro result (abi.txt). Every dumped
// line must have a proto counterpart with the same value, and every proto
// counterpart listed here must be in the dump, so neither side can drift.
#include "proto/codec.hpp"
#include "proto/ids.hpp"
#include "proto/wire.hpp"

#include "tests/proto/uapi_dump.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdio>
#include <map>
#include <string>

using namespace kvmi;

namespace {

using testing::uapi::upper;

std::map<std::string, long long> expected() {
  std::map<std::string, long long> m;
  auto c = [&](const std::string& n, long long v) { m["const " + n] = v; };

  // Constants, derived from proto's own tables where proto has them.
  for (auto id : all_msg_ids) {
    auto n = "KVMI_" + upper(name(id));
    c(n, static_cast<uint16_t>(id));
    c(n + "_FLAG", flag(id));
  }
  for (uint32_t e = 0; e < num_events; ++e) {
    auto n = "KVMI_EVENT_" + upper(name(static_cast<event_id>(e)));
    c(n, e);
    c(n + "_FLAG", flag(static_cast<event_id>(e)));
  }
  for (auto a : {action::continue_, action::retry, action::crash})
    c("KVMI_EVENT_ACTION_" + upper(name(a)), static_cast<uint32_t>(a));
  c("KVMI_VERSION", kvmi::version);
  c("KVMI_NUM_MESSAGES", num_messages);
  c("KVMI_NUM_EVENTS", num_events);
  c("KVMI_KNOWN_COMMANDS", known_commands);
  c("KVMI_KNOWN_VCPU_EVENTS", known_vcpu_events);
  c("KVMI_KNOWN_VM_EVENTS", known_vm_events);
  c("KVMI_KNOWN_EVENTS", known_events);
  c("KVMI_MSG_SIZE", msg_size);
  c("KVMI_PAGE_ACCESS_R", page_access_r);
  c("KVMI_PAGE_ACCESS_W", page_access_w);
  c("KVMI_PAGE_ACCESS_X", page_access_x);
  c("KVMI_DESC_IDTR", desc_idtr);
  c("KVMI_DESC_GDTR", desc_gdtr);
  c("KVMI_DESC_LDTR", desc_ldtr);
  c("KVMI_DESC_TR", desc_tr);
  for (int32_t code : {kvm_enosys, kvm_efault, kvm_einval, kvm_e2big, kvm_eperm, kvm_eopnotsupp,
                       kvm_eagain, kvm_ebusy, kvm_enoent, kvm_enomem, kvm_eacces})
    c("KVM_" + std::string(kvm_error_name(-code)), code);
  c("KVM_HC_MEM_MAP", kvm_hc_mem_map);
  c("KVM_HC_MEM_UNMAP", kvm_hc_mem_unmap);
  c("KVM_HC_XEN_HVM_OP", kvm_hc_xen_hvm_op);
  c("KVM_INTRO_MEM_MAP", kvm_intro_mem_map);
  c("KVM_INTRO_MEM_UNMAP", kvm_intro_mem_unmap);

  // Structs: sizes and every field offset.
  SIZE(kvmi_msg_hdr, msg_hdr);
  OFF(kvmi_msg_hdr, msg_hdr, id);
  OFF(kvmi_msg_hdr, msg_hdr, size);
  OFF(kvmi_msg_hdr, msg_hdr, seq);
  SIZE(kvmi_error_code, error_code);
  OFF(kvmi_error_code, error_code, err);
  OFF(kvmi_error_code, error_code, padding);
  SIZE(kvmi_get_version_reply, get_version_reply);
  OFF(kvmi_get_version_reply, get_version_reply, version);
  OFF(kvmi_get_version_reply, get_version_reply, commands);
  OFF(kvmi_get_version_reply, get_version_reply, events);
  OFF(kvmi_get_version_reply, get_version_reply, padding);
  SIZE(kvmi_get_guest_info, get_guest_info);
  OFF(kvmi_get_guest_info, get_guest_info, vcpu);
  OFF(kvmi_get_guest_info, get_guest_info, padding);
  SIZE(kvmi_get_guest_info_reply, get_guest_info_reply);
  OFF(kvmi_get_guest_info_reply, get_guest_info_reply, vcpu_count);
  OFF(kvmi_get_guest_info_reply, get_guest_info_reply, padding);
  OFF(kvmi_get_guest_info_reply, get_guest_info_reply, tsc_speed);
  SIZE(kvmi_pause_all_vcpus_reply, pause_all_vcpus_reply);
  OFF(kvmi_pause_all_vcpus_reply, pause_all_vcpus_reply, vcpu_count);
  OFF(kvmi_pause_all_vcpus_reply, pause_all_vcpus_reply, padding);
  SIZE(kvmi_event_reply, event_reply);
  OFF(kvmi_event_reply, event_reply, action);
  OFF(kvmi_event_reply, event_reply, event);
  SIZE(kvmi_control_events, control_events);
  OFF(kvmi_control_events, control_events, vcpu);
  OFF(kvmi_control_events, control_events, padding);
  OFF(kvmi_control_events, control_events, events);
  SIZE(kvmi_control_vm_events, control_vm_events);
  OFF(kvmi_control_vm_events, control_vm_events, events);
  OFF(kvmi_control_vm_events, control_vm_events, padding);
  // Variable parts: proto keeps the fixed struct and a vector, so a
  // flexible array starts right after the fixed struct.
  SIZE(kvmi_get_page_access, get_page_access);
  OFF(kvmi_get_page_access, get_page_access, vcpu);
  OFF(kvmi_get_page_access, get_page_access, count);
  OFF(kvmi_get_page_access, get_page_access, view);
  OFF(kvmi_get_page_access, get_page_access, padding);
  m["offset kvmi_get_page_access.gpa"] = sizeof(get_page_access);
  m["size kvmi_get_page_access_reply"] = 0; // access[] only
  m["offset kvmi_get_page_access_reply.access"] = 0;
  SIZE(kvmi_page_access_entry, page_access_entry);
  OFF(kvmi_page_access_entry, page_access_entry, gpa);
  OFF(kvmi_page_access_entry, page_access_entry, access);
  OFF(kvmi_page_access_entry, page_access_entry, padding);
  SIZE(kvmi_set_page_access, set_page_access);
  OFF(kvmi_set_page_access, set_page_access, vcpu);
  OFF(kvmi_set_page_access, set_page_access, count);
  OFF(kvmi_set_page_access, set_page_access, view);
  OFF(kvmi_set_page_access, set_page_access, padding);
  m["offset kvmi_set_page_access.entries"] = sizeof(set_page_access);
  SIZE(kvmi_read_physical, read_physical);
  OFF(kvmi_read_physical, read_physical, gpa);
  OFF(kvmi_read_physical, read_physical, size);
  SIZE(kvmi_write_physical, write_physical);
  OFF(kvmi_write_physical, write_physical, gpa);
  OFF(kvmi_write_physical, write_physical, size);
  m["offset kvmi_write_physical.data"] = sizeof(write_physical);
  SIZE(kvmi_control_ve, control_ve);
  OFF(kvmi_control_ve, control_ve, vcpu);
  OFF(kvmi_control_ve, control_ve, count);
  OFF(kvmi_control_ve, control_ve, enable);
  OFF(kvmi_control_ve, control_ve, padding);
  m["offset kvmi_control_ve.gpa"] = sizeof(control_ve);
  SIZE(kvmi_map_mem_token, map_mem_token);
  OFF(kvmi_map_mem_token, map_mem_token, token);
  SIZE(kvmi_get_map_token_reply, get_map_token_reply);
  OFF(kvmi_get_map_token_reply, get_map_token_reply, token);
  SIZE(kvmi_mem_map, mem_map);
  OFF(kvmi_mem_map, mem_map, token);
  OFF(kvmi_mem_map, mem_map, gpa);
  OFF(kvmi_mem_map, mem_map, gva);
  // kvmi_event: proto flattens the x86 kvmi_event_arch into struct event.
  SIZE(kvmi_event, event);
  OFF(kvmi_event, event, event);
  OFF(kvmi_event, event, vcpu);
  OFF(kvmi_event, event, mode);
  OFF(kvmi_event, event, padding);
  const long long arch = offsetof(event, regs);
  m["offset kvmi_event.arch"] = arch;
  m["size kvmi_event_arch"] = sizeof(event) - arch;
  m["offset kvmi_event_arch.regs"] = offsetof(event, regs) - arch;
  m["offset kvmi_event_arch.sregs"] = offsetof(event, sregs) - arch;
  m["offset kvmi_event_arch.msrs"] = offsetof(event, msrs) - arch;
#define MSR(F) m["offset kvmi_event_arch.msrs." #F] = offsetof(event, msrs) + offsetof(event_msrs, F) - arch
  MSR(sysenter_cs);
  MSR(sysenter_esp);
  MSR(sysenter_eip);
  MSR(efer);
  MSR(star);
  MSR(lstar);
  MSR(cstar);
  MSR(pat);
  MSR(shadow_gs);
#undef MSR
  SIZE(kvmi_event_breakpoint, event_breakpoint);
  OFF(kvmi_event_breakpoint, event_breakpoint, gpa);
  SIZE(kvmi_event_pf, event_pf);
  OFF(kvmi_event_pf, event_pf, gva);
  OFF(kvmi_event_pf, event_pf, gpa);
  OFF(kvmi_event_pf, event_pf, mode);
  OFF(kvmi_event_pf, event_pf, padding);
  SIZE(kvmi_event_pf_reply, event_pf_reply);
  OFF(kvmi_event_pf_reply, event_pf_reply, singlestep);
  OFF(kvmi_event_pf_reply, event_pf_reply, rep_complete);
  OFF(kvmi_event_pf_reply, event_pf_reply, padding);
  OFF(kvmi_event_pf_reply, event_pf_reply, ctx_size);
  OFF(kvmi_event_pf_reply, event_pf_reply, ctx_data);
  SIZE(kvmi_get_registers, get_registers);
  OFF(kvmi_get_registers, get_registers, vcpu);
  OFF(kvmi_get_registers, get_registers, nmsrs);
  OFF(kvmi_get_registers, get_registers, padding);
  m["offset kvmi_get_registers.msrs_idx"] = sizeof(get_registers);
  SIZE(kvmi_get_registers_reply, get_registers_reply);
  OFF(kvmi_get_registers_reply, get_registers_reply, mode);
  OFF(kvmi_get_registers_reply, get_registers_reply, padding);
  OFF(kvmi_get_registers_reply, get_registers_reply, regs);
  OFF(kvmi_get_registers_reply, get_registers_reply, sregs);
  OFF(kvmi_get_registers_reply, get_registers_reply, msrs);
  SIZE(kvmi_set_registers, set_registers);
  OFF(kvmi_set_registers, set_registers, vcpu);
  OFF(kvmi_set_registers, set_registers, padding);
  OFF(kvmi_set_registers, set_registers, regs);
  SIZE(kvmi_get_cpuid, get_cpuid);
  OFF(kvmi_get_cpuid, get_cpuid, vcpu);
  OFF(kvmi_get_cpuid, get_cpuid, padding);
  OFF(kvmi_get_cpuid, get_cpuid, function);
  OFF(kvmi_get_cpuid, get_cpuid, index);
  SIZE(kvmi_get_cpuid_reply, get_cpuid_reply);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, eax);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, ebx);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, ecx);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, edx);
  SIZE(kvmi_inject_exception, inject_exception);
  OFF(kvmi_inject_exception, inject_exception, vcpu);
  OFF(kvmi_inject_exception, inject_exception, nr);
  OFF(kvmi_inject_exception, inject_exception, has_error);
  OFF(kvmi_inject_exception, inject_exception, error_code);
  OFF(kvmi_inject_exception, inject_exception, padding);
  OFF(kvmi_inject_exception, inject_exception, address);
  SIZE(kvmi_control_cr, control_cr);
  OFF(kvmi_control_cr, control_cr, vcpu);
  OFF(kvmi_control_cr, control_cr, enable);
  OFF(kvmi_control_cr, control_cr, padding);
  OFF(kvmi_control_cr, control_cr, cr);
  SIZE(kvmi_control_msr, control_msr);
  OFF(kvmi_control_msr, control_msr, vcpu);
  OFF(kvmi_control_msr, control_msr, enable);
  OFF(kvmi_control_msr, control_msr, padding);
  OFF(kvmi_control_msr, control_msr, msr);
  SIZE(kvmi_get_xsave, get_xsave);
  OFF(kvmi_get_xsave, get_xsave, vcpu);
  OFF(kvmi_get_xsave, get_xsave, padding);
  m["size kvmi_get_xsave_reply"] = 0; // region[] only
  m["offset kvmi_get_xsave_reply.region"] = 0;
  SIZE(kvmi_event_cr, event_cr);
  OFF(kvmi_event_cr, event_cr, cr);
  OFF(kvmi_event_cr, event_cr, padding);
  OFF(kvmi_event_cr, event_cr, old_value);
  OFF(kvmi_event_cr, event_cr, new_value);
  SIZE(kvmi_event_cr_reply, event_cr_reply);
  OFF(kvmi_event_cr_reply, event_cr_reply, new_val);
  SIZE(kvmi_event_msr, event_msr);
  OFF(kvmi_event_msr, event_msr, msr);
  OFF(kvmi_event_msr, event_msr, padding);
  OFF(kvmi_event_msr, event_msr, old_value);
  OFF(kvmi_event_msr, event_msr, new_value);
  SIZE(kvmi_event_msr_reply, event_msr_reply);
  OFF(kvmi_event_msr_reply, event_msr_reply, new_val);
  SIZE(kvmi_event_trap, event_trap);
  OFF(kvmi_event_trap, event_trap, vector);
  OFF(kvmi_event_trap, event_trap, type);
  OFF(kvmi_event_trap, event_trap, error_code);
  OFF(kvmi_event_trap, event_trap, padding);
  OFF(kvmi_event_trap, event_trap, cr2);
  // The descriptor union: proto keeps the vmx view; svm overlays it.
  SIZE(kvmi_event_descriptor, event_descriptor);
  m["offset kvmi_event_descriptor.arch"] = offsetof(event_descriptor, instr_info);
  m["offset kvmi_event_descriptor.arch.vmx"] = offsetof(event_descriptor, instr_info);
  m["offset kvmi_event_descriptor.arch.vmx.instr_info"] = offsetof(event_descriptor, instr_info);
  m["offset kvmi_event_descriptor.arch.vmx.padding"] = offsetof(event_descriptor, arch_padding);
  m["offset kvmi_event_descriptor.arch.vmx.exit_qualification"] =
    offsetof(event_descriptor, exit_qualification);
  m["offset kvmi_event_descriptor.arch.svm"] = offsetof(event_descriptor, instr_info);
  m["offset kvmi_event_descriptor.arch.svm.exit_info"] = offsetof(event_descriptor, instr_info);
  m["offset kvmi_event_descriptor.arch.svm.padding"] =
    offsetof(event_descriptor, exit_qualification);
  OFF(kvmi_event_descriptor, event_descriptor, descriptor);
  OFF(kvmi_event_descriptor, event_descriptor, write);
  OFF(kvmi_event_descriptor, event_descriptor, padding);

  // The allow macros against proto's allowed_* for every id and some masks.
  for (uint32_t id = 0; id < 31; ++id) {
    for (uint32_t mask : {0xffffffffu, 0u, 0x55555555u, 0xaaaaaaaau, 1u << 29, 0x1f8efccau}) {
      char args[32];
      std::snprintf(args, sizeof args, "(%u,0x%x)", id, mask);
      m[std::string("macro KVMI_ALLOWED_COMMAND") + args] =
        allowed_command(static_cast<msg_id>(id), mask) ? 1 : 0;
      m[std::string("macro KVMI_ALLOWED_VM_EVENT") + args] =
        allowed_vm_event(static_cast<event_id>(id), mask) ? 1 : 0;
      m[std::string("macro KVMI_ALLOWED_VCPU_EVENT") + args] =
        allowed_vcpu_event(static_cast<event_id>(id), mask) ? 1 : 0;
    }
  }
  return m;
}

} // namespace

TEST_CASE("uapi: every constant, size, offset and macro of the patch matches proto") {
  // Sanity: the dump is not trivially small (a broken extractor would be).
  testing::uapi::match(testing::uapi::load_dump(KVMI_UAPI_ABI_DUMP), expected(), 700);
}

TEST_CASE("uapi: the decisions this project made are in the patch") {
  auto dump = testing::uapi::load_dump(KVMI_UAPI_ABI_DUMP);
  CHECK(dump.at("const KVMI_CONTROL_VE") == 29);
  CHECK(dump.at("const KVMI_NUM_MESSAGES") == 30);
  CHECK(dump.at("const KVM_EACCES") == 13);
  CHECK(dump.at("const KVMI_KNOWN_COMMANDS") == 0x1F8EFCCA);
  CHECK(dump.at("size kvmi_event") == 536);
  CHECK(dump.at("size kvmi_get_registers_reply") == 472);
  CHECK(dump.at("size kvmi_event_pf_reply") == 264);
}
