// The server end of TLS for the control API: certificate chain, private key
// and, for mutual TLS, the CA that client certificates must be signed by,
// loaded once into an SSL_CTX every HTTPS connection shares. TLS 1.2 or
// newer only.
#pragma once

#include <openssl/types.h>

#include <memory>
#include <string>
#include <variant>

namespace kvmid::control {

// The config's "api.tls" object.
struct tls_options {
  std::string cert_file;      // PEM: the server certificate, then its chain
  std::string key_file;       // PEM private key; refused if group/others have any access
  std::string client_ca_file; // PEM, optional: set means clients must present a cert it signed
};

class tls_context {
public:
  // Reads and checks the files. The error names the field and the file
  // ("api.tls.key_file: /etc/kvmid/api.key: readable by group or others").
  static std::variant<std::shared_ptr<tls_context>, std::string> load(const tls_options& o);

  ~tls_context();
  tls_context(const tls_context&) = delete;
  tls_context& operator=(const tls_context&) = delete;

  SSL_CTX* native() const { return ctx_; }
  bool verifies_clients() const { return verify_clients_; }

private:
  tls_context() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verify_clients_ = false;
};

// The oldest error on this thread's OpenSSL error queue as text (the queue
// is emptied), or `fallback` when it is empty.
std::string take_ssl_error(const char* fallback);

} // namespace kvmid::control
