// kvmid's connection to NATS, from the config's "nats" section: servers,
// user/password, nkey seed or creds file, TLS files. It retries for ever,
// also when no server answers at start-up, so kvmid starts (and spools)
// while NATS is down.
#pragma once

#include "server/nats/nats_options.hpp"

#include <memory>
#include <string>
#include <variant>

struct __natsConnection;

namespace kvmid {

class nats_link {
public:
  // An error names the field or file at fault.
  static std::variant<std::unique_ptr<nats_link>, std::string> connect(const nats_options& o);
  ~nats_link();
  nats_link(const nats_link&) = delete;
  nats_link& operator=(const nats_link&) = delete;

  __natsConnection* connection() const { return nc_; }
  bool connected() const;

private:
  nats_link() = default;
  __natsConnection* nc_ = nullptr;
};

} // namespace kvmid
