// The v7 dialect's kernel ABI (kernel-patches/uapi/v7) against proto/v7:
// every constant, struct size and field offset the patch's headers define
// must have a proto counterpart of the same value and the other way round,
// and the v7 tables of docs/protocol.md are checked against both.
#include "proto/v7/codec.hpp"
#include "proto/v7/ids.hpp"
#include "proto/v7/wire.hpp"
#include "tests/proto/uapi_dump.hpp"

#include <doctest/doctest.h>

#include <cstddef>
#include <string>

using namespace kvmi::v7;
using kvmi::testing::uapi::abi;
using kvmi::testing::uapi::load_dump;
using kvmi::testing::uapi::upper;

namespace {

abi expected() {
  abi m;
  auto c = [&](const std::string& n, long long v) { m["const " + n] = v; };
  for (auto id : all_msg_ids)
    c("KVMI_" + upper(name(id)), static_cast<uint16_t>(id));
  c("KVMI_NUM_MESSAGES", num_messages);
  for (auto e : all_event_ids)
    c("KVMI_EVENT_" + upper(name(e)), static_cast<uint8_t>(e));
  c("KVMI_NUM_EVENTS", num_events);
  for (auto a : {kvmi::action::continue_, kvmi::action::retry, kvmi::action::crash})
    c("KVMI_EVENT_ACTION_" + upper(kvmi::name(a)), static_cast<uint32_t>(a));
  c("KVMI_VERSION", kvmi::version);
  c("KVMI_MSG_SIZE", msg_size);
  c("KVMI_PAGE_ACCESS_R", kvmi::page_access_r);
  c("KVMI_PAGE_ACCESS_W", kvmi::page_access_w);
  c("KVMI_PAGE_ACCESS_X", kvmi::page_access_x);
  c("KVMI_PAGE_ACCESS_SVE", page_access_sve);
  c("KVMI_DESC_IDTR", kvmi::desc_idtr);
  c("KVMI_DESC_GDTR", kvmi::desc_gdtr);
  c("KVMI_DESC_LDTR", kvmi::desc_ldtr);
  c("KVMI_DESC_TR", kvmi::desc_tr);

  // Framing.
  SIZE(kvmi_msg_hdr, kvmi::msg_hdr);
  OFF(kvmi_msg_hdr, kvmi::msg_hdr, id);
  OFF(kvmi_msg_hdr, kvmi::msg_hdr, size);
  OFF(kvmi_msg_hdr, kvmi::msg_hdr, seq);
  SIZE(kvmi_error_code, kvmi::error_code);
  OFF(kvmi_error_code, kvmi::error_code, err);
  OFF(kvmi_error_code, kvmi::error_code, padding);
  SIZE(kvmi_vcpu_hdr, vcpu_hdr);
  OFF(kvmi_vcpu_hdr, vcpu_hdr, vcpu);
  OFF(kvmi_vcpu_hdr, vcpu_hdr, padding1);
  OFF(kvmi_vcpu_hdr, vcpu_hdr, padding2);

  // Commands and their replies.
  SIZE(kvmi_features, features);
  OFF(kvmi_features, features, spp);
  OFF(kvmi_features, features, vmfunc);
  OFF(kvmi_features, features, eptp);
  OFF(kvmi_features, features, ve);
  OFF(kvmi_features, features, padding);
  SIZE(kvmi_get_version_reply, get_version_reply);
  OFF(kvmi_get_version_reply, get_version_reply, version);
  OFF(kvmi_get_version_reply, get_version_reply, padding);
  OFF(kvmi_get_version_reply, get_version_reply, features);
  for (const char* s : {"kvmi_check_command", "kvmi_check_event"}) {
    m[std::string("size ") + s] = sizeof(check_command);
    m[std::string("offset ") + s + ".id"] = offsetof(check_command, id);
    m[std::string("offset ") + s + ".padding1"] = offsetof(check_command, padding1);
    m[std::string("offset ") + s + ".padding2"] = offsetof(check_command, padding2);
  }
  static_assert(sizeof(check_event) == sizeof(check_command)
                && offsetof(check_event, padding2) == offsetof(check_command, padding2));
  SIZE(kvmi_get_guest_info_reply, get_guest_info_reply);
  OFF(kvmi_get_guest_info_reply, get_guest_info_reply, vcpu_count);
  OFF(kvmi_get_guest_info_reply, get_guest_info_reply, padding);
  SIZE(kvmi_get_vcpu_info_reply, get_vcpu_info_reply);
  OFF(kvmi_get_vcpu_info_reply, get_vcpu_info_reply, tsc_speed);
  SIZE(kvmi_pause_vcpu, pause_vcpu);
  OFF(kvmi_pause_vcpu, pause_vcpu, wait);
  OFF(kvmi_pause_vcpu, pause_vcpu, padding1);
  OFF(kvmi_pause_vcpu, pause_vcpu, padding2);
  OFF(kvmi_pause_vcpu, pause_vcpu, padding3);
  SIZE(kvmi_control_vm_events, control_vm_events);
  OFF(kvmi_control_vm_events, control_vm_events, event_id);
  OFF(kvmi_control_vm_events, control_vm_events, enable);
  OFF(kvmi_control_vm_events, control_vm_events, padding1);
  OFF(kvmi_control_vm_events, control_vm_events, padding2);
  SIZE(kvmi_control_events, control_events);
  OFF(kvmi_control_events, control_events, event_id);
  OFF(kvmi_control_events, control_events, enable);
  OFF(kvmi_control_events, control_events, padding1);
  OFF(kvmi_control_events, control_events, padding2);
  SIZE(kvmi_control_cr, control_cr);
  OFF(kvmi_control_cr, control_cr, enable);
  OFF(kvmi_control_cr, control_cr, padding1);
  OFF(kvmi_control_cr, control_cr, padding2);
  OFF(kvmi_control_cr, control_cr, cr);
  SIZE(kvmi_control_msr, control_msr);
  OFF(kvmi_control_msr, control_msr, enable);
  OFF(kvmi_control_msr, control_msr, padding1);
  OFF(kvmi_control_msr, control_msr, padding2);
  OFF(kvmi_control_msr, control_msr, msr);
  // Variable parts: proto keeps the fixed struct and a vector, so a
  // flexible array starts right after the fixed struct.
  SIZE(kvmi_get_registers, get_registers);
  OFF(kvmi_get_registers, get_registers, nmsrs);
  OFF(kvmi_get_registers, get_registers, padding1);
  OFF(kvmi_get_registers, get_registers, padding2);
  m["offset kvmi_get_registers.msrs_idx"] = sizeof(get_registers);
  SIZE(kvmi_get_registers_reply, get_registers_reply);
  OFF(kvmi_get_registers_reply, get_registers_reply, mode);
  OFF(kvmi_get_registers_reply, get_registers_reply, padding);
  OFF(kvmi_get_registers_reply, get_registers_reply, regs);
  OFF(kvmi_get_registers_reply, get_registers_reply, sregs);
  OFF(kvmi_get_registers_reply, get_registers_reply, msrs);
  SIZE(kvmi_get_cpuid, get_cpuid);
  OFF(kvmi_get_cpuid, get_cpuid, function);
  OFF(kvmi_get_cpuid, get_cpuid, index);
  SIZE(kvmi_get_cpuid_reply, get_cpuid_reply);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, eax);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, ebx);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, ecx);
  OFF(kvmi_get_cpuid_reply, get_cpuid_reply, edx);
  m["size kvmi_get_xsave_reply"] = 0; // region[] only
  m["offset kvmi_get_xsave_reply.region"] = 0;
  SIZE(kvmi_read_physical, read_physical);
  OFF(kvmi_read_physical, read_physical, gpa);
  OFF(kvmi_read_physical, read_physical, size);
  SIZE(kvmi_write_physical, write_physical);
  OFF(kvmi_write_physical, write_physical, gpa);
  OFF(kvmi_write_physical, write_physical, size);
  m["offset kvmi_write_physical.data"] = sizeof(write_physical);
  SIZE(kvmi_inject_exception, inject_exception);
  OFF(kvmi_inject_exception, inject_exception, nr);
  OFF(kvmi_inject_exception, inject_exception, padding1);
  OFF(kvmi_inject_exception, inject_exception, padding2);
  OFF(kvmi_inject_exception, inject_exception, error_code);
  OFF(kvmi_inject_exception, inject_exception, address);
  SIZE(kvmi_get_page_access, get_page_access);
  OFF(kvmi_get_page_access, get_page_access, view);
  OFF(kvmi_get_page_access, get_page_access, count);
  OFF(kvmi_get_page_access, get_page_access, padding);
  m["offset kvmi_get_page_access.gpa"] = sizeof(get_page_access);
  SIZE(kvmi_page_access_entry, page_access_entry);
  OFF(kvmi_page_access_entry, page_access_entry, gpa);
  OFF(kvmi_page_access_entry, page_access_entry, access);
  OFF(kvmi_page_access_entry, page_access_entry, padding1);
  OFF(kvmi_page_access_entry, page_access_entry, padding2);
  OFF(kvmi_page_access_entry, page_access_entry, padding3);
  SIZE(kvmi_set_page_access, set_page_access);
  OFF(kvmi_set_page_access, set_page_access, view);
  OFF(kvmi_set_page_access, set_page_access, count);
  OFF(kvmi_set_page_access, set_page_access, padding);
  m["offset kvmi_set_page_access.entries"] = sizeof(set_page_access);
  SIZE(kvmi_mem_token, mem_token);
  OFF(kvmi_mem_token, mem_token, token);
  SIZE(kvmi_control_cmd_response, control_cmd_response);
  OFF(kvmi_control_cmd_response, control_cmd_response, enable);
  OFF(kvmi_control_cmd_response, control_cmd_response, now);
  OFF(kvmi_control_cmd_response, control_cmd_response, padding1);
  OFF(kvmi_control_cmd_response, control_cmd_response, padding2);
  SIZE(kvmi_get_max_gfn_reply, get_max_gfn_reply);
  OFF(kvmi_get_max_gfn_reply, get_max_gfn_reply, gfn);
  SIZE(kvmi_vcpu_control_singlestep, vcpu_control_singlestep);
  OFF(kvmi_vcpu_control_singlestep, vcpu_control_singlestep, enable);
  OFF(kvmi_vcpu_control_singlestep, vcpu_control_singlestep, padding);

  // Events and replies.
  SIZE(kvmi_event_arch, event_arch);
  OFF(kvmi_event_arch, event_arch, mode);
  OFF(kvmi_event_arch, event_arch, padding1);
  OFF(kvmi_event_arch, event_arch, view);
  OFF(kvmi_event_arch, event_arch, padding2);
  OFF(kvmi_event_arch, event_arch, regs);
  OFF(kvmi_event_arch, event_arch, sregs);
  OFF(kvmi_event_arch, event_arch, msrs);
#define MSR(F)                                                                                   \
  m["offset kvmi_event_arch.msrs." #F] = offsetof(event_arch, msrs) + offsetof(kvmi::event_msrs, F)
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
  SIZE(kvmi_event, event);
  OFF(kvmi_event, event, size);
  OFF(kvmi_event, event, vcpu);
  OFF(kvmi_event, event, event);
  OFF(kvmi_event, event, padding);
  OFF(kvmi_event, event, arch);
  SIZE(kvmi_event_reply, event_reply);
  OFF(kvmi_event_reply, event_reply, action);
  OFF(kvmi_event_reply, event_reply, event);
  OFF(kvmi_event_reply, event_reply, padding1);
  OFF(kvmi_event_reply, event_reply, padding2);
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
  SIZE(kvmi_event_breakpoint, event_breakpoint);
  OFF(kvmi_event_breakpoint, event_breakpoint, gpa);
  OFF(kvmi_event_breakpoint, event_breakpoint, insn_len);
  OFF(kvmi_event_breakpoint, event_breakpoint, padding);
  SIZE(kvmi_event_pf, event_pf);
  OFF(kvmi_event_pf, event_pf, gva);
  OFF(kvmi_event_pf, event_pf, gpa);
  OFF(kvmi_event_pf, event_pf, access);
  OFF(kvmi_event_pf, event_pf, padding1);
  OFF(kvmi_event_pf, event_pf, view);
  OFF(kvmi_event_pf, event_pf, padding2);
  SIZE(kvmi_event_pf_reply, event_pf_reply);
  OFF(kvmi_event_pf_reply, event_pf_reply, ctx_addr);
  OFF(kvmi_event_pf_reply, event_pf_reply, ctx_size);
  OFF(kvmi_event_pf_reply, event_pf_reply, singlestep);
  OFF(kvmi_event_pf_reply, event_pf_reply, rep_complete);
  OFF(kvmi_event_pf_reply, event_pf_reply, padding);
  OFF(kvmi_event_pf_reply, event_pf_reply, ctx_data);
  SIZE(kvmi_event_trap, event_trap);
  OFF(kvmi_event_trap, event_trap, vector);
  OFF(kvmi_event_trap, event_trap, padding1);
  OFF(kvmi_event_trap, event_trap, padding2);
  OFF(kvmi_event_trap, event_trap, error_code);
  OFF(kvmi_event_trap, event_trap, cr2);
  SIZE(kvmi_event_descriptor, event_descriptor);
  OFF(kvmi_event_descriptor, event_descriptor, descriptor);
  OFF(kvmi_event_descriptor, event_descriptor, write);
  OFF(kvmi_event_descriptor, event_descriptor, padding);
  SIZE(kvmi_event_singlestep, event_singlestep);
  OFF(kvmi_event_singlestep, event_singlestep, failed);
  OFF(kvmi_event_singlestep, event_singlestep, padding);
  SIZE(kvmi_event_cpuid, event_cpuid);
  OFF(kvmi_event_cpuid, event_cpuid, function);
  OFF(kvmi_event_cpuid, event_cpuid, index);
  OFF(kvmi_event_cpuid, event_cpuid, insn_length);
  OFF(kvmi_event_cpuid, event_cpuid, padding1);
  OFF(kvmi_event_cpuid, event_cpuid, padding2);
  return m;
}

} // namespace

TEST_CASE("uapi v7: every constant size and offset of the patch matches proto/v7") {
  kvmi::testing::uapi::match(load_dump(KVMI_UAPI_V7_ABI_DUMP), expected(), 250);
}

TEST_CASE("uapi v7: the patch has the numbers of the v7 tables") {
  auto d = load_dump(KVMI_UAPI_V7_ABI_DUMP);
  const std::pair<const char*, long long> table[] = {
    // Framing and limits.
    {"size kvmi_msg_hdr", 8},
    {"const KVMI_MSG_SIZE", 8184},
    {"size kvmi_error_code", 8},
    {"size kvmi_vcpu_hdr", 8},
    // Ids that moved or are new.
    {"const KVMI_EVENT_REPLY", 0},
    {"const KVMI_EVENT", 1},
    {"const KVMI_GET_VERSION", 2},
    {"const KVMI_CHECK_COMMAND", 3},
    {"const KVMI_CHECK_EVENT", 4},
    {"const KVMI_GET_GUEST_INFO", 5},
    {"const KVMI_GET_VCPU_INFO", 6},
    {"const KVMI_PAUSE_VCPU", 7},
    {"const KVMI_CONTROL_VM_EVENTS", 8},
    {"const KVMI_CONTROL_EVENTS", 9},
    {"const KVMI_CONTROL_CR", 10},
    {"const KVMI_CONTROL_MSR", 11},
    {"const KVMI_CONTROL_VE", 12},
    {"const KVMI_GET_REGISTERS", 13},
    {"const KVMI_SET_REGISTERS", 14},
    {"const KVMI_GET_CPUID", 15},
    {"const KVMI_GET_XSAVE", 16},
    {"const KVMI_READ_PHYSICAL", 17},
    {"const KVMI_WRITE_PHYSICAL", 18},
    {"const KVMI_INJECT_EXCEPTION", 19},
    {"const KVMI_GET_PAGE_ACCESS", 20},
    {"const KVMI_SET_PAGE_ACCESS", 21},
    {"const KVMI_GET_MAP_TOKEN", 22},
    {"const KVMI_CONTROL_CMD_RESPONSE", 27},
    {"const KVMI_GET_MAX_GFN", 29},
    {"const KVMI_VCPU_CONTROL_SINGLESTEP", 63},
    {"const KVMI_EVENT_PAUSE_VCPU", 10},
    {"const KVMI_EVENT_SINGLESTEP", 11},
    {"const KVMI_EVENT_CPUID", 13},
    // Sizes.
    {"size kvmi_get_version_reply", 16},
    {"size kvmi_get_guest_info_reply", 16},
    {"size kvmi_pause_vcpu", 8},
    {"size kvmi_control_events", 8},
    {"size kvmi_inject_exception", 16},
    {"size kvmi_get_registers_reply", 472},
    {"size kvmi_page_access_entry", 16},
    {"size kvmi_set_page_access", 8},
    {"size kvmi_control_cmd_response", 8},
    {"size kvmi_event", 544},
    {"offset kvmi_event.arch", 8},
    {"offset kvmi_event_arch.view", 2},
    {"offset kvmi_event_arch.regs", 8},
    {"offset kvmi_event_arch.sregs", 152},
    {"offset kvmi_event_arch.msrs", 464},
    {"size kvmi_event_cr", 24},
    {"size kvmi_event_msr", 24},
    {"size kvmi_event_breakpoint", 16},
    {"size kvmi_event_pf", 24},
    {"offset kvmi_event_pf.view", 18},
    {"size kvmi_event_trap", 16},
    {"size kvmi_event_descriptor", 8},
    {"size kvmi_event_singlestep", 8},
    {"size kvmi_event_cpuid", 16},
    {"size kvmi_event_reply", 8},
    {"size kvmi_event_pf_reply", 272},
    {"offset kvmi_event_pf_reply.ctx_data", 16},
  };
  for (auto& [key, value] : table) {
    CAPTURE(key);
    REQUIRE(d.count(key) == 1);
    CHECK(d.at(key) == value);
  }
  CHECK(d.count("const KVMI_EVENT_CMD_ERROR") == 0);
  // The event replies of the table: vCPU header + reply + specific part.
  CHECK(d.at("size kvmi_vcpu_hdr") + d.at("size kvmi_event_reply") == 16);
  CHECK(d.at("size kvmi_vcpu_hdr") + d.at("size kvmi_event_reply")
          + d.at("size kvmi_event_cr_reply")
        == 24);
  CHECK(d.at("size kvmi_vcpu_hdr") + d.at("size kvmi_event_reply")
          + d.at("size kvmi_event_pf_reply")
        == 288);
  CHECK(event_reply_size(event_id::pf) == 288);
}
