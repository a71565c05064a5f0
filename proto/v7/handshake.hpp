// The QEMU handshake of the KVMI v7 stack (docs/protocol.md, "v7
// handshake"): QEMU sends a struct that starts with its own size, the tool
// answers with the SHA-1 of the shared cookie. Pure functions: the caller
// reads the first 4 bytes, asks qemu_hello_size() how many bytes the whole
// struct takes, reads them and decodes.
#pragma once

#include "proto/codec.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kvmi::v7::hs {

using kvmi::error;
using kvmi::errc;
using kvmi::result;

// QEMU -> tool, the fixed head every QEMU sends (96 bytes). In the E820
// variant the padding word is {u8 cpu_type; u8 padding[3]}.
struct qemu_head {
  uint32_t struct_size;
  uint8_t uuid[16];
  uint32_t padding; // E820 variant: cpu_type in its first byte
  int64_t start_time;
  char name[64];
};
// The E820 variant's x86 part at offset 96; its entries are 8-aligned, so
// they start at 104, not right after the count.
struct e820_head {
  uint8_t count;
  uint8_t padding[3];
  uint8_t alignment[4]; // no field in QEMU's struct: not checked
};
struct e820_entry {
  uint64_t address;
  uint64_t length;
  uint32_t type;
  uint32_t padding;
};
// tool -> QEMU.
struct tool_answer {
  uint32_t struct_size;
  uint8_t cookie_hash[20];
};

static_assert(sizeof(qemu_head) == 96 && offsetof(qemu_head, uuid) == 4
              && offsetof(qemu_head, padding) == 20 && offsetof(qemu_head, start_time) == 24
              && offsetof(qemu_head, name) == 32);
static_assert(sizeof(e820_head) == 8 && sizeof(e820_entry) == 24
              && offsetof(e820_entry, type) == 16);
static_assert(sizeof(tool_answer) == 24 && offsetof(tool_answer, cookie_hash) == 4);

inline constexpr uint32_t min_struct_size = offsetof(qemu_head, name); // 32
inline constexpr uint32_t max_struct_size = 64 * 1024;
inline constexpr uint32_t max_gpa_offset = sizeof(qemu_head);         // 96
inline constexpr uint32_t e820_offset = sizeof(qemu_head);            // 96
inline constexpr uint32_t e820_entries_offset = e820_offset + sizeof(e820_head); // 104

inline constexpr uint8_t cpu_type_i386 = 0;
inline constexpr uint8_t cpu_type_x86_64 = 1;
inline constexpr uint8_t cpu_type_unknown = 255;

// What QEMU appends at 96: the two variants cannot be told apart from the
// bytes (a 104-byte struct fits both), so the host's configuration says.
enum class layout : uint8_t { max_gpa, e820 };

// What the tool learns from QEMU.
struct qemu_hello {
  uint32_t struct_size = sizeof(qemu_head);
  std::array<uint8_t, 16> uuid{};
  int64_t start_time = 0;
  std::string name;                 // up to the first NUL, at most 64 bytes
  std::optional<uint64_t> max_gpa;  // layout::max_gpa, struct_size >= 104
  std::optional<uint8_t> cpu_type;  // layout::e820
  std::vector<e820_entry> e820;     // layout::e820, struct_size >= 104
};

// The whole struct's size from its first 4 bytes (fewer: truncated), in
// 32..65536.
result<uint32_t> qemu_hello_size(std::span<const uint8_t> first);

// Decodes exactly struct_size bytes. Fields the size does not cover are
// absent (a short struct may cut the name); bytes past the known fields are
// skipped.
result<qemu_hello> decode_qemu_hello(std::span<const uint8_t> bytes, layout l);

// The rules a well-formed hello follows beyond its layout.
error check(const qemu_hello& h, layout l);

// QEMU's side: struct_size from what is set (96, 104, or 104 + 24 n), plus
// `extra` unknown trailing bytes, zero.
void encode(std::vector<uint8_t>& out, const qemu_hello& h, layout l, uint32_t extra = 0);

// SHA-1 of the cookie, as QEMU compares it.
std::array<uint8_t, 20> cookie_hash(std::span<const uint8_t> cookie);

// The tool's 24-byte answer.
tool_answer make_answer(std::span<const uint8_t> cookie);
void encode(std::vector<uint8_t>& out, const tool_answer& a);

// QEMU's side: the answer's struct_size (24..65536) first; bytes must hold
// exactly that many, anything past the hash is skipped.
result<uint32_t> tool_answer_size(std::span<const uint8_t> first);
result<tool_answer> decode_tool_answer(std::span<const uint8_t> bytes);
// Constant time.
bool cookie_matches(const tool_answer& a, std::span<const uint8_t> cookie);

} // namespace kvmi::v7::hs
