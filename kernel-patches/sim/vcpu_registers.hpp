// A vCPU's architectural state: the registers a booted 64-bit Linux guest
// has, its MSRs and the control registers introspection watches.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

// Registers, segments and MSRs of a running 64-bit kernel (seeded by v.rng).
void init_vcpu(vm& v, vcpu& c);

uint64_t* find_msr(vcpu& c, uint32_t idx);
uint64_t get_msr(vcpu& c, uint32_t idx);
void set_msr(vcpu& c, uint32_t idx, uint64_t val); // EFER and APIC base mirror into sregs
uint64_t* cr_ref(vcpu& c, uint32_t cr);            // cr0, cr3, cr4; nullptr for others
// CONTROL_CR's watch bit for a CR (0 for one it cannot watch).
inline uint8_t cr_bit(uint32_t cr) { return cr == 0 ? 1 : cr == 3 ? 2 : cr == 4 ? 4 : 0; }

} // namespace kvmi::sim::detail
