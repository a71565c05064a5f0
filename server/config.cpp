#include "server/config.hpp"

#include "actors/bounded_json.hpp"
#include "actors/excerpt.hpp"
#include "proto/cookie.hpp"
#include "server/secret_file.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <grp.h>
#include <pwd.h>
#include <sstream>

namespace kvmid {

std::optional<log_level> parse_log_level(std::string_view s) {
  if (s == "error") return log_level::error;
  if (s == "warn") return log_level::warn;
  if (s == "info") return log_level::info;
  if (s == "debug") return log_level::debug;
  return std::nullopt;
}

namespace {

// A member name as a JSON pointer token (RFC 6901 ~0 ~1), shortened like any
// quoted input so an error line stays short.
std::string pointer_token(const std::string& key) {
  std::string t;
  for (char ch : key)
    t += ch == '~' ? std::string("~0") : ch == '/' ? std::string("~1") : std::string(1, ch);
  return excerpt(t);
}

struct ctx {
  const std::string& file;
  [[noreturn]] void fail(const std::string& at, const std::string& why) const {
    throw config_error(file, at, why);
  }
  void only(const nlohmann::json& j, const std::string& at,
            std::initializer_list<const char*> keys) const {
    if (!j.is_object())
      fail(at, "must be an object");
    for (auto& [k, v] : j.items()) {
      bool ok = false;
      for (auto* x : keys)
        ok = ok || k == x;
      if (!ok)
        fail(at + "/" + pointer_token(k), "unknown field");
    }
  }
  // Durations, counts, ports, limits: a JSON integer, never a string.
  uint64_t integer(const nlohmann::json& j, const std::string& at) const {
    if (j.is_number_unsigned())
      return j.get<uint64_t>();
    if (j.is_number_integer()) {
      if (j.get<int64_t>() < 0)
        fail(at, "must not be negative");
      return uint64_t(j.get<int64_t>());
    }
    fail(at, "must be an integer");
  }
  // GPAs, sizes, MSR indices: an integer, or a string in decimal / 0x hex
  // (the schema's "u64").
  uint64_t hex_or_integer(const nlohmann::json& j, const std::string& at) const {
    if (j.is_string()) {
      auto s = j.get<std::string>();
      size_t pos = 0;
      try {
        int base = s.rfind("0x", 0) == 0 || s.rfind("0X", 0) == 0 ? 16 : 10;
        uint64_t v = std::stoull(s, &pos, base);
        if (pos == s.size() && !s.empty() && s[0] != '-')
          return v;
      } catch (...) {
      }
      fail(at, "not a number: \"" + excerpt(s) + "\"");
    }
    if (j.is_number_integer())
      return integer(j, at);
    fail(at, "must be a number or a \"0x...\" string");
  }
  std::string str(const nlohmann::json& j, const std::string& at) const {
    if (!j.is_string())
      fail(at, "must be a string");
    return j.get<std::string>();
  }
  bool boolean(const nlohmann::json& j, const std::string& at) const {
    if (!j.is_boolean())
      fail(at, "must be true or false");
    return j.get<bool>();
  }
  const nlohmann::json& array(const nlohmann::json& j, const std::string& at) const {
    if (!j.is_array())
      fail(at, "must be an array");
    return j;
  }
};

uint8_t parse_access(const ctx& c, const nlohmann::json& j, const std::string& at) {
  auto s = c.str(j, at);
  if (s.size() != 3 || (s[0] != 'r' && s[0] != '-') || (s[1] != 'w' && s[1] != '-')
      || (s[2] != 'x' && s[2] != '-'))
    c.fail(at, "access must look like \"r-x\" (r, w, x or - in that order)");
  return uint8_t((s[0] == 'r' ? kvmi::page_access_r : 0) | (s[1] == 'w' ? kvmi::page_access_w : 0)
                 | (s[2] == 'x' ? kvmi::page_access_x : 0));
}

} // namespace

policy_set parse_policies(const nlohmann::json& j, const std::string& file, const std::string& at) {
  ctx c{file};
  policy_set ps;
  c.array(j, at);
  for (size_t i = 0; i < j.size(); ++i) {
    auto& p = j[i];
    auto pa = at + "/" + std::to_string(i);
    c.only(p, pa, {"name", "match", "page_protection", "msr_protection", "cr_pins", "breakpoints",
                   "hypercalls"});
    vm_policy v;
    if (!p.contains("name"))
      c.fail(pa + "/name", "required");
    v.name = c.str(p["name"], pa + "/name");
    if (!p.contains("match"))
      c.fail(pa + "/match", "required (globs over VM uuid or name; \"*\" for all)");
    for (size_t k = 0; k < c.array(p["match"], pa + "/match").size(); ++k)
      v.match.push_back(c.str(p["match"][k], pa + "/match/" + std::to_string(k)));
    if (p.contains("page_protection"))
      for (size_t k = 0; k < c.array(p["page_protection"], pa + "/page_protection").size(); ++k) {
        auto& r = p["page_protection"][k];
        auto ra = pa + "/page_protection/" + std::to_string(k);
        c.only(r, ra, {"name", "gpa", "size", "access", "on_violation", "deny_range"});
        page_rule pr;
        pr.name = r.contains("name") ? c.str(r["name"], ra + "/name") : "page-rule-" + std::to_string(k);
        if (!r.contains("gpa") || !r.contains("size"))
          c.fail(ra, "gpa and size are required");
        pr.gpa = c.hex_or_integer(r["gpa"], ra + "/gpa");
        pr.size = c.hex_or_integer(r["size"], ra + "/size");
        if (pr.gpa % kvmi::page_size)
          c.fail(ra + "/gpa", "must be page aligned (4096)");
        if (pr.size == 0 || pr.size % kvmi::page_size)
          c.fail(ra + "/size", "must be a non-zero multiple of 4096");
        if (pr.size > (1ull << 32))
          c.fail(ra + "/size", "at most 4 GiB per rule");
        if (r.contains("access"))
          pr.access = parse_access(c, r["access"], ra + "/access");
        if (pr.access == kvmi::page_access_rwx)
          c.fail(ra + "/access", "\"rwx\" protects nothing");
        if (r.contains("on_violation")) {
          auto a = parse_pf_action(c.str(r["on_violation"], ra + "/on_violation"));
          if (!a)
            c.fail(ra + "/on_violation", "must be allow-once, allow-and-unprotect, crash or deny");
          pr.on_violation = *a;
        }
        if (r.contains("deny_range")) {
          auto& d = r["deny_range"];
          auto da = ra + "/deny_range";
          if (pr.on_violation != pf_action::deny)
            c.fail(da, "only with \"on_violation\": \"deny\"");
          if (!d.is_object())
            c.fail(da, "must be an object {\"gpa\", \"size\"}");
          c.only(d, da, {"gpa", "size"});
          if (!d.contains("gpa") || !d.contains("size"))
            c.fail(da, "gpa and size are required");
          pr.deny_gpa = c.hex_or_integer(d["gpa"], da + "/gpa");
          pr.deny_size = c.hex_or_integer(d["size"], da + "/size");
          if (pr.deny_size == 0)
            c.fail(da + "/size", "must not be 0");
          if (pr.deny_gpa < pr.gpa || pr.deny_gpa - pr.gpa >= pr.size
              || pr.deny_size > pr.size - (pr.deny_gpa - pr.gpa))
            c.fail(da, "must lie inside the rule's gpa and size");
        }
        v.pages.push_back(pr);
      }
    if (p.contains("msr_protection"))
      for (size_t k = 0; k < c.array(p["msr_protection"], pa + "/msr_protection").size(); ++k) {
        auto& r = p["msr_protection"][k];
        auto ra = pa + "/msr_protection/" + std::to_string(k);
        c.only(r, ra, {"name", "msr"});
        msr_rule m;
        if (!r.contains("msr"))
          c.fail(ra + "/msr", "required");
        uint64_t msr = c.hex_or_integer(r["msr"], ra + "/msr");
        if (msr > 0xffffffffull || !kvmi::valid_control_msr(uint32_t(msr)))
          c.fail(ra + "/msr", "KVMI can only intercept MSRs 0..0x1fff and 0xc0000000..0xc0001fff");
        m.msr = uint32_t(msr);
        m.name = r.contains("name") ? c.str(r["name"], ra + "/name") : "msr-" + std::to_string(msr);
        v.msrs.push_back(m);
      }
    if (p.contains("cr_pins"))
      for (size_t k = 0; k < c.array(p["cr_pins"], pa + "/cr_pins").size(); ++k) {
        auto ra = pa + "/cr_pins/" + std::to_string(k);
        auto pin = parse_cr_pin(c.str(p["cr_pins"][k], ra));
        if (!pin)
          c.fail(ra, "must be cr0.wp, cr4.smep or cr4.smap");
        v.crs.push_back(*pin);
      }
    if (p.contains("breakpoints"))
      for (size_t k = 0; k < c.array(p["breakpoints"], pa + "/breakpoints").size(); ++k) {
        auto& r = p["breakpoints"][k];
        auto ra = pa + "/breakpoints/" + std::to_string(k);
        c.only(r, ra, {"name", "gpa"});
        breakpoint_rule b;
        if (!r.contains("gpa"))
          c.fail(ra + "/gpa", "required");
        b.gpa = c.hex_or_integer(r["gpa"], ra + "/gpa");
        b.name = r.contains("name") ? c.str(r["name"], ra + "/name") : "bp-" + std::to_string(k);
        v.breakpoints.push_back(b);
      }
    if (p.contains("hypercalls"))
      v.hypercalls = c.boolean(p["hypercalls"], pa + "/hypercalls");
    ps.policies.push_back(std::move(v));
  }
  return ps;
}

// A listener's KVMI dialect. The v7 handshake authenticates nobody: its
// answer (SHA-1 of the cookie) is the same on every connection, so anyone
// who sees it once can replay it to QEMU. On a socket others can reach
// (tcp, vsock) that takes the operator's explicit consent.
void parse_protocol(const ctx& c, const nlohmann::json& l, const std::string& la,
                    kvmi_listener_config& lc) {
  auto p = l.contains("protocol") ? c.str(l["protocol"], la + "/protocol") : std::string("v5");
  if (p == "v7")
    lc.proto = protocol::v7;
  else if (p != "v5")
    c.fail(la + "/protocol", "must be \"v5\" or \"v7\"");
  if (l.contains("qemu_layout")) {
    if (lc.proto != protocol::v7)
      c.fail(la + "/qemu_layout", "only for a \"protocol\": \"v7\" listener");
    auto q = c.str(l["qemu_layout"], la + "/qemu_layout");
    if (q == "e820")
      lc.v7_layout = kvmi::v7::hs::layout::e820;
    else if (q != "max_gpa")
      c.fail(la + "/qemu_layout", "must be \"max_gpa\" or \"e820\"");
  }
  bool replayable = l.contains("allow_replayable_handshake")
                    && c.boolean(l["allow_replayable_handshake"], la + "/allow_replayable_handshake");
  if (lc.proto == protocol::v7 && lc.spec.type != net::listen_spec::kind::unix_socket && !replayable)
    c.fail(la + "/allow_replayable_handshake",
           "must be true for a v7 listener on tcp or vsock: the v7 handshake answer (SHA-1 of the "
           "cookie) can be replayed by anyone who sees it once (docs/security.md)");
}

config parse_config(const nlohmann::json& j, const std::string& file) {
  ctx c{file};
  c.only(j, "", {"$schema", "log_level", "listeners", "cookie_file", "handshake",
                 "handshake_timeout_ms", "command_timeout_ms", "send_queue_limit", "workers", "poll_us",
                 "policies", "api", "state_dir", "max_handshakes", "max_setups", "rings",
                 "shutdown_timeout_ms", "nats"});
  config cfg;
  cfg.file = file;
  if (j.contains("log_level")) {
    auto l = parse_log_level(c.str(j["log_level"], "/log_level"));
    if (!l)
      c.fail("/log_level", "must be error, warn, info or debug");
    cfg.level = *l;
  }
  if (j.contains("cookie_file"))
    cfg.cookie_file = c.str(j["cookie_file"], "/cookie_file");
  if (j.contains("handshake")) {
    auto h = c.str(j["handshake"], "/handshake");
    if (h == "kvmi")
      cfg.handshake = kvmi::hs::mode::kvmi;
    else if (h == "qemu-v5")
      cfg.handshake = kvmi::hs::mode::qemu_v5;
    else
      c.fail("/handshake", "must be \"kvmi\" or \"qemu-v5\"");
  }
  auto ms = [&](const char* k, std::chrono::milliseconds& out, uint64_t lo, uint64_t hi) {
    if (!j.contains(k))
      return;
    uint64_t v = c.integer(j[k], std::string("/") + k);
    if (v < lo || v > hi)
      c.fail(std::string("/") + k, "must be " + std::to_string(lo) + ".." + std::to_string(hi));
    out = std::chrono::milliseconds(v);
  };
  ms("handshake_timeout_ms", cfg.handshake_timeout, 100, 600000);
  ms("command_timeout_ms", cfg.command_timeout, 100, 600000);
  ms("shutdown_timeout_ms", cfg.shutdown_timeout, 100, 600000);
  if (j.contains("send_queue_limit")) {
    cfg.send_queue_limit = c.integer(j["send_queue_limit"], "/send_queue_limit");
    if (cfg.send_queue_limit < 16 || cfg.send_queue_limit > 1000000)
      c.fail("/send_queue_limit", "must be 16..1000000");
  }
  if (j.contains("max_handshakes")) {
    cfg.max_handshakes = c.integer(j["max_handshakes"], "/max_handshakes");
    if (cfg.max_handshakes < 1 || cfg.max_handshakes > 100000)
      c.fail("/max_handshakes", "must be 1..100000");
  }
  if (j.contains("max_setups")) {
    cfg.max_setups = c.integer(j["max_setups"], "/max_setups");
    if (cfg.max_setups < 1 || cfg.max_setups > 100000)
      c.fail("/max_setups", "must be 1..100000");
  }
  if (j.contains("rings")) {
    cfg.rings = c.integer(j["rings"], "/rings");
    if (cfg.rings > 64)
      c.fail("/rings", "must be 0 (one per two cores) or 1..64");
  }
  if (j.contains("state_dir")) {
    cfg.state_dir = c.str(j["state_dir"], "/state_dir");
    if (cfg.state_dir.empty())
      c.fail("/state_dir", "must be a directory path");
  }
  if (j.contains("workers")) {
    cfg.workers = c.integer(j["workers"], "/workers");
    if (cfg.workers < 1 || cfg.workers > 256)
      c.fail("/workers", "must be 1..256");
  }
  if (j.contains("poll_us")) {
    auto v = c.integer(j["poll_us"], "/poll_us");
    if (v > 1000)
      c.fail("/poll_us", "must be 0..1000 (microseconds)");
    cfg.poll = std::chrono::microseconds(v);
  }
  if (!j.contains("listeners"))
    c.fail("/listeners", "required: at least one KVMI listener");
  auto& ls = c.array(j["listeners"], "/listeners");
  if (ls.empty())
    c.fail("/listeners", "required: at least one KVMI listener");
  for (size_t i = 0; i < ls.size(); ++i) {
    auto& l = ls[i];
    auto la = "/listeners/" + std::to_string(i);
    c.only(l, la, {"type", "path", "mode", "owner", "group", "host", "port", "cid", "cookie_file",
                   "protocol", "qemu_layout", "allow_replayable_handshake"});
    kvmi_listener_config lc;
    auto type = l.contains("type") ? c.str(l["type"], la + "/type") : std::string("unix");
    if (type == "unix") {
      lc.spec.type = net::listen_spec::kind::unix_socket;
      if (!l.contains("path"))
        c.fail(la + "/path", "required for a unix listener");
      lc.spec.path = c.str(l["path"], la + "/path");
      if (lc.spec.path.empty() || lc.spec.path.size() > 107)
        c.fail(la + "/path", "must be 1..107 characters (sun_path)");
      if (l.contains("mode")) {
        auto m = c.str(l["mode"], la + "/mode");
        char* end = nullptr;
        unsigned long v = std::strtoul(m.c_str(), &end, 8);
        if (m.empty() || *end || v > 0777)
          c.fail(la + "/mode", "must be an octal string like \"0660\"");
        lc.spec.mode = uint32_t(v);
      }
      if (l.contains("owner")) {
        auto o = c.str(l["owner"], la + "/owner");
        auto* pw = getpwnam(o.c_str());
        if (!pw)
          c.fail(la + "/owner", "no such user \"" + excerpt(o) + "\"");
        lc.spec.uid = pw->pw_uid;
      }
      if (l.contains("group")) {
        auto g = c.str(l["group"], la + "/group");
        auto* gr = getgrnam(g.c_str());
        if (!gr)
          c.fail(la + "/group", "no such group \"" + excerpt(g) + "\"");
        lc.spec.gid = gr->gr_gid;
      }
    } else if (type == "tcp") {
      lc.spec.type = net::listen_spec::kind::tcp;
      lc.spec.host = l.contains("host") ? c.str(l["host"], la + "/host") : "127.0.0.1";
      if (!l.contains("port"))
        c.fail(la + "/port", "required for a tcp listener");
      auto p = c.integer(l["port"], la + "/port");
      if (p > 65535)
        c.fail(la + "/port", "must be 0..65535");
      lc.spec.port = uint16_t(p);
    } else if (type == "vsock") {
      lc.spec.type = net::listen_spec::kind::vsock;
      if (l.contains("cid")) {
        if (l["cid"].is_number_integer() && l["cid"].get<int64_t>() == -1)
          lc.spec.cid = 0xFFFFFFFFu;
        else {
          auto cid = c.integer(l["cid"], la + "/cid");
          if (cid > 0xFFFFFFFFull)
            c.fail(la + "/cid", "must be a 32-bit CID or -1 (any)");
          lc.spec.cid = uint32_t(cid);
        }
      }
      if (!l.contains("port"))
        c.fail(la + "/port", "required for a vsock listener");
      auto p = c.integer(l["port"], la + "/port");
      if (p > 0xFFFFFFFFull)
        c.fail(la + "/port", "must be a 32-bit port");
      lc.spec.vport = uint32_t(p);
    } else {
      c.fail(la + "/type", "must be unix, tcp or vsock");
    }
    parse_protocol(c, l, la, lc);
    if (l.contains("cookie_file"))
      lc.cookie_file = c.str(l["cookie_file"], la + "/cookie_file");
    else if (cfg.cookie_file.empty())
      c.fail(la + "/cookie_file", "no cookie: set it here or a default /cookie_file");
    cfg.listeners.push_back(std::move(lc));
  }
  if (j.contains("policies")) {
    cfg.policies = parse_policies(j["policies"], file);
  }
  if (j.contains("api"))
    cfg.api = j["api"];
  if (j.contains("nats"))
    cfg.nats = parse_nats_options(j["nats"], file);
  return cfg;
}

std::string default_state_dir() {
  const char* sd = std::getenv("STATE_DIRECTORY");
  return sd && *sd ? std::string(sd).substr(0, std::string(sd).find(':')) : "/var/lib/kvmid";
}

config load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw config_error(path, "", "cannot open the file");
  // A directory opens as a stream and fails on its first read.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw config_error(path, "", "not a regular file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string err;
  auto j = parse_bounded_json(text, err, /*ignore_comments=*/true);
  if (j.is_discarded())
    throw config_error(path, "", "not valid JSON: " + err);
  return parse_config(j, path);
}

std::vector<uint8_t> read_cookie(const std::string& path, const std::string& file,
                                 const std::string& field) {
  // One byte past the limit, so check_cookie names an over-long cookie as
  // kvmi-sim does.
  auto r = read_secret_file(path, kvmi::hs::max_cookie + 1);
  if (!r.error.empty())
    throw config_error(file, field, "cookie file " + r.error);
  if (auto why = kvmi::hs::check_cookie(r.bytes); !why.empty())
    throw config_error(file, field, "cookie file " + path + ": " + std::string(why));
  return std::move(r.bytes);
}

} // namespace kvmid
