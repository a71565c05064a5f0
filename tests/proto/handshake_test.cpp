// Handshake tests: the mutual challenge-response (docs/architecture.md) in
// both byte orders, wrong cookies each way, replays, truncation, bad
// magic/version/padding/regions, and the qemu-v5 compatibility exchange.
#include "proto/handshake.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

using namespace kvmi;
using namespace kvmi::hs;

namespace {

std::vector<uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

nonce make_nonce(uint8_t first) {
  nonce n;
  for (size_t i = 0; i < n.size(); ++i)
    n[i] = static_cast<uint8_t>(first + i);
  return n;
}

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  char x[3];
  for (auto c : b) {
    std::snprintf(x, sizeof x, "%02x", c);
    s += x;
  }
  return s;
}

guest_info sample_info(byte_order o = byte_order::native) {
  guest_info g;
  for (size_t i = 0; i < g.id.size(); ++i)
    g.id[i] = static_cast<uint8_t>(0xa0 + i);
  g.vcpu_count = 6;
  g.start_time = 1764000000;
  g.name = "guest-7";
  g.regions = {
    {0, 0x80000000, static_cast<uint32_t>(region_type::ram), 0, 0},
    {0xfe000000, 0x1000000, static_cast<uint32_t>(region_type::mmio), 0, 0},
    {0x200000000000, 0x400000000, static_cast<uint32_t>(region_type::nvlink2_gpu_ram),
     region_online, 0x6000000000000},
    {0x300000000000, 0x10000, static_cast<uint32_t>(region_type::nvlink2_atsd), 0, 0},
  };
  g.order = o;
  return g;
}

// Moves bytes between the two ends until neither has anything to send.
void run(tool_side& t, dm_side& d) {
  for (int round = 0; round < 8; ++round) {
    bool moved = false;
    if (!d.out().empty()) {
      std::vector<uint8_t> msg;
      msg.swap(d.out());
      std::span<const uint8_t> in(msg);
      t.feed(in);
      moved = true;
    }
    if (!t.out().empty()) {
      std::vector<uint8_t> msg;
      msg.swap(t.out());
      std::span<const uint8_t> in(msg);
      d.feed(in);
      moved = true;
    }
    if (!moved)
      return;
  }
}

template <class T>
std::vector<uint8_t> raw(const T& x) {
  auto p = reinterpret_cast<const uint8_t*>(&x);
  return {p, p + sizeof x};
}

hello make_hello(const nonce& n) {
  hello h{};
  std::memcpy(h.magic, "KVMI", 4);
  h.version = hs_version;
  h.endian = endian_marker;
  std::copy(n.begin(), n.end(), h.nonce);
  return h;
}

// A guest message made by hand, for inputs dm_side would never produce.
std::vector<uint8_t> make_guest(std::span<const uint8_t> cookie, const nonce& tool_nonce,
                                const nonce& dm_nonce, std::vector<region> regions,
                                uint32_t region_count, const char* name = "hand-made") {
  guest g{};
  auto m = compute_mac(cookie, "kvmi-dm", tool_nonce, dm_nonce);
  std::copy(m.begin(), m.end(), g.mac);
  g.vcpu_count = 2;
  g.region_count = region_count;
  std::memcpy(g.name, name, std::min(std::strlen(name), sizeof g.name));
  auto out = raw(g);
  for (auto& r : regions) {
    auto b = raw(r);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

status feed_all(tool_side& t, const std::vector<uint8_t>& msg) {
  std::span<const uint8_t> in(msg);
  return t.feed(in);
}

} // namespace

TEST_CASE("handshake: HMAC-SHA256 and SHA-1 known answers (interoperability)") {
  auto cookie = bytes("secret-cookie");
  nonce a = make_nonce(0), b = make_nonce(32);
  CHECK(hex(compute_mac(cookie, "kvmi-tool", a, b))
        == "6e7ac291a087a1bcb2d6748bbdb0601296f7df65d81b05bc577b8ab7c919e7d4");
  CHECK(hex(compute_mac(cookie, "kvmi-dm", b, a))
        == "c1036883f74ca5cc74a7f7cce91c2fa5cc8c148df54602ea9f02be01cb8b749f");
  // The qemu-v5 reply carries SHA-1 of the cookie.
  qemu2introspector q{};
  q.struct_size = sizeof q;
  tool_side t(cookie, mode::qemu_v5);
  CHECK(feed_all(t, raw(q)) == status::done);
  REQUIRE(t.out().size() == sizeof(introspector2qemu));
  CHECK(hex(std::span<const uint8_t>(t.out()).subspan(4))
        == "34b3f9c187d16c656c9afd97469c034331f34e4d");
}

TEST_CASE("handshake: helpers") {
  uuid u{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 0xff};
  CHECK(to_string(u) == "12345678-9abc-def0-0001-0203040506ff");
  auto a = make_nonce(1), b = make_nonce(1), c = make_nonce(2);
  CHECK(equal(a, b));
  CHECK_FALSE(equal(a, c));
  CHECK_FALSE(equal(std::span<const uint8_t>(a).first(31), b));
  CHECK(random_nonce() != random_nonce());
}

TEST_CASE("handshake: success in both byte orders carries the guest and its memory map") {
  for (auto o : {byte_order::native, byte_order::swapped}) {
    CAPTURE(static_cast<int>(o));
    auto cookie = bytes("cookie-1");
    tool_side t(cookie);
    dm_side d(cookie, sample_info(o));
    REQUIRE(d.out().size() == sizeof(hello));
    run(t, d);
    CHECK(d.state() == status::done);
    REQUIRE(t.state() == status::done);
    auto& info = t.info();
    auto want = sample_info(o);
    CHECK(info.order == o);
    CHECK(info.id == want.id);
    CHECK(info.vcpu_count == 6);
    CHECK(info.start_time == 1764000000);
    CHECK(info.name == "guest-7");
    REQUIRE(info.regions.size() == want.regions.size());
    for (size_t i = 0; i < want.regions.size(); ++i) {
      CAPTURE(i);
      CHECK(info.regions[i].gpa == want.regions[i].gpa);
      CHECK(info.regions[i].size == want.regions[i].size);
      CHECK(info.regions[i].type == want.regions[i].type);
      CHECK(info.regions[i].flags == want.regions[i].flags);
      CHECK(info.regions[i].tgt == want.regions[i].tgt);
    }
  }
}

TEST_CASE("handshake: the wire bytes follow the byte order and the layout") {
  auto dm_nonce = make_nonce(7);
  dm_side nat(bytes("k"), sample_info(byte_order::native), mode::kvmi, dm_nonce);
  dm_side swp(bytes("k"), sample_info(byte_order::swapped), mode::kvmi, dm_nonce);
  auto& n = nat.out();
  auto& s = swp.out();
  REQUIRE(n.size() == 48);
  REQUIRE(s.size() == 48);
  CHECK(std::memcmp(n.data(), "KVMI", 4) == 0);
  CHECK(std::memcmp(s.data(), "KVMI", 4) == 0);
  const uint8_t be_version[] = {0, 0, 0, 1}, be_endian[] = {1, 2, 3, 4};
  CHECK(std::memcmp(s.data() + 4, be_version, 4) == 0);
  CHECK(std::memcmp(s.data() + 8, be_endian, 4) == 0);
  const uint8_t le_endian[] = {4, 3, 2, 1};
  CHECK(std::memcmp(n.data() + 8, le_endian, 4) == 0);
  CHECK(std::equal(n.begin() + 16, n.end(), dm_nonce.begin()));
}

TEST_CASE("handshake: bytes after the guest message stay for the KVMI stream") {
  auto cookie = bytes("cookie-2");
  tool_side t(cookie);
  dm_side d(cookie, sample_info());
  std::span<const uint8_t> hello_in(d.out());
  CHECK(t.feed(hello_in) == status::in_progress);
  CHECK(hello_in.empty());
  std::span<const uint8_t> ch(t.out());
  CHECK(d.feed(ch) == status::done);
  std::vector<uint8_t> stream(d.out().begin() + sizeof(hello), d.out().end());
  stream.insert(stream.end(), {1, 0, 0, 0, 9, 0, 0, 0}); // a GET_VERSION header
  std::span<const uint8_t> in(stream);
  CHECK(t.feed(in) == status::done);
  CHECK(in.size() == 8);
  CHECK(in[0] == 1);
}

TEST_CASE("handshake: byte-by-byte delivery succeeds, truncated messages never complete") {
  auto cookie = bytes("cookie-3");
  tool_side t(cookie);
  dm_side d(cookie, sample_info(byte_order::swapped));
  auto hello_bytes = d.out();
  for (size_t i = 0; i + 1 < hello_bytes.size(); ++i) {
    std::span<const uint8_t> in(&hello_bytes[i], 1);
    CHECK(t.feed(in) == status::in_progress);
    CHECK(t.out().empty()); // no challenge before the whole hello
  }
  std::span<const uint8_t> last(&hello_bytes.back(), 1);
  CHECK(t.feed(last) == status::in_progress);
  REQUIRE(t.out().size() == sizeof(challenge));

  // A challenge missing its last byte leaves the device manager waiting.
  auto ch = t.out();
  std::span<const uint8_t> part(ch.data(), ch.size() - 1);
  CHECK(d.feed(part) == status::in_progress);
  CHECK(d.out().size() == sizeof(hello)); // still only the hello it sent
  std::span<const uint8_t> rest(&ch.back(), 1);
  CHECK(d.feed(rest) == status::done);

  // The guest message one byte at a time: done only with its last byte.
  std::vector<uint8_t> g(d.out().begin() + sizeof(hello), d.out().end());
  REQUIRE(g.size() == sizeof(guest) + 4 * sizeof(region));
  for (size_t i = 0; i < g.size(); ++i) {
    std::span<const uint8_t> in(&g[i], 1);
    auto st = t.feed(in);
    CHECK(st == (i + 1 == g.size() ? status::done : status::in_progress));
  }
  CHECK(t.info().regions.size() == 4);
}

TEST_CASE("handshake: a wrong cookie fails on the side that checks it") {
  SUBCASE("the tool has the wrong cookie: the device manager refuses the challenge") {
    tool_side t(bytes("wrong"));
    dm_side d(bytes("right"), sample_info());
    run(t, d);
    CHECK(d.state() == status::failed);
    CHECK(std::string(d.reason()).find("MAC mismatch") != std::string::npos);
    CHECK(d.token() == "bad_mac");
    CHECK(t.state() == status::in_progress); // it never gets a guest message
  }
  SUBCASE("the device manager has the wrong cookie: the tool refuses the guest message") {
    auto tool_nonce = make_nonce(50), dm_nonce = make_nonce(90);
    tool_side t(bytes("right"), mode::kvmi, tool_nonce);
    CHECK(feed_all(t, raw(make_hello(dm_nonce))) == status::in_progress);
    auto g = make_guest(bytes("wrong"), tool_nonce, dm_nonce, {}, 0);
    CHECK(feed_all(t, g) == status::failed);
    CHECK(std::string(t.reason()).find("MAC mismatch") != std::string::npos);
    CHECK(t.token() == "bad_mac");
    // The same message with the right cookie passes: the MAC was the fault.
    tool_side t2(bytes("right"), mode::kvmi, tool_nonce);
    feed_all(t2, raw(make_hello(dm_nonce)));
    CHECK(feed_all(t2, make_guest(bytes("right"), tool_nonce, dm_nonce, {}, 0)) == status::done);
  }
  SUBCASE("an empty cookie on one side only") {
    tool_side t(bytes(""));
    dm_side d(bytes("x"), sample_info());
    run(t, d);
    CHECK(d.state() == status::failed);
  }
}

TEST_CASE("handshake: replayed messages fail against fresh nonces") {
  auto cookie = bytes("cookie-r");
  // Record a whole successful exchange.
  tool_side t1(cookie, mode::kvmi, make_nonce(1));
  dm_side d1(cookie, sample_info(), mode::kvmi, make_nonce(100));
  auto hello1 = d1.out();
  feed_all(t1, hello1);
  auto challenge1 = t1.out();
  std::span<const uint8_t> ch(challenge1);
  REQUIRE(d1.feed(ch) == status::done);
  std::vector<uint8_t> guest1(d1.out().begin() + sizeof(hello), d1.out().end());
  REQUIRE(feed_all(t1, guest1) == status::done);

  SUBCASE("recorded hello + guest replayed into a new tool_side") {
    tool_side t2(cookie, mode::kvmi, make_nonce(2));
    CHECK(feed_all(t2, hello1) == status::in_progress);
    CHECK(feed_all(t2, guest1) == status::failed);
    CHECK(std::string(t2.reason()).find("replayed") != std::string::npos);
  }
  SUBCASE("recorded challenge replayed into a new dm_side") {
    dm_side d2(cookie, sample_info(), mode::kvmi, make_nonce(101));
    std::span<const uint8_t> in(challenge1);
    CHECK(d2.feed(in) == status::failed);
  }
  SUBCASE("the guest message replayed a second time into the same tool_side") {
    // After done, the tool consumes nothing more: the replay stays in the
    // stream, where it is not a valid KVMI frame.
    std::span<const uint8_t> in(guest1);
    CHECK(t1.feed(in) == status::done);
    CHECK(in.size() == guest1.size());
  }
}

TEST_CASE("handshake: bad hello fields are refused") {
  auto n = make_nonce(3);
  auto expect_fail = [](const hello& h, const char* why) {
    tool_side t(bytes("c"));
    CHECK(feed_all(t, raw(h)) == status::failed);
    CHECK(std::string(t.reason()).find(why) != std::string::npos);
    CHECK(t.out().empty()); // no challenge for a bad hello
  };
  auto h = make_hello(n);
  std::memcpy(h.magic, "KVMJ", 4);
  expect_fail(h, "magic");
  h = make_hello(n);
  std::memcpy(h.magic, "kvmi", 4);
  expect_fail(h, "magic");
  h = make_hello(n);
  h.version = 2;
  expect_fail(h, "version");
  h = make_hello(n);
  h.version = 0x01000000; // version 1 in the wrong byte order for a native marker
  expect_fail(h, "version");
  h = make_hello(n);
  h.endian = 0x01020305;
  expect_fail(h, "endian");
  h = make_hello(n);
  h.endian = 0;
  expect_fail(h, "endian");
  h = make_hello(n);
  h.padding = 1;
  expect_fail(h, "padding");
  // A swapped hello (marker and version both byte-reversed) is fine.
  h = make_hello(n);
  h.endian = __builtin_bswap32(endian_marker);
  h.version = __builtin_bswap32(hs_version);
  tool_side t(bytes("c"));
  CHECK(feed_all(t, raw(h)) == status::in_progress);
  CHECK(t.out().size() == sizeof(challenge));
}

TEST_CASE("handshake: bad guest messages are refused") {
  auto cookie = bytes("cg");
  auto tn = make_nonce(10), dn = make_nonce(20);
  auto start = [&] {
    tool_side t(cookie, mode::kvmi, tn);
    feed_all(t, raw(make_hello(dn)));
    return t;
  };
  region ram{0, 0x1000, 0, 0, 0};
  SUBCASE("more than 256 regions") {
    auto t = start();
    CHECK(feed_all(t, make_guest(cookie, tn, dn, {}, max_regions + 1)) == status::failed);
  }
  SUBCASE("exactly 256 regions are fine") {
    auto t = start();
    CHECK(feed_all(t, make_guest(cookie, tn, dn, std::vector<region>(256, ram), 256))
          == status::done);
    CHECK(t.info().regions.size() == 256);
  }
  SUBCASE("unknown region type") {
    auto t = start();
    region r = ram;
    r.type = 4;
    CHECK(feed_all(t, make_guest(cookie, tn, dn, {r}, 1)) == status::failed);
  }
  SUBCASE("unknown region flags") {
    auto t = start();
    region r = ram;
    r.flags = 2;
    CHECK(feed_all(t, make_guest(cookie, tn, dn, {r}, 1)) == status::failed);
  }
  SUBCASE("empty and wrapping regions") {
    auto t = start();
    region r = ram;
    r.size = 0;
    CHECK(feed_all(t, make_guest(cookie, tn, dn, {r}, 1)) == status::failed);
    auto t2 = start();
    r = {0xfffffffffffff000, 0x2000, 0, 0, 0};
    CHECK(feed_all(t2, make_guest(cookie, tn, dn, {r}, 1)) == status::failed);
  }
  SUBCASE("a name that is not NUL-terminated") {
    auto t = start();
    CHECK(feed_all(t, make_guest(cookie, tn, dn, {}, 0, "0123456789abcdef0123456789abcdefXX"))
          == status::failed);
  }
  SUBCASE("a guest message cut short waits for the rest") {
    auto t = start();
    auto g = make_guest(cookie, tn, dn, {ram, ram}, 2);
    g.resize(g.size() - 1);
    CHECK(feed_all(t, g) == status::in_progress);
  }
}

TEST_CASE("handshake: qemu-v5 mode") {
  auto cookie = bytes("qemu-secret");
  SUBCASE("success") {
    auto info = sample_info();
    info.name = std::string(70, 'n'); // longer than the 64-byte field
    tool_side t(cookie, mode::qemu_v5);
    dm_side d(cookie, info, mode::qemu_v5);
    REQUIRE(d.out().size() == sizeof(qemu2introspector));
    run(t, d);
    CHECK(t.state() == status::done);
    CHECK(d.state() == status::done);
    CHECK(t.info().id == info.id);
    CHECK(t.info().start_time == info.start_time);
    CHECK(t.info().name == std::string(63, 'n'));
    CHECK(t.info().regions.empty()); // no memory map in this mode
  }
  SUBCASE("wrong cookie: QEMU refuses the hash") {
    tool_side t(bytes("not-it"), mode::qemu_v5);
    dm_side d(cookie, sample_info(), mode::qemu_v5);
    run(t, d);
    CHECK(t.state() == status::done); // the tool is not authenticated by QEMU's side
    CHECK(d.state() == status::failed);
  }
  SUBCASE("a larger struct from a later QEMU is accepted; its tail is skipped") {
    qemu2introspector q{};
    q.struct_size = sizeof q + 8; // max_gpa appended
    std::memcpy(q.name, "vm", 2);
    auto msg = raw(q);
    msg.resize(msg.size() + 8, 0x77);
    msg.push_back(0x42); // first KVMI byte
    tool_side t(cookie, mode::qemu_v5);
    std::span<const uint8_t> in(msg);
    CHECK(t.feed(in) == status::done);
    CHECK(in.size() == 1);
    CHECK(t.info().name == "vm");
  }
  SUBCASE("struct_size out of range or set padding is refused") {
    for (uint32_t size : {0u, 4u, 95u, 4097u, 0xffffffffu}) {
      CAPTURE(size);
      qemu2introspector q{};
      q.struct_size = size;
      tool_side t(cookie, mode::qemu_v5);
      CHECK(feed_all(t, raw(q)) == status::failed);
    }
    qemu2introspector q{};
    q.struct_size = sizeof q;
    q.padding = 5;
    tool_side t(cookie, mode::qemu_v5);
    CHECK(feed_all(t, raw(q)) == status::failed);
  }
  SUBCASE("a short reply from the tool leaves QEMU waiting; a bad struct_size fails") {
    dm_side d(cookie, sample_info(), mode::qemu_v5);
    introspector2qemu r{};
    r.struct_size = sizeof r;
    auto b = raw(r);
    std::span<const uint8_t> part(b.data(), b.size() - 1);
    CHECK(d.feed(part) == status::in_progress);
    dm_side d2(cookie, sample_info(), mode::qemu_v5);
    r.struct_size = 23;
    auto b2 = raw(r);
    std::span<const uint8_t> in(b2);
    CHECK(d2.feed(in) == status::failed);
  }
}
