// Where a bus record goes on NATS and the id that lets JetStream drop a
// resent copy:
//   subject  <prefix>.bus.<host>.<kind>.<name>   kvmi.bus.node7.alert.msr-protection
//   msg id   <host>.<boot>.<seq>                 node7.3f9c0d2a11e4b7c6.42
// The boot id is new for every kvmid run (event_bus::boot), so a restarted
// kvmid's seq 1 is not taken for the last run's.
#pragma once

#include "actors/event_bus.hpp"

#include <string>
#include <string_view>

namespace kvmid {

std::string record_subject(std::string_view root, std::string_view host, const bus_record& r);
std::string record_msg_id(std::string_view host, std::string_view boot, uint64_t seq);

} // namespace kvmid
