// What an error message may quote of client or file input: at most `max`
// characters, control and non-ASCII bytes escaped as \xNN, quotes and
// backslashes escaped, "..." when cut. A message never grows with its input.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>

namespace kvmid {

inline std::string excerpt(std::string_view s, size_t max = 40) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == max)
      return out + "...";
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\' || c == '\'') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char b[5];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += char(c);
    }
  }
  return out;
}

} // namespace kvmid
