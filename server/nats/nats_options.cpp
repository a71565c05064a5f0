#include "server/nats/nats_options.hpp"

#include "actors/excerpt.hpp"
#include "server/config.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <unistd.h>

namespace kvmid {

std::string default_nats_host() {
  char b[256] = {};
  if (::gethostname(b, sizeof b - 1) != 0 || !b[0])
    return "localhost";
  std::string h(b);
  h = h.substr(0, h.find('.'));
  for (auto& c : h)
    if (c == '*' || c == '>' || c == ' ' || c == '\t')
      c = '_';
  return h;
}

bool valid_subject_token(std::string_view s) {
  if (s.empty() || s.size() > 128)
    return false;
  for (char c : s)
    if (c == '.' || c == '*' || c == '>' || c <= ' ' || c == 0x7f)
      return false;
  return true;
}

namespace {

// A subject of dot-separated tokens, as valid_subject_token each.
bool valid_subject(std::string_view s) {
  while (true) {
    auto dot = s.find('.');
    if (!valid_subject_token(s.substr(0, dot)))
      return false;
    if (dot == std::string_view::npos)
      return true;
    s = s.substr(dot + 1);
  }
}

struct reader {
  const nlohmann::json& j;
  const std::string& file;
  const std::string& at;

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw config_error(file, at + field, why);
  }
  const nlohmann::json* get(const char* k) const {
    auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  }
  void text(const char* k, std::string& out) const {
    if (auto* v = get(k)) {
      if (!v->is_string() || v->get<std::string>().empty())
        fail(std::string("/") + k, "must be a non-empty string");
      out = v->get<std::string>();
    }
  }
  void flag(const char* k, bool& out) const {
    if (auto* v = get(k)) {
      if (!v->is_boolean())
        fail(std::string("/") + k, "must be true or false");
      out = v->get<bool>();
    }
  }
  void count(const char* k, uint64_t lo, uint64_t hi, uint64_t& out) const {
    if (auto* v = get(k)) {
      if (!v->is_number_unsigned() || v->get<uint64_t>() < lo || v->get<uint64_t>() > hi)
        fail(std::string("/") + k,
             "must be an integer " + std::to_string(lo) + ".." + std::to_string(hi));
      out = v->get<uint64_t>();
    }
  }
};

} // namespace

nats_options parse_nats_options(const nlohmann::json& j, const std::string& file,
                                const std::string& at) {
  if (!j.is_object())
    throw config_error(file, at, "must be an object");
  static constexpr const char* known[] = {
    "enabled", "urls", "host", "subject_prefix", "stream", "create_stream",
    "stream_replicas", "duplicate_window_s", "raw_events", "spool_records", "ack_timeout_ms",
    "api", "api_role",
    "user", "password_file", "nkey_seed_file", "creds_file", "tls"};
  for (auto& [k, v] : j.items())
    if (std::find(std::begin(known), std::end(known), k) == std::end(known))
      throw config_error(file, at + "/" + excerpt(k), "unknown field");
  reader r{j, file, at};
  nats_options o;
  o.host = default_nats_host();
  r.flag("enabled", o.enabled);
  if (auto* u = r.get("urls")) {
    if (!u->is_array() || u->empty())
      r.fail("/urls", "must be a non-empty array of nats:// or tls:// URLs");
    o.urls.clear();
    for (size_t i = 0; i < u->size(); ++i) {
      auto& e = (*u)[i];
      std::string s = e.is_string() ? e.get<std::string>() : "";
      if (s.rfind("nats://", 0) != 0 && s.rfind("tls://", 0) != 0)
        r.fail("/urls/" + std::to_string(i), "must be a nats://host:port or tls://host:port URL");
      o.urls.push_back(s);
    }
  }
  r.text("host", o.host);
  if (!valid_subject_token(o.host) || o.host == "all")
    r.fail("/host", "must be one subject token (no '.', '*', '>' or spaces) and not \"all\": \""
                      + excerpt(o.host) + "\"");
  r.text("subject_prefix", o.subject_prefix);
  if (!valid_subject(o.subject_prefix))
    r.fail("/subject_prefix", "must be a NATS subject without wildcards, e.g. \"kvmi\"");
  r.text("stream", o.stream);
  if (!valid_subject_token(o.stream) || o.stream.find_first_of("/\\") != std::string::npos)
    r.fail("/stream", "must be a stream name without '.', '*', '>', '/', '\\' or spaces");
  r.flag("create_stream", o.create_stream);
  // JetStream's own limit: a stream has at most 5 replicas.
  uint64_t v = uint64_t(o.stream_replicas);
  r.count("stream_replicas", 1, 5, v);
  o.stream_replicas = int(v);
  v = uint64_t(o.duplicate_window.count());
  r.count("duplicate_window_s", 1, 7 * 24 * 3600, v);
  o.duplicate_window = std::chrono::seconds(v);
  r.flag("raw_events", o.raw_events);
  v = o.spool_records;
  r.count("spool_records", 1, 10'000'000, v);
  o.spool_records = v;
  v = uint64_t(o.ack_timeout.count());
  r.count("ack_timeout_ms", 100, 600'000, v);
  o.ack_timeout = std::chrono::milliseconds(v);
  r.flag("api", o.api);
  r.text("api_role", o.api_role);
  if (o.api_role != "read" && o.api_role != "full")
    r.fail("/api_role", "must be \"read\" or \"full\"");
  r.text("user", o.user);
  r.text("password_file", o.password_file);
  if (o.user.empty() != o.password_file.empty())
    r.fail(o.user.empty() ? "/user" : "/password_file", "user and password_file go together");
  r.text("nkey_seed_file", o.nkey_seed_file);
  r.text("creds_file", o.creds_file);
  int ways = !o.user.empty() + !o.nkey_seed_file.empty() + !o.creds_file.empty();
  if (ways > 1)
    r.fail("", "give one of user/password_file, nkey_seed_file or creds_file");
  if (auto* t = r.get("tls")) {
    if (!t->is_object())
      r.fail("/tls", "must be an object {\"ca_file\", \"cert_file\", \"key_file\"}");
    std::string tat = at + "/tls";
    reader tr{*t, file, tat};
    for (auto& [k, x] : t->items())
      if (k != "ca_file" && k != "cert_file" && k != "key_file")
        tr.fail("/" + excerpt(k), "unknown field");
    o.tls = true;
    tr.text("ca_file", o.tls_files.ca_file);
    tr.text("cert_file", o.tls_files.cert_file);
    tr.text("key_file", o.tls_files.key_file);
    if (o.tls_files.cert_file.empty() != o.tls_files.key_file.empty())
      tr.fail(o.tls_files.cert_file.empty() ? "/cert_file" : "/key_file",
              "cert_file and key_file go together");
  }
  return o;
}

} // namespace kvmid
