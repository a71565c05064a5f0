// Kept apart from api.cpp so tests with a fake poster need no reactor.
#include "server/control/api.hpp"

namespace kvmid::control {

poster reactor_poster(net::reactor& r) {
  return [&r](net::conn_id c, std::function<void(net::conn_ctx&, net::connection_handler&)> fn) {
    r.post(c, std::move(fn));
  };
}

} // namespace kvmid::control
