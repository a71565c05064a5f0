// ABI-exact KVMI v7 dialect structs (x86), each with an inspect() that lists
// its fields once, for the generic byte-swap and padding visitors. Structs
// whose layout v7 kept from v5 are v5's (proto/wire.hpp): the header, the
// error code, READ/WRITE_PHYSICAL, the GET_REGISTERS and GET_CPUID replies,
// the map token, the CR/MSR events and their replies.
#pragma once

#include "proto/wire.hpp"

namespace kvmi::v7 {

using kvmi::pad;

// --- framing --------------------------------------------------------------

// First in every vCPU command and in every event reply.
struct vcpu_hdr {
  uint16_t vcpu;
  uint16_t padding1;
  uint32_t padding2;
};

// --- commands (tool -> kernel) and their replies --------------------------

struct features {
  uint8_t spp;
  uint8_t vmfunc;
  uint8_t eptp;
  uint8_t ve;
  uint8_t padding[4];
};
struct get_version_reply {
  uint32_t version;
  uint32_t padding;
  v7::features features;
};
// The reply of the LKML v6 kernels: version and padding only. libkvmi
// zero-fills the features of such a reply.
inline constexpr uint32_t get_version_reply_short = offsetof(get_version_reply, features);

struct check_command {
  uint16_t id;
  uint16_t padding1;
  uint32_t padding2;
};
struct check_event {
  uint16_t id;
  uint16_t padding1;
  uint32_t padding2;
};

struct get_guest_info_reply {
  uint32_t vcpu_count;
  uint32_t padding[3];
};
struct get_vcpu_info_reply {
  uint64_t tsc_speed;
};

struct pause_vcpu {
  uint8_t wait;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t padding3;
};

struct control_vm_events {
  uint16_t event_id;
  uint8_t enable;
  uint8_t padding1;
  uint32_t padding2;
};
struct control_events { // one event id per command, not a mask
  uint16_t event_id;
  uint8_t enable;
  uint8_t padding1;
  uint32_t padding2;
};
struct control_cr {
  uint8_t enable;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t cr;
};
struct control_msr {
  uint8_t enable;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t msr;
};

struct get_registers { // followed by uint32_t msrs_idx[nmsrs]
  uint16_t nmsrs;
  uint16_t padding1;
  uint32_t padding2;
};
using kvmi::get_registers_reply; // unchanged, followed by kvm_msr_entry[msrs.nmsrs]

struct set_registers { // the payload after the vCPU header is kvm_regs alone
  kvm_regs regs;
};

struct get_cpuid {
  uint32_t function;
  uint32_t index;
};
using kvmi::get_cpuid_reply;

using kvmi::read_physical;  // reply: uint8_t data[size]
using kvmi::write_physical; // followed by uint8_t data[size]

struct inject_exception {
  uint8_t nr;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t error_code;
  uint64_t address;
};

// GET_PAGE_ACCESS has no struct in libkvmi's header (it dropped its
// wrapper); the kernel branch reads this one. Followed by uint64_t
// gpa[count]; reply: uint8_t access[count].
struct get_page_access {
  uint16_t view;
  uint16_t count;
  uint32_t padding;
};
struct page_access_entry {
  uint64_t gpa;
  uint8_t access;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t padding3;
};
struct set_page_access { // a VM command, followed by page_access_entry[count]
  uint16_t view;
  uint16_t count;
  uint32_t padding;
};

using kvmi::get_map_token_reply;
using mem_token = kvmi::map_mem_token;

struct control_cmd_response {
  uint8_t enable;
  uint8_t now;
  uint16_t padding1;
  uint32_t padding2;
};

struct get_max_gfn_reply {
  uint64_t gfn;
};

struct vcpu_control_singlestep {
  uint8_t enable;
  uint8_t padding[7];
};

// --- events (kernel -> tool) and replies ----------------------------------

struct event_arch {
  uint8_t mode; // 2, 4 or 8
  uint8_t padding1;
  uint16_t view;
  uint8_t padding2[4];
  kvm_regs regs;
  kvm_sregs sregs;
  event_msrs msrs;
};

// The common part of every event. `size` is its own size: the specific
// part starts at payload + size.
struct event {
  uint16_t size;
  uint16_t vcpu;
  uint8_t event;
  uint8_t padding[3];
  event_arch arch;
};

using kvmi::event_cr;
using kvmi::event_msr;
struct event_breakpoint {
  uint64_t gpa;
  uint8_t insn_len;
  uint8_t padding[7];
};
struct event_pf {
  uint64_t gva;
  uint64_t gpa;
  uint8_t access; // rwx bits of the access
  uint8_t padding1;
  uint16_t view;
  uint32_t padding2;
};
struct event_trap {
  uint8_t vector;
  uint8_t padding1;
  uint16_t padding2;
  uint32_t error_code;
  uint64_t cr2;
};
struct event_descriptor {
  uint8_t descriptor;
  uint8_t write;
  uint8_t padding[6];
};
struct event_singlestep {
  uint8_t failed;
  uint8_t padding[7];
};
struct event_cpuid {
  uint32_t function;
  uint32_t index;
  uint8_t insn_length;
  uint8_t padding1[3];
  uint32_t padding2;
};

// After kvmi_vcpu_hdr in every event reply.
struct event_reply {
  uint8_t action;
  uint8_t event;
  uint16_t padding1;
  uint32_t padding2;
};
using kvmi::event_cr_reply;
using kvmi::event_msr_reply;
struct event_pf_reply {
  uint64_t ctx_addr;
  uint32_t ctx_size;
  uint8_t singlestep;
  uint8_t rep_complete;
  uint16_t padding;
  uint8_t ctx_data[pf_ctx_max];
};

// --- inspect ---------------------------------------------------------------

template <class F> void inspect(F& f, vcpu_hdr& x) {
  f(x.vcpu, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, features& x) {
  f(x.spp, x.vmfunc, x.eptp, x.ve, pad(x.padding));
}
template <class F> void inspect(F& f, get_version_reply& x) {
  f(x.version, pad(x.padding), x.features);
}
template <class F> void inspect(F& f, check_command& x) {
  f(x.id, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, check_event& x) {
  f(x.id, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, get_guest_info_reply& x) {
  f(x.vcpu_count, pad(x.padding));
}
template <class F> void inspect(F& f, get_vcpu_info_reply& x) { f(x.tsc_speed); }
template <class F> void inspect(F& f, pause_vcpu& x) {
  f(x.wait, pad(x.padding1), pad(x.padding2), pad(x.padding3));
}
template <class F> void inspect(F& f, control_vm_events& x) {
  f(x.event_id, x.enable, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, control_events& x) {
  f(x.event_id, x.enable, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, control_cr& x) {
  f(x.enable, pad(x.padding1), pad(x.padding2), x.cr);
}
template <class F> void inspect(F& f, control_msr& x) {
  f(x.enable, pad(x.padding1), pad(x.padding2), x.msr);
}
template <class F> void inspect(F& f, get_registers& x) {
  f(x.nmsrs, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, set_registers& x) { f(x.regs); }
template <class F> void inspect(F& f, get_cpuid& x) { f(x.function, x.index); }
template <class F> void inspect(F& f, inject_exception& x) {
  f(x.nr, pad(x.padding1), pad(x.padding2), x.error_code, x.address);
}
template <class F> void inspect(F& f, get_page_access& x) {
  f(x.view, x.count, pad(x.padding));
}
template <class F> void inspect(F& f, page_access_entry& x) {
  f(x.gpa, x.access, pad(x.padding1), pad(x.padding2), pad(x.padding3));
}
template <class F> void inspect(F& f, set_page_access& x) {
  f(x.view, x.count, pad(x.padding));
}
template <class F> void inspect(F& f, control_cmd_response& x) {
  f(x.enable, x.now, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, get_max_gfn_reply& x) { f(x.gfn); }
template <class F> void inspect(F& f, vcpu_control_singlestep& x) {
  f(x.enable, pad(x.padding));
}
template <class F> void inspect(F& f, event_arch& x) {
  f(x.mode, pad(x.padding1), x.view, pad(x.padding2), x.regs, x.sregs, x.msrs);
}
template <class F> void inspect(F& f, event& x) {
  f(x.size, x.vcpu, x.event, pad(x.padding), x.arch);
}
template <class F> void inspect(F& f, event_breakpoint& x) {
  f(x.gpa, x.insn_len, pad(x.padding));
}
template <class F> void inspect(F& f, event_pf& x) {
  f(x.gva, x.gpa, x.access, pad(x.padding1), x.view, pad(x.padding2));
}
template <class F> void inspect(F& f, event_trap& x) {
  f(x.vector, pad(x.padding1), pad(x.padding2), x.error_code, x.cr2);
}
template <class F> void inspect(F& f, event_descriptor& x) {
  f(x.descriptor, x.write, pad(x.padding));
}
template <class F> void inspect(F& f, event_singlestep& x) { f(x.failed, pad(x.padding)); }
template <class F> void inspect(F& f, event_cpuid& x) {
  f(x.function, x.index, x.insn_length, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, event_reply& x) {
  f(x.action, x.event, pad(x.padding1), pad(x.padding2));
}
template <class F> void inspect(F& f, event_pf_reply& x) {
  f(x.ctx_addr, x.ctx_size, x.singlestep, x.rep_complete, pad(x.padding), x.ctx_data);
}

// --- ABI: every size and offset of the v7 tables (docs/protocol.md) --------

static_assert(sizeof(vcpu_hdr) == 8 && offsetof(vcpu_hdr, padding1) == 2
              && offsetof(vcpu_hdr, padding2) == 4);
static_assert(sizeof(features) == 8 && offsetof(features, ve) == 3
              && offsetof(features, padding) == 4);
static_assert(sizeof(get_version_reply) == 16 && offsetof(get_version_reply, features) == 8
              && get_version_reply_short == 8);
static_assert(sizeof(check_command) == 8 && sizeof(check_event) == 8);
static_assert(sizeof(get_guest_info_reply) == 16 && offsetof(get_guest_info_reply, padding) == 4);
static_assert(sizeof(get_vcpu_info_reply) == 8);
static_assert(sizeof(pause_vcpu) == 8 && offsetof(pause_vcpu, padding3) == 4);
static_assert(sizeof(control_vm_events) == 8 && offsetof(control_vm_events, enable) == 2);
static_assert(sizeof(control_events) == 8 && offsetof(control_events, enable) == 2
              && offsetof(control_events, padding2) == 4);
static_assert(sizeof(control_cr) == 8 && offsetof(control_cr, cr) == 4);
static_assert(sizeof(control_msr) == 8 && offsetof(control_msr, msr) == 4);
static_assert(sizeof(get_registers) == 8);
static_assert(sizeof(get_registers_reply) == 472);
static_assert(sizeof(set_registers) == 144);
static_assert(sizeof(vcpu_hdr) + sizeof(set_registers) == 8 + 144); // v5's wire bytes
static_assert(sizeof(get_cpuid) == 8 && offsetof(get_cpuid, index) == 4);
static_assert(sizeof(get_cpuid_reply) == 16);
static_assert(sizeof(vcpu_hdr) + sizeof(get_cpuid) == sizeof(kvmi::get_cpuid)); // as v5
static_assert(sizeof(read_physical) == 16 && sizeof(write_physical) == 16);
static_assert(sizeof(inject_exception) == 16 && offsetof(inject_exception, error_code) == 4
              && offsetof(inject_exception, address) == 8);
static_assert(sizeof(get_page_access) == 8 && offsetof(get_page_access, count) == 2);
static_assert(sizeof(page_access_entry) == 16 && offsetof(page_access_entry, access) == 8
              && offsetof(page_access_entry, padding3) == 12);
static_assert(sizeof(set_page_access) == 8 && offsetof(set_page_access, count) == 2);
static_assert(sizeof(get_map_token_reply) == 32 && sizeof(mem_token) == 32);
static_assert(sizeof(control_cmd_response) == 8 && offsetof(control_cmd_response, now) == 1);
static_assert(sizeof(get_max_gfn_reply) == 8);
static_assert(sizeof(vcpu_control_singlestep) == 8);
static_assert(sizeof(event_arch) == 536 && offsetof(event_arch, view) == 2
              && offsetof(event_arch, regs) == 8 && offsetof(event_arch, sregs) == 152
              && offsetof(event_arch, msrs) == 464 && sizeof(event_msrs) == 72);
static_assert(sizeof(event) == 544 && offsetof(event, vcpu) == 2 && offsetof(event, event) == 4
              && offsetof(event, padding) == 5 && offsetof(event, arch) == 8);
// The table's absolute offsets within the 544-byte common part.
static_assert(offsetof(event, arch) + offsetof(event_arch, mode) == 8
              && offsetof(event, arch) + offsetof(event_arch, view) == 10
              && offsetof(event, arch) + offsetof(event_arch, padding2) == 12
              && offsetof(event, arch) + offsetof(event_arch, regs) == 16
              && offsetof(event, arch) + offsetof(event_arch, sregs) == 160
              && offsetof(event, arch) + offsetof(event_arch, msrs) == 472);
static_assert(sizeof(event_cr) == 24 && sizeof(event_msr) == 24);
static_assert(sizeof(event_breakpoint) == 16 && offsetof(event_breakpoint, insn_len) == 8);
static_assert(sizeof(event_pf) == 24 && offsetof(event_pf, access) == 16
              && offsetof(event_pf, view) == 18 && offsetof(event_pf, padding2) == 20);
static_assert(sizeof(event_trap) == 16 && offsetof(event_trap, error_code) == 4
              && offsetof(event_trap, cr2) == 8);
static_assert(sizeof(event_descriptor) == 8 && offsetof(event_descriptor, write) == 1);
static_assert(sizeof(event_singlestep) == 8);
static_assert(sizeof(event_cpuid) == 16 && offsetof(event_cpuid, insn_length) == 8
              && offsetof(event_cpuid, padding2) == 12);
static_assert(sizeof(event_reply) == 8 && offsetof(event_reply, event) == 1);
static_assert(sizeof(vcpu_hdr) + sizeof(event_reply) == 16);
static_assert(sizeof(vcpu_hdr) + sizeof(event_reply) + sizeof(event_cr_reply) == 24);
static_assert(sizeof(event_pf_reply) == 272 && offsetof(event_pf_reply, ctx_size) == 8
              && offsetof(event_pf_reply, singlestep) == 12
              && offsetof(event_pf_reply, ctx_data) == 16);
static_assert(sizeof(vcpu_hdr) + sizeof(event_reply) + sizeof(event_pf_reply) == 288);

} // namespace kvmi::v7
