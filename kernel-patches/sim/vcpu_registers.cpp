#include "kernel-patches/sim/vcpu_registers.hpp"

#include <algorithm>

namespace kvmi::sim::detail {

void init_vcpu(vm& v, vcpu& c) {
  auto& r = c.regs;
  r.rip = 0xffffffff81000000ull + (v.rng() & 0xffff0);
  r.rsp = 0xffffc90000000000ull + (uint64_t(c.index) << 14) + 0x3f00;
  r.rbp = r.rsp + 0x80;
  r.rflags = 0x246;
  r.rax = v.rng() & 0xffff;
  r.rcx = c.index;
  auto& s = c.sregs;
  s.cs = kvm_segment{0, 0xffffffff, 0x10, 11, 1, 0, 0, 1, 1, 1, 0, 0, 0};
  s.ds = s.es = s.ss = kvm_segment{0, 0xffffffff, 0x18, 3, 1, 0, 1, 1, 0, 1, 0, 0, 0};
  s.fs = s.ds;
  s.gs = s.ds;
  s.gs.base = 0xffff888000000000ull + (uint64_t(c.index) << 20);
  s.tr = kvm_segment{0xfffffe0000003000ull + (uint64_t(c.index) << 16), 0x4087, 0x40, 11, 1,
                     0, 0, 0, 0, 0, 0, 0, 0};
  s.ldt = kvm_segment{};
  s.ldt.unusable = 1;
  s.gdt = kvm_dtable{0xfffffe0000001000ull + (uint64_t(c.index) << 16), 0x7f, {}};
  s.idt = kvm_dtable{0xfffffe0000000000ull, 0xfff, {}};
  s.cr0 = 0x80050033;                       // PG WP NE ET MP PE
  s.cr3 = 0x1000000 + (v.rng() & 0xff) * 0x1000;
  s.cr4 = 0x3606f0 | (1u << 20) | (1u << 21); // incl. SMEP SMAP
  s.efer = 0xd01;                           // SCE LME LMA NXE
  s.apic_base = 0xfee00000 | (c.index == 0 ? 0x900 : 0x800);
  c.msrs = {{msr::tsc, 0x100000 * (c.index + 1)},
            {msr::apic_base, s.apic_base},
            {msr::sysenter_cs, 0x10},
            {msr::sysenter_esp, 0xfffffe0000005000ull + (uint64_t(c.index) << 16)},
            {msr::sysenter_eip, 0xffffffff81a01560ull},
            {msr::misc_enable, 0x850089},
            {msr::pat, 0x0407050600070106ull},
            {msr::efer, s.efer},
            {msr::star, 0x0023001000000000ull},
            {msr::lstar, 0xffffffff81a00010ull},
            {msr::cstar, 0xffffffff81a01530ull},
            {msr::fmask, 0x47700},
            {msr::fs_base, 0x7f0000001000ull},
            {msr::gs_base, s.gs.base},
            {msr::kernel_gs_base, 0},
            {msr::tsc_aux, c.index}};
  std::sort(c.msrs.begin(), c.msrs.end());
}

uint64_t* find_msr(vcpu& c, uint32_t idx) {
  auto it = std::lower_bound(c.msrs.begin(), c.msrs.end(), std::pair<uint32_t, uint64_t>{idx, 0},
                             [](auto& a, auto& b) { return a.first < b.first; });
  return it != c.msrs.end() && it->first == idx ? &it->second : nullptr;
}
uint64_t get_msr(vcpu& c, uint32_t idx) {
  auto* p = find_msr(c, idx);
  return p ? *p : 0;
}
void set_msr(vcpu& c, uint32_t idx, uint64_t val) {
  if (auto* p = find_msr(c, idx))
    *p = val;
  else {
    c.msrs.emplace_back(idx, val);
    std::sort(c.msrs.begin(), c.msrs.end());
  }
  if (idx == msr::efer)
    c.sregs.efer = val;
  if (idx == msr::apic_base)
    c.sregs.apic_base = val;
}
uint64_t* cr_ref(vcpu& c, uint32_t cr) {
  switch (cr) {
    case 0: return reinterpret_cast<uint64_t*>(&c.sregs.cr0);
    case 3: return reinterpret_cast<uint64_t*>(&c.sregs.cr3);
    case 4: return reinterpret_cast<uint64_t*>(&c.sregs.cr4);
  }
  return nullptr;
}

} // namespace kvmi::sim::detail
