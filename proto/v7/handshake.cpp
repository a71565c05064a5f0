#include "proto/v7/handshake.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstring>

namespace kvmi::v7::hs {

namespace {

constexpr error truncated{errc::truncated, "fewer bytes than struct_size says"};

template <class T>
T load(std::span<const uint8_t> bytes, size_t at) {
  T x;
  std::memcpy(&x, bytes.data() + at, sizeof x);
  return x;
}

template <class T>
void append(std::vector<uint8_t>& out, const T& x) {
  size_t at = out.size();
  out.resize(at + sizeof x);
  std::memcpy(out.data() + at, &x, sizeof x);
}

result<uint32_t> struct_size(std::span<const uint8_t> first, uint32_t min, std::string_view what) {
  if (first.size() < sizeof(uint32_t))
    return truncated;
  uint32_t size = load<uint32_t>(first, 0);
  if (size < min)
    return error{errc::bad_size, what};
  if (size > max_struct_size)
    return error{errc::oversize, "struct_size beyond 64 KiB"};
  return size;
}

// The whole struct: exactly as many bytes as its struct_size says.
result<uint32_t> whole(std::span<const uint8_t> bytes, result<uint32_t> size) {
  if (!size)
    return size;
  if (bytes.size() < *size)
    return truncated;
  if (bytes.size() > *size)
    return error{errc::bad_size, "bytes after struct_size"};
  return size;
}

} // namespace

result<uint32_t> qemu_hello_size(std::span<const uint8_t> first) {
  return struct_size(first, min_struct_size, "struct_size below 32 (offsetof name)");
}

result<qemu_hello> decode_qemu_hello(std::span<const uint8_t> bytes, layout l) {
  auto size = whole(bytes, qemu_hello_size(bytes));
  if (!size)
    return size.err();
  // Read the fixed head through a zeroed copy: a short struct cuts it.
  qemu_head head{};
  std::memcpy(&head, bytes.data(), std::min<size_t>(*size, sizeof head));
  qemu_hello h;
  h.struct_size = *size;
  std::copy(std::begin(head.uuid), std::end(head.uuid), h.uuid.begin());
  h.start_time = head.start_time;
  h.name.assign(head.name, strnlen(head.name, sizeof head.name));
  if (l == layout::max_gpa) {
    if (head.padding != 0)
      return error{errc::bad_padding, "padding is not zero"};
    if (*size >= max_gpa_offset + sizeof(uint64_t))
      h.max_gpa = load<uint64_t>(bytes, max_gpa_offset);
    return h;
  }
  uint8_t pad[3];
  std::memcpy(pad, reinterpret_cast<const uint8_t*>(&head.padding) + 1, sizeof pad);
  if (pad[0] | pad[1] | pad[2])
    return error{errc::bad_padding, "padding after cpu_type is not zero"};
  h.cpu_type = reinterpret_cast<const uint8_t*>(&head.padding)[0];
  if (*size < e820_entries_offset)
    return h;
  auto eh = load<e820_head>(bytes, e820_offset);
  if (std::any_of(std::begin(eh.padding), std::end(eh.padding), [](uint8_t b) { return b; }))
    return error{errc::bad_padding, "padding after e820_count is not zero"};
  if (eh.count > (*size - e820_entries_offset) / sizeof(e820_entry))
    return error{errc::bad_size, "e820_count entries do not fit in struct_size"};
  for (uint8_t i = 0; i < eh.count; ++i)
    h.e820.push_back(load<e820_entry>(bytes, e820_entries_offset + i * sizeof(e820_entry)));
  return h;
}

error check(const qemu_hello& h, layout l) {
  if (h.struct_size < min_struct_size || h.struct_size > max_struct_size)
    return {errc::bad_size, "struct_size outside 32..65536"};
  if (h.name.size() > sizeof(qemu_head::name))
    return {errc::bad_value, "name longer than 64 bytes"};
  if (h.name.find('\0') != std::string::npos)
    return {errc::bad_value, "name holds a NUL"};
  if (l == layout::max_gpa && (h.cpu_type || !h.e820.empty()))
    return {errc::bad_value, "cpu_type and E820 entries belong to the E820 layout"};
  if (l == layout::e820 && h.max_gpa)
    return {errc::bad_value, "max_gpa belongs to the max_gpa layout"};
  if (h.cpu_type && *h.cpu_type != cpu_type_i386 && *h.cpu_type != cpu_type_x86_64
      && *h.cpu_type != cpu_type_unknown)
    return {errc::bad_value, "cpu_type is not i386, x86_64 or unknown"};
  if (h.e820.size() > UINT8_MAX)
    return {errc::bad_size, "more than 255 E820 entries"};
  for (auto& e : h.e820) {
    if (e.padding != 0)
      return {errc::bad_padding, "E820 entry padding is not zero"};
    if (e.length == 0 || e.address + e.length < e.address)
      return {errc::bad_range, "E820 entry empty or wrapping"};
  }
  return no_error;
}

void encode(std::vector<uint8_t>& out, const qemu_hello& h, layout l, uint32_t extra) {
  out.clear();
  qemu_head head{};
  std::copy(h.uuid.begin(), h.uuid.end(), head.uuid);
  head.start_time = h.start_time;
  std::memcpy(head.name, h.name.data(), std::min(h.name.size(), sizeof head.name));
  if (l == layout::e820)
    reinterpret_cast<uint8_t*>(&head.padding)[0] = h.cpu_type.value_or(cpu_type_x86_64);
  append(out, head);
  if (l == layout::max_gpa && h.max_gpa) {
    append(out, *h.max_gpa);
  } else if (l == layout::e820) {
    e820_head eh{};
    eh.count = static_cast<uint8_t>(std::min<size_t>(h.e820.size(), UINT8_MAX));
    append(out, eh);
    for (uint8_t i = 0; i < eh.count; ++i)
      append(out, h.e820[i]);
  }
  out.resize(out.size() + extra, 0);
  uint32_t size = static_cast<uint32_t>(out.size());
  std::memcpy(out.data(), &size, sizeof size);
}

std::array<uint8_t, 20> cookie_hash(std::span<const uint8_t> cookie) {
  std::array<uint8_t, 20> h{};
  static const uint8_t empty = 0;
  SHA1(cookie.empty() ? &empty : cookie.data(), cookie.size(), h.data());
  return h;
}

tool_answer make_answer(std::span<const uint8_t> cookie) {
  tool_answer a{sizeof(tool_answer), {}};
  auto h = cookie_hash(cookie);
  std::copy(h.begin(), h.end(), a.cookie_hash);
  return a;
}

void encode(std::vector<uint8_t>& out, const tool_answer& a) {
  out.clear();
  append(out, a);
}

result<uint32_t> tool_answer_size(std::span<const uint8_t> first) {
  return struct_size(first, sizeof(tool_answer), "struct_size below 24 (no cookie hash)");
}

result<tool_answer> decode_tool_answer(std::span<const uint8_t> bytes) {
  if (auto size = whole(bytes, tool_answer_size(bytes)); !size)
    return size.err();
  return load<tool_answer>(bytes, 0);
}

bool cookie_matches(const tool_answer& a, std::span<const uint8_t> cookie) {
  auto h = cookie_hash(cookie);
  return CRYPTO_memcmp(h.data(), a.cookie_hash, h.size()) == 0;
}

} // namespace kvmi::v7::hs
