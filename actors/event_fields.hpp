// What a raw KVMI event record on the bus says of the event: its seq, RIP
// and the data of its kind (CR and MSR old/new values, the faulting gpa and
// gva with the access, a breakpoint's gpa, a trap's vector, a descriptor
// access), with addresses and values in 0x hex as everywhere in the API.
#pragma once

#include "proto/codec.hpp"

#include <string>
#include <utility>
#include <vector>

namespace kvmid {

std::vector<std::pair<std::string, std::string>> event_fields(const kvmi::event_msg& ev);

std::string hex_value(uint64_t v); // "0x1f"

} // namespace kvmid
