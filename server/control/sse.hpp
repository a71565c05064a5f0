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

// One record as JSON: seq, time_ns, kind, name, vm, vm_name, message,
// vcpu (when about one), fields. The SSE data line and the JetStream
// message body.
std::string format_record_json(const bus_record& r);

// "id: <boot>-<seq>\nevent: <kind>\ndata: <json>\n\n"; the JSON carries
// every field of the record. Names and messages cannot break the framing:
// JSON escapes newlines, and the event name is restricted to [a-z0-9_-].
// The id names the kvmid run (the bus's boot id), so a client reconnecting
// with Last-Event-ID to a restarted kvmid is not mistaken for a recent one.
std::string format_sse(const bus_record& r, std::string_view boot);

// A Last-Event-ID header as format_sse wrote it, or a 400.
std::variant<bus_cursor, http_error> parse_last_event_id(std::string_view v);

// Tells a resumed subscriber that records before the replayed ones may be
// missing (its id is older than the replay ring, or from another run).
std::string format_sse_replay_gap();

// Tells the subscriber how many records it has lost so far.
std::string format_sse_dropped(uint64_t dropped);

inline constexpr std::string_view sse_heartbeat = ": keep-alive\n\n";

} // namespace kvmid::control
