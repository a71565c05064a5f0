// What the kernel's commands do to guest and session state, the same in
// every dialect; each dialect's command set (kernel_v5_commands.hpp,
// kernel_v7_commands.hpp) decodes, calls these and encodes the answer.
// Errors are KVM_E* codes (positive), 0 for success.
#pragma once

#include "kernel-patches/sim/model.hpp"

#include <span>

namespace kvmi::sim::detail {

// The vCPU a vCPU command addresses, or null with the error the kernel
// gives (EINVAL: no such vCPU; EAGAIN: the guest has not started it). A
// running vCPU is kicked out of the guest to serve it, and counted.
vcpu* serving_vcpu(vm& v, uint16_t idx, int32_t& kvm_e);

// The CPUID leaves the simulated CPU answers; nullopt: ENOENT.
std::optional<get_cpuid_reply> cpuid(uint32_t function, uint32_t index);

// The registers and the asked MSRs; false if an MSR is unknown (EINVAL).
bool read_registers(vcpu& c, std::span<const uint32_t> msrs, get_registers_reply& fixed,
                    std::vector<kvm_msr_entry>& entries);

// The 4 KiB XSAVE area of the vCPU.
std::vector<uint8_t> xsave_area(const vcpu& c);

void watch_cr(vcpu& c, uint32_t cr, bool enable);
void watch_msr(vcpu& c, uint32_t msr, bool enable);

// Page access by gpa: EINVAL outside guest memory.
int32_t set_access(vm& v, uint64_t gpa, uint8_t access);
int32_t get_access(vm& v, uint64_t gpa, uint8_t& access);

// One page at most (the decoders enforce it); EINVAL outside guest memory.
int32_t read_memory(vm& v, uint64_t gpa, uint64_t size, std::vector<uint8_t>& out);
int32_t write_memory(vm& v, uint64_t gpa, std::span<const uint8_t> data);

// A fresh map token, or EAGAIN beyond the host's limit.
int32_t map_token(vm& v, uint32_t max_tokens, map_mem_token& out);

} // namespace kvmi::sim::detail
