#include "kernel-patches/sim/kernel_ops.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

#include <algorithm>
#include <cstring>

namespace kvmi::sim::detail {

vcpu* serving_vcpu(vm& v, uint16_t idx, int32_t& kvm_e) {
  if (idx >= v.vcpus.size()) {
    kvm_e = kvm_einval;
    return nullptr;
  }
  auto& c = v.vcpus[idx];
  if (!c.initialised) {
    kvm_e = kvm_eagain;
    return nullptr;
  }
  if (!c.waiting) {
    // The kernel queues the command to the vCPU and kicks it out of the
    // guest: it serves the command on its own thread and re-enters.
    ++v.c.commands_on_running_vcpus;
    c.kicked = true;
  }
  kvm_e = 0;
  return &c;
}

std::optional<get_cpuid_reply> cpuid(uint32_t fn, uint32_t idx) {
  switch (fn) {
    case 0: return get_cpuid_reply{0xd, 0x756e6547, 0x6c65746e, 0x49656e69}; // GenuineIntel
    case 1: return get_cpuid_reply{0x000906ea, 0x00100800, 0xfffa3223, 0x0f8bfbff};
    case 7:
      if (idx == 0)
        return get_cpuid_reply{0, 0x009c27ab, 0x00000004, 0xbc000400};
      break;
    case 0xd:
      if (idx == 0)
        return get_cpuid_reply{0x7, 0x340, 0x340, 0};
      if (idx == 1)
        return get_cpuid_reply{0xf, 0x340, 0, 0};
      break;
    case 0x80000000: return get_cpuid_reply{0x80000008, 0, 0, 0};
    case 0x80000001: return get_cpuid_reply{0, 0, 0x121, 0x2c100800};
    case 0x80000008: return get_cpuid_reply{0x3027, 0, 0, 0};
  }
  return std::nullopt;
}

bool read_registers(vcpu& c, std::span<const uint32_t> msrs, get_registers_reply& fixed,
                    std::vector<kvm_msr_entry>& entries) {
  fixed.mode = 8;
  fixed.regs = c.regs;
  fixed.sregs = c.sregs;
  fixed.msrs.nmsrs = static_cast<uint32_t>(msrs.size());
  for (uint32_t idx : msrs) {
    auto* p = find_msr(c, idx);
    if (!p)
      return false;
    entries.push_back(kvm_msr_entry{idx, 0, *p});
  }
  return true;
}

std::vector<uint8_t> xsave_area(const vcpu& c) {
  std::vector<uint8_t> region(xsave_size, 0);
  uint16_t fcw = 0x37f;
  uint32_t mxcsr = 0x1f80;
  std::memcpy(region.data(), &fcw, 2);
  std::memcpy(region.data() + 24, &mxcsr, 4);
  std::memcpy(region.data() + 512, &c.xcr0, 8); // XSTATE_BV
  return region;
}

void watch_cr(vcpu& c, uint32_t cr, bool enable) {
  if (enable)
    c.cr_watch |= cr_bit(cr);
  else
    c.cr_watch &= static_cast<uint8_t>(~cr_bit(cr));
}

void watch_msr(vcpu& c, uint32_t msr, bool enable) {
  auto it = std::find(c.msr_watch.begin(), c.msr_watch.end(), msr);
  if (enable && it == c.msr_watch.end())
    c.msr_watch.push_back(msr);
  if (!enable && it != c.msr_watch.end())
    c.msr_watch.erase(it);
}

int32_t set_access(vm& v, uint64_t gpa, uint8_t access) {
  if (introspect_touch(v, gpa) == touch::none)
    return kvm_einval;
  if (access == page_access_rwx)
    v.access.erase(gpa >> 12);
  else
    v.access[gpa >> 12] = access;
  return 0;
}

int32_t get_access(vm& v, uint64_t gpa, uint8_t& access) {
  if (introspect_touch(v, gpa) == touch::none)
    return kvm_einval;
  access = access_of(v, gpa);
  return 0;
}

int32_t read_memory(vm& v, uint64_t gpa, uint64_t size, std::vector<uint8_t>& out) {
  if (introspect_touch(v, gpa) == touch::none)
    return kvm_einval;
  out.assign(size, 0);
  auto it = v.memory.find(gpa >> 12);
  if (it != v.memory.end())
    std::memcpy(out.data(), it->second->bytes + (gpa & 4095), size);
  return 0;
}

int32_t write_memory(vm& v, uint64_t gpa, std::span<const uint8_t> data) {
  if (introspect_touch(v, gpa) == touch::none)
    return kvm_einval;
  std::memcpy(page_for_write(v, gpa).bytes + (gpa & 4095), data.data(), data.size());
  for (size_t k = 0; k < data.size(); ++k)
    if (data[k] == 0xcc)
      v.tool_int3.insert(gpa + k);
  return 0;
}

int32_t map_token(vm& v, uint32_t max_tokens, map_mem_token& out) {
  if (v.tokens >= max_tokens)
    return kvm_eagain;
  ++v.tokens;
  for (auto& w : out.token)
    w = v.rng();
  return 0;
}

} // namespace kvmi::sim::detail
