#include "server/nats/nats_client_auth.hpp"

#include "server/secret_file.hpp"

#include <nats/nats.h>

namespace kvmid {

namespace {

std::string failed(const std::string& field, const std::string& what, natsStatus s) {
  return field + ": " + what + ": " + nats_error_text(s);
}

} // namespace

std::string nats_error_text(int status) {
  auto s = natsStatus(status);
  std::string text = natsStatus_GetText(s);
  const char* last = nats_GetLastError(nullptr);
  std::string detail = last ? last : "";
  if (detail.starts_with("(")) // "(conn.c:1905): Authorization Violation"
    if (auto end = detail.find("): "); end != std::string::npos)
      detail.erase(0, end + 3);
  if (!detail.empty() && detail != text)
    text += " (" + detail + ")";
  return text;
}

nats_password read_nats_password(const std::string& file) {
  auto pw = read_secret_file(file, 4096);
  if (!pw.error.empty())
    return {{}, pw.error};
  std::string p(pw.bytes.begin(), pw.bytes.end());
  while (!p.empty() && (p.back() == '\n' || p.back() == '\r'))
    p.pop_back();
  return {p, {}};
}

std::string apply_nats_auth(natsOptions* no, const nats_client_auth& a,
                            const nats_auth_names& names) {
  natsStatus s = NATS_OK;
  if (!a.user.empty() && (s = natsOptions_SetUserInfo(no, a.user.c_str(), a.password.c_str())) != NATS_OK)
    return failed(names.user, "not usable", s);
  if (!a.nkey_seed_file.empty()) {
    auto seed = read_secret_file(a.nkey_seed_file, 4096);
    if (!seed.error.empty())
      return names.nkey_seed_file + ": " + seed.error;
    // The client derives the public key from the seed and signs the
    // server's nonce with it; it reads the file itself.
    if ((s = natsOptions_SetNKeyFromSeed(no, nullptr, a.nkey_seed_file.c_str())) != NATS_OK)
      return failed(names.nkey_seed_file, "not usable", s);
  }
  if (!a.creds_file.empty()) {
    auto creds = read_secret_file(a.creds_file, 64 * 1024);
    if (!creds.error.empty())
      return names.creds_file + ": " + creds.error;
    if ((s = natsOptions_SetUserCredentialsFromFiles(no, a.creds_file.c_str(), nullptr)) != NATS_OK)
      return failed(names.creds_file, "not usable", s);
  }
  if (!a.tls)
    return {};
  if ((s = natsOptions_SetSecure(no, true)) != NATS_OK)
    return failed(names.ca_file, "no TLS in this NATS client", s);
  auto& f = a.tls_files;
  if (!f.ca_file.empty()
      && (s = natsOptions_LoadCATrustedCertificates(no, f.ca_file.c_str())) != NATS_OK)
    return failed(names.ca_file, f.ca_file, s);
  if (!f.cert_file.empty()
      && (s = natsOptions_LoadCertificatesChain(no, f.cert_file.c_str(), f.key_file.c_str()))
           != NATS_OK)
    return failed(names.cert_file, f.cert_file, s);
  return {};
}

} // namespace kvmid
