// Guest memory as introspection sees it: sparse pages, the regions of the
// memory map, and the kernel's page-access table.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

// The region holding gpa (and which GPU RAM region it is), or nullptr.
const hs::region* region_of(const vm& v, uint64_t gpa, size_t* gpu_index = nullptr);

enum class touch { ok, hmi, none };
// What an introspection access to gpa does: MMIO, ATSD and GPU RAM not yet
// online count an HMI; none: no region holds it.
touch introspect_touch(vm& v, uint64_t gpa);

uint8_t read_byte(const vm& v, uint64_t gpa);
page& page_for_write(vm& v, uint64_t gpa);
uint8_t access_of(const vm& v, uint64_t gpa); // rwx when untracked

} // namespace kvmi::sim::detail
