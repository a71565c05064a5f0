// Reading a uapi ABI dump (abi.txt of kernel-patches/uapi, one
// `kind NAME=value` line each) and matching it with what proto/ says, in
// both directions, so neither side can gain an entry the other lacks.
#pragma once

#include <doctest/doctest.h>

#include <cctype>
#include <fstream>
#include <map>
#include <string>
#include <string_view>

#define SIZE(K, T) m["size " #K] = sizeof(T)
#define OFF(K, T, F) m["offset " #K "." #F] = offsetof(T, F)

namespace kvmi::testing::uapi {

using abi = std::map<std::string, long long>;

inline std::string upper(std::string_view s) {
  std::string u(s);
  for (auto& c : u)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}

inline abi load_dump(const char* path) {
  abi m;
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "no ABI dump at " << path << " (targets kvmi_uapi_*abi)");
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.rfind('=');
    REQUIRE_MESSAGE(eq != std::string::npos, "bad dump line: " << line);
    auto [it, fresh] = m.emplace(line.substr(0, eq), std::stoll(line.substr(eq + 1)));
    CHECK_MESSAGE(fresh, "duplicate dump line: " << line);
  }
  return m;
}

// Every dumped line has a proto counterpart of the same value and every
// proto counterpart is dumped. at_least guards against a broken extractor.
inline void match(const abi& dump, const abi& want, size_t at_least) {
  CHECK(dump.size() > at_least);
  for (auto& [key, value] : dump) {
    CAPTURE(key);
    auto it = want.find(key);
    CHECK_MESSAGE(it != want.end(), "the patch defines " << key << " but proto has no counterpart");
    if (it != want.end())
      CHECK_MESSAGE(it->second == value, key << ": patch " << value << ", proto " << it->second);
  }
  for (auto& [key, value] : want) {
    CAPTURE(key);
    CHECK_MESSAGE(dump.count(key) == 1, "proto has " << key << " but the patch does not");
  }
}

} // namespace kvmi::testing::uapi
