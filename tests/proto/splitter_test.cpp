// Frame splitter tests: a stream of every sample message, cut at every byte
// boundary and in random chunks, must come out as the same frames; oversize
// headers stop the stream wherever they are cut.
#include "proto/codec.hpp"
#include "tests/support/kvmi_samples.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <random>

using namespace kvmi;
using namespace kvmi::testing;

namespace {

// A frame as the splitter handed it out, copied (the span is only valid in
// the callback).
struct got {
  msg_hdr hdr;
  std::vector<uint8_t> payload;
};

struct stream {
  std::vector<uint8_t> bytes;
  std::vector<std::vector<uint8_t>> frames;
};

stream make_stream(byte_order o) {
  stream s;
  s.frames = sample_frames(o);
  // The largest legal frames too: WRITE_PHYSICAL of a page (max_payload)
  // and the 4104-byte GET_XSAVE reply.
  std::vector<uint8_t> buf;
  encode(buf, command_msg{9, write_physical_cmd{{0x5000, 4096}, std::vector<uint8_t>(4096, 0xab)}},
         o);
  s.frames.push_back(buf);
  encode(buf, reply_msg{msg_id::get_xsave, 10, 0, xsave_reply{std::vector<uint8_t>(4096, 0x5c)}},
         o);
  s.frames.push_back(buf);
  for (auto& f : s.frames)
    s.bytes.insert(s.bytes.end(), f.begin(), f.end());
  return s;
}

// Feeds bytes in the given chunk sizes; returns the frames and the first error.
std::pair<std::vector<got>, error> split(frame_splitter& sp, std::span<const uint8_t> bytes,
                                         const std::vector<size_t>& chunks) {
  std::vector<got> out;
  error err;
  size_t at = 0;
  for (size_t n : chunks) {
    n = std::min(n, bytes.size() - at);
    auto e = sp.feed(bytes.subspan(at, n), [&](const frame& f) {
      out.push_back({f.hdr, {f.payload.begin(), f.payload.end()}});
    });
    at += n;
    if (e && !err)
      err = e;
  }
  return {out, err};
}

// Frames equal to the encoded ones, header fields converted; one assertion
// per stream keeps the every-cut test cheap.
bool same_frames(const std::vector<got>& g, const stream& s, byte_order o) {
  if (g.size() != s.frames.size())
    return false;
  for (size_t i = 0; i < g.size(); ++i) {
    msg_hdr h;
    std::memcpy(&h, s.frames[i].data(), sizeof h);
    to_order(h, o);
    if (g[i].hdr.id != h.id || g[i].hdr.seq != h.seq || g[i].hdr.size != h.size
        || g[i].payload.size() != h.size
        || !std::equal(g[i].payload.begin(), g[i].payload.end(), s.frames[i].begin() + 8,
                       s.frames[i].end()))
      return false;
  }
  return true;
}

} // namespace

TEST_CASE("splitter: a stream split at every byte boundary yields the same frames") {
  for (auto o : {byte_order::native, byte_order::swapped}) {
    auto s = make_stream(o);
    CAPTURE(static_cast<int>(o));
    for (size_t cut = 0; cut <= s.bytes.size(); ++cut) {
      frame_splitter sp(o);
      auto [g, err] = split(sp, s.bytes, {cut, s.bytes.size() - cut});
      CAPTURE(cut);
      REQUIRE(err.ok());
      CHECK(same_frames(g, s, o));
      CHECK(sp.buffered() == 0);
    }
  }
}

TEST_CASE("splitter: one byte at a time, and random chunkings") {
  std::mt19937_64 rng(7);
  for (auto o : {byte_order::native, byte_order::swapped}) {
    auto s = make_stream(o);
    {
      frame_splitter sp(o);
      auto [g, err] = split(sp, s.bytes, std::vector<size_t>(s.bytes.size(), 1));
      REQUIRE(err.ok());
      CHECK(same_frames(g, s, o));
    }
    for (int iter = 0; iter < 200; ++iter) {
      std::vector<size_t> chunks;
      size_t total = 0;
      while (total < s.bytes.size()) {
        // Mostly small pieces, sometimes large ones spanning several frames.
        size_t n = rng() % 4 == 0 ? rng() % 9000 : rng() % 64;
        chunks.push_back(n);
        total += n;
      }
      frame_splitter sp(o);
      auto [g, err] = split(sp, s.bytes, chunks);
      CAPTURE(iter);
      REQUIRE(err.ok());
      CHECK(same_frames(g, s, o));
      CHECK(sp.buffered() == 0);
    }
  }
}

TEST_CASE("splitter: a partial tail is buffered until it completes") {
  std::vector<uint8_t> buf;
  encode(buf, command_msg{3, control_cr{1, 1, 0, 3}});
  frame_splitter sp;
  int frames = 0;
  auto count = [&](const frame&) { ++frames; };
  CHECK(sp.feed(std::span<const uint8_t>(buf.data(), 5), count).ok());
  CHECK(sp.buffered() == 5);
  CHECK(sp.feed(std::span<const uint8_t>(buf.data() + 5, 6), count).ok());
  CHECK(sp.buffered() == 11);
  CHECK(frames == 0);
  CHECK(sp.feed(std::span<const uint8_t>(buf.data() + 11, buf.size() - 11), count).ok());
  CHECK(frames == 1);
  CHECK(sp.buffered() == 0);
  // An empty feed is a no-op.
  CHECK(sp.feed(std::span<const uint8_t>(), count).ok());
  CHECK(frames == 1);
}

TEST_CASE("splitter: frames decode the same from a swapped-order stream") {
  // What each frame decodes to must not depend on whether it went through
  // the splitter (in place or buffered) or was parsed alone.
  auto s = make_stream(byte_order::swapped);
  auto summary = [](const frame& f) {
    std::vector<uint8_t> re;
    if (f.hdr.id == static_cast<uint16_t>(msg_id::event)) {
      auto e = decode_event(f, byte_order::swapped);
      REQUIRE(e.ok());
      encode(re, *e, byte_order::swapped);
    } else if (auto d = decode_from_tool(f, byte_order::swapped); d.ok()) {
      std::visit([&](const auto& m) { encode(re, m, byte_order::swapped); }, *d);
    }
    return re;
  };
  std::vector<std::vector<uint8_t>> alone, split_out;
  for (auto& bytes : s.frames) {
    auto f = parse_frame(bytes, byte_order::swapped);
    REQUIRE(f.ok());
    alone.push_back(summary(*f));
  }
  frame_splitter sp(byte_order::swapped);
  for (size_t at = 0; at < s.bytes.size(); at += 1000) {
    auto err = sp.feed(std::span<const uint8_t>(s.bytes).subspan(at, std::min<size_t>(1000, s.bytes.size() - at)),
                       [&](const frame& f) { split_out.push_back(summary(f)); });
    REQUIRE(err.ok());
  }
  CHECK(split_out == alone);
  size_t decoded = std::count_if(alone.begin(), alone.end(), [](auto& v) { return !v.empty(); });
  // 18 commands, 11 events, 10 event replies, the full-page WRITE_PHYSICAL,
  // plus replies whose bytes also read as commands (ids are shared).
  CHECK(decoded >= 18 + 11 + 10 + 1);
}

TEST_CASE("splitter: an oversize header stops the stream wherever it is cut") {
  std::vector<uint8_t> good;
  encode(good, command_msg{1, get_version{}});
  msg_hdr bad{static_cast<uint16_t>(msg_id::write_physical),
              static_cast<uint16_t>(max_payload + 1), 2};
  std::vector<uint8_t> bytes = good;
  bytes.insert(bytes.end(), bytes_of(bad).begin(), bytes_of(bad).end());
  bytes.resize(bytes.size() + 64, 0);
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    CAPTURE(cut);
    frame_splitter sp;
    auto [g, err] = split(sp, bytes, {cut, bytes.size() - cut});
    CHECK(err.code == errc::oversize);
    CHECK(g.size() == 1); // the good frame before it still came out
    // The splitter stays failed: nothing more comes out.
    auto again = sp.feed(good, [&](const frame&) { FAIL("frame after a failure"); });
    CHECK(again.code == errc::oversize);
  }
  // One byte at a time as well.
  frame_splitter sp;
  auto [g, err] = split(sp, bytes, std::vector<size_t>(bytes.size(), 1));
  CHECK(err.code == errc::oversize);
  CHECK(g.size() == 1);
}

TEST_CASE("splitter: the oversize bound is the byte-order-converted size") {
  // Size bytes 10 01: native 0x0110 = 272, swapped 0x1001 = 4097, both legal.
  // Size bytes 11 10: native 0x1011 = 4113, swapped 0x1110 = 4368, both over.
  std::vector<uint8_t> hdr{1, 0, 0x10, 0x01, 0, 0, 0, 0};
  frame_splitter n(byte_order::native), s(byte_order::swapped);
  auto ignore = [](const frame&) {};
  CHECK(n.feed(hdr, ignore).ok());
  CHECK(n.buffered() == 8);
  CHECK(s.feed(hdr, ignore).ok());
  std::vector<uint8_t> over{1, 0, 0x11, 0x10, 0, 0, 0, 0};
  frame_splitter n2(byte_order::native), s2(byte_order::swapped);
  CHECK(n2.feed(over, ignore).code == errc::oversize);
  CHECK(s2.feed(over, ignore).code == errc::oversize);
}

TEST_CASE("splitter: random garbage never crashes and never yields an over-long frame") {
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<uint8_t> bytes(rng() % 20000);
    for (auto& b : bytes)
      b = static_cast<uint8_t>(rng());
    // Small sizes so that some frames get through before an oversize one.
    for (size_t at = 2; at + 1 < bytes.size(); at += 64)
      bytes[at + 1] &= 0x0f;
    frame_splitter sp(iter % 2 ? byte_order::swapped : byte_order::native);
    size_t seen = 0;
    size_t at = 0;
    error err;
    while (at < bytes.size() && !err) {
      size_t n = std::min<size_t>(bytes.size() - at, 1 + rng() % 300);
      err = sp.feed(std::span<const uint8_t>(bytes).subspan(at, n), [&](const frame& f) {
        CHECK(f.payload.size() == f.hdr.size);
        CHECK(f.hdr.size <= max_payload);
        seen += sizeof(msg_hdr) + f.payload.size();
      });
      at += n;
    }
    CHECK(seen + sp.buffered() <= bytes.size());
    if (!err)
      CHECK(seen + sp.buffered() == bytes.size());
    else
      CHECK(err.code == errc::oversize);
  }
}
