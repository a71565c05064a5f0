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

namespace {

// Registers after a store, each holding a distinct value.
kvmi::x86_after after_store() {
  kvmi::x86_after a;
  for (int r = 0; r < 16; ++r)
    a.gpr[r] = 0x10000 * uint64_t(r + 1);
  a.rip = 0xffffffff81000000ull;
  a.fs_base = 0x7f0000000000ull;
  a.gs_base = 0xffff888000000000ull;
  return a;
}

uint64_t written(std::vector<uint8_t> b, const kvmi::x86_after& a) {
  auto i = insn(std::move(b));
  REQUIRE(i);
  auto at = kvmi::written_address(*i, a);
  REQUIRE(at);
  return *at;
}

} // namespace

TEST_CASE("x86-64 stores name the address and size they wrote from the registers after them") {
  auto a = after_store();
  const uint64_t rax = a.gpr[0], rsp = a.gpr[4], rdi = a.gpr[7], r12 = a.gpr[12], r13 = a.gpr[13];
  CHECK(written({0x48, 0x89, 0x07}, a) == rdi);                               // mov %rax,(%rdi)
  CHECK(written({0x88, 0x47, 0x10}, a) == rdi + 0x10);                        // mov %al,0x10(%rdi)
  CHECK(written({0x89, 0x87, 0xf0, 0xff, 0xff, 0xff}, a) == rdi - 0x10);      // mov %eax,-0x10(%rdi)
  CHECK(written({0x4c, 0x89, 0x84, 0x24, 0x00, 0x01, 0, 0}, a) == rsp + 0x100); // mov %r8,0x100(%rsp)
  CHECK(written({0x43, 0x89, 0x44, 0xac, 0xf8}, a) == r12 + r13 * 4 - 8); // mov %eax,-8(%r12,%r13,4)
  CHECK(written({0x89, 0x04, 0x24}, a) == rsp);                               // mov %eax,(%rsp): no index
  CHECK(written({0x42, 0x89, 0x04, 0x20}, a) == rax + r12);               // mov %eax,(%rax,%r12): R12 is one
  CHECK(written({0xc7, 0x05, 0x10, 0, 0, 0, 1, 0, 0, 0}, a) == a.rip + 0x10); // movl $1,0x10(%rip)
  CHECK(written({0x65, 0x48, 0x89, 0x04, 0x25, 0x20, 0, 0, 0}, a) == a.gs_base + 0x20); // %gs:0x20
  CHECK(written({0x64, 0x89, 0x07}, a) == a.fs_base + rdi);                   // mov %eax,%fs:(%rdi)
  CHECK(written({0x65, 0x3e, 0x89, 0x07}, a) == rdi); // a DS after GS takes the override away
  CHECK(written({0xa2, 8, 7, 6, 5, 4, 3, 2, 1}, a) == 0x0102030405060708ull); // movabs %al,moffs64
  CHECK(written({0x53}, a) == rsp);                                           // push %rbx
  CHECK(written({0xe8, 1, 2, 3, 4}, a) == rsp);                               // call rel32
  CHECK(written({0xff, 0x10}, a) == rsp); // call *(%rax) writes the stack, not (%rax)
  CHECK(written({0x8f, 0x44, 0x24, 0x08}, a) == rsp + 8); // pop 8(%rsp): RSP after the pop
  CHECK(written({0x67, 0x89, 0x07}, [&] { auto b = a; b.gpr[7] = 0x100001000ull; return b; }())
        == 0x1000); // 32-bit addressing wraps

  // A string store has moved RDI past the element it wrote, down when DF is set.
  CHECK(written({0xf3, 0xaa}, a) == rdi - 1);
  CHECK(written({0xf3, 0x48, 0xab}, a) == rdi - 8);
  CHECK(written({0xab}, a) == rdi - 4);
  CHECK(written({0x66, 0xa5}, a) == rdi - 2);
  auto down = a;
  down.df = true;
  CHECK(written({0xf3, 0x48, 0xab}, down) == rdi + 8);

  struct sized {
    std::vector<uint8_t> bytes;
    uint16_t size;
  };
  std::vector<sized> sizes = {
    {{0x48, 0x89, 0x07}, 8},             // mov %rax,(%rdi)
    {{0x89, 0x07}, 4},                   // mov %eax,(%rdi)
    {{0x66, 0x89, 0x07}, 2},             // mov %ax,(%rdi)
    {{0x88, 0x07}, 1},                   // mov %al,(%rdi)
    {{0xc6, 0x07, 0x00}, 1},             // movb $0,(%rdi)
    {{0x00, 0x07}, 1},                   // add %al,(%rdi)
    {{0x48, 0x01, 0x07}, 8},             // add %rax,(%rdi)
    {{0xfe, 0x07}, 1},                   // incb (%rdi)
    {{0x0f, 0x94, 0x07}, 1},             // sete (%rdi)
    {{0xf0, 0x0f, 0xb0, 0x17}, 1},       // lock cmpxchg %dl,(%rdi)
    {{0xf0, 0x48, 0x0f, 0xc7, 0x0f}, 16}, // lock cmpxchg16b (%rdi)
    {{0x0f, 0xc7, 0x0f}, 8},             // cmpxchg8b (%rdi)
    {{0x0f, 0x11, 0x07}, 16},            // movups %xmm0,(%rdi)
    {{0x0f, 0xae, 0x27}, 0},             // xsave (%rdi): an area, not worked out
    {{0xf3, 0x48, 0xab}, 8},             // rep stos %rax: one element
    {{0x53}, 8},                         // push %rbx
  };
  for (auto& s : sizes) {
    CAPTURE(s.bytes);
    auto i = insn(s.bytes);
    REQUIRE(i);
    CHECK(i->operand.size == s.size);
  }

  // No write worked out: none named.
  for (auto b : std::vector<std::vector<uint8_t>>{{0xe9, 1, 2, 3, 4}, {0xc3}, {0x48, 0x89, 0xc7},
                                                  {0xc8, 0x10, 0, 0}}) {
    CAPTURE(b);
    auto i = insn(b);
    REQUIRE(i);
    CHECK_FALSE(kvmi::written_address(*i, a));
  }
}
