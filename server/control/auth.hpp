// Bearer-token auth: the token lives in a file named by the config (never in
// the config itself), compared in constant time.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kvmid::control {

class token_auth {
public:
  // Reads the token (surrounding whitespace trimmed) from a secret file
  // (server/secret_file.hpp: regular, mode 0600 or stricter, at most 4096
  // bytes). Throws std::runtime_error naming the file when it cannot be
  // read, is empty or holds more than one word.
  static token_auth from_file(const std::string& path);
  explicit token_auth(std::string token); // throws on empty

  // The value of an Authorization header: "Bearer <token>" (scheme
  // case-insensitive). Constant time in the token's contents.
  bool check(std::optional<std::string_view> authorization) const;
  bool same_token(const token_auth& o) const { return token_ == o.token_; }

private:
  std::string token_;
};

} // namespace kvmid::control
