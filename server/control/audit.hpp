// The audit trail of the control plane: every mutating call (and every one
// refused for its role) becomes one log line and one lifecycle record
// ("api-call") on the event bus, saying who (role, peer) did what (method,
// route, VM, vCPU, gpa/len, details) with which result (HTTP status).
#pragma once

#include "actors/event_bus.hpp"
#include "server/control/roles.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kvmid::control {

struct audit_entry {
  audit_entry() = default;
  audit_entry(role w, std::string p, std::string m, std::string r, std::string v)
    : who(w), peer(std::move(p)), method(std::move(m)), route(std::move(r)), vm(std::move(v)) {}

  role who = role::none;
  std::string peer;
  std::string method;
  std::string route; // the route's pattern, e.g. /v1/vms/{vm}/memory
  std::string vm;    // as the client named it (uuid or name), "" for none
  int32_t vcpu = -1;
  std::optional<uint64_t> gpa, len;
  std::vector<std::pair<std::string, std::string>> details; // events, access, forced ...
  int status = 0;
};

bus_record to_record(const audit_entry& e);
// "kvmid: api-call role=full peer=... method=PUT route=... vm=... status=200"
std::string log_line(const audit_entry& e);

} // namespace kvmid::control
