#include "proto/x86_insn.hpp"

namespace kvmi {

namespace {

constexpr size_t max_length = 15; // the architectural limit

enum imm : uint8_t { none, b1, b2, b3, b4, z, v, moffs, group3 }; // b4: rel32, 32 bits in 64-bit mode

struct one_byte {
  bool modrm;
  imm immediate;
  bool invalid = false;
};

// The one-byte map in 64-bit mode (prefixes and REX are taken off first).
one_byte one_byte_map(uint8_t op) {
  if (op < 0x40) {
    switch (op & 7) {
      case 0: case 1: case 2: case 3: return {true, none};
      case 4: return {false, b1};
      case 5: return {false, z};
      default: return {false, none, true}; // push/pop seg, daa, das, aaa, aas
    }
  }
  if (op >= 0x50 && op <= 0x5f) return {false, none};
  if (op >= 0x70 && op <= 0x7f) return {false, b1};
  if (op >= 0x84 && op <= 0x8f) return {true, none};
  if (op >= 0x90 && op <= 0x9f) return {false, none, op == 0x9a};
  if (op >= 0xa0 && op <= 0xa3) return {false, moffs};
  if (op >= 0xb0 && op <= 0xb7) return {false, b1};
  if (op >= 0xb8 && op <= 0xbf) return {false, v};
  if (op >= 0xd8 && op <= 0xdf) return {true, none}; // x87
  switch (op) {
    case 0x63: return {true, none};
    case 0x68: return {false, z};
    case 0x69: return {true, z};
    case 0x6a: return {false, b1};
    case 0x6b: return {true, b1};
    case 0x6c: case 0x6d: case 0x6e: case 0x6f: return {false, none};
    case 0x80: case 0x83: return {true, b1};
    case 0x81: return {true, z};
    case 0xa4: case 0xa5: case 0xa6: case 0xa7: return {false, none};
    case 0xa8: return {false, b1};
    case 0xa9: return {false, z};
    case 0xaa: case 0xab: case 0xac: case 0xad: case 0xae: case 0xaf: return {false, none};
    case 0xc0: case 0xc1: return {true, b1};
    case 0xc2: case 0xca: return {false, b2};
    case 0xc3: case 0xc9: case 0xcb: case 0xcc: case 0xcf: return {false, none};
    case 0xc6: return {true, b1};
    case 0xc7: return {true, z};
    case 0xc8: return {false, b3};
    case 0xcd: return {false, b1};
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: return {true, none};
    case 0xd7: return {false, none};
    case 0xe0: case 0xe1: case 0xe2: case 0xe3: return {false, b1};
    case 0xe4: case 0xe5: case 0xe6: case 0xe7: return {false, b1};
    case 0xe8: case 0xe9: return {false, b4};
    case 0xeb: return {false, b1};
    case 0xec: case 0xed: case 0xee: case 0xef: return {false, none};
    case 0xf1: case 0xf4: case 0xf5: return {false, none};
    case 0xf6: case 0xf7: return {true, group3};
    case 0xf8: case 0xf9: case 0xfa: case 0xfb: case 0xfc: case 0xfd: return {false, none};
    case 0xfe: case 0xff: return {true, none};
    default: return {false, none, true}; // 60-62, 82, c4, c5, d4-d6, ea, ...
  }
}

// The 0F map: whether a ModRM follows, the immediate, or invalid here.
one_byte two_byte_map(uint8_t op) {
  if (op >= 0x80 && op <= 0x8f) return {false, b4}; // Jcc rel32
  if (op >= 0xc8 && op <= 0xcf) return {false, none}; // bswap
  if (op >= 0x30 && op <= 0x37) return {false, none, op == 0x36}; // wrmsr ... getsec
  switch (op) {
    case 0x05: case 0x06: case 0x07: case 0x08: case 0x09: case 0x0b: case 0x0e:
    case 0x77: case 0xa0: case 0xa1: case 0xa2: case 0xa8: case 0xa9: case 0xaa:
      return {false, none};
    case 0x70: case 0x71: case 0x72: case 0x73: case 0xa4: case 0xac: case 0xba:
    case 0xc2: case 0xc4: case 0xc5: case 0xc6:
      return {true, b1};
    case 0x04: case 0x0a: case 0x0c: case 0x0f: case 0x39: case 0x3b: case 0x3c:
    case 0x3d: case 0x3e: case 0x3f:
      return {false, none, true};
    default: return {true, none};
  }
}

// Bytes a one-byte-map instruction writes through its ModRM operand.
uint16_t one_byte_write_size(uint8_t op, uint16_t operand_size) {
  if (op < 0x40)
    return (op & 1) ? operand_size : 1;
  if (op >= 0xd8 && op <= 0xdf)
    return 0; // x87: up to 108 bytes (FSAVE)
  switch (op) {
    case 0x80: case 0x82: case 0x84: case 0x86: case 0x88: case 0x8a: case 0xc0: case 0xc6:
    case 0xd0: case 0xd2: case 0xf6: case 0xfe:
      return 1;
    case 0x8c: // MOV r/m16, Sreg
      return 2;
    case 0x8f: // POP r/m
      return operand_size == 2 ? 2 : 8;
    default:
      return operand_size;
  }
}

// Bytes a 0F-map instruction writes through its ModRM operand (`op2` the
// second opcode byte; 0F38 and 0F3A as the most any of theirs writes).
uint16_t two_byte_write_size(uint8_t op2, uint8_t reg, uint16_t operand_size) {
  if (op2 >= 0x90 && op2 <= 0x9f)
    return 1; // SETcc
  if ((op2 >= 0x10 && op2 <= 0x17) || (op2 >= 0x28 && op2 <= 0x2b) || (op2 >= 0x6e && op2 <= 0x7f)
      || op2 == 0xd6 || op2 == 0xe7 || op2 == 0x38 || op2 == 0x3a)
    return 16; // SSE stores, at most an XMM register
  switch (op2) {
    case 0x00: return 2;  // SLDT, STR
    case 0x01: return 10; // SGDT, SIDT: limit and base
    case 0xae: return 0;  // FXSAVE, XSAVE and kin: an area
    case 0xb0: case 0xc0: return 1; // CMPXCHG, XADD on bytes
    case 0xc7: return reg == 1 && operand_size == 8 ? 16 : 8; // CMPXCHG16B, CMPXCHG8B, VMPTRST
    default: return operand_size;
  }
}

} // namespace

std::optional<x86_insn> decode_x86_64(std::span<const uint8_t> bytes) {
  size_t at = 0;
  auto more = [&](size_t n) { return at + n <= bytes.size() && at + n <= max_length; };
  bool opsize = false, adsize = false, rep = false;
  uint8_t segment = 0;
  for (;; ++at) {
    if (!more(1))
      return std::nullopt;
    uint8_t b = bytes[at];
    if (b == 0x66)
      opsize = true;
    else if (b == 0x67)
      adsize = true;
    else if (b == 0xf2 || b == 0xf3)
      rep = true;
    else if (b == 0x64 || b == 0x65)
      segment = b;
    else if (b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e)
      segment = 0; // ignored in 64-bit mode, and they cancel an FS or GS before them
    else if (b != 0xf0)
      break;
  }
  uint8_t rex = 0;
  if ((bytes[at] & 0xf0) == 0x40) { // REX: the last prefix before the opcode
    rex = bytes[at];
    ++at;
    if (!more(1))
      return std::nullopt;
  }
  bool rex_w = rex & 8;
  uint16_t operand_size = rex_w ? 8 : opsize ? 2 : 4;
  uint16_t stack_size = opsize ? 2 : 8;
  x86_insn out;
  auto& mem = out.operand;
  mem.segment = segment;
  uint8_t op = bytes[at++], op2 = 0;
  one_byte e;
  bool two_byte = op == 0x0f;
  if (two_byte) {
    if (!more(1))
      return std::nullopt;
    op2 = bytes[at++];
    if (op2 == 0x38 || op2 == 0x3a) {
      if (!more(1))
        return std::nullopt;
      ++at; // the third opcode byte
      e = {true, op2 == 0x3a ? b1 : none};
    } else {
      e = two_byte_map(op2);
    }
  } else {
    e = one_byte_map(op);
    out.rep_string = rep && (op == 0xa4 || op == 0xa5 || op == 0xaa || op == 0xab);
    out.memory = (op >= 0xa4 && op <= 0xa7) || (op >= 0xaa && op <= 0xaf)
                 || (op >= 0x6c && op <= 0x6f) || (op >= 0x50 && op <= 0x57) || op == 0x68
                 || op == 0x6a || op == 0x9c || op == 0xc8 || op == 0xe8;
    if (op == 0xa4 || op == 0xaa || op == 0x6c)
      mem = {.kind = x86_operand::string, .size = 1};
    else if (op == 0xa5 || op == 0xab)
      mem = {.kind = x86_operand::string, .size = operand_size};
    else if (op == 0x6d)
      mem = {.kind = x86_operand::string, .size = uint16_t(opsize ? 2 : 4)};
    else if ((op >= 0x50 && op <= 0x57) || op == 0x68 || op == 0x6a || op == 0x9c || op == 0xe8)
      mem = {.kind = x86_operand::stack, .size = op == 0xe8 ? uint16_t(8) : stack_size};
  }
  if (e.invalid)
    return std::nullopt;
  uint8_t reg = 0;
  if (e.modrm) {
    if (!more(1))
      return std::nullopt;
    uint8_t modrm = bytes[at++];
    uint8_t mod = modrm >> 6, rm = modrm & 7;
    reg = (modrm >> 3) & 7;
    if (mod != 3) {
      out.memory = true;
      mem.kind = x86_operand::modrm;
      size_t disp = mod == 1 ? 1 : mod == 2 ? 4 : 0;
      if (rm == 4) { // SIB
        if (!more(1))
          return std::nullopt;
        uint8_t sib = bytes[at++];
        mem.scale = uint8_t(1u << (sib >> 6));
        int8_t index = int8_t(((sib >> 3) & 7) | ((rex & 2) << 2));
        mem.index = index == 4 ? -1 : index; // RSP is no index; R12 is
        if (mod == 0 && (sib & 7) == 5)
          disp = 4; // no base
        else
          mem.base = int8_t((sib & 7) | ((rex & 1) << 3));
      } else if (mod == 0 && rm == 5) {
        disp = 4;
        mem.rip_relative = true;
      } else {
        mem.base = int8_t(rm | ((rex & 1) << 3));
      }
      if (!more(disp))
        return std::nullopt;
      if (disp == 1)
        mem.disp = int8_t(bytes[at]);
      else if (disp == 4)
        mem.disp = int32_t(uint32_t(bytes[at]) | uint32_t(bytes[at + 1]) << 8
                           | uint32_t(bytes[at + 2]) << 16 | uint32_t(bytes[at + 3]) << 24);
      at += disp;
      mem.size = two_byte ? two_byte_write_size(op2, reg, operand_size)
                          : one_byte_write_size(op, operand_size);
    }
    if (!two_byte && op == 0xff && (reg == 2 || reg == 6)) {
      out.memory = true; // call/push through r/m write the stack
      mem = {.kind = x86_operand::stack, .size = reg == 2 ? uint16_t(8) : stack_size};
    }
  }
  size_t n = 0;
  switch (e.immediate) {
    case none: break;
    case b1: n = 1; break;
    case b2: n = 2; break;
    case b3: n = 3; break;
    case b4: n = 4; break;
    case z: n = opsize ? 2 : 4; break;
    case v: n = rex_w ? 8 : opsize ? 2 : 4; break;
    case moffs: n = adsize ? 4 : 8; out.memory = true; break;
    case group3: n = reg > 1 ? 0 : op == 0xf6 ? 1 : opsize ? 2 : 4; break; // test takes one
  }
  if (!more(n))
    return std::nullopt;
  if (e.immediate == moffs) {
    uint64_t a = 0;
    for (size_t k = 0; k < n; ++k)
      a |= uint64_t(bytes[at + k]) << (8 * k);
    mem = {.kind = x86_operand::absolute,
           .segment = segment,
           .disp = int64_t(a),
           .size = op == 0xa0 || op == 0xa2 ? uint16_t(1) : operand_size};
  }
  if (op == 0xc8)
    mem.kind = x86_operand::none; // ENTER: its writes depend on its nesting level
  mem.addr32 = adsize;
  at += n;
  out.length = uint8_t(at);
  return out;
}

std::optional<uint64_t> written_address(const x86_insn& i, const x86_after& after) {
  const auto& m = i.operand;
  uint64_t a = 0;
  switch (m.kind) {
    case x86_operand::none:
      return std::nullopt;
    case x86_operand::modrm:
      a = m.rip_relative ? after.rip : m.base >= 0 ? after.gpr[m.base] : 0;
      if (m.index >= 0)
        a += after.gpr[m.index] * m.scale;
      a += uint64_t(m.disp);
      break;
    case x86_operand::string: // RDI has moved past the element written
      a = after.df ? after.gpr[7] + m.size : after.gpr[7] - m.size;
      break;
    case x86_operand::stack:
      a = after.gpr[4];
      break;
    case x86_operand::absolute:
      a = uint64_t(m.disp);
      break;
  }
  if (m.addr32)
    a = uint32_t(a);
  if (m.segment == 0x64)
    a += after.fs_base;
  else if (m.segment == 0x65)
    a += after.gs_base;
  return a;
}

} // namespace kvmi
