// kvmid's connection to NATS, from the config's "nats" section: servers,
// user/password, nkey seed or creds file, TLS files. It retries for ever,
// also when no server answers at start-up, so kvmid starts (and spools)
// while NATS is down.
//
// Everything NATS runs below the event path: the client library's threads
// (started by the connect, on a thread of their own) and the publisher's
// run at nice +10 (publishing_nice). A vCPU waits on every KVMI reply; a
// record can wait in the bus queue, and one dropped there is counted. On
// 2 cores, publishing every raw event at 64 vCPUs flat out, this took the
// round trip's p50 from x3.4-3.8 that of NATS off to x1.2-1.4.
#pragma once

#include "server/nats/nats_options.hpp"

#include <memory>
#include <string>
#include <variant>

struct __natsConnection;

namespace kvmid {

inline constexpr int publishing_nice = 10;

// The calling thread, and every thread it starts from now on, at
// publishing_nice above where it ran (at most 19). Raising nice needs no
// privilege; kvmid never lowers it again.
void run_below_event_path();

class nats_link {
public:
  // An error names the field or file at fault. The caller's own priority
  // stays as it is.
  static std::variant<std::unique_ptr<nats_link>, std::string> connect(const nats_options& o);
  ~nats_link();
  nats_link(const nats_link&) = delete;
  nats_link& operator=(const nats_link&) = delete;

  __natsConnection* connection() const { return nc_; }
  bool connected() const;

private:
  nats_link() = default;
  static std::variant<std::unique_ptr<nats_link>, std::string> connect_here(const nats_options& o);
  __natsConnection* nc_ = nullptr;
};

} // namespace kvmid
