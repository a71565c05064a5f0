// Numbers of the x86 guest and of the simulated guest that tests share.
#pragma once

#include <cstdint>

namespace kvmid::test {

inline constexpr uint32_t msr_lstar = 0xc0000082; // the syscall entry point
inline constexpr uint64_t cr0_wp = 1ull << 16, cr4_smep = 1ull << 20, cr4_smap = 1ull << 21;
inline constexpr uint64_t sim_kernel_text = 0x100000; // kvmi-sim's hot guest pages

} // namespace kvmid::test
