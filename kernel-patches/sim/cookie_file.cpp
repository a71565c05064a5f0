#include "kernel-patches/sim/cookie_file.hpp"

#include "proto/cookie.hpp"

#include <charconv>
#include <filesystem>
#include <fstream>

namespace kvmi::sim {

namespace {

cookie_read checked(std::vector<uint8_t> bytes, const std::string& what) {
  cookie_read r;
  if (auto why = hs::check_cookie(bytes); !why.empty())
    r.error = what + ": " + std::string(why);
  else
    r.bytes = std::move(bytes);
  return r;
}

} // namespace

cookie_read read_cookie_file(const std::string& path) {
  std::string what = "cookie file " + path;
  std::ifstream f(path, std::ios::binary);
  if (!f)
    return {{}, what + ": cannot open"};
  // A directory opens as a stream and only fails on the first read.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return {{}, what + ": not a regular file"};
  std::vector<uint8_t> bytes(hs::max_cookie + 1); // one more: an over-long file shows
  f.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f && !f.eof())
    return {{}, what + ": cannot read"};
  bytes.resize(size_t(f.gcount()));
  return checked(std::move(bytes), what);
}

cookie_read cookie_from_hex(std::string_view hex) {
  if (hex.size() % 2)
    return {{}, "--cookie: an odd number of hex digits"};
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < hex.size(); i += 2) {
    uint8_t b = 0;
    auto end = hex.data() + i + 2;
    if (auto [p, ec] = std::from_chars(hex.data() + i, end, b, 16); ec != std::errc() || p != end)
      return {{}, "--cookie: not hex"};
    bytes.push_back(b);
  }
  return checked(std::move(bytes), "--cookie");
}

} // namespace kvmi::sim
