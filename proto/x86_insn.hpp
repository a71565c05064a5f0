// The length of one x86-64 instruction (64-bit code segment), from its
// bytes: legacy prefixes, REX, the one-byte map and the 0F, 0F38 and 0F3A
// maps with ModRM, SIB, displacement and immediate. What a write PF needs
// to move RIP past the faulting instruction (RETRY returns to the guest
// there). VEX, EVEX, 3DNow! and opcodes invalid in 64-bit mode are not
// decoded.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

namespace kvmi {

struct x86_insn {
  uint8_t length = 0;
  bool memory = false;      // a ModRM memory operand, a string op or a stack write
  bool rep_string = false;  // REP MOVS or REP STOS
};

// nullopt: an encoding not decoded here, or `bytes` ends before the
// instruction does.
std::optional<x86_insn> decode_x86_64(std::span<const uint8_t> bytes);

} // namespace kvmi
