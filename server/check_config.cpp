#include "server/check_config.hpp"

#include "server/control/api.hpp"
#include "server/control/json.hpp"
#include "server/control/tls_context.hpp"
#include "server/kvmi_rings.hpp"

#include <grp.h>
#include <pwd.h>

#include <thread>

namespace kvmid {

using nlohmann::json;

namespace {

std::string_view level_name(log_level l) {
  switch (l) {
    case log_level::error: return "error";
    case log_level::warn: return "warn";
    case log_level::info: return "info";
    case log_level::debug: return "debug";
  }
  return "info";
}

json listener_json(const kvmi_listener_config& l, const std::string& default_cookie) {
  const auto& s = l.spec;
  json j;
  switch (s.type) {
    case net::listen_spec::kind::unix_socket: {
      char mode[8];
      std::snprintf(mode, sizeof mode, "0%03o", unsigned(s.mode));
      j = {{"type", "unix"}, {"path", s.path}, {"mode", mode}};
      if (s.uid >= 0)
        if (auto* pw = getpwuid(uid_t(s.uid)))
          j["owner"] = pw->pw_name;
      if (s.gid >= 0)
        if (auto* gr = getgrgid(gid_t(s.gid)))
          j["group"] = gr->gr_name;
      break;
    }
    case net::listen_spec::kind::tcp:
      j = {{"type", "tcp"}, {"host", s.host}, {"port", s.port}};
      break;
    case net::listen_spec::kind::vsock:
      j = {{"type", "vsock"},
           {"cid", s.cid == 0xFFFFFFFFu ? json(-1) : json(s.cid)},
           {"port", s.vport}};
      break;
  }
  j["cookie_file"] = l.cookie_file.empty() ? default_cookie : l.cookie_file;
  j["protocol"] = name(l.proto);
  return j;
}

std::string listen_string(const net::listen_spec& l) {
  if (l.type == net::listen_spec::kind::tcp && l.host.find(':') != std::string::npos)
    return "tcp:[" + l.host + "]:" + std::to_string(l.port);
  return l.describe();
}

json api_json(const control::api_options& o, bool allow_remote) {
  json listen = json::array();
  for (auto& l : o.listen)
    listen.push_back(listen_string(l));
  json j = {{"listen", std::move(listen)},
            {"token_file", o.token_file},
            {"allow_remote", allow_remote},
            {"max_header_bytes", o.http.max_header_bytes},
            {"max_body_bytes", o.http.max_body_bytes},
            {"header_timeout_ms", o.http.header_timeout.count()},
            {"body_timeout_ms", o.http.body_timeout.count()},
            {"idle_timeout_ms", o.http.idle_timeout.count()},
            {"max_connections", o.max_connections},
            {"stream_queue", o.stream_queue},
            {"stream_backlog", o.stream_backlog},
            {"heartbeat_ms", o.heartbeat.count()}};
  if (!o.read_token_file.empty())
    j["read_token_file"] = o.read_token_file;
  if (o.tls) {
    j["tls"] = {{"cert_file", o.tls->cert_file}, {"key_file", o.tls->key_file}};
    if (!o.tls->client_ca_file.empty())
      j["tls"]["client_ca_file"] = o.tls->client_ca_file;
  }
  return j;
}

json nats_json(const nats_options& o) {
  json j = {{"enabled", o.enabled},
            {"urls", o.urls},
            {"host", o.host},
            {"subject_prefix", o.subject_prefix},
            {"stream", o.stream},
            {"create_stream", o.create_stream},
            {"duplicate_window_s", o.duplicate_window.count()},
            {"raw_events", o.raw_events},
            {"spool_records", o.spool_records},
            {"ack_timeout_ms", o.ack_timeout.count()},
            {"api", o.api},
            {"api_role", o.api_role}};
  if (!o.user.empty()) {
    j["user"] = o.user;
    j["password_file"] = o.password_file;
  }
  if (!o.nkey_seed_file.empty())
    j["nkey_seed_file"] = o.nkey_seed_file;
  if (!o.creds_file.empty())
    j["creds_file"] = o.creds_file;
  if (o.tls) {
    j["tls"] = json::object();
    if (!o.tls_files.ca_file.empty())
      j["tls"]["ca_file"] = o.tls_files.ca_file;
    if (!o.tls_files.cert_file.empty()) {
      j["tls"]["cert_file"] = o.tls_files.cert_file;
      j["tls"]["key_file"] = o.tls_files.key_file;
    }
  }
  return j;
}

// The files the config names, as start-up reads them; each problem is one
// warning line.
void check_files(const config& cfg, const control::api_options* api, FILE* err) {
  auto warn = [&](const std::string& what) {
    std::fprintf(err, "kvmid: warning: %s\n", what.c_str());
  };
  auto cookie = [&](const std::string& path, const std::string& field) {
    try {
      read_cookie(path, cfg.file, field);
    } catch (const config_error& e) {
      warn(e.what());
    }
  };
  if (!cfg.cookie_file.empty())
    cookie(cfg.cookie_file, "/cookie_file");
  for (size_t i = 0; i < cfg.listeners.size(); ++i)
    if (!cfg.listeners[i].cookie_file.empty())
      cookie(cfg.listeners[i].cookie_file, "/listeners/" + std::to_string(i) + "/cookie_file");
  if (!api)
    return;
  auto token = [&](const std::string& path, const char* field) {
    try {
      control::token_auth::from_file(path);
    } catch (const std::exception& e) {
      warn(cfg.file + ": " + field + ": " + e.what());
    }
  };
  token(api->token_file, "/api/token_file");
  if (!api->read_token_file.empty())
    token(api->read_token_file, "/api/read_token_file");
  if (api->tls)
    if (auto loaded = control::tls_context::load(*api->tls);
        auto* why = std::get_if<std::string>(&loaded))
      warn(cfg.file + ": /api/tls: " + *why);
}

} // namespace

json effective_config(const config& cfg, const json& api) {
  json policies = json::array();
  for (auto& p : cfg.policies.policies) {
    json j = control::to_json(p);
    j["match"] = p.match;
    policies.push_back(std::move(j));
  }
  json listeners = json::array();
  for (auto& l : cfg.listeners)
    listeners.push_back(listener_json(l, cfg.cookie_file));
  json j = {{"log_level", level_name(cfg.level)},
            {"handshake", cfg.handshake == kvmi::hs::mode::qemu_v5 ? "qemu-v5" : "kvmi"},
            {"handshake_timeout_ms", cfg.handshake_timeout.count()},
            {"max_handshakes", cfg.max_handshakes},
            {"max_setups", cfg.max_setups},
            {"command_timeout_ms", cfg.command_timeout.count()},
            {"shutdown_timeout_ms", cfg.shutdown_timeout.count()},
            {"send_queue_limit", cfg.send_queue_limit},
            {"workers", cfg.workers},
            {"rings", cfg.rings ? cfg.rings : default_kvmi_rings(std::thread::hardware_concurrency())},
            {"poll_us", cfg.poll.count()},
            {"state_dir", cfg.state_dir.empty() ? default_state_dir() : cfg.state_dir},
            {"listeners", std::move(listeners)},
            {"policies", std::move(policies)}};
  if (!cfg.cookie_file.empty())
    j["cookie_file"] = cfg.cookie_file;
  if (!api.is_null())
    j["api"] = api;
  if (cfg.nats.enabled)
    j["nats"] = nats_json(cfg.nats);
  return j;
}

int check_config(const std::string& path, FILE* out, FILE* err) {
  config cfg;
  try {
    cfg = load_config(path);
  } catch (const config_error& e) {
    std::fprintf(err, "kvmid: bad config %s\n", e.what());
    return 1;
  }
  json api;
  std::optional<control::api_options> opts;
  if (cfg.api) {
    auto o = control::parse_api_options(*cfg.api);
    if (auto* why = std::get_if<std::string>(&o)) {
      std::fprintf(err, "kvmid: bad config %s: /api: %s\n", cfg.file.c_str(), why->c_str());
      return 1;
    }
    opts = std::get<control::api_options>(std::move(o));
    api = api_json(*opts, cfg.api->value("allow_remote", false));
  }
  check_files(cfg, opts ? &*opts : nullptr, err);
  std::fprintf(out, "%s\n", effective_config(cfg, api).dump(2).c_str());
  return 0;
}

} // namespace kvmid
