// The guest-physical layout a VM announces: RAM around the 3 GiB MMIO hole,
// then per GPU its NVLink2 RAM and ATSD register regions.
#include "kernel-patches/sim/sim.hpp"

#include <algorithm>

namespace kvmi::sim {

namespace {
constexpr uint64_t ram_hole = 3ull << 30, four_gib = 4ull << 30;
constexpr uint64_t gpu_ram_base = 0x200000000000ull, gpu_ram_stride = 0x2000000000ull; // 128 GiB
constexpr uint64_t atsd_base = 0x300000000000ull, atsd_size = 64 << 10;
constexpr uint64_t gpu_tgt_base = 0x0004000000000000ull;
} // namespace

std::vector<hs::region> memory_map(const memory_spec& m) {
  std::vector<hs::region> r;
  uint64_t low = std::min(m.ram_size, ram_hole);
  r.push_back({0, low, uint32_t(hs::region_type::ram), 0, 0});
  r.push_back({ram_hole, four_gib - ram_hole, uint32_t(hs::region_type::mmio), 0, 0});
  if (m.ram_size > ram_hole)
    r.push_back({four_gib, m.ram_size - ram_hole, uint32_t(hs::region_type::ram), 0, 0});
  for (size_t i = 0; i < m.gpus.size(); ++i) {
    r.push_back({gpu_ram_base + i * gpu_ram_stride, m.gpus[i].ram_size,
                 uint32_t(hs::region_type::nvlink2_gpu_ram), 0, gpu_tgt_base + i * gpu_ram_stride});
    r.push_back({atsd_base + i * atsd_size, atsd_size, uint32_t(hs::region_type::nvlink2_atsd), 0,
                 0});
  }
  return r;
}

} // namespace kvmi::sim
