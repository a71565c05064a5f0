// The KVMI cookie: the secret both ends of the handshake key their HMAC
// (and the qemu-v5 hash) with. A cookie file holds it as raw bytes, taken
// exactly as they are: no newline is stripped, as QEMU reads
// `-object secret,file=...`, so a binary cookie ending in 0x0a and a text
// cookie with its newline mean the same to kvmid and to the device manager.
// The handshake accepts a key of any length; these bounds keep out secrets
// short enough to guess and files that are not secrets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace kvmi::hs {

inline constexpr size_t min_cookie = 16;
inline constexpr size_t max_cookie = 4096;

// Empty for a usable cookie, else why it is not (the same words at both ends).
constexpr std::string_view check_cookie(std::span<const uint8_t> cookie) {
  if (cookie.size() < min_cookie)
    return "shorter than 16 bytes";
  if (cookie.size() > max_cookie)
    return "longer than 4096 bytes";
  return {};
}

} // namespace kvmi::hs
