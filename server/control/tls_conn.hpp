// HTTPS on the reactor: a connection handler that speaks TLS to the socket
// and plain bytes to the handler it wraps (the HTTP connection). OpenSSL
// works on memory BIOs, so the ring thread never waits on it: ciphertext
// arrives through on_data, and what the wrapped handler sends is encrypted
// into the real connection's bounded send queue.
#pragma once

#include "actors/metrics.hpp"
#include "server/control/tls_context.hpp"
#include "server/reactor.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace kvmid::control {

class tls_conn final : public net::connection_handler {
public:
  struct params {
    std::shared_ptr<const tls_context> tls;
    counter* failures = nullptr; // kvmid_api_tls_failures_total
    std::chrono::milliseconds handshake_timeout{10'000};
  };
  // The wrapped handler's timer tokens must stay below this one.
  static constexpr uint64_t handshake_timer = uint64_t(1) << 63;

  tls_conn(params p, std::unique_ptr<net::connection_handler> inner);
  ~tls_conn() override;

  void on_open(net::conn_ctx& wire) override;
  void on_data(net::conn_ctx& wire, std::span<const uint8_t> bytes) override;
  void on_timer(net::conn_ctx& wire, uint64_t token) override;
  void on_close(net::conn_ctx& wire, net::close_reason why) override;
  void run_posted(net::conn_ctx& wire, const net::posted_fn& fn) override;

private:
  class plain_ctx;

  bool send_plain(net::conn_ctx& wire, std::span<const uint8_t> bytes);
  void close_plain(net::conn_ctx& wire, bool now);
  bool encrypt(net::conn_ctx& wire, std::span<const uint8_t> bytes);
  bool flush(net::conn_ctx& wire);
  void handshake(net::conn_ctx& wire);
  void read_records(net::conn_ctx& wire);
  void count_failure(net::conn_ctx& wire, const std::string& why);
  void fail(net::conn_ctx& wire, const std::string& why);

  params p_;
  std::unique_ptr<net::connection_handler> inner_;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;  // ciphertext from the socket (owned by ssl_)
  BIO* out_ = nullptr; // ciphertext for the socket (owned by ssl_)
  std::vector<uint8_t> early_; // plaintext sent before the handshake finished
  size_t received_ = 0;
  bool established_ = false, failed_ = false, closed_ = false, inner_open_ = false;
};

} // namespace kvmid::control
