// The real-process fixture under its earlier name; new tests include
// tests/support/kvmid_process.hpp directly.
#pragma once

#include "tests/support/kvmid_process.hpp"

namespace kvmid::test {
using e2e = kvmid_process;
inline constexpr uint32_t lstar = msr_lstar;
} // namespace kvmid::test
