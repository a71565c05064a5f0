#include "server/control/encoding.hpp"

#include "proto/ids.hpp"

#include <charconv>

namespace kvmid::control {

std::optional<uint64_t> parse_u64(std::string_view s) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  if (s.empty())
    return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc{} || p != s.data() + s.size())
    return std::nullopt;
  return v;
}

namespace {
constexpr char hexdigits[] = "0123456789abcdef";
constexpr char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64val(char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}
} // namespace

int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

std::string to_hex(std::span<const uint8_t> bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(hexdigits[b >> 4]);
    out.push_back(hexdigits[b & 15]);
  }
  return out;
}

std::optional<std::vector<uint8_t>> from_hex(std::string_view s) {
  if (s.size() % 2)
    return std::nullopt;
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return std::nullopt;
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return out;
}

std::string to_base64(std::span<const uint8_t> bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out.push_back(b64[v >> 18]);
    out.push_back(b64[(v >> 12) & 63]);
    out.push_back(b64[(v >> 6) & 63]);
    out.push_back(b64[v & 63]);
  }
  size_t rest = bytes.size() - i;
  if (rest == 1) {
    uint32_t v = bytes[i] << 16;
    out.push_back(b64[v >> 18]);
    out.push_back(b64[(v >> 12) & 63]);
    out += "==";
  } else if (rest == 2) {
    uint32_t v = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out.push_back(b64[v >> 18]);
    out.push_back(b64[(v >> 12) & 63]);
    out.push_back(b64[(v >> 6) & 63]);
    out.push_back('=');
  }
  return out;
}

std::optional<std::vector<uint8_t>> from_base64(std::string_view s) {
  if (s.size() % 4)
    return std::nullopt;
  std::vector<uint8_t> out;
  out.reserve(s.size() / 4 * 3);
  for (size_t i = 0; i < s.size(); i += 4) {
    bool last = i + 4 == s.size();
    int pad = 0;
    if (last && s[i + 3] == '=')
      pad = s[i + 2] == '=' ? 2 : 1;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      int d = k >= 4 - pad ? 0 : b64val(s[i + k]);
      if (d < 0)
        return std::nullopt;
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    out.push_back(static_cast<uint8_t>(v >> 16));
    if (pad < 2)
      out.push_back(static_cast<uint8_t>(v >> 8));
    if (pad < 1)
      out.push_back(static_cast<uint8_t>(v));
    // Strict: the bits the padding hides must be zero (one encoding per value).
    if ((pad == 1 && (v & 0xFF)) || (pad == 2 && (v & 0xFFFF)))
      return std::nullopt;
  }
  return out;
}

std::string percent_encode_segment(std::string_view s) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                 || c == '-' || c == '_' || c == '.' || c == '~';
    if (plain) {
      out += char(c);
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

std::string hex_u64(uint64_t v) {
  char buf[2 + 16 + 1] = "0x";
  auto [p, ec] = std::to_chars(buf + 2, buf + sizeof buf, v, 16);
  (void)ec;
  return std::string(buf, p);
}

std::optional<uint8_t> parse_access(std::string_view s) {
  if (s.size() != 3)
    return std::nullopt;
  constexpr char letters[] = {'r', 'w', 'x'};
  uint8_t bits = 0;
  for (int i = 0; i < 3; ++i) {
    if (s[i] == letters[i])
      bits |= static_cast<uint8_t>(1u << i);
    else if (s[i] != '-')
      return std::nullopt;
  }
  return bits;
}

std::string access_string(uint8_t a) { return std::string(kvmi::access_name(a)); }

std::optional<uint32_t> parse_event_kind(std::string_view s) {
  for (uint32_t e = 0; e < kvmi::num_events; ++e)
    if (kvmi::name(static_cast<kvmi::event_id>(e)) == s)
      return e;
  return std::nullopt;
}

std::string_view event_kind_name(uint32_t e) {
  if (e >= kvmi::num_events)
    return "unknown";
  return kvmi::name(static_cast<kvmi::event_id>(e));
}

} // namespace kvmid::control
