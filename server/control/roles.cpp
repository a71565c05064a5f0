#include "server/control/roles.hpp"

#include <stdexcept>

namespace kvmid::control {

std::string_view name(role r) {
  switch (r) {
    case role::none: return "none";
    case role::read: return "read";
    case role::full: return "full";
  }
  return "none";
}

bool mutating(route_id r) {
  for (auto& e : routes())
    if (e.id == r)
      return e.method != "GET";
  return true;
}

bool open_to_all(route_id r) {
  // The dashboard's static files hold no secret; the calls it makes carry
  // the token.
  return r == route_id::healthz || r == route_id::ui_page || r == route_id::ui_asset;
}

bool allowed(role who, route_id r) {
  return who == role::full || (who == role::read && !mutating(r)) || open_to_all(r);
}

api_access::api_access(token_auth full, std::optional<token_auth> read)
  : full_(std::move(full)), read_(std::move(read)) {
  if (read_ && read_->same_token(full_))
    throw std::runtime_error("api.read_token_file holds the same token as api.token_file");
}

role api_access::check(std::optional<std::string_view> authorization) const {
  // Both comparisons always run: the time taken does not tell which matched.
  bool is_full = full_.check(authorization);
  bool is_read = read_ && read_->check(authorization);
  return is_full ? role::full : is_read ? role::read : role::none;
}

} // namespace kvmid::control
