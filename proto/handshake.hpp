// The connection handshake of docs/architecture.md (mutual HMAC-SHA256 challenge-
// response carrying the guest's memory map) and the opt-in v5-era QEMU
// exchange. Both ends are pure state machines over bytes: feed what
// arrived, send what they put in out(), until done() or failed().
#pragma once

#include "proto/codec.hpp"

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmi::hs {

using nonce = std::array<uint8_t, 32>;
using mac = std::array<uint8_t, 32>;
using uuid = std::array<uint8_t, 16>;

inline constexpr uint32_t endian_marker = 0x01020304;
inline constexpr uint32_t hs_version = 1;
inline constexpr uint32_t max_regions = 256;

struct hello { // device manager -> kvmid
  char magic[4];
  uint32_t version;
  uint32_t endian;
  uint32_t padding;
  uint8_t nonce[32];
};
struct challenge { // kvmid -> device manager
  uint8_t nonce[32];
  uint8_t mac[32];
};
enum class region_type : uint32_t { ram = 0, mmio = 1, nvlink2_gpu_ram = 2, nvlink2_atsd = 3 };
inline constexpr uint32_t region_online = 1u << 0;
struct region {
  uint64_t gpa, size;
  uint32_t type;
  uint32_t flags;
  uint64_t tgt;
};
struct guest { // device manager -> kvmid, followed by region[region_count]
  uint8_t mac[32];
  uint8_t uuid[16];
  uint32_t vcpu_count;
  uint32_t region_count;
  int64_t start_time;
  char name[32];
};

// v5-era QEMU compatibility exchange (docs/architecture.md).
struct qemu2introspector {
  uint32_t struct_size;
  uint8_t uuid[16];
  uint32_t padding;
  int64_t start_time;
  char name[64];
};
struct introspector2qemu {
  uint32_t struct_size;
  uint8_t cookie_hash[20];
};

static_assert(sizeof(hello) == 48 && sizeof(challenge) == 64);
static_assert(sizeof(region) == 32 && sizeof(guest) == 96);
static_assert(offsetof(guest, vcpu_count) == 48 && offsetof(guest, start_time) == 56);
static_assert(sizeof(qemu2introspector) == 96 && offsetof(qemu2introspector, start_time) == 24);
static_assert(offsetof(qemu2introspector, name) == 32 && sizeof(introspector2qemu) == 24);

template <class F> void inspect(F& f, hello& x) {
  f(x.magic, x.version, x.endian, kvmi::pad(x.padding), x.nonce);
}
template <class F> void inspect(F& f, challenge& x) { f(x.nonce, x.mac); }
template <class F> void inspect(F& f, region& x) { f(x.gpa, x.size, x.type, x.flags, x.tgt); }
template <class F> void inspect(F& f, guest& x) {
  f(x.mac, x.uuid, x.vcpu_count, x.region_count, x.start_time, x.name);
}
template <class F> void inspect(F& f, qemu2introspector& x) {
  f(x.struct_size, x.uuid, kvmi::pad(x.padding), x.start_time, x.name);
}
template <class F> void inspect(F& f, introspector2qemu& x) { f(x.struct_size, x.cookie_hash); }

// What kvmid learns about the guest.
struct guest_info {
  uuid id{};
  uint32_t vcpu_count = 0;
  int64_t start_time = 0;
  std::string name;
  std::vector<region> regions; // empty: no map (qemu-v5 mode)
  byte_order order = byte_order::native;
};

std::string to_string(const uuid& u); // 8-4-4-4-12 lowercase hex

enum class mode : uint8_t { kvmi, qemu_v5 };

mac compute_mac(std::span<const uint8_t> cookie, std::string_view label, const nonce& a,
                const nonce& b);
bool equal(std::span<const uint8_t> a, std::span<const uint8_t> b); // constant time
nonce random_nonce();

enum class status : uint8_t { in_progress, done, failed };

// kvmid's end.
class tool_side {
public:
  tool_side(std::vector<uint8_t> cookie, mode m = mode::kvmi, nonce tool_nonce = random_nonce());

  // Consumes bytes; bytes past the end of the handshake stay in `in` (they
  // belong to the KVMI stream).
  status feed(std::span<const uint8_t>& in);
  std::vector<uint8_t>& out() { return out_; } // to send, then clear()
  status state() const { return status_; }
  std::string_view reason() const { return reason_; }
  // The reason as a short stable token (bad_magic, bad_mac, ...): a metric
  // label, where reason() is a sentence for people.
  std::string_view token() const { return token_; }
  const guest_info& info() const { return info_; }

private:
  status fail(std::string_view token, std::string_view why);
  bool fill(std::span<const uint8_t>& in, size_t want);
  void on_hello();
  void on_guest();
  void on_qemu();

  std::vector<uint8_t> cookie_;
  mode mode_;
  nonce tool_nonce_;
  nonce dm_nonce_{};
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> out_;
  int step_ = 0;
  status status_ = status::in_progress;
  std::string_view reason_, token_;
  guest_info info_;
};

// The device manager's end (kvmi-sim, the KVM bridge and tests).
class dm_side {
public:
  dm_side(std::vector<uint8_t> cookie, guest_info info, mode m = mode::kvmi,
          nonce dm_nonce = random_nonce());

  // The first message goes out at construction.
  status feed(std::span<const uint8_t>& in);
  std::vector<uint8_t>& out() { return out_; }
  status state() const { return status_; }
  std::string_view reason() const { return reason_; }
  std::string_view token() const { return token_; }

private:
  status fail(std::string_view token, std::string_view why);

  std::vector<uint8_t> cookie_;
  guest_info info_;
  mode mode_;
  nonce dm_nonce_;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> out_;
  status status_ = status::in_progress;
  std::string_view reason_, token_;
};

} // namespace kvmi::hs
