#include "server/control/sse.hpp"

#include "actors/alert_kinds.hpp"
#include "actors/excerpt.hpp"
#include "server/control/encoding.hpp"
#include "server/control/router.hpp"

#include <nlohmann/json.hpp>

namespace kvmid::control {

namespace {
std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    auto c = s.find(',');
    auto item = s.substr(0, c);
    if (!item.empty())
      out.emplace_back(item);
    s = c == std::string_view::npos ? std::string_view{} : s.substr(c + 1);
  }
  return out;
}

bool safe_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// The names of the records the core and the API publish (bus_record::name),
// besides the KVMI event kinds: a ?kind= naming none of them would select
// nothing, which is a typo, not a filter.
bool known_record_name(std::string_view n) {
  static constexpr std::string_view names[] = {
    // lifecycle
    "vm-connected", "vm-disconnected", "vm-unhooked", "vm-paused", "vm-resumed",
    "handshake-failed", "protocol-error", "api-call",
    // alerts: the policy's rule kinds, and a forced protection change
    alert_kind::page_protection, alert_kind::msr_protection, alert_kind::cr_pin,
    "protection-override",
    // reports
    "agent-report", "breakpoint-hit"};
  return parse_event_kind(n).has_value()
         || std::find(std::begin(names), std::end(names), n) != std::end(names);
}
} // namespace

std::variant<bus_filter, http_error> parse_stream_filter(const request& r) {
  bus_filter f;
  bool explicit_kind = false;
  std::string_view q = r.query;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view item = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
    auto eq = item.find('=');
    std::string key = percent_decode(item.substr(0, eq), true);
    std::string val =
      eq == std::string_view::npos ? std::string{} : percent_decode(item.substr(eq + 1), true);
    if (key == "vm") {
      for (auto& v : split_list(val))
        f.vms.push_back(v);
    } else if (key == "kind") {
      for (auto& k : split_list(val)) {
        if (k.size() > 64 || !std::all_of(k.begin(), k.end(), safe_name_char))
          return bad_request("invalid kind '" + excerpt(k) + "'");
        if (k == "alert") {
          f.kinds.push_back(bus_kind::alert);
          explicit_kind = true;
        } else if (k == "lifecycle") {
          f.kinds.push_back(bus_kind::lifecycle);
          explicit_kind = true;
        } else if (k == "event") {
          f.kinds.push_back(bus_kind::event);
          explicit_kind = true;
        } else if (k == "report") {
          f.kinds.push_back(bus_kind::report);
          explicit_kind = true;
        } else if (known_record_name(k)) {
          f.names.push_back(k);
        } else {
          return bad_request("unknown kind '" + excerpt(k)
                             + "' (alert, lifecycle, event, report, or a record or event name)");
        }
      }
    } else if (!key.empty()) {
      return bad_request(unknown_query_message(route_id::events, key));
    }
  }
  if (!f.names.empty() && !explicit_kind) {
    // Names alone pick records of any kind; raw events only if one of the
    // names is a KVMI event kind (subscribing to raw events costs the core).
    f.kinds = {bus_kind::lifecycle, bus_kind::alert, bus_kind::report};
    for (auto& n : f.names)
      if (parse_event_kind(n)) {
        f.kinds.push_back(bus_kind::event);
        break;
      }
  }
  return f;
}

std::optional<http_error> unknown_stream_vm(const bus_filter& f, const std::vector<vm_info>& known) {
  for (auto& want : f.vms) {
    bool found = std::any_of(known.begin(), known.end(), [&](const vm_info& v) {
      return v.uuid == want || v.name == want;
    });
    if (!found)
      return bad_request("unknown vm '" + excerpt(want) + "' (no VM kvmid knows has that uuid or name)");
  }
  return std::nullopt;
}

std::string format_record_json(const bus_record& r) {
  nlohmann::json j = {{"seq", r.seq},       {"time_ns", r.time_ns}, {"kind", name(r.kind)},
                      {"name", r.name},     {"vm", r.vm},           {"vm_name", r.vm_name},
                      {"message", r.message}};
  if (r.vcpu >= 0)
    j["vcpu"] = r.vcpu;
  nlohmann::json fields = nlohmann::json::object();
  for (auto& [k, v] : r.fields)
    fields[k] = v;
  j["fields"] = std::move(fields);
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string format_sse(const bus_record& r, std::string_view boot) {
  std::string ev = r.name;
  if (ev.empty() || !std::all_of(ev.begin(), ev.end(), safe_name_char))
    ev = std::string(name(r.kind));
  std::string out = "id: ";
  out += boot;
  out += '-';
  out += std::to_string(r.seq);
  out += "\nevent: ";
  out += ev;
  out += "\ndata: ";
  out += format_record_json(r);
  out += "\n\n";
  return out;
}

std::string format_sse_dropped(uint64_t dropped) {
  return "event: dropped\ndata: {\"dropped\":" + std::to_string(dropped) + "}\n\n";
}

std::variant<bus_cursor, http_error> parse_last_event_id(std::string_view v) {
  auto bad = [] {
    return http_error{400, "bad_request",
                      "Last-Event-ID must be an id of this stream (<boot>-<seq>)"};
  };
  auto dash = v.rfind('-');
  if (dash == std::string_view::npos || dash == 0 || dash > 32)
    return bad();
  auto boot = v.substr(0, dash);
  if (!std::all_of(boot.begin(), boot.end(), [](char c) { return hexval(c) >= 0; }))
    return bad();
  auto seq_s = v.substr(dash + 1);
  if (seq_s.empty() || seq_s.size() > 20
      || !std::all_of(seq_s.begin(), seq_s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return bad();
  auto seq = parse_u64(seq_s);
  if (!seq)
    return bad();
  return bus_cursor{std::string(boot), *seq};
}

std::string format_sse_replay_gap() {
  return "event: replay-gap\ndata: {\"replay_gap\":true,\"message\":\"records before these "
         "may be missing: the last id is older than kvmid's replay ring or from an earlier "
         "run\"}\n\n";
}

} // namespace kvmid::control
