#include "server/control/ui/ui_response.hpp"

#include "actors/excerpt.hpp"
#include "server/control/errors.hpp"
#include "server/control/ui/ui_assets.hpp"

namespace kvmid::control {

response ui_response(std::string_view asset) {
  for (auto& a : ui_assets()) {
    if (a.name != asset)
      continue;
    response r;
    r.content_type = std::string(a.content_type);
    r.body = std::string(a.body);
    // serialize() adds Cache-Control: no-store, as on every answer: a page
    // from an older kvmid build is never run against a newer API.
    r.headers = {{"Content-Security-Policy", std::string(ui_content_security_policy)},
                 {"X-Content-Type-Options", "nosniff"},
                 {"X-Frame-Options", "DENY"},
                 {"Referrer-Policy", "no-referrer"}};
    return r;
  }
  return error_response(not_found("not_found", "no dashboard file '" + excerpt(asset) + "'"));
}

} // namespace kvmid::control
