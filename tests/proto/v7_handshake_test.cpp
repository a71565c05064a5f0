// The v7 QEMU handshake: the struct QEMU sends in its sizes and two layouts,
// the tool's SHA-1 answer, and truncated, oversized and odd input.
#include "proto/v7/handshake.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <string>

using namespace kvmi::v7::hs;
using kvmi::errc;

namespace {

std::vector<uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  char x[3];
  for (auto c : b) {
    std::snprintf(x, sizeof x, "%02x", c);
    s.append(x);
  }
  return s;
}

qemu_hello sample_hello() {
  qemu_hello h;
  for (uint8_t i = 0; i < 16; ++i)
    h.uuid[i] = static_cast<uint8_t>(0xa0 + i);
  h.start_time = 1700000000123;
  h.name = "guest-7";
  return h;
}

void set_size(std::vector<uint8_t>& b, uint32_t size) { std::memcpy(b.data(), &size, 4); }

} // namespace

TEST_CASE("v7 handshake: the 96-byte struct decodes to uuid name and start time") {
  std::vector<uint8_t> b;
  encode(b, sample_hello(), layout::max_gpa);
  REQUIRE(b.size() == 96);
  CHECK(b[0] == 96);
  CHECK(b[4] == 0xa0);
  CHECK(b[32] == 'g');
  CHECK(*qemu_hello_size(b) == 96);
  auto h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->struct_size == 96);
  CHECK(h->uuid == sample_hello().uuid);
  CHECK(h->start_time == 1700000000123);
  CHECK(h->name == "guest-7");
  CHECK_FALSE(h->max_gpa);
  CHECK(check(*h, layout::max_gpa).ok());
}

TEST_CASE("v7 handshake: max_gpa at 96 is read when struct_size covers it") {
  auto in = sample_hello();
  in.max_gpa = 0x47fffffff;
  std::vector<uint8_t> b;
  encode(b, in, layout::max_gpa);
  REQUIRE(b.size() == 104);
  auto h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->max_gpa == 0x47fffffffull);
  // A struct cut inside max_gpa has none.
  b.resize(100);
  set_size(b, 100);
  h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK_FALSE(h->max_gpa);
}

TEST_CASE("v7 handshake: the E820 layout carries cpu_type and 8-aligned entries") {
  auto in = sample_hello();
  in.cpu_type = cpu_type_x86_64;
  in.e820 = {{0, 0x9fc00, 1, 0}, {0x100000, 0x7ff00000, 1, 0}, {0xfffc0000, 0x40000, 2, 0}};
  std::vector<uint8_t> b;
  encode(b, in, layout::e820);
  REQUIRE(b.size() == 104 + 3 * 24);
  CHECK(b[20] == cpu_type_x86_64);
  CHECK(b[96] == 3);
  uint64_t second;
  std::memcpy(&second, b.data() + 104 + 24, 8);
  CHECK(second == 0x100000);
  auto h = decode_qemu_hello(b, layout::e820);
  REQUIRE(h.ok());
  CHECK(h->cpu_type == cpu_type_x86_64);
  REQUIRE(h->e820.size() == 3);
  CHECK(h->e820[2].address == 0xfffc0000);
  CHECK(h->e820[2].type == 2);
  CHECK(check(*h, layout::e820).ok());
  // A count the struct cannot hold.
  auto lying = b;
  lying[96] = 4;
  CHECK(decode_qemu_hello(lying, layout::e820).err().code == errc::bad_size);
  // Padding after the count and after cpu_type is checked; the alignment
  // hole QEMU's compiler leaves is not.
  auto pad = b;
  pad[97] = 1;
  CHECK(decode_qemu_hello(pad, layout::e820).err().code == errc::bad_padding);
  pad = b;
  pad[21] = 1;
  CHECK(decode_qemu_hello(pad, layout::e820).err().code == errc::bad_padding);
  auto hole = b;
  hole[100] = 0xcc;
  CHECK(decode_qemu_hello(hole, layout::e820).ok());
  // The same bytes in the max_gpa layout: cpu_type is padding there.
  CHECK(decode_qemu_hello(b, layout::max_gpa).err().code == errc::bad_padding);
}

TEST_CASE("v7 handshake: struct_size from 32 to 64 KiB is accepted and the rest consumed") {
  std::vector<uint8_t> b;
  encode(b, sample_hello(), layout::max_gpa, 65536 - 96);
  REQUIRE(b.size() == 65536);
  b[5000] = 0x5a; // unknown fields are skipped, whatever they hold
  auto h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->name == "guest-7");
  CHECK(h->max_gpa == 0ull); // the first unknown bytes, zero here
  // 32 bytes: uuid and start time, no name.
  encode(b, sample_hello(), layout::max_gpa);
  b.resize(32);
  set_size(b, 32);
  h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->name.empty());
  CHECK(h->start_time == 1700000000123);
  // A size inside the name keeps what arrived.
  encode(b, sample_hello(), layout::max_gpa);
  b.resize(35);
  set_size(b, 35);
  h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->name == "gue");
}

TEST_CASE("v7 handshake: sizes out of range and byte counts that disagree are refused") {
  std::vector<uint8_t> b;
  encode(b, sample_hello(), layout::max_gpa);
  CHECK(qemu_hello_size(std::span<const uint8_t>(b).first(3)).err().code == errc::truncated);
  for (uint32_t size : {0u, 4u, 31u}) {
    CAPTURE(size);
    set_size(b, size);
    CHECK(qemu_hello_size(b).err().code == errc::bad_size);
  }
  for (uint32_t size : {65537u, 0x7fffffffu, 0xffffffffu}) {
    CAPTURE(size);
    set_size(b, size);
    CHECK(qemu_hello_size(b).err().code == errc::oversize);
    CHECK(decode_qemu_hello(b, layout::max_gpa).err().code == errc::oversize);
  }
  set_size(b, 96);
  CHECK(decode_qemu_hello(std::span<const uint8_t>(b).first(95), layout::max_gpa).err().code
        == errc::truncated);
  b.push_back(0);
  CHECK(decode_qemu_hello(b, layout::max_gpa).err().code == errc::bad_size);
  b.pop_back();
  b[20] = 1; // padding in the max_gpa layout
  CHECK(decode_qemu_hello(b, layout::max_gpa).err().code == errc::bad_padding);
}

TEST_CASE("v7 handshake: a 64-byte name without NUL is taken whole") {
  auto in = sample_hello();
  in.name = std::string(64, 'n');
  std::vector<uint8_t> b;
  encode(b, in, layout::max_gpa);
  auto h = decode_qemu_hello(b, layout::max_gpa);
  REQUIRE(h.ok());
  CHECK(h->name == std::string(64, 'n'));
  CHECK(check(*h, layout::max_gpa).ok());
  in.name = std::string(65, 'n');
  CHECK(check(in, layout::max_gpa).code == errc::bad_value);
  in.name = std::string("a\0b", 3);
  CHECK(check(in, layout::max_gpa).code == errc::bad_value);
}

TEST_CASE("v7 handshake check: layouts cpu types and E820 entries") {
  auto h = sample_hello();
  h.cpu_type = 2;
  CHECK(check(h, layout::e820).code == errc::bad_value);
  CHECK(check(h, layout::max_gpa).code == errc::bad_value);
  h.cpu_type = cpu_type_unknown;
  CHECK(check(h, layout::e820).ok());
  h.e820 = {{0x1000, 0, 1, 0}};
  CHECK(check(h, layout::e820).code == errc::bad_range);
  h.e820 = {{~0ull - 10, 100, 1, 0}};
  CHECK(check(h, layout::e820).code == errc::bad_range);
  h.e820 = {{0x1000, 0x1000, 1, 1}};
  CHECK(check(h, layout::e820).code == errc::bad_padding);
  h = sample_hello();
  h.max_gpa = 1;
  CHECK(check(h, layout::e820).code == errc::bad_value);
  h.struct_size = 31;
  CHECK(check(h, layout::max_gpa).code == errc::bad_size);
}

TEST_CASE("v7 handshake: the tool answers with 24 bytes holding SHA-1 of the cookie") {
  CHECK(hex(cookie_hash(bytes("abc"))) == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(hex(cookie_hash(bytes("secret-cookie"))) == "34b3f9c187d16c656c9afd97469c034331f34e4d");
  auto cookie = bytes("secret-cookie");
  std::vector<uint8_t> b;
  encode(b, make_answer(cookie));
  REQUIRE(b.size() == 24);
  CHECK(b[0] == 24);
  CHECK(hex(std::span<const uint8_t>(b).subspan(4)) == "34b3f9c187d16c656c9afd97469c034331f34e4d");
  auto a = decode_tool_answer(b);
  REQUIRE(a.ok());
  CHECK(cookie_matches(*a, cookie));
  CHECK_FALSE(cookie_matches(*a, bytes("secret-cookiE")));
  // A bigger answer from a newer tool: the hash is read, the rest skipped.
  auto bigger = b;
  bigger.resize(40, 0x77);
  set_size(bigger, 40);
  CHECK(*tool_answer_size(bigger) == 40);
  a = decode_tool_answer(bigger);
  REQUIRE(a.ok());
  CHECK(cookie_matches(*a, cookie));
  // Too small, truncated, oversized, trailing.
  auto small = b;
  set_size(small, 23);
  CHECK(decode_tool_answer(small).err().code == errc::bad_size);
  CHECK(decode_tool_answer(std::span<const uint8_t>(b).first(23)).err().code == errc::truncated);
  CHECK(decode_tool_answer(std::span<const uint8_t>(b).first(2)).err().code == errc::truncated);
  auto huge = b;
  set_size(huge, 65537);
  CHECK(decode_tool_answer(huge).err().code == errc::oversize);
  auto trailing = b;
  trailing.push_back(0);
  CHECK(decode_tool_answer(trailing).err().code == errc::bad_size);
}
