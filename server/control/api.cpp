#include "server/control/api.hpp"

#include "actors/bounded_json.hpp"
#include "actors/excerpt.hpp"
#include "actors/log.hpp"
#include "actors/needed_events.hpp"
#include "proto/handshake.hpp"
#include "proto/ids.hpp"
#include "server/control/audit.hpp"
#include "server/control/encoding.hpp"
#include "server/control/json.hpp"
#include "server/control/page_ranges.hpp"
#include "server/control/process_metrics.hpp"
#include "server/control/prometheus.hpp"
#include "server/control/sse.hpp"
#include "server/control/tls_conn.hpp"
#include "server/control/ui/ui_response.hpp"

#include "kvmid_version.hpp"

#include <nlohmann/json.hpp>

#include <arpa/inet.h>

namespace kvmid::control {

using nlohmann::json;

// --- options ------------------------------------------------------------------

namespace {

bool is_loopback(const std::string& host) {
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6);
  return false;
}

// "unix:/path", "tcp:127.0.0.1:8700", "tcp:[::1]:8700".
std::variant<net::listen_spec, std::string> parse_listen(const std::string& s) {
  net::listen_spec l;
  if (s.starts_with("unix:")) {
    l.type = net::listen_spec::kind::unix_socket;
    l.path = s.substr(5);
    if (l.path.empty() || l.path.front() != '/')
      return "api.listen: '" + s + "': unix socket path must be absolute";
    if (l.path.size() >= 108)
      return "api.listen: '" + s + "': unix socket path too long";
    return l;
  }
  if (s.starts_with("tcp:")) {
    l.type = net::listen_spec::kind::tcp;
    std::string rest = s.substr(4);
    std::string host, port;
    if (rest.starts_with("[")) {
      auto close = rest.find("]:");
      if (close == std::string::npos)
        return "api.listen: '" + s + "': expected tcp:[v6addr]:port";
      host = rest.substr(1, close - 1);
      port = rest.substr(close + 2);
    } else {
      auto colon = rest.rfind(':');
      if (colon == std::string::npos)
        return "api.listen: '" + s + "': expected tcp:host:port";
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
    }
    auto p = parse_u64(port);
    in6_addr tmp{};
    if (!p || *p > 65535 || port.starts_with("0x"))
      return "api.listen: '" + s + "': bad port";
    if (inet_pton(AF_INET, host.c_str(), &tmp) != 1 && inet_pton(AF_INET6, host.c_str(), &tmp) != 1)
      return "api.listen: '" + s + "': host must be a numeric IP address";
    l.host = host;
    l.port = static_cast<uint16_t>(*p);
    return l;
  }
  return "api.listen: '" + s + "': expected unix:/path or tcp:host:port";
}

// {"cert_file": ..., "key_file": ..., "client_ca_file": ...}
std::variant<tls_options, std::string> parse_tls(const json& j) {
  if (!j.is_object())
    return std::string("api.tls: must be an object with cert_file and key_file");
  tls_options t;
  std::pair<const char*, std::string*> fields[] = {
    {"cert_file", &t.cert_file}, {"key_file", &t.key_file}, {"client_ca_file", &t.client_ca_file}};
  for (auto& item : j.items()) {
    const std::string& k = item.key();
    const json& v = item.value();
    auto f = std::find_if(std::begin(fields), std::end(fields),
                          [&](auto& e) { return k == e.first; });
    if (f == std::end(fields))
      return "api.tls." + excerpt(k) + ": unknown field";
    if (!v.is_string() || v.get<std::string>().empty())
      return "api.tls." + k + ": must be a file path";
    *f->second = v.get<std::string>();
  }
  if (t.cert_file.empty())
    return std::string("api.tls.cert_file: required (PEM certificate chain)");
  if (t.key_file.empty())
    return std::string("api.tls.key_file: required (PEM private key, mode 0600)");
  return t;
}

} // namespace

std::variant<api_options, std::string> parse_api_options(const json& j) {
  api_options o;
  if (!j.is_object())
    return std::string("api: must be an object");
  bool allow_remote = false;
  if (j.contains("allow_remote")) {
    if (!j["allow_remote"].is_boolean())
      return std::string("api.allow_remote: must be a boolean");
    allow_remote = j["allow_remote"].get<bool>();
  }
  auto ms = [&](const char* key, std::chrono::milliseconds& out) -> std::string {
    if (!j.contains(key))
      return {};
    auto& v = j[key];
    if (!v.is_number_unsigned() || v.get<uint64_t>() == 0 || v.get<uint64_t>() > 3'600'000)
      return std::string("api.") + key + ": must be an integer 1..3600000 (ms)";
    out = std::chrono::milliseconds(v.get<uint64_t>());
    return {};
  };
  auto count = [&](const char* key, size_t& out, uint64_t lo, uint64_t hi) -> std::string {
    if (!j.contains(key))
      return {};
    auto& v = j[key];
    if (!v.is_number_unsigned() || v.get<uint64_t>() < lo || v.get<uint64_t>() > hi)
      return std::string("api.") + key + ": must be an integer " + std::to_string(lo) + ".."
             + std::to_string(hi);
    out = v.get<uint64_t>();
    return {};
  };
  for (auto& [k, v] : j.items()) {
    static const char* known[] = {"listen", "token_file", "read_token_file", "allow_remote",
                                  "max_header_bytes", "max_body_bytes", "header_timeout_ms",
                                  "body_timeout_ms", "idle_timeout_ms", "max_connections",
                                  "stream_queue", "stream_backlog", "heartbeat_ms", "tls"};
    if (std::find(std::begin(known), std::end(known), k) == std::end(known))
      return "api." + k + ": unknown field";
    (void)v;
  }
  if (!j.contains("token_file") || !j["token_file"].is_string()
      || j["token_file"].get<std::string>().empty())
    return std::string("api.token_file: required (path of the bearer token file)");
  o.token_file = j["token_file"].get<std::string>();
  if (j.contains("tls")) {
    auto t = parse_tls(j["tls"]);
    if (auto* err = std::get_if<std::string>(&t))
      return *err;
    o.tls = std::get<tls_options>(std::move(t));
  }
  if (j.contains("read_token_file")) {
    auto& r = j["read_token_file"];
    if (!r.is_string() || r.get<std::string>().empty())
      return std::string("api.read_token_file: must be a path (the read-only token)");
    o.read_token_file = r.get<std::string>();
  }
  if (!j.contains("listen"))
    return std::string("api.listen: required (e.g. [\"unix:/run/kvmid/api.sock\"])");
  auto& ls = j["listen"];
  if (!ls.is_array() || ls.empty())
    return std::string("api.listen: must be a non-empty array of strings");
  for (auto& e : ls) {
    if (!e.is_string())
      return std::string("api.listen: must be a non-empty array of strings");
    auto r = parse_listen(e.get<std::string>());
    if (auto* err = std::get_if<std::string>(&r))
      return *err;
    auto& l = std::get<net::listen_spec>(r);
    if (l.type == net::listen_spec::kind::tcp && !is_loopback(l.host) && !allow_remote)
      return "api.listen: '" + e.get<std::string>()
             + "': not a loopback address (set api.allow_remote to expose the API)";
    if (l.type == net::listen_spec::kind::tcp && !is_loopback(l.host) && !o.tls)
      return "api.tls: required for '" + e.get<std::string>()
             + "': remote API access is HTTPS only (cert_file, key_file)";
    o.listen.push_back(std::move(l));
  }
  std::string err;
  if (!(err = count("max_header_bytes", o.http.max_header_bytes, 1024, 1 << 20)).empty()
      || !(err = count("max_body_bytes", o.http.max_body_bytes, 1024, 64 << 20)).empty()
      || !(err = ms("header_timeout_ms", o.http.header_timeout)).empty()
      || !(err = ms("body_timeout_ms", o.http.body_timeout)).empty()
      || !(err = ms("idle_timeout_ms", o.http.idle_timeout)).empty()
      || !(err = count("max_connections", o.max_connections, 1, 65536)).empty()
      || !(err = count("stream_queue", o.stream_queue, 1, 1 << 20)).empty()
      || !(err = count("stream_backlog", o.stream_backlog, 1, 4096)).empty()
      || !(err = ms("heartbeat_ms", o.heartbeat)).empty())
    return err;
  return o;
}

http_error to_http(const api_error& e) {
  // The core's messages can end in the VM id from the path (up to
  // max_header_bytes): an error body stays small whatever was sent.
  constexpr size_t max_message = 200;
  std::string msg = e.message.size() <= max_message ? e.message
                                                    : e.message.substr(0, max_message) + "...";
  switch (e.code) {
    case api_errc::not_found: return {404, "not_found", msg};
    case api_errc::conflict: return {409, "conflict", msg};
    case api_errc::unsafe_region: return {422, "unsafe_region", msg};
    case api_errc::invalid: return {422, "invalid", msg};
    case api_errc::timeout: return {503, "kernel_timeout", msg};
    case api_errc::kernel: return {502, "kernel_error", msg};
    case api_errc::internal: break;
  }
  return {500, "internal", msg};
}

// --- shared state -------------------------------------------------------------

struct http_api::shared {
  backend& be;
  api_access access;
  api_options opts;
  poster post;
  std::atomic<size_t> connections{0};
  gauge* streams = nullptr;
  counter* stream_drops = nullptr;

  shared(backend& b, api_access a, api_options o, poster p)
    : be(b), access(std::move(a)), opts(std::move(o)), post(std::move(p)) {
    streams = &be.metrics().get_gauge("kvmid_event_streams", "Open GET /v1/events streams.");
    stream_drops = &be.metrics().get_counter(
      "kvmid_bus_dropped_total", "Event-bus records dropped because a subscriber was slow.");
  }

  void count_request(std::string_view route, int status) {
    be.metrics()
      .get_counter("kvmid_http_requests_total", "Control-plane HTTP requests by route and status.",
                   {{"code", std::to_string(status)}, {"route", std::string(route)}})
      .inc();
  }

  void audit(const audit_entry& e) {
    // Warn level: the audit trail stays in the log when info lines are off.
    if (log_on(log_warn))
      std::fprintf(stderr, "%s\n", log_line(e).c_str());
    be.publish(to_record(e));
  }

  // A forced PUT .../events turned off events the VM's protections need.
  void alert_override(const vm_info& v, uint16_t vcpu, const api_caller& from,
                      const std::string& lost, const std::string& needed_by) {
    be.metrics()
      .get_counter("kvmid_alerts_total", "Policy violations (alerts) by rule",
                   {{"rule", "protection-override"}})
      .inc();
    bus_record r;
    r.kind = bus_kind::alert;
    r.name = "protection-override";
    r.vm = v.uuid;
    r.vm_name = v.name;
    r.vcpu = vcpu;
    r.message = "events " + lost + " disabled by force, needed by " + needed_by;
    r.fields = {{"rule", "protection-override"}, {"events", lost}, {"needed_by", needed_by},
                {"role", std::string(name(from.who))}, {"peer", from.peer}};
    be.publish(std::move(r));
  }
};

// --- request handling ----------------------------------------------------------

namespace {

response json_response(int status, const json& body) {
  response r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

template <class T, class F>
api_callback<T> answer(std::function<void(response)> reply, F to_body, int status = 200) {
  return [reply = std::move(reply), to_body = std::move(to_body), status](api_result<T> r) {
    if (!r.ok()) {
      reply(error_response(to_http(r.error())));
      return;
    }
    reply(json_response(status, to_body(r.value())));
  };
}

// A u64 given as a JSON number or a "0x..." / decimal string.
std::optional<uint64_t> json_u64(const json& v) {
  if (v.is_number_unsigned())
    return v.get<uint64_t>();
  if (v.is_string())
    return parse_u64(v.get<std::string>());
  return std::nullopt;
}

struct body_error {
  http_error e;
};

// Parses a JSON object body, allowing only `fields`.
// Error messages quote the client only through excerpt(): bounded, escaped.
json parse_body(const request& r, std::initializer_list<std::string_view> fields) {
  std::string err;
  json j = parse_bounded_json(r.body, err);
  if (j.is_discarded())
    throw body_error{bad_request("request body is not valid JSON: " + err)};
  if (!j.is_object())
    throw body_error{bad_request("request body must be a JSON object")};
  for (auto& [k, v] : j.items()) {
    (void)v;
    if (std::find(fields.begin(), fields.end(), k) == fields.end())
      throw body_error{bad_request("unknown field '" + excerpt(k) + "'")};
  }
  return j;
}

uint64_t need_u64(const json& j, const char* key) {
  if (!j.contains(key))
    throw body_error{bad_request(std::string("missing field '") + key + "'")};
  auto v = json_u64(j[key]);
  if (!v)
    throw body_error{bad_request(std::string("field '") + key
                                 + "' must be an unsigned integer or a \"0x...\" string")};
  return *v;
}

uint16_t vcpu_param(const route_match& m) {
  auto v = parse_u64(m.param("vcpu"));
  if (!v || *v > 0xFFFF)
    throw body_error{bad_request("vCPU index must be an integer 0..65535")};
  return static_cast<uint16_t>(*v);
}

uint32_t event_mask(const json& list, const char* key) {
  if (!list.is_array())
    throw body_error{bad_request(std::string("field '") + key
                                 + "' must be an array of event names")};
  uint32_t mask = 0;
  for (auto& e : list) {
    if (!e.is_string())
      throw body_error{bad_request(std::string("field '") + key + "' must hold event names, not "
                                   + e.type_name() + "s")};
    auto k = parse_event_kind(e.get<std::string>());
    if (!k)
      throw body_error{bad_request("unknown event '" + excerpt(e.get<std::string>()) + "'")};
    if (!(kvmi::known_vcpu_events & (1u << *k)))
      throw body_error{unprocessable("invalid", "'" + e.get<std::string>()
                                                  + "' is not a per-vCPU event")};
    mask |= 1u << *k;
  }
  return mask;
}

constexpr uint64_t max_memory_len = 64 * 1024; // control_api's bound per call

// The handshake dialects kvmid speaks (config "handshake"). The switch has
// no default, so a new kvmi::hs::mode fails the build until it is named.
std::string_view dialect_name(kvmi::hs::mode m) {
  switch (m) {
    case kvmi::hs::mode::kvmi: return "kvmi";
    case kvmi::hs::mode::qemu_v5: return "qemu-v5";
  }
  return "?";
}

// GET /v1/version
json version_body() {
  json dialects = json::array();
  for (auto m : {kvmi::hs::mode::kvmi, kvmi::hs::mode::qemu_v5})
    dialects.push_back(dialect_name(m));
  return {{"version", build_version},
          {"build_type", build_type},
          {"api", "v1"},
          {"protocol",
           {{"kvmi_version", kvmi::version},
            {"dialects", std::move(dialects)},
            {"versions", json::array({"v5", "v7"})}}}};
}

void check_range(uint64_t gpa, uint64_t len) {
  if (len == 0 || len > max_memory_len)
    throw body_error{unprocessable("invalid_range", "length must be 1.." + std::to_string(max_memory_len))};
  if (gpa + len < gpa)
    throw body_error{unprocessable("invalid_range", "gpa + length overflows")};
}

// Enabled events a new mask turns off although the VM's protections need them.
struct lost_events {
  std::string events;    // "msr,pf"
  std::string needed_by; // "policy 'demo' rule 'lstar'; ..."
  std::string message;   // "event 'msr' is needed by policy 'demo' rule 'lstar'; ..."
};

lost_events lost_protections(const event_needs& needs, uint32_t enabled, uint32_t mask) {
  lost_events l;
  for (auto& [e, why] : needs) {
    if (!(enabled & kvmi::flag(e)) || (mask & kvmi::flag(e)))
      continue;
    auto sep = [](std::string& s, const char* by) {
      if (!s.empty())
        s += by;
    };
    sep(l.events, ",");
    sep(l.needed_by, "; ");
    sep(l.message, "; ");
    l.events += kvmi::name(e);
    l.needed_by += why;
    l.message += "event '" + std::string(kvmi::name(e)) + "' is needed by " + why;
  }
  return l;
}

std::string mask_names(uint32_t mask) {
  std::string s;
  for (auto& n : event_names(mask))
    s += (s.empty() ? "" : ",") + n.get<std::string>();
  return s;
}

// Why a request is refused for this caller (401, 404/405, 403 in that
// order), or nullopt: the same answer over HTTP and NATS.
std::optional<response> refuse(const request& req, const route_result& rt, role who) {
  if (who == role::none && !(rt.match && open_to_all(rt.match->id)))
    return error_response(unauthorized(req.header("authorization")
                                         ? "wrong bearer token"
                                         : "missing Authorization: Bearer token"));
  if (!rt.match) {
    if (rt.status != 405)
      return error_response(not_found("no_route", "no such endpoint: " + excerpt(req.path)));
    auto r = error_response({405, "method_not_allowed",
                             excerpt(req.method) + " not allowed on " + excerpt(req.path)});
    r.headers.emplace_back("Allow", rt.allow);
    return r;
  }
  if (!allowed(who, rt.match->id))
    return error_response(forbidden("the read-only token may not " + excerpt(req.method) + " "
                                     + std::string(name(rt.match->id))));
  return std::nullopt;
}

} // namespace

void http_api::dispatch(const route_match& m, const request& r,
                        std::function<void(response)> reply, api_caller from) {
  backend& be = st_->be;
  std::string vm(m.param("vm"));
  // The cases below fill in what the call touches; the answer, whatever it
  // is, completes the audit entry.
  auto entry =
    std::make_shared<audit_entry>(from.who, from.peer, r.method, std::string(name(m.id)), vm);
  audit_entry& note = *entry;
  if (mutating(m.id))
    reply = [st = st_, entry, inner = std::move(reply)](response resp) {
      entry->status = resp.status;
      st->audit(*entry);
      inner(std::move(resp));
    };
  auto ok_body = [vm](std::string_view what) {
    return [vm, what = std::string(what)](const done&) {
      return json{{"vm", vm}, {"result", what}};
    };
  };
  try {
    if (auto key = unknown_query_parameter(m.id, r.query))
      throw body_error{bad_request(unknown_query_message(m.id, *key))};
    switch (m.id) {
      case route_id::list_vms:
        be.list_vms(answer<std::vector<vm_info>>(std::move(reply), [](const auto& vms) {
          json a = json::array();
          for (auto& v : vms)
            a.push_back(to_json(v, false));
          return json{{"vms", std::move(a)}};
        }));
        return;
      case route_id::get_vm:
        be.get_vm(vm, answer<vm_info>(std::move(reply), [](const vm_info& v) {
          return to_json(v, true);
        }));
        return;
      case route_id::list_vcpus:
        be.list_vcpus(vm, answer<std::vector<vcpu_info>>(std::move(reply), [](const auto& vs) {
          json a = json::array();
          for (auto& v : vs)
            a.push_back(to_json(v));
          return json{{"vcpus", std::move(a)}};
        }));
        return;
      case route_id::pause_vm:
        be.pause_vm(vm, answer<done>(std::move(reply), ok_body("paused")));
        return;
      case route_id::resume_vm:
        be.resume_vm(vm, answer<done>(std::move(reply), ok_body("resumed")));
        return;
      case route_id::unhook_vm:
        be.unhook(vm, answer<done>(std::move(reply), ok_body("unhooked")));
        return;
      case route_id::admit_vm:
        be.admit(vm, answer<done>(std::move(reply), ok_body("admitted")));
        return;
      case route_id::forget_vm:
        be.forget(vm, answer<done>(std::move(reply), ok_body("forgotten")));
        return;
      case route_id::reload_policies:
        be.reload_policies(answer<done>(std::move(reply), [](const done&) {
          return json{{"result", "reloaded"}};
        }));
        return;
      case route_id::get_registers: {
        uint16_t vcpu = vcpu_param(m);
        std::vector<uint32_t> msrs;
        if (auto q = r.query_param("msrs")) {
          std::string_view s = *q;
          while (!s.empty()) {
            auto c = s.find(',');
            auto v = parse_u64(s.substr(0, c));
            if (!v || *v > 0xFFFFFFFFu)
              throw body_error{bad_request("msrs must be a comma-separated list of MSR indices")};
            msrs.push_back(static_cast<uint32_t>(*v));
            s = c == std::string_view::npos ? std::string_view{} : s.substr(c + 1);
          }
          if (msrs.size() > 64)
            throw body_error{unprocessable("invalid", "at most 64 MSRs per request")};
        }
        be.get_registers(vm, vcpu, std::move(msrs),
                         answer<registers_info>(std::move(reply), [vcpu](const registers_info& x) {
                           json j = to_json(x);
                           j["vcpu"] = vcpu;
                           return j;
                         }));
        return;
      }
      case route_id::set_vcpu_events: {
        uint16_t vcpu = vcpu_param(m);
        note.vcpu = vcpu;
        json j = parse_body(r, {"events", "enable", "disable", "force"});
        bool replace = j.contains("events");
        if (replace == (j.contains("enable") || j.contains("disable")))
          throw body_error{bad_request("give either 'events' or 'enable'/'disable'")};
        if (j.contains("force") && !j["force"].is_boolean())
          throw body_error{bad_request("field 'force' must be a boolean")};
        bool force = j.value("force", false);
        uint32_t all = replace ? event_mask(j["events"], "events") : 0;
        uint32_t on = j.contains("enable") ? event_mask(j["enable"], "enable") : 0;
        uint32_t off = j.contains("disable") ? event_mask(j["disable"], "disable") : 0;
        if (on & off)
          throw body_error{bad_request("an event is both enabled and disabled")};
        // The vCPU's current mask and the VM's policy in one answer: the new
        // mask may not drop an enabled event a protection needs unless forced.
        be.get_vm(vm, [st = st_, entry, from, vm, vcpu, replace, all, on, off,
                       force, reply](api_result<vm_info> res) mutable {
          if (!res.ok()) {
            reply(error_response(to_http(res.error())));
            return;
          }
          const vm_info& v = res.value();
          auto cur = std::find_if(v.vcpus.begin(), v.vcpus.end(),
                                  [&](const vcpu_info& c) { return c.index == vcpu; });
          if (cur == v.vcpus.end()) {
            reply(error_response(not_found("not_found", "no vCPU " + std::to_string(vcpu))));
            return;
          }
          uint32_t mask = replace ? all : (cur->enabled_events | on) & ~off;
          static const vm_policy no_policy = [] {
            vm_policy p;
            p.hypercalls = false;
            return p;
          }();
          auto lost = lost_protections(needed_events(v.policy_rules ? *v.policy_rules : no_policy),
                                       cur->enabled_events, mask);
          entry->details.emplace_back("events", mask_names(mask));
          if (!lost.events.empty() && !force) {
            reply(error_response(conflict(
              "conflict", lost.message + " (send \"force\": true to turn it off anyway)")));
            return;
          }
          if (!lost.events.empty())
            entry->details.emplace_back("forced", lost.events);
          st->be.set_vcpu_events(
            vm, vcpu, mask,
            [st, v, vcpu, from, vm, mask, lost, reply](api_result<done> r) {
              if (!r.ok()) {
                reply(error_response(to_http(r.error())));
                return;
              }
              if (!lost.events.empty())
                st->alert_override(v, vcpu, from, lost.events, lost.needed_by);
              reply(json_response(200, json{{"vm", vm}, {"vcpu", vcpu},
                                            {"enabled_events", event_names(mask)}}));
            });
        });
        return;
      }
      case route_id::read_memory: {
        auto gpa_s = r.query_param("gpa");
        auto len_s = r.query_param("len");
        if (!gpa_s || !len_s)
          throw body_error{bad_request("query parameters gpa and len are required")};
        auto gpa = parse_u64(*gpa_s);
        auto len = parse_u64(*len_s);
        if (!gpa || !len)
          throw body_error{bad_request("gpa and len must be unsigned integers (decimal or 0x hex)")};
        std::string enc = r.query_param("encoding").value_or("hex");
        if (enc != "hex" && enc != "base64")
          throw body_error{bad_request("encoding must be hex or base64")};
        check_range(*gpa, *len);
        be.read_physical(vm, *gpa, *len,
                         answer<std::vector<uint8_t>>(
                           std::move(reply), [g = *gpa, enc](const std::vector<uint8_t>& d) {
                             return json{{"gpa", hex_u64(g)},
                                         {"len", d.size()},
                                         {"encoding", enc},
                                         {"data", enc == "hex" ? to_hex(d) : to_base64(d)}};
                           }));
        return;
      }
      case route_id::write_memory: {
        json j = parse_body(r, {"gpa", "data", "encoding"});
        uint64_t gpa = need_u64(j, "gpa");
        if (!j.contains("data") || !j["data"].is_string())
          throw body_error{bad_request("field 'data' (string) is required")};
        std::string enc = "hex";
        if (j.contains("encoding")) {
          if (!j["encoding"].is_string())
            throw body_error{bad_request("encoding must be hex or base64")};
          enc = j["encoding"].get<std::string>();
        }
        if (enc != "hex" && enc != "base64")
          throw body_error{bad_request("encoding must be hex or base64")};
        auto& s = j["data"].get_ref<const std::string&>();
        auto data = enc == "hex" ? from_hex(s) : from_base64(s);
        if (!data)
          throw body_error{bad_request("data is not valid " + enc)};
        check_range(gpa, data->size());
        size_t n = data->size();
        note.gpa = gpa;
        note.len = n;
        be.write_physical(vm, gpa, std::move(*data),
                          answer<done>(std::move(reply), [vm, gpa, n](const done&) {
                            return json{{"vm", vm}, {"gpa", hex_u64(gpa)}, {"len", n}};
                          }));
        return;
      }
      case route_id::get_page_access: {
        uint64_t from = 0;
        size_t limit = page_ranges_default_limit;
        if (auto f = r.query_param("from")) {
          auto v = parse_u64(*f);
          if (!v)
            throw body_error{bad_request("from must be a gpa (decimal or 0x hex)")};
          from = *v;
        }
        if (auto l = r.query_param("limit")) {
          auto v = parse_u64(*l);
          if (!v || *v == 0 || *v > page_ranges_max_limit)
            throw body_error{bad_request("limit must be a number 1.."
                                         + std::to_string(page_ranges_max_limit))};
          limit = *v;
        }
        be.get_page_access(vm, answer<std::vector<page_access_info>>(
                                 std::move(reply), [from, limit](const auto& ps) {
                                   std::vector<std::pair<uint64_t, uint8_t>> pages;
                                   pages.reserve(ps.size());
                                   for (auto& p : ps)
                                     pages.emplace_back(p.gpa, p.access);
                                   return to_json(coalesce_pages(std::move(pages), from, limit));
                                 }));
        return;
      }
      case route_id::set_page_access: {
        json j = parse_body(r, {"gpa", "access"});
        uint64_t gpa = need_u64(j, "gpa");
        if (!j.contains("access") || !j["access"].is_string())
          throw body_error{bad_request("field 'access' (e.g. \"r-x\") is required")};
        auto acc = parse_access(j["access"].get<std::string>());
        if (!acc)
          throw body_error{bad_request("access must look like \"rwx\", \"r-x\" or \"---\"")};
        note.gpa = gpa;
        note.details.emplace_back("access", access_string(*acc));
        if (gpa % kvmi::page_size)
          throw body_error{unprocessable("invalid_range", "gpa must be page aligned")};
        be.set_page_access(vm, gpa, *acc,
                           answer<done>(std::move(reply), [vm, gpa, a = *acc](const done&) {
                             return json{{"vm", vm}, {"gpa", hex_u64(gpa)},
                                         {"access", access_string(a)}};
                           }));
        return;
      }
      case route_id::list_breakpoints:
        be.list_breakpoints(vm, answer<std::vector<breakpoint_info>>(
                                  std::move(reply), [](const auto& bs) {
                                    json a = json::array();
                                    for (auto& b : bs)
                                      a.push_back(to_json(b));
                                    return json{{"breakpoints", std::move(a)}};
                                  }));
        return;
      case route_id::add_breakpoint: {
        json j = parse_body(r, {"gpa"});
        uint64_t gpa = need_u64(j, "gpa");
        note.gpa = gpa;
        // 201 Created names the new breakpoint's URL.
        be.add_breakpoint(vm, gpa, [reply = std::move(reply), vm, gpa](api_result<breakpoint_info> res) {
          if (!res.ok()) {
            reply(error_response(to_http(res.error())));
            return;
          }
          auto resp = json_response(201, to_json(res.value()));
          resp.headers.emplace_back("Location", "/v1/vms/" + percent_encode_segment(vm)
                                                  + "/breakpoints/" + hex_u64(gpa));
          reply(std::move(resp));
        });
        return;
      }
      case route_id::get_breakpoint: {
        auto gpa = parse_u64(m.param("gpa"));
        if (!gpa)
          throw body_error{bad_request("breakpoint gpa must be an unsigned integer")};
        be.list_breakpoints(vm, [reply = std::move(reply), g = *gpa](
                                  api_result<std::vector<breakpoint_info>> res) {
          if (!res.ok()) {
            reply(error_response(to_http(res.error())));
            return;
          }
          for (auto& b : res.value())
            if (b.gpa == g) {
              reply(json_response(200, to_json(b)));
              return;
            }
          reply(error_response(not_found("not_found", "no breakpoint at " + hex_u64(g))));
        });
        return;
      }
      case route_id::remove_breakpoint: {
        auto gpa = parse_u64(m.param("gpa"));
        if (!gpa)
          throw body_error{bad_request("breakpoint gpa must be an unsigned integer")};
        note.gpa = *gpa;
        be.remove_breakpoint(vm, *gpa, answer<done>(std::move(reply), [vm, g = *gpa](const done&) {
                               return json{{"vm", vm}, {"gpa", hex_u64(g)}, {"result", "removed"}};
                             }));
        return;
      }
      case route_id::metrics: {
        response resp;
        resp.content_type = prometheus_content_type;
        resp.body = render_metrics();
        reply(std::move(resp));
        return;
      }
      case route_id::events:
        reply(error_response(bad_request("the event stream is served by the connection")));
        return;
      case route_id::version:
        reply(json_response(200, version_body()));
        return;
      case route_id::healthz:
        // A round trip through the core's registry: the answer proves the
        // actors run, not only the ring thread.
        be.list_vms([reply = std::move(reply)](api_result<std::vector<vm_info>> r) {
          reply(r.ok() ? json_response(200, json{{"status", "ok"}})
                       : error_response({503, "unavailable", "core: " + r.error().message}));
        });
        return;
      case route_id::ui_page:
        reply(ui_response("index.html"));
        return;
      case route_id::ui_asset:
        reply(ui_response(m.param("asset")));
        return;
    }
  } catch (const body_error& e) {
    reply(error_response(e.e));
    return;
  }
  reply(error_response({500, "internal", "unhandled route"}));
}

void http_api::serve(const request& r, api_caller from, std::function<void(response)> reply) {
  auto rt = route(r.method, r.path);
  if (auto no = refuse(r, rt, from.who)) {
    if (no->status == 403 && rt.match) {
      audit_entry e{from.who, from.peer, r.method, std::string(name(rt.match->id)),
                    std::string(rt.match->param("vm"))};
      e.status = no->status;
      st_->audit(e);
    }
    reply(std::move(*no));
    return;
  }
  if (rt.match->id == route_id::events) {
    reply(error_response(bad_request("the event stream is served by HTTP (GET /v1/events); over "
                                     "NATS, read the JetStream stream")));
    return;
  }
  dispatch(*rt.match, r, std::move(reply), std::move(from));
}

std::string http_api::render_metrics() {
  auto fams = st_->be.metrics().snapshot();
  for (auto& f : process_metrics())
    fams.push_back(std::move(f));
  return render_prometheus(fams);
}

// --- the connection ------------------------------------------------------------

namespace {

constexpr uint64_t read_timer = 1;
constexpr uint64_t heartbeat_timer = 2;
constexpr uint64_t linger_timer = 3;
constexpr std::chrono::milliseconds linger_time{1000};
constexpr size_t linger_max_bytes = 4 << 20;

class http_conn final : public net::connection_handler {
public:
  http_conn(std::shared_ptr<http_api::shared> st, http_api* api)
    : st_(std::move(st)), api_(api), parser_(st_->opts.http, true) {}

  void on_open(net::conn_ctx& ctx) override {
    id_ = ctx.id();
    peer_ = ctx.peer();
    idle_since_ = clock::now();
    counted_ = true;
    if (st_->connections.fetch_add(1) >= st_->opts.max_connections) {
      send_final(ctx, error_response({503, "too_many_connections",
                                      "connection limit reached, try again later"}));
      return;
    }
    arm(ctx);
  }

  void on_data(net::conn_ctx& ctx, std::span<const uint8_t> bytes) override {
    if (closing_) {
      discarded_ += bytes.size();
      if (discarded_ > linger_max_bytes)
        ctx.close(); // still sending: stop lingering
      return;
    }
    if (streaming_)
      return; // a stream's client has nothing more to say
    in_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    // Pipelined input waiting behind a busy request is bounded like one request.
    if (in_.size() > st_->opts.http.max_header_bytes + st_->opts.http.max_body_bytes + 4096) {
      send_final(ctx, error_response({413, "payload_too_large", "too much pipelined input"}));
      return;
    }
    pump(ctx);
  }

  void on_timer(net::conn_ctx& ctx, uint64_t token) override {
    if (token == linger_timer) {
      ctx.close();
      return;
    }
    if (closing_)
      return;
    if (token == heartbeat_timer && streaming_) {
      flush(ctx, true);
      ctx.set_timer(st_->opts.heartbeat, heartbeat_timer);
      return;
    }
    if (token != read_timer || busy_ || streaming_)
      return;
    auto dl = parser_.deadline(idle_since_);
    if (!dl)
      return;
    auto now = clock::now();
    if (now < *dl) {
      arm(ctx);
      return;
    }
    if (parser_.state() == request_parser::phase::idle) {
      closing_ = true; // idle keep-alive connection: just close
      ctx.close();
      return;
    }
    send_final(ctx, error_response({408, "request_timeout",
                                    parser_.state() == request_parser::phase::headers
                                      ? "request headers not received in time"
                                      : "request body not received in time"}));
  }

  void on_close(net::conn_ctx&, net::close_reason) override {
    if (sub_) {
      sub_->set_notify(nullptr);
      sub_.reset();
      st_->streams->add(-1);
    }
    if (counted_)
      st_->connections.fetch_sub(1);
    counted_ = false;
  }

  // Back on the ring thread with the backend's answer.
  void finish(net::conn_ctx& ctx, const response& r, bool keep_alive, std::string_view route) {
    busy_ = false;
    st_->count_request(route, r.status);
    if (closing_)
      return;
    ctx.send(as_bytes(serialize(r, keep_alive)));
    idle_since_ = clock::now();
    if (!keep_alive) {
      closing_ = true;
      ctx.close();
      return;
    }
    pump(ctx);
  }

  // Moves queued bus records to the socket (heartbeat: also a comment line).
  void flush(net::conn_ctx& ctx, bool heartbeat = false) {
    if (!sub_ || closing_)
      return;
    batch_.clear();
    sub_->poll(batch_);
    std::string out;
    uint64_t lost = sub_->dropped() + local_drops_;
    if (ctx.queued() >= st_->opts.stream_backlog) {
      // The client reads slower than records come: drop here rather than
      // grow the socket queue (the bus already bounds what waits upstream).
      local_drops_ += batch_.size();
      st_->stream_drops->inc(batch_.size());
      return;
    }
    if (lost > reported_drops_) {
      out += format_sse_dropped(lost);
      reported_drops_ = lost;
    }
    for (auto& r : batch_)
      out += format_sse(r, boot_);
    if (out.empty() && heartbeat)
      out = sse_heartbeat;
    if (!out.empty())
      ctx.send(as_bytes(out));
  }

private:
  static std::vector<uint8_t> as_bytes(const std::string& s) {
    return std::vector<uint8_t>(s.begin(), s.end());
  }

  // An error that ends the connection. Closing at once with unread request
  // bytes in the socket would make the kernel send RST, and the client could
  // lose the response; so keep reading (and discarding) for a moment first.
  void send_final(net::conn_ctx& ctx, const response& r) {
    closing_ = true;
    ctx.cancel_timer(read_timer);
    ctx.send(as_bytes(serialize(r, false)));
    ctx.set_timer(linger_time, linger_timer);
  }

  void arm(net::conn_ctx& ctx) {
    auto dl = parser_.deadline(idle_since_);
    if (busy_ || streaming_ || closing_ || !dl) {
      ctx.cancel_timer(read_timer);
      return;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*dl - clock::now());
    ctx.set_timer(std::max(left, std::chrono::milliseconds(1)), read_timer);
  }

  void pump(net::conn_ctx& ctx) {
    while (!busy_ && !closing_ && !streaming_) {
      size_t n = parser_.feed(std::span<const char>(in_.data(), in_.size()), clock::now());
      in_.erase(0, n);
      if (parser_.state() == request_parser::phase::failed) {
        auto& f = parser_.failure();
        st_->count_request("-", f.status);
        send_final(ctx, error_response({f.status, f.code, f.message}));
        return;
      }
      if (parser_.state() == request_parser::phase::head) {
        if (!vet_head(ctx))
          return;
        parser_.read_body(); // may fail (413): answered at the top of the loop
        // curl and others wait for this before sending a larger body.
        auto expect = parser_.current().header("expect");
        if (parser_.state() == request_parser::phase::body && expect
            && (*expect == "100-continue" || *expect == "100-Continue"))
          ctx.send(as_bytes("HTTP/1.1 100 Continue\r\n\r\n"));
        continue;
      }
      if (parser_.state() != request_parser::phase::ready)
        break;
      start(ctx, parser_.take());
    }
    arm(ctx);
  }

  // Why the request in hand is refused (401, 404/405, 403 in that order), or
  // nullopt. Reads rt_ and who_ as vet_head() set them.
  std::optional<response> refusal(const request& req) const { return refuse(req, rt_, who_); }

  // The headers are complete and no body byte has been read: decide whether
  // the body is worth reading. A request without the token is answered now
  // and the connection closed, so a client without the token cannot make
  // kvmid hold its body. Other refusals wait for the body only when there is
  // none (the connection then stays open).
  bool vet_head(net::conn_ctx& ctx) {
    const request& req = parser_.current();
    rt_ = route(req.method, req.path);
    who_ = st_->access.check(req.header("authorization"));
    auto no = refusal(req);
    // A route open to all takes no body: without a token, none is read.
    if (!no && who_ == role::none && parser_.body_expected())
      no = error_response(bad_request(std::string(name(rt_.match->id)) + " takes no body"));
    if (!no || (who_ != role::none && !parser_.body_expected()))
      return true;
    std::string_view route_name = rt_.match ? name(rt_.match->id) : "-";
    st_->count_request(route_name, no->status);
    if (no->status == 403)
      audit_refusal(req, no->status);
    send_final(ctx, *no);
    return false;
  }

  // A mutating call refused for the caller's role is audited like one made.
  void audit_refusal(const request& req, int status) {
    audit_entry e{who_, peer_, req.method, std::string(name(rt_.match->id)),
                  std::string(rt_.match->param("vm"))};
    e.status = status;
    st_->audit(e);
  }

  void start(net::conn_ctx& ctx, request req) {
    std::string_view route_name = rt_.match ? name(rt_.match->id) : "-";
    if (auto no = refusal(req)) {
      if (no->status == 403)
        audit_refusal(req, no->status);
      reply_now(ctx, *no, req.keep_alive, route_name);
      return;
    }
    if (rt_.match->id == route_id::events) {
      start_stream(ctx, req);
      return;
    }
    busy_ = true;
    ctx.cancel_timer(read_timer);
    auto post = st_->post;
    bool keep = req.keep_alive;
    api_->dispatch(
      *rt_.match, req,
      [post, id = id_, keep, route_name](response r) {
        post(id, [r = std::move(r), keep, route_name](net::conn_ctx& c, net::connection_handler& h) {
          static_cast<http_conn&>(h).finish(c, r, keep, route_name);
        });
      },
      {who_, peer_});
  }

  void reply_now(net::conn_ctx& ctx, const response& r, bool keep_alive, std::string_view route) {
    busy_ = true;
    finish(ctx, r, keep_alive, route);
  }

  void start_stream(net::conn_ctx& ctx, const request& req) {
    auto f = parse_stream_filter(req);
    if (auto* e = std::get_if<http_error>(&f)) {
      reply_now(ctx, error_response(*e), req.keep_alive, "/v1/events");
      return;
    }
    resume_.reset();
    if (auto last = req.header("last-event-id")) {
      auto c = parse_last_event_id(*last);
      if (auto* e = std::get_if<http_error>(&c)) {
        reply_now(ctx, error_response(*e), req.keep_alive, "/v1/events");
        return;
      }
      resume_ = std::get<bus_cursor>(std::move(c));
    }
    auto filter = std::get<bus_filter>(std::move(f));
    if (filter.vms.empty()) {
      open_stream(ctx, std::move(filter));
      return;
    }
    // ?vm= names are checked against the VMs kvmid knows: a typo would
    // otherwise give a stream that never carries anything.
    busy_ = true;
    ctx.cancel_timer(read_timer);
    auto post = st_->post;
    st_->be.list_vms([post, id = id_, filter = std::move(filter),
                      keep = req.keep_alive](api_result<std::vector<vm_info>> r) mutable {
      post(id, [r = std::move(r), filter = std::move(filter),
                keep](net::conn_ctx& c, net::connection_handler& h) mutable {
        static_cast<http_conn&>(h).stream_vms_known(c, r, std::move(filter), keep);
      });
    });
  }

  // Back on the ring thread with the VMs kvmid knows.
  void stream_vms_known(net::conn_ctx& ctx, const api_result<std::vector<vm_info>>& known,
                        bus_filter filter, bool keep_alive) {
    busy_ = false;
    if (closing_)
      return;
    if (!known.ok()) {
      reply_now(ctx, error_response(to_http(known.error())), keep_alive, "/v1/events");
      return;
    }
    if (auto e = unknown_stream_vm(filter, known.value())) {
      reply_now(ctx, error_response(*e), keep_alive, "/v1/events");
      return;
    }
    open_stream(ctx, std::move(filter));
  }

  void open_stream(net::conn_ctx& ctx, bus_filter filter) {
    sub_ = st_->be.subscribe(std::move(filter), st_->opts.stream_queue, resume_);
    boot_ = st_->be.bus_boot();
    if (!sub_) {
      reply_now(ctx, error_response({503, "unavailable", "event stream unavailable"}), false,
                "/v1/events");
      return;
    }
    st_->count_request("/v1/events", 200);
    st_->streams->add(1);
    streaming_ = true;
    ctx.cancel_timer(read_timer);
    ctx.send(as_bytes(serialize_stream_head(200, "text/event-stream")));
    if (sub_->replay_gap())
      ctx.send(as_bytes(format_sse_replay_gap()));
    auto post = st_->post;
    sub_->set_notify([post, id = id_] {
      post(id, [](net::conn_ctx& c, net::connection_handler& h) {
        static_cast<http_conn&>(h).flush(c);
      });
    });
    flush(ctx, true); // records that arrived before set_notify, or the first heartbeat
    ctx.set_timer(st_->opts.heartbeat, heartbeat_timer);
  }

  std::shared_ptr<http_api::shared> st_;
  http_api* api_;
  request_parser parser_;
  std::string in_;
  net::conn_id id_ = 0;
  clock::time_point idle_since_{};
  bool busy_ = false, streaming_ = false, closing_ = false, counted_ = false;
  std::optional<bus_cursor> resume_; // Last-Event-ID of the stream being opened
  std::string boot_;                 // the bus's, for the records' ids
  std::shared_ptr<subscription> sub_;
  std::vector<bus_record> batch_;
  uint64_t local_drops_ = 0, reported_drops_ = 0;
  size_t discarded_ = 0;
  std::string peer_;
  route_result rt_; // of the request in hand, from its headers
  role who_ = role::none;
};

} // namespace

http_api::http_api(backend& be, api_access access, api_options opts, poster post)
  : st_(std::make_shared<shared>(be, std::move(access), std::move(opts), std::move(post))) {
  if (auto& t = st_->opts.tls) {
    auto loaded = tls_context::load(*t);
    if (auto* err = std::get_if<std::string>(&loaded))
      throw std::runtime_error(*err);
    tls_ = std::get<std::shared_ptr<tls_context>>(std::move(loaded));
    tls_failures_ = &be.metrics().get_counter(
      "kvmid_api_tls_failures_total",
      "Control-plane TLS handshakes that failed (bad client, certificate, timeout).");
  }
}

http_api::~http_api() = default;

net::handler_factory http_api::factory() {
  if (tls_)
    throw std::logic_error("api.tls is set: listeners take factory(listen_spec)");
  auto st = st_;
  return [st, this] { return std::make_unique<http_conn>(st, this); };
}

net::handler_factory http_api::factory(const net::listen_spec& on) {
  auto st = st_;
  auto plain = [st, this] { return std::make_unique<http_conn>(st, this); };
  if (!tls_ || on.type != net::listen_spec::kind::tcp)
    return plain;
  tls_conn::params p{tls_, tls_failures_, st_->opts.http.header_timeout};
  return [p, plain] { return std::make_unique<tls_conn>(p, plain()); };
}

} // namespace kvmid::control
