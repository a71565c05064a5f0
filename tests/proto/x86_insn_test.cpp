// Instruction lengths as the deny of a write PF needs them: known encodings,
// the prefixes and forms that change the length, and what is refused.
#include "proto/x86_insn.hpp"

#include <doctest/doctest.h>

#include <vector>

using kvmi::decode_x86_64;

namespace {

std::optional<kvmi::x86_insn> insn(std::vector<uint8_t> b) {
  b.resize(b.size() + 4, 0x90); // what follows never counts
  return decode_x86_64(b);
}

} // namespace

TEST_CASE("x86-64 instruction lengths of stores loads branches and immediates") {
  struct known {
    std::vector<uint8_t> bytes;
    uint8_t length;
    bool memory;
  };
  std::vector<known> all = {
    {{0x48, 0x89, 0x07}, 3, true},                               // mov %rax,(%rdi)
    {{0x89, 0x07}, 2, true},                                     // mov %eax,(%rdi)
    {{0x88, 0x04, 0x25, 0, 0, 0, 0}, 7, true},                   // mov %al,0x0 (SIB, no base)
    {{0x48, 0x8b, 0x44, 0x24, 0x08}, 5, true},                   // mov 0x8(%rsp),%rax
    {{0x4c, 0x89, 0x84, 0x24, 0x00, 0x01, 0, 0}, 8, true},       // mov %r8,0x100(%rsp)
    {{0xc7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8}, 10, true},            // movl $imm32,rip-rel
    {{0x66, 0xc7, 0x47, 0x08, 0x34, 0x12}, 6, true},             // movw $0x1234,0x8(%rdi)
    {{0x48, 0xc7, 0x07, 1, 0, 0, 0}, 7, true},                   // movq $1,(%rdi)
    {{0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8}, 10, false},           // movabs $imm64,%rax
    {{0xb8, 1, 2, 3, 4}, 5, false},                              // mov $imm32,%eax
    {{0x66, 0xb8, 1, 2}, 4, false},                              // mov $imm16,%ax
    {{0xa2, 1, 2, 3, 4, 5, 6, 7, 8}, 9, true},                   // movabs %al,moffs64
    {{0x0f, 0x1f, 0x44, 0x00, 0x00}, 5, true},                   // nopl 0x0(%rax,%rax,1)
    {{0xe8, 1, 2, 3, 4}, 5, true},                               // call rel32
    {{0xe9, 1, 2, 3, 4}, 5, false},                              // jmp rel32
    {{0x0f, 0x84, 1, 2, 3, 4}, 6, false},                        // je rel32
    {{0x74, 0x05}, 2, false},                                    // je rel8
    {{0xf6, 0x07, 0x01}, 3, true},                               // testb $1,(%rdi)
    {{0xf7, 0x07, 1, 0, 0, 0}, 6, true},                         // testl $1,(%rdi)
    {{0xf6, 0x17}, 2, true},                                     // notb (%rdi)
    {{0x83, 0x47, 0x10, 0x01}, 4, true},                         // addl $1,0x10(%rdi)
    {{0xf0, 0x48, 0x0f, 0xb1, 0x17}, 5, true},                   // lock cmpxchg %rdx,(%rdi)
    {{0x66, 0x0f, 0x3a, 0x16, 0xc0, 0x01}, 6, false},            // pextrd $1,%xmm0,%eax
    {{0x66, 0x0f, 0x38, 0x00, 0xc1}, 5, false},                  // pshufb %xmm1,%xmm0
    {{0x0f, 0x01, 0xc1}, 3, false},                              // vmcall
    {{0xc3}, 1, false},                                          // ret
    {{0x53}, 1, true},                                           // push %rbx
    {{0xff, 0x14, 0x25, 0, 0, 0, 0}, 7, true},                   // call *0x0
  };
  for (auto& k : all) {
    CAPTURE(k.bytes);
    auto i = insn(k.bytes);
    REQUIRE(i);
    CHECK(i->length == k.length);
    CHECK(i->memory == k.memory);
    CHECK_FALSE(i->rep_string);
  }
}

TEST_CASE("x86-64 rep string stores are marked as such") {
  auto movsb = insn({0xf3, 0xa4});
  REQUIRE(movsb);
  CHECK(movsb->length == 2);
  CHECK(movsb->rep_string);
  auto stosq = insn({0xf3, 0x48, 0xab});
  REQUIRE(stosq);
  CHECK(stosq->length == 3);
  CHECK(stosq->rep_string);
  auto plain = insn({0xa4});
  REQUIRE(plain);
  CHECK_FALSE(plain->rep_string);
  CHECK(plain->memory);
}

TEST_CASE("x86-64 encodings not decoded and truncated bytes give no length") {
  CHECK_FALSE(insn({0xc5, 0xf9, 0x6f, 0xc1}));       // VEX vmovdqa
  CHECK_FALSE(insn({0x62, 0xf1, 0x7c, 0x48, 0x28})); // EVEX
  CHECK_FALSE(insn({0x06}));                         // push %es: invalid in 64-bit mode
  CHECK_FALSE(decode_x86_64(std::vector<uint8_t>{0x48, 0x89}));
  CHECK_FALSE(decode_x86_64(std::vector<uint8_t>{0xc7, 0x05, 1, 2, 3, 4, 5}));
  CHECK_FALSE(decode_x86_64(std::vector<uint8_t>{}));
  std::vector<uint8_t> prefixes(16, 0x66);
  prefixes.push_back(0x90);
  CHECK_FALSE(decode_x86_64(prefixes)); // past 15 bytes
}
