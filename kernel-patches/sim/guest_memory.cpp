#include "kernel-patches/sim/guest_memory.hpp"

#include <cstring>

namespace kvmi::sim::detail {

const hs::region* region_of(const vm& v, uint64_t gpa, size_t* gpu_index) {
  size_t g = 0;
  for (auto& r : v.regions) {
    if (gpa >= r.gpa && gpa - r.gpa < r.size) {
      if (gpu_index)
        *gpu_index = g;
      return &r;
    }
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
      ++g;
  }
  return nullptr;
}

touch introspect_touch(vm& v, uint64_t gpa) {
  size_t g = 0;
  auto* r = region_of(v, gpa, &g);
  if (!r)
    return touch::none;
  switch (static_cast<hs::region_type>(r->type)) {
    case hs::region_type::ram: return touch::ok;
    case hs::region_type::nvlink2_gpu_ram:
      if (g < v.gpu_online.size() && v.gpu_online[g])
        return touch::ok;
      [[fallthrough]];
    default:
      ++v.c.hmis;
      return touch::hmi;
  }
}

uint8_t read_byte(const vm& v, uint64_t gpa) {
  auto it = v.memory.find(gpa >> 12);
  return it == v.memory.end() ? 0 : it->second->bytes[gpa & 4095];
}

page& page_for_write(vm& v, uint64_t gpa) {
  auto& p = v.memory[gpa >> 12];
  if (!p) {
    p = std::make_unique<page>();
    std::memset(p->bytes, 0, sizeof p->bytes);
  }
  return *p;
}

uint8_t access_of(const vm& v, uint64_t gpa) {
  auto it = v.access.find(gpa >> 12);
  return it == v.access.end() ? page_access_rwx : it->second;
}

} // namespace kvmi::sim::detail
