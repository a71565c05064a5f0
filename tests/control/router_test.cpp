#include "server/control/router.hpp"

#include <doctest/doctest.h>

#include <set>
#include <string>

using namespace kvmid::control;

namespace {
// A concrete path for a pattern, with "{x}" replaced by "X-x".
std::string instantiate(std::string_view pattern) {
  std::string out;
  size_t i = 0;
  while (i < pattern.size()) {
    if (pattern[i] == '{') {
      auto j = pattern.find('}', i);
      out += "X-";
      out += pattern.substr(i + 1, j - i - 1);
      i = j + 1;
    } else {
      out += pattern[i++];
    }
  }
  return out;
}
} // namespace

TEST_SUITE("control") {

TEST_CASE("router: every route matches its own path and method / with parameters") {
  std::set<int> ids;
  for (auto& e : routes()) {
    CAPTURE(e.pattern);
    CAPTURE(e.method);
    auto r = route(e.method, instantiate(e.pattern));
    REQUIRE(r.match);
    CHECK(r.match->id == e.id);
    CHECK(r.status == 200);
    ids.insert(static_cast<int>(e.id));
    for (auto& [k, v] : r.match->params)
      CHECK(v == "X-" + k);
  }
  CHECK(ids.size() == routes().size()); // no route listed twice
}

TEST_CASE("router: parameters are extracted") {
  auto r = route("GET", "/v1/vms/2b7c4e1a-0000-4000-8000-000000000001/vcpus/3/registers");
  REQUIRE(r.match);
  CHECK(r.match->id == route_id::get_registers);
  CHECK(r.match->param("vm") == "2b7c4e1a-0000-4000-8000-000000000001");
  CHECK(r.match->param("vcpu") == "3");
  CHECK(r.match->param("nope").empty());
  auto d = route("DELETE", "/v1/vms/web1/breakpoints/0xffff1000");
  REQUIRE(d.match);
  CHECK(d.match->id == route_id::remove_breakpoint);
  CHECK(d.match->param("gpa") == "0xffff1000");
}

TEST_CASE("router: a known path with another method is 405 with Allow") {
  auto r = route("DELETE", "/v1/vms/x/memory");
  CHECK_FALSE(r.match);
  CHECK(r.status == 405);
  CHECK(r.allow == "GET, PUT");
  auto p = route("GET", "/v1/vms/x/pause");
  CHECK(p.status == 405);
  CHECK(p.allow == "POST");
  auto b = route("PUT", "/v1/vms/x/breakpoints");
  CHECK(b.status == 405);
  CHECK(b.allow == "GET, POST");
}

TEST_CASE("router: unknown paths are 404") {
  for (const char* path : {"/", "/v1", "/v2/vms", "/v1/vms/", "/v1//vms", "/v1/vms/x/y",
                           "/v1/vms/x/vcpus/1/registers/more", "/metrics/", "", "v1/vms"}) {
    CAPTURE(path);
    auto r = route("GET", path);
    CHECK_FALSE(r.match);
    CHECK(r.status == 404);
  }
}

}
