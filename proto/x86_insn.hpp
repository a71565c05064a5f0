// The length of one x86-64 instruction (64-bit code segment), from its
// bytes: legacy prefixes, REX, the one-byte map and the 0F, 0F38 and 0F3A
// maps with ModRM, SIB, displacement and immediate. What a write PF needs
// to move RIP past the faulting instruction (RETRY returns to the guest
// there), and, where the guest stops after the write (a gdbstub
// watchpoint), where the write went. VEX, EVEX, 3DNow! and opcodes invalid
// in 64-bit mode are not decoded.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

namespace kvmi {

// The memory operand, as the bytes name it. Registers are numbered as in
// ModRM with REX: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi,
// 8-15 r8-r15.
struct x86_operand {
  enum kind_t : uint8_t {
    none,     // no memory operand, or one not worked out here (enter)
    modrm,    // base + index * scale + disp, or RIP-relative
    string,   // at RDI: STOS, MOVS, INS
    stack,    // pushed: PUSH, PUSHF, CALL
    absolute, // MOV to or from moffs64
  } kind = none;
  int8_t base = -1;  // -1: none
  int8_t index = -1; // -1: none
  uint8_t scale = 1;
  bool rip_relative = false;
  uint8_t segment = 0; // 0x64 (FS) or 0x65 (GS) when overridden, else 0
  int64_t disp = 0;    // the address itself for absolute
  // Bytes the instruction writes there when it writes (a string op: one
  // element); 0 when not worked out (FXSAVE, XSAVE and the like).
  uint16_t size = 0;
  bool addr32 = false; // a 0x67 prefix: 32-bit addresses
};

struct x86_insn {
  uint8_t length = 0;
  bool memory = false;      // a ModRM memory operand, a string op or a stack write
  bool rep_string = false;  // REP MOVS or REP STOS
  x86_operand operand;
};

// nullopt: an encoding not decoded here, or `bytes` ends before the
// instruction does.
std::optional<x86_insn> decode_x86_64(std::span<const uint8_t> bytes);

// The registers just after an instruction ran, as a watchpoint that stops
// after the write leaves them.
struct x86_after {
  uint64_t gpr[16] = {}; // numbered as in x86_operand
  uint64_t rip = 0;      // past the instruction
  bool df = false;       // RFLAGS.DF: string ops walk down
  uint64_t fs_base = 0, gs_base = 0;
};

// The linear address `i` wrote to, worked out from the registers after it
// ran. nullopt without a memory operand worked out here. Wrong when the
// instruction changed its own address registers (XCHG or CMPXCHG through
// RAX with RAX as base): a caller checks the result against what it knows.
std::optional<uint64_t> written_address(const x86_insn& i, const x86_after& after);

} // namespace kvmi
