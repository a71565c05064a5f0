// ABI-exact KVMI v5 structs (x86), each with an inspect() that lists its
// fields once. Byte swapping and padding checks are generic visitors over
// inspect(), so no struct has hand-written swap or check code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <linux/kvm.h>
#include <type_traits>

namespace kvmi {

// Marks a KVMI padding field: must be zero on the wire.
template <class T>
struct pad_ref {
  T& value;
};
template <class T>
pad_ref<T> pad(T& x) {
  return {x};
}

// --- framing --------------------------------------------------------------

struct msg_hdr {
  uint16_t id;
  uint16_t size; // payload bytes after the header
  uint32_t seq;
};

struct error_code {
  int32_t err;
  uint32_t padding;
};

// --- commands (tool -> kernel) and their replies --------------------------

struct get_version_reply {
  uint32_t version;
  uint32_t commands;
  uint32_t events;
  uint32_t padding;
};

struct get_guest_info {
  uint16_t vcpu;
  uint16_t padding[3];
};
struct get_guest_info_reply {
  uint32_t vcpu_count;
  uint32_t padding;
  uint64_t tsc_speed;
};

struct pause_all_vcpus_reply {
  uint32_t vcpu_count;
  uint32_t padding;
};

struct get_registers { // followed by uint32_t msrs_idx[nmsrs]
  uint16_t vcpu;
  uint16_t nmsrs;
  uint16_t padding[2];
};
struct msrs_hdr { // struct kvm_msrs without its flexible array
  uint32_t nmsrs;
  uint32_t pad;
};
struct get_registers_reply { // followed by kvm_msr_entry[msrs.nmsrs]
  uint32_t mode;
  uint32_t padding;
  kvm_regs regs;
  kvm_sregs sregs;
  msrs_hdr msrs;
};

struct set_registers {
  uint16_t vcpu;
  uint16_t padding[3];
  kvm_regs regs;
};

struct get_cpuid {
  uint16_t vcpu;
  uint16_t padding[3];
  uint32_t function;
  uint32_t index;
};
struct get_cpuid_reply {
  uint32_t eax, ebx, ecx, edx;
};

struct get_page_access { // followed by uint64_t gpa[count]; reply: uint8_t access[count]
  uint16_t vcpu;
  uint16_t count;
  uint16_t view;
  uint16_t padding;
};

struct page_access_entry {
  uint64_t gpa;
  uint8_t access;
  uint8_t padding[7];
};
struct set_page_access { // followed by page_access_entry[count]
  uint16_t vcpu;
  uint16_t count;
  uint16_t view;
  uint16_t padding;
};

struct inject_exception {
  uint16_t vcpu;
  uint8_t nr;
  uint8_t has_error;
  uint16_t error_code;
  uint16_t padding;
  uint64_t address;
};

struct read_physical { // reply: uint8_t data[size]
  uint64_t gpa;
  uint64_t size;
};
struct write_physical { // followed by uint8_t data[size]
  uint64_t gpa;
  uint64_t size;
};

struct control_events {
  uint16_t vcpu;
  uint16_t padding;
  uint32_t events;
};
struct control_cr {
  uint16_t vcpu;
  uint8_t enable;
  uint8_t padding;
  uint32_t cr;
};
struct control_msr {
  uint16_t vcpu;
  uint8_t enable;
  uint8_t padding;
  uint32_t msr;
};
struct control_ve { // followed by uint64_t gpa[count]
  uint16_t vcpu;
  uint16_t count;
  uint8_t enable;
  uint8_t padding[3];
};
struct control_vm_events {
  uint32_t events;
  uint32_t padding;
};

struct map_mem_token {
  uint64_t token[4];
};
struct get_map_token_reply {
  map_mem_token token;
};
// /dev/kvmmem, for a tool inside a guest holding a map token (not on the
// socket; here so that the uapi ABI test covers all of kvmi.h).
struct mem_map {
  map_mem_token token;
  uint64_t gpa;
  uint64_t gva;
};
inline constexpr unsigned long kvm_intro_mem_map = _IOW('i', 0x01, mem_map);
inline constexpr unsigned long kvm_intro_mem_unmap = _IOW('i', 0x02, unsigned long);

// v5 sends sizeof(struct kvm_xsave) as of 4.20: 4096 bytes. Newer uapi headers
// add a flexible tail, so the size is fixed here rather than taken from them.
inline constexpr uint32_t xsave_size = 4096;

struct get_xsave { // reply: uint32_t region[] sized by the message
  uint16_t vcpu;
  uint16_t padding[3];
};

// --- events (kernel -> tool) and replies ----------------------------------

struct event_msrs {
  uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
  uint64_t efer, star, lstar, cstar, pat, shadow_gs;
};

struct event { // the x86 common part of every event
  uint32_t event;
  uint16_t vcpu;
  uint8_t mode; // 2, 4 or 8
  uint8_t padding;
  kvm_regs regs;
  kvm_sregs sregs;
  event_msrs msrs;
};

struct event_cr {
  uint16_t cr;
  uint16_t padding[3];
  uint64_t old_value;
  uint64_t new_value;
};
struct event_msr {
  uint32_t msr;
  uint32_t padding;
  uint64_t old_value;
  uint64_t new_value;
};
struct event_breakpoint {
  uint64_t gpa;
};
struct event_pf {
  uint64_t gva;
  uint64_t gpa;
  uint32_t mode; // rwx bits of the access
  uint32_t padding;
};
struct event_trap {
  uint32_t vector;
  uint32_t type;
  uint32_t error_code;
  uint32_t padding;
  uint64_t cr2;
};
struct event_descriptor {
  // union { vmx {u32 instr_info; u32 padding; u64 exit_qualification};
  //         svm {u64 exit_info; u64 padding} } arch;
  // Kept as the vmx view: both are 16 bytes, and a swapped-order peer is
  // only plausible on a host that has neither.
  uint32_t instr_info;
  uint32_t arch_padding;
  uint64_t exit_qualification;
  uint8_t descriptor;
  uint8_t write;
  uint8_t padding[6];
};

struct event_reply {
  uint32_t action;
  uint32_t event;
};
struct event_cr_reply {
  uint64_t new_val;
};
struct event_msr_reply {
  uint64_t new_val;
};
inline constexpr uint32_t pf_ctx_max = 256;
struct event_pf_reply {
  uint8_t singlestep;
  uint8_t rep_complete;
  uint16_t padding;
  uint32_t ctx_size;
  uint8_t ctx_data[pf_ctx_max];
};

// --- inspect: the one place that lists every field -------------------------

template <class F> void inspect(F& f, msg_hdr& x) { f(x.id, x.size, x.seq); }
template <class F> void inspect(F& f, error_code& x) { f(x.err, pad(x.padding)); }
template <class F> void inspect(F& f, get_version_reply& x) {
  f(x.version, x.commands, x.events, pad(x.padding));
}
template <class F> void inspect(F& f, get_guest_info& x) { f(x.vcpu, pad(x.padding)); }
template <class F> void inspect(F& f, get_guest_info_reply& x) {
  f(x.vcpu_count, pad(x.padding), x.tsc_speed);
}
template <class F> void inspect(F& f, pause_all_vcpus_reply& x) {
  f(x.vcpu_count, pad(x.padding));
}
template <class F> void inspect(F& f, get_registers& x) {
  f(x.vcpu, x.nmsrs, pad(x.padding));
}
template <class F> void inspect(F& f, msrs_hdr& x) { f(x.nmsrs, x.pad); }
template <class F> void inspect(F& f, kvm_regs& x) {
  f(x.rax, x.rbx, x.rcx, x.rdx, x.rsi, x.rdi, x.rsp, x.rbp, x.r8, x.r9, x.r10, x.r11,
    x.r12, x.r13, x.r14, x.r15, x.rip, x.rflags);
}
template <class F> void inspect(F& f, kvm_segment& x) {
  f(x.base, x.limit, x.selector, x.type, x.present, x.dpl, x.db, x.s, x.l, x.g, x.avl,
    x.unusable, x.padding);
}
template <class F> void inspect(F& f, kvm_dtable& x) { f(x.base, x.limit, x.padding); }
template <class F> void inspect(F& f, kvm_sregs& x) {
  f(x.cs, x.ds, x.es, x.fs, x.gs, x.ss, x.tr, x.ldt, x.gdt, x.idt, x.cr0, x.cr2, x.cr3,
    x.cr4, x.cr8, x.efer, x.apic_base, x.interrupt_bitmap);
}
template <class F> void inspect(F& f, kvm_msr_entry& x) { f(x.index, x.reserved, x.data); }
template <class F> void inspect(F& f, get_registers_reply& x) {
  f(x.mode, pad(x.padding), x.regs, x.sregs, x.msrs);
}
template <class F> void inspect(F& f, set_registers& x) { f(x.vcpu, pad(x.padding), x.regs); }
template <class F> void inspect(F& f, get_cpuid& x) {
  f(x.vcpu, pad(x.padding), x.function, x.index);
}
template <class F> void inspect(F& f, get_cpuid_reply& x) { f(x.eax, x.ebx, x.ecx, x.edx); }
template <class F> void inspect(F& f, get_page_access& x) {
  f(x.vcpu, x.count, x.view, pad(x.padding));
}
template <class F> void inspect(F& f, page_access_entry& x) {
  f(x.gpa, x.access, pad(x.padding));
}
template <class F> void inspect(F& f, set_page_access& x) {
  f(x.vcpu, x.count, x.view, pad(x.padding));
}
template <class F> void inspect(F& f, inject_exception& x) {
  f(x.vcpu, x.nr, x.has_error, x.error_code, pad(x.padding), x.address);
}
template <class F> void inspect(F& f, read_physical& x) { f(x.gpa, x.size); }
template <class F> void inspect(F& f, write_physical& x) { f(x.gpa, x.size); }
template <class F> void inspect(F& f, control_events& x) {
  f(x.vcpu, pad(x.padding), x.events);
}
template <class F> void inspect(F& f, control_cr& x) {
  f(x.vcpu, x.enable, pad(x.padding), x.cr);
}
template <class F> void inspect(F& f, control_msr& x) {
  f(x.vcpu, x.enable, pad(x.padding), x.msr);
}
template <class F> void inspect(F& f, control_ve& x) {
  f(x.vcpu, x.count, x.enable, pad(x.padding));
}
template <class F> void inspect(F& f, control_vm_events& x) { f(x.events, pad(x.padding)); }
template <class F> void inspect(F& f, map_mem_token& x) { f(x.token); }
template <class F> void inspect(F& f, get_map_token_reply& x) { f(x.token); }
template <class F> void inspect(F& f, mem_map& x) { f(x.token, x.gpa, x.gva); }
template <class F> void inspect(F& f, get_xsave& x) { f(x.vcpu, pad(x.padding)); }
template <class F> void inspect(F& f, event_msrs& x) {
  f(x.sysenter_cs, x.sysenter_esp, x.sysenter_eip, x.efer, x.star, x.lstar, x.cstar, x.pat,
    x.shadow_gs);
}
template <class F> void inspect(F& f, event& x) {
  f(x.event, x.vcpu, x.mode, pad(x.padding), x.regs, x.sregs, x.msrs);
}
template <class F> void inspect(F& f, event_cr& x) {
  f(x.cr, pad(x.padding), x.old_value, x.new_value);
}
template <class F> void inspect(F& f, event_msr& x) {
  f(x.msr, pad(x.padding), x.old_value, x.new_value);
}
template <class F> void inspect(F& f, event_breakpoint& x) { f(x.gpa); }
template <class F> void inspect(F& f, event_pf& x) {
  f(x.gva, x.gpa, x.mode, pad(x.padding));
}
template <class F> void inspect(F& f, event_trap& x) {
  f(x.vector, x.type, x.error_code, pad(x.padding), x.cr2);
}
template <class F> void inspect(F& f, event_descriptor& x) {
  f(x.instr_info, x.arch_padding, x.exit_qualification, x.descriptor, x.write,
    pad(x.padding));
}
template <class F> void inspect(F& f, event_reply& x) { f(x.action, x.event); }
template <class F> void inspect(F& f, event_cr_reply& x) { f(x.new_val); }
template <class F> void inspect(F& f, event_msr_reply& x) { f(x.new_val); }
template <class F> void inspect(F& f, event_pf_reply& x) {
  f(x.singlestep, x.rep_complete, pad(x.padding), x.ctx_size, x.ctx_data);
}

// --- ABI: sizes and key offsets (docs/protocol.md) ------------------------

static_assert(sizeof(msg_hdr) == 8 && offsetof(msg_hdr, size) == 2 && offsetof(msg_hdr, seq) == 4);
static_assert(sizeof(error_code) == 8);
static_assert(sizeof(event_reply) == 8);
static_assert(sizeof(get_version_reply) == 16);
static_assert(sizeof(get_guest_info) == 8 && sizeof(get_guest_info_reply) == 16);
static_assert(offsetof(get_guest_info_reply, tsc_speed) == 8);
static_assert(sizeof(pause_all_vcpus_reply) == 8);
static_assert(sizeof(get_registers) == 8);
static_assert(sizeof(page_access_entry) == 16 && offsetof(page_access_entry, access) == 8);
static_assert(sizeof(get_page_access) == 8 && sizeof(set_page_access) == 8);
static_assert(sizeof(inject_exception) == 16 && offsetof(inject_exception, address) == 8);
static_assert(offsetof(inject_exception, error_code) == 4);
static_assert(sizeof(read_physical) == 16 && sizeof(write_physical) == 16);
static_assert(sizeof(get_cpuid) == 16 && sizeof(get_cpuid_reply) == 16);
static_assert(offsetof(get_cpuid, function) == 8);
static_assert(sizeof(control_events) == 8 && offsetof(control_events, events) == 4);
static_assert(sizeof(control_cr) == 8 && offsetof(control_cr, cr) == 4);
static_assert(sizeof(control_msr) == 8 && offsetof(control_msr, msr) == 4);
static_assert(sizeof(control_ve) == 8 && sizeof(control_vm_events) == 8);
static_assert(sizeof(get_map_token_reply) == 32);
static_assert(sizeof(mem_map) == 48 && offsetof(mem_map, gpa) == 32);
static_assert(sizeof(get_xsave) == 8);
static_assert(sizeof(kvm_regs) == 144 && sizeof(kvm_sregs) == 312);
static_assert(sizeof(kvm_msr_entry) == 16);
static_assert(sizeof(set_registers) == 152 && offsetof(set_registers, regs) == 8);
static_assert(sizeof(get_registers_reply) == 472);
static_assert(offsetof(get_registers_reply, regs) == 8 && offsetof(get_registers_reply, sregs) == 152);
static_assert(offsetof(get_registers_reply, msrs) == 464);
static_assert(sizeof(event) == 536);
static_assert(offsetof(event, vcpu) == 4 && offsetof(event, mode) == 6);
static_assert(offsetof(event, regs) == 8 && offsetof(event, sregs) == 152);
static_assert(offsetof(event, msrs) == 464);
static_assert(sizeof(event_cr) == 24 && sizeof(event_msr) == 24 && sizeof(event_pf) == 24);
static_assert(sizeof(event_trap) == 24 && sizeof(event_descriptor) == 24);
static_assert(offsetof(event_descriptor, descriptor) == 16);
static_assert(sizeof(event_breakpoint) == 8);
static_assert(sizeof(event_cr_reply) == 8 && sizeof(event_msr_reply) == 8);
static_assert(sizeof(event_pf_reply) == 264 && offsetof(event_pf_reply, ctx_data) == 8);
static_assert(offsetof(event_pf_reply, ctx_size) == 4);
static_assert(offsetof(event_reply, event) == 4 && offsetof(error_code, padding) == 4);
static_assert(offsetof(event_cr, old_value) == 8 && offsetof(event_msr, old_value) == 8);
static_assert(offsetof(event_pf, mode) == 16 && offsetof(event_trap, cr2) == 16);
static_assert(offsetof(get_page_access, view) == 4 && offsetof(set_page_access, view) == 4);
static_assert(offsetof(control_ve, enable) == 4 && offsetof(get_version_reply, events) == 8);
static_assert(offsetof(write_physical, size) == 8 && offsetof(read_physical, size) == 8);
// The GET_XSAVE reply is the 4.20 kvm_xsave region; newer headers only add
// a flexible tail after it.
static_assert(offsetof(kvm_xsave, region) == 0 && sizeof(kvm_xsave::region) == xsave_size);

} // namespace kvmi
