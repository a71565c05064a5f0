// The /v1 routing table: method + path pattern -> route, with the path's
// {parameters}. An unknown path is 404; a known path with another method is
// 405 with the methods it does allow.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvmid::control {

enum class route_id : uint8_t {
  list_vms,          // GET    /v1/vms
  get_vm,            // GET    /v1/vms/{vm}
  list_vcpus,        // GET    /v1/vms/{vm}/vcpus
  pause_vm,          // POST   /v1/vms/{vm}/pause
  resume_vm,         // POST   /v1/vms/{vm}/resume
  unhook_vm,         // POST   /v1/vms/{vm}/unhook
  admit_vm,          // POST   /v1/vms/{vm}/admit
  forget_vm,         // DELETE /v1/vms/{vm} (a disconnected VM)
  get_registers,     // GET    /v1/vms/{vm}/vcpus/{vcpu}/registers
  set_vcpu_events,   // PUT    /v1/vms/{vm}/vcpus/{vcpu}/events
  read_memory,       // GET    /v1/vms/{vm}/memory?gpa=&len=&encoding=
  write_memory,      // PUT    /v1/vms/{vm}/memory
  get_page_access,   // GET    /v1/vms/{vm}/page-access
  set_page_access,   // PUT    /v1/vms/{vm}/page-access
  list_breakpoints,  // GET    /v1/vms/{vm}/breakpoints
  add_breakpoint,    // POST   /v1/vms/{vm}/breakpoints
  get_breakpoint,    // GET    /v1/vms/{vm}/breakpoints/{gpa} (POST's Location)
  remove_breakpoint, // DELETE /v1/vms/{vm}/breakpoints/{gpa}
  reload_policies,   // POST   /v1/policies/reload
  events,            // GET    /v1/events?vm=&kind=
  metrics,           // GET    /metrics
  version,           // GET    /v1/version
  healthz,           // GET    /healthz (no token)
  ui_page,           // GET    /ui (no token): the dashboard
  ui_asset,          // GET    /ui/{asset} (no token): its scripts and styles
};

struct route_entry {
  std::string_view method;
  std::string_view pattern; // segments; "{name}" captures one segment
  route_id id;
  std::string_view query = {}; // the query parameters it takes: "gpa,len,encoding"
};

std::span<const route_entry> routes();
std::string_view name(route_id r);

struct route_match {
  route_id id{};
  std::vector<std::pair<std::string, std::string>> params;
  std::string_view param(std::string_view name) const;
};

struct route_result {
  std::optional<route_match> match;
  int status = 200;           // 404 or 405 when !match
  std::string allow;          // 405: "GET, PUT"
};

route_result route(std::string_view method, std::string_view path);

// The first query parameter (percent-decoded name) that route r does not
// take, or nullopt. A typo such as ?lenght= is refused, not ignored.
std::optional<std::string> unknown_query_parameter(route_id r, std::string_view query);
// The 400 message for it: "unknown query parameter 'lenght' (/v1/vms/{vm}/memory
// takes gpa, len, encoding)"; the name is quoted as an excerpt.
std::string unknown_query_message(route_id r, std::string_view key);

} // namespace kvmid::control
