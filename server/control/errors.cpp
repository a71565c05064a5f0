#include "server/control/errors.hpp"

#include <nlohmann/json.hpp>

namespace kvmid::control {

std::string error_body(std::string_view code, std::string_view message) {
  nlohmann::json j = {{"error", {{"code", code}, {"message", message}}}};
  // Messages may quote client input: never let invalid UTF-8 throw.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

response error_response(const http_error& e) {
  response r;
  r.status = e.status;
  r.body = error_body(e.code, e.message);
  if (e.status == 401)
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"kvmid\"");
  return r;
}

} // namespace kvmid::control
