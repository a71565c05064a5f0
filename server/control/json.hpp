// JSON views of the core's records (GPAs and register values as "0x..."
// strings: JSON numbers lose precision above 2^53).
#pragma once

#include "actors/control_api.hpp"
#include "server/control/page_ranges.hpp"

#include <nlohmann/json.hpp>

namespace kvmid::control {

nlohmann::json to_json(const region_info& r);
nlohmann::json to_json(const vcpu_info& v);
nlohmann::json to_json(const vm_info& v, bool detail); // detail: regions, vCPUs
nlohmann::json to_json(const vm_policy& p);                 // a policy with its rules
nlohmann::json to_json(const registers_info& r);
nlohmann::json to_json(const breakpoint_info& b);
// {"ranges":[{gpa,pages,len,access}],"next"?}
nlohmann::json to_json(const page_range_list& l);
nlohmann::json event_names(uint32_t mask);

} // namespace kvmid::control
