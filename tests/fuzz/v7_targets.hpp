// The v7 dialect's fuzz targets, shared by the libFuzzer binary and the
// replay doctest like fuzz_targets.hpp.
//
// Invariants checked beyond "no crash, no over-read":
//  - decode is exact: whatever decodes re-encodes to the same bytes (a
//    short event reply included);
//  - check() never fails without a named reason on decoded input;
//  - an event reply is never longer than the kernel's struct, and an event
//    never carries CMD_ERROR (12);
//  - the handshake decoders accept only sizes in 32..65536 (24..65536 for
//    the answer) and whole structs, and nothing they accept breaks check()'s
//    size rule.
#pragma once

#include "proto/v7/codec.hpp"
#include "proto/v7/handshake.hpp"
#include "tests/fuzz/fuzz_assert.hpp"
#include "tests/fuzz/fuzz_targets.hpp"
#include "tests/support/kvmi_v7_samples.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace kvmi::fuzz::v7 {

namespace p7 = kvmi::v7;

inline bool same(const std::vector<uint8_t>& a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Input: byte 0 selects byte order (bit 0) and a reply shape; bytes 1-2 a
// count for the variable shapes; the rest is one frame.
inline int decode_one(const uint8_t* data, size_t size) {
  if (size < 3)
    return 0;
  auto order = (data[0] & 1) ? byte_order::swapped : byte_order::native;
  uint16_t count = static_cast<uint16_t>(data[1] | (data[2] << 8));
  std::span<const uint8_t> bytes(data + 3, size - 3);
  std::vector<uint8_t> re;

  auto f = parse_frame(bytes, order, p7::max_payload);
  if (!f) {
    KVMI_FUZZ_ASSERT(!name(f.err().code).empty());
    KVMI_FUZZ_ASSERT(!p7::decode_from_tool(bytes, order).ok());
    return 0;
  }
  KVMI_FUZZ_ASSERT(f->payload.size() == f->hdr.size && f->hdr.size <= p7::max_payload);

  if (auto d = p7::decode_from_tool(*f, order); d.ok()) {
    std::visit([&](const auto& m) { p7::encode(re, m, order); }, *d);
    KVMI_FUZZ_ASSERT(same(re, bytes));
    if (auto* c = std::get_if<p7::command_msg>(&*d)) {
      auto e = p7::check(*c);
      KVMI_FUZZ_ASSERT(e.ok() || !e.reason.empty());
      KVMI_FUZZ_ASSERT(p7::is_supported(p7::id_of(c->body)));
      (void)p7::expected_reply(c->body);
    } else {
      auto& r = std::get<p7::event_reply_msg>(*d);
      KVMI_FUZZ_ASSERT(f->hdr.size <= p7::event_reply_size(static_cast<p7::event_id>(r.common.event)));
      auto e = p7::check(r);
      KVMI_FUZZ_ASSERT(e.ok() || !e.reason.empty());
    }
  }
  if (auto e = p7::decode_event(*f, order); e.ok()) {
    p7::encode(re, *e, order);
    KVMI_FUZZ_ASSERT(same(re, bytes));
    KVMI_FUZZ_ASSERT(e->common.event != p7::kernel_only_cmd_error_event);
    KVMI_FUZZ_ASSERT(p7::event_size(e->kind()) == f->hdr.size);
    (void)p7::check(*e);
  }
  auto try_shape = [&](const p7::reply_shape& s) {
    if (auto r = p7::decode_reply(*f, s, order); r.ok()) {
      p7::encode(re, *r, order);
      KVMI_FUZZ_ASSERT(same(re, bytes));
      (void)p7::check(*r);
    }
  };
  static const std::vector<p7::reply_shape> shapes = [] {
    std::vector<p7::reply_shape> s;
    for (auto& c : p7::testing::sample_commands())
      s.push_back(p7::expected_reply(c.body));
    return s;
  }();
  size_t sel = data[0] >> 1;
  try_shape(shapes[sel < shapes.size() ? sel : 0]);
  for (auto& s : shapes)
    if (static_cast<uint16_t>(s.id) == f->hdr.id)
      try_shape(s);
  try_shape(p7::expected_reply(p7::get_registers_cmd{{count, 0, 0}, {}}));
  try_shape(p7::expected_reply(p7::get_page_access_cmd{{0, count, 0}, {}}));
  try_shape(p7::expected_reply(p7::read_physical{0, count}));
  return 0;
}

// Input: byte 0 picks what the bytes are (bit 0: QEMU's struct or the
// tool's answer; bit 1: the max_gpa or E820 layout); the rest is the bytes,
// whose own struct_size says how much the decoder takes.
inline int handshake_bytes(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  std::span<const uint8_t> in(data + 1, size - 1);
  if (data[0] & 1) {
    auto n = p7::hs::tool_answer_size(in);
    if (!n)
      return 0;
    KVMI_FUZZ_ASSERT(*n >= sizeof(p7::hs::tool_answer) && *n <= p7::hs::max_struct_size);
    if (auto a = p7::hs::decode_tool_answer(in.first(std::min<size_t>(*n, in.size()))); a.ok()) {
      KVMI_FUZZ_ASSERT(in.size() >= *n);
      (void)p7::hs::cookie_matches(*a, in);
    }
    return 0;
  }
  auto l = (data[0] & 2) ? p7::hs::layout::e820 : p7::hs::layout::max_gpa;
  auto n = p7::hs::qemu_hello_size(in);
  if (!n)
    return 0;
  KVMI_FUZZ_ASSERT(*n >= p7::hs::min_struct_size && *n <= p7::hs::max_struct_size);
  auto h = p7::hs::decode_qemu_hello(in.first(std::min<size_t>(*n, in.size())), l);
  if (!h)
    return 0;
  KVMI_FUZZ_ASSERT(in.size() >= *n && h->struct_size == *n);
  KVMI_FUZZ_ASSERT(h->name.size() <= 64);
  KVMI_FUZZ_ASSERT(h->e820.size() * sizeof(p7::hs::e820_entry) <= *n);
  // decode leaves nothing for check()'s size rules to refuse.
  KVMI_FUZZ_ASSERT(p7::hs::check(*h, l).code != errc::bad_size);
  return 0;
}

inline std::vector<std::vector<uint8_t>> decode_seeds() {
  return decode_inputs([](byte_order o) { return p7::testing::sample_frames(o); },
                       std::variant_size_v<p7::command>);
}

inline std::vector<std::vector<uint8_t>> handshake_seeds() {
  std::vector<std::vector<uint8_t>> seeds;
  auto seed = [&](uint8_t head, const std::vector<uint8_t>& body) {
    std::vector<uint8_t> s{head};
    s.insert(s.end(), body.begin(), body.end());
    seeds.push_back(std::move(s));
  };
  p7::hs::qemu_hello h;
  h.name = "seed-vm";
  h.start_time = 1700000000;
  std::vector<uint8_t> b;
  p7::hs::encode(b, h, p7::hs::layout::max_gpa);
  seed(0, b);
  h.max_gpa = 0x13fffffff;
  p7::hs::encode(b, h, p7::hs::layout::max_gpa, 40);
  seed(0, b);
  h.max_gpa.reset();
  h.cpu_type = p7::hs::cpu_type_x86_64;
  h.e820 = {{0, 0x9fc00, 1, 0}, {0x100000, 0x3ff00000, 1, 0}};
  p7::hs::encode(b, h, p7::hs::layout::e820);
  seed(2, b);
  std::vector<uint8_t> cookie{'f', 'u', 'z', 'z'};
  p7::hs::encode(b, p7::hs::make_answer(cookie));
  seed(1, b);
  return seeds;
}

} // namespace kvmi::fuzz::v7
