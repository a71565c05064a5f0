// The fuzz targets' logic, shared by the libFuzzer binaries (clang,
// -fsanitize=fuzzer,address,undefined) and the doctest that replays seeds
// and seeded random inputs through them under the normal build.
//
// Invariants checked beyond "no crash, no over-read":
//  - decode is exact: whatever decodes re-encodes to the same bytes;
//  - check() and name() never fail on decoded input;
//  - the splitter only hands out whole frames within max_payload, accounts
//    for every byte it was fed, and fails only with oversize;
//  - neither handshake side completes on bytes that carry no valid MAC.
#pragma once

#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "tests/fuzz/fuzz_assert.hpp"
#include "tests/support/kvmi_samples.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>


namespace kvmi::fuzz {

// Reply shapes to decode against: one per command, plus variable-count ones
// whose counts come from the input itself.
inline const std::vector<reply_shape>& fixed_shapes() {
  static const std::vector<reply_shape> shapes = [] {
    std::vector<reply_shape> s;
    for (auto& c : testing::sample_commands())
      s.push_back(expected_reply(c));
    return s;
  }();
  return shapes;
}

// Input: byte 0 selects byte order (bit 0) and shape; bytes 1-2 give a count
// for the variable shapes; the rest is one frame.
inline int decode_one(const uint8_t* data, size_t size) {
  if (size < 3)
    return 0;
  auto order = (data[0] & 1) ? byte_order::swapped : byte_order::native;
  uint16_t count = static_cast<uint16_t>(data[1] | (data[2] << 8));
  std::span<const uint8_t> bytes(data + 3, size - 3);
  std::vector<uint8_t> re;

  auto f = parse_frame(bytes, order);
  if (!f) {
    KVMI_FUZZ_ASSERT(!name(f.err().code).empty());
    // A frame with a bad header never decodes from raw bytes either.
    KVMI_FUZZ_ASSERT(!decode_from_tool(bytes, order).ok());
    return 0;
  }
  KVMI_FUZZ_ASSERT(f->payload.size() == f->hdr.size);

  if (auto d = decode_from_tool(*f, order); d.ok()) {
    std::visit([&](const auto& m) { encode(re, m, order); }, *d);
    KVMI_FUZZ_ASSERT(re.size() == bytes.size() && std::equal(re.begin(), re.end(), bytes.begin()));
    if (auto* c = std::get_if<command_msg>(&*d)) {
      auto e = check(c->body);
      KVMI_FUZZ_ASSERT(e.ok() || !name(e.code).empty());
      KVMI_FUZZ_ASSERT(!name(id_of(c->body)).empty());
      (void)vcpu_of(c->body);
      (void)expected_reply(c->body);
    } else {
      (void)check(std::get<event_reply_msg>(*d));
    }
  }
  if (auto e = decode_event(*f, order); e.ok()) {
    encode(re, *e, order);
    KVMI_FUZZ_ASSERT(re.size() == bytes.size() && std::equal(re.begin(), re.end(), bytes.begin()));
    (void)check(*e);
    KVMI_FUZZ_ASSERT(event_size(e->kind()) == f->hdr.size);
  }
  auto try_shape = [&](const reply_shape& s) {
    if (auto r = decode_reply(*f, s, order); r.ok()) {
      encode(re, *r, order);
      KVMI_FUZZ_ASSERT(re.size() == bytes.size()
                       && std::equal(re.begin(), re.end(), bytes.begin()));
      (void)check(*r);
      KVMI_FUZZ_ASSERT(!kvm_error_name(r->err).empty());
    }
  };
  const auto& shapes = fixed_shapes();
  size_t sel = data[0] >> 1;
  try_shape(shapes[sel < shapes.size() ? sel : 0]);
  for (auto& s : shapes)
    if (static_cast<uint16_t>(s.id) == f->hdr.id)
      try_shape(s);
  // Counts from the input for the shapes that depend on the command.
  get_registers_cmd gr{{0, count, {}}, {}};
  try_shape(expected_reply(gr));
  get_page_access_cmd pa{{0, count, 0, 0}, {}};
  try_shape(expected_reply(pa));
  try_shape(expected_reply(read_physical{0, count}));
  return 0;
}

// Input: byte 0 = byte order and a chunking seed; the rest is a stream,
// fed in chunks whose sizes come from a generator seeded by byte 0.
inline int split_stream(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  auto order = (data[0] & 1) ? byte_order::swapped : byte_order::native;
  uint32_t state = data[0] * 2654435761u + 1;
  std::span<const uint8_t> bytes(data + 1, size - 1);
  frame_splitter sp(order);
  size_t at = 0, out = 0;
  error err;
  while (at < bytes.size()) {
    state = state * 1103515245u + 12345u;
    size_t n = std::min<size_t>(bytes.size() - at, 1 + (state >> 16) % 5000);
    err = sp.feed(bytes.subspan(at, n), [&](const frame& f) {
      KVMI_FUZZ_ASSERT(f.payload.size() == f.hdr.size);
      KVMI_FUZZ_ASSERT(f.hdr.size <= max_payload);
      out += sizeof(msg_hdr) + f.payload.size();
    });
    at += n;
    if (err)
      break;
  }
  if (err) {
    KVMI_FUZZ_ASSERT(err.code == errc::oversize);
    KVMI_FUZZ_ASSERT(out <= at);
  } else {
    KVMI_FUZZ_ASSERT(out + sp.buffered() == bytes.size());
    KVMI_FUZZ_ASSERT(sp.buffered() < max_frame);
  }
  return 0;
}

// Input: byte 0 picks the side and mode (bits 0-1: tool/kvmi, tool/qemu-v5,
// dm/kvmi, dm/qemu-v5) and the chunk size; the rest is what the peer sent.
// Without the cookie no input can carry a valid MAC, so neither side may
// reach done in kvmi mode (qemu-v5 authenticates nothing on the tool side,
// and its cookie hash is a replayable constant by design).
inline int handshake_bytes(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  unsigned mode = data[0] & 3;
  bool qemu = mode & 1;
  size_t chunk = 1 + (data[0] >> 2);
  std::vector<uint8_t> cookie{'f', 'u', 'z', 'z'};
  hs::nonce own{};
  own[0] = data[0];
  own[1] = 0x5a;
  std::span<const uint8_t> in(data + 1, size - 1);
  auto drive = [&](auto& side) {
    while (!in.empty() && side.state() == hs::status::in_progress) {
      auto piece = in.first(std::min(chunk, in.size()));
      auto before = piece.size();
      side.feed(piece);
      KVMI_FUZZ_ASSERT(piece.size() <= before);
      in = in.subspan(before - piece.size());
      if (!piece.empty())
        break; // done or failed with bytes left over
    }
  };
  if (mode < 2) {
    hs::tool_side t(cookie, qemu ? hs::mode::qemu_v5 : hs::mode::kvmi, own);
    drive(t);
    if (!qemu)
      KVMI_FUZZ_ASSERT(t.state() != hs::status::done);
    if (t.state() == hs::status::done)
      KVMI_FUZZ_ASSERT(t.info().name.size() <= 64);
  } else {
    hs::guest_info info;
    info.name = "fuzz";
    info.regions = {{0, 0x1000, 0, 0, 0}};
    hs::dm_side d(cookie, info, qemu ? hs::mode::qemu_v5 : hs::mode::kvmi, own);
    size_t first = d.out().size();
    drive(d);
    if (!qemu)
      KVMI_FUZZ_ASSERT(d.state() != hs::status::done);
    if (d.state() != hs::status::done)
      KVMI_FUZZ_ASSERT(d.out().size() == first); // nothing more sent unless done
  }
  return 0;
}

// Decode inputs from the frames frames_of(order) makes, in both orders:
// the selector byte cycles through `shapes` reply shapes, count 4.
template <class Frames>
std::vector<std::vector<uint8_t>> decode_inputs(Frames frames_of, uint8_t shapes) {
  std::vector<std::vector<uint8_t>> seeds;
  for (auto o : {byte_order::native, byte_order::swapped}) {
    uint8_t sel = 0;
    for (auto& f : frames_of(o)) {
      std::vector<uint8_t> s{
        static_cast<uint8_t>((sel++ % shapes) << 1 | (o == byte_order::swapped)), 4, 0};
      s.insert(s.end(), f.begin(), f.end());
      seeds.push_back(std::move(s));
    }
  }
  return seeds;
}

// Seed inputs built by encode(): valid frames of every kind in both orders.
inline std::vector<std::vector<uint8_t>> decode_seeds() {
  return decode_inputs([](byte_order o) { return testing::sample_frames(o); }, 18);
}

inline std::vector<std::vector<uint8_t>> splitter_seeds() {
  std::vector<std::vector<uint8_t>> seeds;
  for (auto o : {byte_order::native, byte_order::swapped}) {
    for (uint8_t k = 0; k < 4; ++k) {
      std::vector<uint8_t> s{static_cast<uint8_t>(k << 1 | (o == byte_order::swapped))};
      for (auto& f : testing::sample_frames(o, k + 1))
        s.insert(s.end(), f.begin(), f.end());
      seeds.push_back(std::move(s));
    }
  }
  return seeds;
}

inline std::vector<std::vector<uint8_t>> handshake_seeds() {
  // Recorded exchanges between other nonces: to the fuzzed side they are
  // replays, valid in every field but the MAC.
  std::vector<std::vector<uint8_t>> seeds;
  hs::guest_info info;
  info.name = "seed";
  info.vcpu_count = 2;
  info.regions = {{0, 0x100000, 0, 0, 0}};
  std::vector<uint8_t> cookie{'f', 'u', 'z', 'z'};
  auto seed = [&](uint8_t head, std::span<const uint8_t> body) {
    std::vector<uint8_t> s{head};
    s.insert(s.end(), body.begin(), body.end());
    seeds.push_back(std::move(s));
  };
  for (auto o : {byte_order::native, byte_order::swapped}) {
    info.order = o;
    hs::dm_side d(cookie, info);
    hs::tool_side t(cookie);
    std::span<const uint8_t> h(d.out());
    t.feed(h);
    std::span<const uint8_t> ch(t.out());
    d.feed(ch);
    uint8_t chunk = o == byte_order::swapped ? 16 << 2 : 0;
    seed(static_cast<uint8_t>(chunk | 0), d.out());  // hello + guest, to a tool
    seed(static_cast<uint8_t>(chunk | 2), t.out());  // a challenge, to a device manager
    hs::dm_side q(cookie, info, hs::mode::qemu_v5);
    seed(1, q.out()); // qemu2introspector, to a tool
  }
  // A qemu-v5 reply with the wrong hash, to a device manager.
  hs::tool_side qt(std::vector<uint8_t>{'n', 'o', 'p', 'e'}, hs::mode::qemu_v5);
  hs::dm_side qd(cookie, info, hs::mode::qemu_v5);
  std::span<const uint8_t> qin(qd.out());
  qt.feed(qin);
  seed(3, qt.out());
  return seeds;
}

} // namespace kvmi::fuzz
