#include "server/control/router.hpp"

#include <doctest/doctest.h>

#include <map>
#include <set>
#include <vector>
#include <string>

using namespace kvmid::control;

namespace {

struct expected_route {
  const char* method;
  const char* path;
  route_id id;
  std::map<std::string, std::string> params;
};

// Written from the API's documentation, not from the route table.
const std::vector<expected_route> documented = {
  {"GET", "/v1/vms", route_id::list_vms, {}},
  {"GET", "/v1/vms/web1", route_id::get_vm, {{"vm", "web1"}}},
  {"GET", "/v1/vms/web1/vcpus", route_id::list_vcpus, {{"vm", "web1"}}},
  {"POST", "/v1/vms/web1/pause", route_id::pause_vm, {{"vm", "web1"}}},
  {"POST", "/v1/vms/web1/resume", route_id::resume_vm, {{"vm", "web1"}}},
  {"POST", "/v1/vms/web1/unhook", route_id::unhook_vm, {{"vm", "web1"}}},
  {"POST", "/v1/vms/web1/admit", route_id::admit_vm, {{"vm", "web1"}}},
  {"DELETE", "/v1/vms/web1", route_id::forget_vm, {{"vm", "web1"}}},
  {"GET", "/v1/vms/web1/vcpus/3/registers", route_id::get_registers,
   {{"vm", "web1"}, {"vcpu", "3"}}},
  {"PUT", "/v1/vms/web1/vcpus/3/events", route_id::set_vcpu_events,
   {{"vm", "web1"}, {"vcpu", "3"}}},
  {"GET", "/v1/vms/web1/memory", route_id::read_memory, {{"vm", "web1"}}},
  {"PUT", "/v1/vms/web1/memory", route_id::write_memory, {{"vm", "web1"}}},
  {"GET", "/v1/vms/web1/page-access", route_id::get_page_access, {{"vm", "web1"}}},
  {"PUT", "/v1/vms/web1/page-access", route_id::set_page_access, {{"vm", "web1"}}},
  {"GET", "/v1/vms/web1/breakpoints", route_id::list_breakpoints, {{"vm", "web1"}}},
  {"POST", "/v1/vms/web1/breakpoints", route_id::add_breakpoint, {{"vm", "web1"}}},
  {"GET", "/v1/vms/web1/breakpoints/0x1000", route_id::get_breakpoint,
   {{"vm", "web1"}, {"gpa", "0x1000"}}},
  {"DELETE", "/v1/vms/web1/breakpoints/0x1000", route_id::remove_breakpoint,
   {{"vm", "web1"}, {"gpa", "0x1000"}}},
  {"POST", "/v1/policies/reload", route_id::reload_policies, {}},
  {"GET", "/v1/events", route_id::events, {}},
  {"GET", "/metrics", route_id::metrics, {}},
  {"GET", "/v1/version", route_id::version, {}},
  {"GET", "/healthz", route_id::healthz, {}},
  {"GET", "/ui", route_id::ui_page, {}},
  {"GET", "/ui/app.js", route_id::ui_asset, {{"asset", "app.js"}}},
};

} // namespace

TEST_SUITE("control") {

TEST_CASE("router: every documented endpoint routes to its handler with its parameters") {
  for (auto& e : documented) {
    CAPTURE(e.method);
    CAPTURE(e.path);
    auto r = route(e.method, e.path);
    REQUIRE(r.match);
    CHECK(r.match->id == e.id);
    CHECK(r.status == 200);
    std::map<std::string, std::string> got;
    for (auto& [k, v] : r.match->params)
      got[std::string(k)] = std::string(v);
    CHECK(got == e.params);
  }
  // Nothing routed that the list above does not name.
  CHECK(routes().size() == documented.size());
  std::set<int> ids;
  for (auto& e : routes())
    ids.insert(static_cast<int>(e.id));
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
