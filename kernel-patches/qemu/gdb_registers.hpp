// The x86-64 register file as QEMU's gdbstub lays it out (target.xml and
// the features it includes), mapped to KVM's kvm_regs / kvm_sregs and the
// MSRs a KVMI event carries. What the gdbstub has no register for (segment
// bases and limits other than FS/GS, GDTR/IDTR, SYSENTER/STAR/LSTAR/CSTAR/
// PAT) reads as 0.
#pragma once

#include "proto/wire.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kvmi::qemu {

struct gdb_reg {
  unsigned regnum = 0;
  size_t offset = 0; // in the 'g' packet's bytes
  size_t size = 0;   // bytes
};

class register_layout {
public:
  // From the register lists of the XML features, in document order.
  void add_feature(const std::string& xml);
  std::optional<gdb_reg> find(const std::string& name) const;
  size_t g_size() const { return next_offset_; }
  size_t count() const { return by_name_.size(); }

private:
  std::map<std::string, gdb_reg> by_name_;
  unsigned next_regnum_ = 0;
  size_t next_offset_ = 0;
};

// The annexes a target.xml includes (xi:include href="...").
std::vector<std::string> included_features(const std::string& xml);

struct x86_state {
  kvm_regs regs{};
  kvm_sregs sregs{};
  event_msrs msrs{};
};

// Decodes a 'g' reply's bytes.
x86_state decode_registers(const register_layout& l, std::span<const uint8_t> g);
// kvm_regs as (regnum, little-endian bytes) pairs for 'P'.
std::vector<std::pair<unsigned, std::vector<uint8_t>>> encode_regs(const register_layout& l,
                                                                   const kvm_regs& r);
// The value of an MSR the gdbstub exposes (EFER, FS/GS base, KERNEL_GS_BASE).
std::optional<uint64_t> msr_value(const x86_state& s, uint32_t msr);

} // namespace kvmi::qemu
