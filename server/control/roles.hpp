// Who may do what: the full token may use every route; the read token
// (api.read_token_file) only GET routes, the event stream and /metrics, so a
// monitoring service never holds a secret that can write guest memory.
// GET /healthz needs no token: a load balancer or systemd probe holds none,
// and the answer tells nothing about the guests. Nor do the dashboard's
// static files (GET /ui...).
#pragma once

#include "server/control/auth.hpp"
#include "server/control/router.hpp"

#include <optional>
#include <string_view>

namespace kvmid::control {

enum class role : uint8_t {
  none, // no or wrong token
  read, // GET routes only
  full, // everything
};
std::string_view name(role r);

// A route that changes a VM or kvmid (every method but GET).
bool mutating(route_id r);
// A route anyone may call, with or without a token.
bool open_to_all(route_id r);
bool allowed(role who, route_id r);

class api_access {
public:
  // Throws std::runtime_error when both tokens are the same secret (the
  // read token would then grant everything).
  api_access(token_auth full, std::optional<token_auth> read = std::nullopt);

  // The role an Authorization header value grants.
  role check(std::optional<std::string_view> authorization) const;

private:
  token_auth full_;
  std::optional<token_auth> read_;
};

} // namespace kvmid::control
