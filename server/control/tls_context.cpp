#include "server/control/tls_context.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kvmid::control {

std::string take_ssl_error(const char* fallback) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0)
    return fallback;
  const char* reason = ERR_reason_error_string(e);
  return reason ? reason : fallback;
}

namespace {

using load_result = std::variant<std::shared_ptr<tls_context>, std::string>;

std::string field_error(const char* field, const std::string& path, const std::string& why) {
  return std::string("api.tls.") + field + ": " + path + ": " + why;
}

// An unreadable file gets the system's reason, not OpenSSL's "system lib".
std::string readable(const char* field, const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0)
    return field_error(field, path, std::strerror(errno));
  return {};
}

// The key is read through one descriptor, so the mode checked is the mode
// of the file whose bytes are used.
std::variant<EVP_PKEY*, std::string> read_key(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return field_error("key_file", path, std::strerror(errno));
  struct stat st{};
  std::string err;
  if (::fstat(fd, &st) != 0)
    err = std::strerror(errno);
  else if (!S_ISREG(st.st_mode))
    err = "not a regular file";
  else if (st.st_mode & (S_IRWXG | S_IRWXO))
    err = "readable by group or others (chmod 600 it)";
  else if (st.st_size > 64 * 1024)
    err = "larger than 64 KiB, not a private key";
  std::string pem;
  if (err.empty()) {
    pem.resize(size_t(st.st_size));
    size_t got = 0;
    while (got < pem.size()) {
      ssize_t n = ::read(fd, pem.data() + got, pem.size() - got);
      if (n <= 0)
        break;
      got += size_t(n);
    }
    pem.resize(got);
  }
  ::close(fd);
  if (!err.empty())
    return field_error("key_file", path, err);
  BIO* b = BIO_new_mem_buf(pem.data(), int(pem.size()));
  // No passphrase prompt: kvmid runs unattended, so an encrypted key is an error.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  EVP_PKEY* key = b ? PEM_read_bio_PrivateKey(b, nullptr, no_passphrase, nullptr) : nullptr;
  BIO_free(b);
  OPENSSL_cleanse(pem.data(), pem.size());
  if (!key)
    return field_error("key_file", path,
                       "no unencrypted PEM private key (" + take_ssl_error("unreadable") + ")");
  return key;
}

} // namespace

tls_context::~tls_context() { SSL_CTX_free(ctx_); }

load_result tls_context::load(const tls_options& o) {
  ERR_clear_error();
  std::shared_ptr<tls_context> t(new tls_context);
  t->ctx_ = SSL_CTX_new(TLS_server_method());
  if (!t->ctx_)
    return "api.tls: cannot create a TLS context: " + take_ssl_error("out of memory");
  SSL_CTX* c = t->ctx_;
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  // No renegotiation (a client could make the ring thread redo handshakes),
  // no compression (CRIME).
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION
                           | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // TLS 1.2: forward-secret AEAD suites only (1.3 has nothing else).
  SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20");
  // Idle keep-alive connections and streams give their record buffers back.
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);

  if (auto e = readable("cert_file", o.cert_file); !e.empty())
    return e;
  if (SSL_CTX_use_certificate_chain_file(c, o.cert_file.c_str()) != 1)
    return field_error("cert_file", o.cert_file,
                       "no PEM certificate (" + take_ssl_error("unreadable") + ")");
  auto key = read_key(o.key_file);
  if (auto* e = std::get_if<std::string>(&key))
    return *e;
  int used = SSL_CTX_use_PrivateKey(c, std::get<EVP_PKEY*>(key));
  EVP_PKEY_free(std::get<EVP_PKEY*>(key));
  if (used != 1 || SSL_CTX_check_private_key(c) != 1)
    return field_error("key_file", o.key_file, "does not match the certificate in api.tls.cert_file");

  if (!o.client_ca_file.empty()) {
    if (auto e = readable("client_ca_file", o.client_ca_file); !e.empty())
      return e;
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.client_ca_file.c_str());
    if (!names || SSL_CTX_load_verify_locations(c, o.client_ca_file.c_str(), nullptr) != 1) {
      if (names)
        sk_X509_NAME_pop_free(names, X509_NAME_free);
      return field_error("client_ca_file", o.client_ca_file,
                         "no PEM CA certificate (" + take_ssl_error("unreadable") + ")");
    }
    SSL_CTX_set_client_CA_list(c, names);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    t->verify_clients_ = true;
  }
  // Session resumption with client verification needs a context id.
  static const unsigned char sid[] = "kvmid-api";
  SSL_CTX_set_session_id_context(c, sid, sizeof sid - 1);
  return t;
}

} // namespace kvmid::control
