#include "server/control/auth.hpp"
#include "server/secret_file.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <stdexcept>

namespace kvmid::control {

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}
} // namespace

token_auth token_auth::from_file(const std::string& path) {
  auto r = read_secret_file(path, 4096);
  if (!r.error.empty())
    throw std::runtime_error("api token file " + r.error);
  std::string all(r.bytes.begin(), r.bytes.end());
  std::string_view tok = trim(all);
  if (tok.empty())
    throw std::runtime_error("api token file " + path + ": empty");
  for (char c : tok)
    if (std::isspace(static_cast<unsigned char>(c)))
      throw std::runtime_error("api token file " + path + ": token contains whitespace");
  return token_auth(std::string(tok));
}

token_auth::token_auth(std::string token) : token_(std::move(token)) {
  if (token_.empty())
    throw std::runtime_error("api token is empty");
}

bool token_auth::check(std::optional<std::string_view> authorization) const {
  if (!authorization)
    return false;
  std::string_view v = trim(*authorization);
  constexpr std::string_view scheme = "bearer";
  if (v.size() <= scheme.size() || v[scheme.size()] != ' ')
    return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(v[i])) != scheme[i])
      return false;
  std::string_view given = trim(v.substr(scheme.size() + 1));
  // Compare digests so neither the length nor a prefix leaks through timing.
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(given.data()), given.size(), a);
  SHA256(reinterpret_cast<const unsigned char*>(token_.data()), token_.size(), b);
  return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

} // namespace kvmid::control
