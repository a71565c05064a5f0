// Value formats of the API: numbers as decimal or 0x-hex, guest bytes as
// hex or base64, page access as "rwx"-style strings, event kinds by name.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid::control {

// "4096", "0x1000" (no sign, no spaces, no overflow).
std::optional<uint64_t> parse_u64(std::string_view s);

std::string to_hex(std::span<const uint8_t> bytes);
std::optional<std::vector<uint8_t>> from_hex(std::string_view s); // even length, [0-9a-fA-F]
std::string to_base64(std::span<const uint8_t> bytes);
std::optional<std::vector<uint8_t>> from_base64(std::string_view s); // padded, strict

std::string hex_u64(uint64_t v); // "0x1000"

// One path segment for a URL kvmid sends back (Location): unreserved
// characters as they are, every other byte as %XX.
std::string percent_encode_segment(std::string_view s);

// "rwx", "r-x", "---", any order-fixed r/w/x or '-' triple -> access bits.
std::optional<uint8_t> parse_access(std::string_view s);
std::string access_string(uint8_t access);

// KVMI event kinds by their API names ("pf", "breakpoint", ...).
std::optional<uint32_t> parse_event_kind(std::string_view s);
std::string_view event_kind_name(uint32_t event);

// The value of one hex digit (either case), or -1.
int hexval(char c);

} // namespace kvmid::control
