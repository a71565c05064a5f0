#include "server/control/tls_conn.hpp"

#include "actors/log.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <climits>
#include <cstdio>

namespace kvmid::control {

namespace {
// Plaintext the wrapped handler may queue before the handshake is done (an
// early 503 or 408); more closes the connection.
constexpr size_t max_early_bytes = 64 * 1024;
// Ciphertext waiting for OpenSSL: it is consumed as it arrives, so more than
// this means a peer feeding something that never completes a record.
constexpr size_t max_pending_in = 1 << 20;
constexpr size_t read_chunk = 16 * 1024;
} // namespace

// What the wrapped handler sees: the real connection, with sends encrypted
// and close preceded by a close_notify.
class tls_conn::plain_ctx final : public net::conn_ctx {
public:
  plain_ctx(tls_conn& t, net::conn_ctx& wire) : t_(t), wire_(wire) {}
  net::conn_id id() const override { return wire_.id(); }
  const std::string& peer() const override { return wire_.peer(); }
  bool send(std::span<const uint8_t> b) override { return t_.send_plain(wire_, b); }
  bool send(std::vector<uint8_t>&& b) override { return t_.send_plain(wire_, b); }
  void close(bool now) override { t_.close_plain(wire_, now); }
  void set_timer(std::chrono::milliseconds after, uint64_t token) override {
    wire_.set_timer(after, token);
  }
  void cancel_timer(uint64_t token) override { wire_.cancel_timer(token); }
  size_t queued() const override { return wire_.queued(); }

private:
  tls_conn& t_;
  net::conn_ctx& wire_;
};

tls_conn::tls_conn(params p, std::unique_ptr<net::connection_handler> inner)
  : p_(std::move(p)), inner_(std::move(inner)) {}

tls_conn::~tls_conn() { SSL_free(ssl_); } // frees both BIOs

void tls_conn::on_open(net::conn_ctx& wire) {
  ERR_clear_error();
  ssl_ = SSL_new(p_.tls->native());
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (!ssl_ || !in || !out) {
    BIO_free(in);
    BIO_free(out);
    fail(wire, "cannot allocate TLS state: " + take_ssl_error("out of memory"));
    return;
  }
  SSL_set_bio(ssl_, in, out);
  in_ = in;
  out_ = out;
  SSL_set_accept_state(ssl_);
  wire.set_timer(p_.handshake_timeout, handshake_timer);
  inner_open_ = true;
  plain_ctx plain(*this, wire);
  inner_->on_open(plain);
}

void tls_conn::on_data(net::conn_ctx& wire, std::span<const uint8_t> bytes) {
  if (failed_ || closed_ || bytes.empty())
    return;
  received_ += bytes.size();
  if (BIO_ctrl_pending(in_) + bytes.size() > max_pending_in) {
    fail(wire, "too much input without a complete TLS record");
    return;
  }
  if (BIO_write(in_, bytes.data(), int(bytes.size())) != int(bytes.size())) {
    fail(wire, "cannot buffer TLS input");
    return;
  }
  if (!established_)
    handshake(wire);
  if (established_)
    read_records(wire);
}

void tls_conn::handshake(net::conn_ctx& wire) {
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r != 1) {
    int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      flush(wire); // our part of the handshake
      return;
    }
    fail(wire, take_ssl_error("protocol error"));
    return;
  }
  established_ = true;
  wire.cancel_timer(handshake_timer);
  flush(wire);
  if (!early_.empty()) {
    auto early = std::move(early_);
    early_.clear();
    encrypt(wire, early);
  }
}

void tls_conn::read_records(net::conn_ctx& wire) {
  uint8_t buf[read_chunk];
  while (!failed_ && !closed_) {
    ERR_clear_error();
    int r = SSL_read(ssl_, buf, sizeof buf);
    if (r > 0) {
      plain_ctx plain(*this, wire);
      inner_->on_data(plain, std::span<const uint8_t>(buf, size_t(r)));
      continue;
    }
    int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ)
      break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      // The client's close_notify: what is queued still goes out.
      close_plain(wire, false);
      break;
    }
    // A broken record after the handshake: no alert worth waiting for.
    failed_ = true;
    ERR_clear_error();
    wire.close(true);
    return;
  }
  flush(wire); // session tickets, key updates
}

bool tls_conn::send_plain(net::conn_ctx& wire, std::span<const uint8_t> bytes) {
  if (failed_ || closed_)
    return false;
  if (!established_) {
    if (early_.size() + bytes.size() > max_early_bytes) {
      fail(wire, "too much output before the handshake finished");
      return false;
    }
    early_.insert(early_.end(), bytes.begin(), bytes.end());
    return true;
  }
  return encrypt(wire, bytes);
}

// With a memory BIO SSL_write takes everything at once; the records then
// leave as one message on the real connection, so the wrapped handler's
// view of queued() stays one message per send.
bool tls_conn::encrypt(net::conn_ctx& wire, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    int n = int(std::min<size_t>(bytes.size(), INT_MAX / 2));
    ERR_clear_error();
    if (SSL_write(ssl_, bytes.data(), n) != n) {
      failed_ = true;
      ERR_clear_error();
      wire.close(true);
      return false;
    }
    bytes = bytes.subspan(size_t(n));
  }
  return flush(wire);
}

bool tls_conn::flush(net::conn_ctx& wire) {
  size_t n = BIO_ctrl_pending(out_);
  if (n == 0)
    return true;
  std::vector<uint8_t> v(n);
  int got = BIO_read(out_, v.data(), int(n));
  v.resize(got > 0 ? size_t(got) : 0);
  return wire.send(std::move(v));
}

void tls_conn::close_plain(net::conn_ctx& wire, bool now) {
  if (!now && established_ && !failed_ && !closed_) {
    ERR_clear_error();
    SSL_shutdown(ssl_); // queues our close_notify
    ERR_clear_error();
    flush(wire);
  }
  wire.close(now);
}

void tls_conn::count_failure(net::conn_ctx& wire, const std::string& why) {
  failed_ = true;
  if (p_.failures)
    p_.failures->inc();
  if (log_on(log_warn))
    std::fprintf(stderr, "kvmid: API TLS handshake with %s failed: %s\n", wire.peer().c_str(),
                 why.c_str());
}

void tls_conn::fail(net::conn_ctx& wire, const std::string& why) {
  if (failed_)
    return;
  count_failure(wire, why);
  if (out_)
    flush(wire); // the alert, so the client learns why
  wire.close(false);
}

void tls_conn::on_timer(net::conn_ctx& wire, uint64_t token) {
  if (token == handshake_timer) {
    if (!established_)
      fail(wire, "not finished within " + std::to_string(p_.handshake_timeout.count()) + " ms");
    return;
  }
  plain_ctx plain(*this, wire);
  inner_->on_timer(plain, token);
}

void tls_conn::on_close(net::conn_ctx& wire, net::close_reason why) {
  // A peer that spoke and left mid-handshake failed it too; a bare
  // connect-and-close (a port probe) did not try.
  if (!established_ && !failed_ && received_ > 0)
    count_failure(wire, "connection closed during the handshake");
  closed_ = true;
  if (inner_open_) {
    plain_ctx plain(*this, wire);
    inner_->on_close(plain, why);
  }
}

void tls_conn::run_posted(net::conn_ctx& wire, const net::posted_fn& fn) {
  plain_ctx plain(*this, wire);
  fn(plain, *inner_);
}

} // namespace kvmid::control
