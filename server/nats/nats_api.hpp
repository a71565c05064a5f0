// The control API over NATS request-reply. kvmid answers requests on
//   <prefix>.api.<host>   this kvmid
//   <prefix>.api.all      every kvmid (kvmictl --nats gathers the answers)
// A request is JSON {"method": "GET", "path": "/v1/vms?...", "body": {...}}
// (body: a JSON value, sent as the HTTP body; optional); the reply is
// {"host": "<host>", "status": 200, "body": <the HTTP answer's JSON>} with
// "headers" when the HTTP answer has some (Allow, Location). The request
// goes through the HTTP API's router, refusals and handlers with the role
// of "api_role": NATS has authenticated the sender, and its permissions
// decide who may publish to these subjects (config/README.md).
#pragma once

#include "server/control/api.hpp"
#include "server/nats/nats_link.hpp"
#include "server/nats/nats_options.hpp"

#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <variant>

namespace kvmid {

// A NATS request's JSON as an HTTP request, or the 400 it gets.
std::variant<control::request, control::http_error> request_from_json(std::string_view text);
// An HTTP answer as the reply's JSON.
std::string reply_json(const control::response& r, std::string_view host);

class nats_api {
public:
  static std::variant<std::unique_ptr<nats_api>, std::string>
  start(nats_link& link, control::http_api& api, const nats_options& o);
  // Stops taking requests and waits for the handlers under way; replies
  // still to come are dropped.
  ~nats_api();
  nats_api(const nats_api&) = delete;
  nats_api& operator=(const nats_api&) = delete;

  struct state;

private:
  nats_api() = default;
  std::shared_ptr<state> st_;
};

} // namespace kvmid
