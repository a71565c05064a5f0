#include "proto/handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace kvmi::hs {

namespace {

constexpr std::string_view tool_label = "kvmi-tool";
constexpr std::string_view dm_label = "kvmi-dm";
constexpr uint32_t qemu_max_struct = 4096; // forward-compatible, but bounded

// resize + memcpy, not insert(end, p, p + n): GCC 12 at -O3 reports a false
// -Wstringop-overflow in vector::_M_range_insert when `out` starts empty.
template <class T>
void append(std::vector<uint8_t>& out, T x, byte_order order) {
  to_order(x, order);
  size_t at = out.size();
  out.resize(at + sizeof x);
  std::memcpy(out.data() + at, &x, sizeof x);
}

template <class T>
T load(const uint8_t* p, byte_order order) {
  T x;
  std::memcpy(&x, p, sizeof x);
  to_order(x, order);
  return x;
}

std::array<uint8_t, 20> sha1(std::span<const uint8_t> data) {
  std::array<uint8_t, 20> h{};
  SHA1(data.data(), data.size(), h.data());
  return h;
}

} // namespace

std::string to_string(const uuid& u) {
  char s[37];
  std::snprintf(s, sizeof s,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                u[14], u[15]);
  return s;
}

mac compute_mac(std::span<const uint8_t> cookie, std::string_view label, const nonce& a,
                const nonce& b) {
  std::vector<uint8_t> msg(label.begin(), label.end());
  msg.insert(msg.end(), a.begin(), a.end());
  msg.insert(msg.end(), b.begin(), b.end());
  mac m{};
  unsigned int len = 0;
  static const uint8_t empty = 0;
  HMAC(EVP_sha256(), cookie.empty() ? &empty : cookie.data(), static_cast<int>(cookie.size()),
       msg.data(), msg.size(), m.data(), &len);
  return m;
}

bool equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

nonce random_nonce() {
  nonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    throw std::runtime_error("RAND_bytes failed: no entropy for a handshake nonce");
  return n;
}

// --- tool side --------------------------------------------------------------

tool_side::tool_side(std::vector<uint8_t> cookie, mode m, nonce tool_nonce)
  : cookie_(std::move(cookie)), mode_(m), tool_nonce_(tool_nonce) {}

status tool_side::fail(std::string_view token, std::string_view why) {
  token_ = token;
  reason_ = why;
  return status_ = status::failed;
}

bool tool_side::fill(std::span<const uint8_t>& in, size_t want) {
  size_t n = std::min(in.size(), want > buf_.size() ? want - buf_.size() : 0);
  buf_.insert(buf_.end(), in.begin(), in.begin() + n);
  in = in.subspan(n);
  return buf_.size() >= want;
}

status tool_side::feed(std::span<const uint8_t>& in) {
  while (status_ == status::in_progress && !in.empty()) {
    if (mode_ == mode::qemu_v5) {
      // struct_size first, then the whole struct as QEMU sized it.
      if (!fill(in, 4))
        break;
      uint32_t size = load<uint32_t>(buf_.data(), byte_order::native);
      if (size < sizeof(qemu2introspector) || size > qemu_max_struct)
        return fail("bad_size", "qemu-v5 handshake: struct_size out of range");
      if (!fill(in, size))
        break;
      on_qemu();
    } else if (step_ == 0) {
      if (!fill(in, sizeof(hello)))
        break;
      on_hello();
    } else {
      if (!fill(in, sizeof(guest)))
        break;
      uint32_t count = load<uint32_t>(buf_.data() + offsetof(guest, region_count), info_.order);
      if (count > max_regions)
        return fail("too_many_regions", "guest message: more than 256 regions");
      if (!fill(in, sizeof(guest) + count * sizeof(region)))
        break;
      on_guest();
    }
  }
  return status_;
}

void tool_side::on_hello() {
  hello h;
  std::memcpy(&h, buf_.data(), sizeof h);
  buf_.clear();
  if (std::memcmp(h.magic, "KVMI", 4) != 0)
    return (void)fail("bad_magic", "hello: bad magic");
  if (h.endian == endian_marker)
    info_.order = byte_order::native;
  else if (h.endian == detail::bswap(endian_marker))
    info_.order = byte_order::swapped;
  else
    return (void)fail("byte_order", "hello: bad endian marker");
  to_order(h, info_.order);
  if (h.version != hs_version)
    return (void)fail("bad_version", "hello: unsupported handshake version");
  if (!padding_zero(h))
    return (void)fail("bad_padding", "hello: padding not zero");
  std::copy(std::begin(h.nonce), std::end(h.nonce), dm_nonce_.begin());
  challenge c;
  std::copy(tool_nonce_.begin(), tool_nonce_.end(), c.nonce);
  auto m = compute_mac(cookie_, tool_label, dm_nonce_, tool_nonce_);
  std::copy(m.begin(), m.end(), c.mac);
  append(out_, c, info_.order);
  step_ = 1;
}

void tool_side::on_guest() {
  guest g;
  std::memcpy(&g, buf_.data(), sizeof g);
  to_order(g, info_.order);
  auto expect = compute_mac(cookie_, dm_label, tool_nonce_, dm_nonce_);
  if (!equal(expect, std::span<const uint8_t>(g.mac, sizeof g.mac)))
    return (void)fail("bad_mac", "guest: MAC mismatch (wrong cookie or replayed message)");
  if (g.name[sizeof g.name - 1] != 0)
    return (void)fail("bad_name", "guest: name not NUL-terminated");
  std::copy(std::begin(g.uuid), std::end(g.uuid), info_.id.begin());
  info_.vcpu_count = g.vcpu_count;
  info_.start_time = g.start_time;
  info_.name.assign(g.name, strnlen(g.name, sizeof g.name));
  for (uint32_t i = 0; i < g.region_count; ++i) {
    auto r = load<region>(buf_.data() + sizeof(guest) + i * sizeof(region), info_.order);
    if (r.type > static_cast<uint32_t>(region_type::nvlink2_atsd))
      return (void)fail("bad_region", "guest: unknown region type");
    if (r.flags & ~region_online)
      return (void)fail("bad_region", "guest: unknown region flags");
    if (r.size == 0 || r.gpa + r.size < r.gpa)
      return (void)fail("bad_region", "guest: empty or wrapping region");
    info_.regions.push_back(r);
  }
  buf_.clear();
  status_ = status::done;
}

void tool_side::on_qemu() {
  auto q = load<qemu2introspector>(buf_.data(), byte_order::native);
  buf_.clear();
  if (!padding_zero(q))
    return (void)fail("bad_padding", "qemu-v5 handshake: padding not zero");
  std::copy(std::begin(q.uuid), std::end(q.uuid), info_.id.begin());
  info_.start_time = q.start_time;
  info_.name.assign(q.name, strnlen(q.name, sizeof q.name));
  introspector2qemu r{sizeof(introspector2qemu), {}};
  auto h = sha1(cookie_);
  std::copy(h.begin(), h.end(), r.cookie_hash);
  append(out_, r, byte_order::native);
  status_ = status::done;
}

// --- device manager side ----------------------------------------------------

dm_side::dm_side(std::vector<uint8_t> cookie, guest_info info, mode m, nonce dm_nonce)
  : cookie_(std::move(cookie)), info_(std::move(info)), mode_(m), dm_nonce_(dm_nonce) {
  if (mode_ == mode::qemu_v5) {
    qemu2introspector q{};
    q.struct_size = sizeof q;
    std::copy(info_.id.begin(), info_.id.end(), q.uuid);
    q.start_time = info_.start_time;
    std::memcpy(q.name, info_.name.data(), std::min(info_.name.size(), sizeof q.name - 1));
    append(out_, q, byte_order::native);
    return;
  }
  hello h{};
  std::memcpy(h.magic, "KVMI", 4);
  h.version = hs_version;
  h.endian = endian_marker;
  std::copy(dm_nonce_.begin(), dm_nonce_.end(), h.nonce);
  append(out_, h, info_.order);
}

status dm_side::fail(std::string_view token, std::string_view why) {
  token_ = token;
  reason_ = why;
  return status_ = status::failed;
}

status dm_side::feed(std::span<const uint8_t>& in) {
  size_t want = mode_ == mode::qemu_v5 ? sizeof(introspector2qemu) : sizeof(challenge);
  if (status_ != status::in_progress)
    return status_;
  size_t n = std::min(in.size(), want - buf_.size());
  buf_.insert(buf_.end(), in.begin(), in.begin() + n);
  in = in.subspan(n);
  if (buf_.size() < want)
    return status_;
  if (mode_ == mode::qemu_v5) {
    auto r = load<introspector2qemu>(buf_.data(), byte_order::native);
    auto h = sha1(cookie_);
    if (r.struct_size < sizeof r || !equal(h, std::span<const uint8_t>(r.cookie_hash, 20)))
      return fail("bad_mac", "qemu-v5 handshake: cookie hash mismatch");
    return status_ = status::done;
  }
  auto c = load<challenge>(buf_.data(), info_.order);
  nonce tool_nonce;
  std::copy(std::begin(c.nonce), std::end(c.nonce), tool_nonce.begin());
  auto expect = compute_mac(cookie_, tool_label, dm_nonce_, tool_nonce);
  if (!equal(expect, std::span<const uint8_t>(c.mac, sizeof c.mac)))
    return fail("bad_mac", "challenge: MAC mismatch (wrong cookie or replayed message)");
  guest g{};
  auto m = compute_mac(cookie_, dm_label, tool_nonce, dm_nonce_);
  std::copy(m.begin(), m.end(), g.mac);
  std::copy(info_.id.begin(), info_.id.end(), g.uuid);
  g.vcpu_count = info_.vcpu_count;
  g.region_count = static_cast<uint32_t>(std::min<size_t>(info_.regions.size(), max_regions));
  g.start_time = info_.start_time;
  std::memcpy(g.name, info_.name.data(), std::min(info_.name.size(), sizeof g.name - 1));
  append(out_, g, info_.order);
  for (uint32_t i = 0; i < g.region_count; ++i)
    append(out_, info_.regions[i], info_.order);
  return status_ = status::done;
}

} // namespace kvmi::hs
