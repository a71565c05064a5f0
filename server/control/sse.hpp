// Server-Sent Events for GET /v1/events: the query -> bus_filter mapping and
// the text/event-stream framing of bus records.
#pragma once

#include "actors/control_api.hpp"
#include "actors/event_bus.hpp"
#include "server/control/errors.hpp"

#include <optional>
#include <string>
#include <variant>

namespace kvmid::control {

// ?vm=a,b (uuids or names; repeatable) &kind=alert,lifecycle,event or record
// names ("pf", "msr-protection", ...). A KVMI event kind name selects raw
// events of that kind; without `kind` the stream carries lifecycle records
// and alerts.
std::variant<bus_filter, http_error> parse_stream_filter(const request& r);

// A 400 naming the first ?vm= value that is neither the uuid nor the name of
// a VM in `known`, or nullopt.
std::optional<http_error> unknown_stream_vm(const bus_filter& f, const std::vector<vm_info>& known);

// "id: <seq>\nevent: <kind>\ndata: <json>\n\n"; the JSON carries every field
// of the record. Names and messages cannot break the framing: JSON escapes
// newlines, and the event name is restricted to [a-z0-9_-].
std::string format_sse(const bus_record& r);

// Tells the subscriber how many records it has lost so far.
std::string format_sse_dropped(uint64_t dropped);

inline constexpr std::string_view sse_heartbeat = ": keep-alive\n\n";

} // namespace kvmid::control
