#include "server/control/roles.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

using namespace kvmid::control;

TEST_SUITE("control") {

TEST_CASE("roles: each token gets its role / a wrong one none") {
  api_access a(token_auth("full-secret"), token_auth("read-secret"));
  CHECK(a.check("Bearer full-secret") == role::full);
  CHECK(a.check("Bearer read-secret") == role::read);
  CHECK(a.check("Bearer other") == role::none);
  CHECK(a.check(std::nullopt) == role::none);
  api_access only_full(token_auth("full-secret"));
  CHECK(only_full.check("Bearer read-secret") == role::none);
}

TEST_CASE("roles: the read role may use exactly the GET routes") {
  for (auto& e : routes()) {
    CAPTURE(e.pattern);
    CHECK(mutating(e.id) == (e.method != "GET"));
    CHECK(allowed(role::full, e.id));
    CHECK(allowed(role::read, e.id) == (e.method == "GET"));
    // Without a token: GET /healthz and the dashboard's static files only.
    bool open = e.pattern == "/healthz" || e.pattern == "/ui" || e.pattern == "/ui/{asset}";
    CHECK(allowed(role::none, e.id) == open);
    CHECK(open_to_all(e.id) == open);
  }
}

TEST_CASE("roles: the same secret for both tokens is refused") {
  CHECK_THROWS_AS(api_access(token_auth("same"), token_auth("same")), std::runtime_error);
}

}
