// The chaos guests' memory: RAM on both sides of the MMIO hole and two
// NVLink2 GPUs, one online from the start, one never, each with its ATSD
// registers. Introspection touching the hole, the ATSD pages or the
// offline GPU RAM costs the host a machine check (the simulator counts an
// HMI), so the chaos policies carry page rules right up to those regions.
#pragma once

#include "kernel-patches/sim/sim.hpp"

#include <chrono>
#include <utility>
#include <vector>

namespace kvmid::chaos {

inline kvmi::sim::memory_spec chaos_memory() {
  kvmi::sim::memory_spec m;
  m.ram_size = 4ull << 30; // [0, 3 GiB) and [4 GiB, 5 GiB), sparse
  m.gpus = {kvmi::sim::gpu_spec{16ull << 30, std::chrono::milliseconds{0}},
            kvmi::sim::gpu_spec{16ull << 30, std::nullopt}};
  return m;
}

// {gpa, size} of two pages either side of each edge of every region that
// is not plain RAM: kvmid must restrict the RAM (and online GPU RAM) pages
// of such a rule and skip the rest.
inline std::vector<std::pair<uint64_t, uint64_t>> region_edges(const kvmi::sim::memory_spec& m) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  constexpr uint64_t two = 2 * kvmi::page_size;
  for (auto& r : kvmi::sim::memory_map(m)) {
    if (r.type == uint32_t(kvmi::hs::region_type::ram))
      continue;
    for (uint64_t edge : {r.gpa, r.gpa + r.size})
      out.emplace_back(edge - two, 2 * two);
  }
  return out;
}

// The last RAM page below the MMIO hole and the first above it: an edge
// rule restricts them (kvmid applied the rule right up to the hole).
inline constexpr uint64_t below_hole = (3ull << 30) - kvmi::page_size, above_hole = 4ull << 30;

} // namespace kvmid::chaos
