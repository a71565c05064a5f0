// kvmictl: a small CLI over kvmid's HTTP API.
//
//   kvmictl [--server URL | --unix PATH] [--token T | --token-file F] [--json] CMD ...
//   kvmictl --nats URL [--nats-prefix P] [--nats-creds F | --nats-user U
//           --nats-password-file F] [--nats-ca F] [--nats-cert F --nats-key F]
//           [--gather-ms N] vms|watch|pause|resume|unhook
//     the whole fleet over NATS (fleet.hpp)
//   env: KVMID_API (http://127.0.0.1:8181 or unix:/run/kvmid/api.sock),
//        KVMID_TOKEN, KVMID_TOKEN_FILE, KVMID_NATS_PASSWORD
//
// Exit codes: 0 ok, 1 the API answered with an error, 2 usage, 3 no answer.
#include "actors/bounded_json.hpp"
#include "server/control/encoding.hpp"
#include "server/kvmictl/command_line.hpp"
#include "server/kvmictl/fleet.hpp"
#include "server/kvmictl/format.hpp"

#include "kvmid_version.hpp"

#include <curl/curl.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using nlohmann::json;

struct options {
  std::string server = "http://127.0.0.1:8181"; // config/kvmid.json's API port
  std::string unix_path;
  std::string token;
  bool json_out = false;
  long timeout = 30;
};

struct http_result {
  bool ok = false;        // transport worked
  std::string error;      // transport error
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
};

size_t collect(char* p, size_t sz, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(p, sz * n);
  return sz * n;
}

CURL* make_handle(const options& o, const std::string& path, curl_slist*& hdrs,
                  const std::string& extra_header = "") {
  CURL* c = curl_easy_init();
  if (!c)
    return nullptr;
  std::string url = (o.unix_path.empty() ? o.server : std::string("http://localhost")) + path;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  if (!o.unix_path.empty())
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o.unix_path.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  hdrs = nullptr;
  if (!o.token.empty())
    hdrs = curl_slist_append(hdrs, ("Authorization: Bearer " + o.token).c_str());
  hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  if (!extra_header.empty())
    hdrs = curl_slist_append(hdrs, extra_header.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  return c;
}

http_result request(const options& o, const std::string& method, const std::string& path,
                    const std::string& body = "") {
  http_result r;
  curl_slist* hdrs = nullptr;
  CURL* c = make_handle(o, path, hdrs);
  if (!c) {
    r.error = "curl_easy_init failed";
    return r;
  }
  curl_easy_setopt(c, CURLOPT_TIMEOUT, o.timeout);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method != "GET") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK) {
    r.ok = true;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  } else {
    r.error = curl_easy_strerror(rc);
    r.code = rc;
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  return r;
}

std::string where(const options& o) { return o.unix_path.empty() ? o.server : "unix:" + o.unix_path; }

// No HTTP answer: say where kvmictl looked and how to point it elsewhere.
void report_transport(const options& o, CURLcode code, const std::string& error) {
  if (code == CURLE_OPERATION_TIMEDOUT) {
    std::cerr << "kvmictl: no answer from " << where(o) << " within " << o.timeout
              << " s (--timeout SECONDS)\n";
    return;
  }
  std::cerr << "kvmictl: cannot reach " << where(o) << ": " << error << "\n";
  if (code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST
      || code == CURLE_UNSUPPORTED_PROTOCOL || code == CURLE_URL_MALFORMAT)
    std::cerr << "kvmictl: " << kvmictl::unreachable_hint(where(o)) << "\n";
}

// An error answer: the API's code and message, and for 401 where the token
// comes from.
void report_status(const options& o, long status, const std::string& body) {
  std::cerr << "kvmictl: " << kvmictl::format_error(status, body) << "\n";
  if (status == 401)
    std::cerr << "kvmictl: " << kvmictl::unauthorized_hint(!o.token.empty()) << "\n";
}

// Prints the answer: the JSON itself with --json, else fmt(json).
template <class F, class W = json (*)(json)>
int show(const options& o, const http_result& r, F fmt,
         W wrap = [](json j) { return j; }, bool print = true) {
  if (!r.ok) {
    report_transport(o, r.code, r.error);
    return 3;
  }
  if (r.status < 200 || r.status >= 300) {
    if (o.json_out)
      std::cout << r.body << "\n";
    report_status(o, r.status, r.body);
    return 1;
  }
  std::string err;
  json j = kvmid::parse_bounded_json(r.body, err);
  if (j.is_discarded()) {
    std::cerr << "kvmictl: the server's answer is not JSON: " << err << "\n";
    return 3;
  }
  if (!print)
    wrap(std::move(j));
  else if (o.json_out)
    std::cout << wrap(std::move(j)).dump() << "\n";
  else
    std::cout << fmt(j);
  return 0;
}

std::string enc(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    }
  }
  return out;
}

struct watch_state {
  const options* o;
  kvmictl::sse_parser parser;
  long remaining; // -1 = forever
  bool done = false;
  long status = 0;
  std::string err_body;
  CURL* handle = nullptr;
  bool got_bytes = false; // this connection delivered something
};

size_t watch_write(char* p, size_t sz, size_t n, void* ud) {
  auto* w = static_cast<watch_state*>(ud);
  if (w->status == 0)
    curl_easy_getinfo(w->handle, CURLINFO_RESPONSE_CODE, &w->status);
  if (w->status != 200) {
    w->err_body.append(p, sz * n);
    return sz * n;
  }
  w->got_bytes = true;
  w->parser.feed(std::string_view(p, sz * n));
  std::cout.flush();
  return w->done ? 0 : sz * n; // 0 stops the transfer after --count events
}

// Follows the stream. When the connection is lost it reconnects with the
// last id it saw (Last-Event-ID), so kvmid replays what came meanwhile;
// after `reconnects` failed attempts in a row it gives up with 3.
int watch(const options& o, const std::string& vm, const std::string& kind, long count) {
  std::string path = "/v1/events";
  std::string q;
  if (!vm.empty())
    q += "vm=" + enc(vm);
  if (!kind.empty())
    q += std::string(q.empty() ? "" : "&") + "kind=" + enc(kind);
  if (!q.empty())
    path += "?" + q;
  watch_state w{&o, kvmictl::sse_parser(nullptr), count, false, 0, {}, nullptr};
  w.parser = kvmictl::sse_parser([&w, &o](const std::string& ev, const std::string& data) {
    if (w.done)
      return;
    std::string err;
    json j = kvmid::parse_bounded_json(data, err);
    if (o.json_out) {
      json line = {{"event", ev}, {"data", j.is_discarded() ? json(data) : j}};
      std::cout << line.dump() << "\n";
    } else if (ev == "replay-gap") {
      std::cerr << "kvmictl: records may be missing before the next ones (kvmid restarted or "
                   "its replay ring no longer reaches back)\n";
    } else {
      std::cout << kvmictl::format_event(ev, j.is_discarded() ? json(data) : j) << "\n";
    }
    if (ev != "dropped" && ev != "replay-gap" && w.remaining > 0 && --w.remaining == 0)
      w.done = true;
  });
  constexpr int reconnects = 5;
  int failures = 0;
  for (;;) {
    curl_slist* hdrs = nullptr;
    std::string resume;
    if (!w.parser.last_id().empty())
      resume = "Last-Event-ID: " + w.parser.last_id();
    CURL* c = make_handle(o, path, hdrs, resume);
    if (!c)
      return 3;
    w.handle = c;
    w.status = 0;
    w.got_bytes = false;
    w.parser.feed("\n\n"); // a record cut by the lost connection is not half-joined to the next
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &w);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (w.done)
      return 0;
    if (w.status != 0 && w.status != 200) {
      report_status(o, w.status, w.err_body);
      return 1;
    }
    failures = w.got_bytes ? 1 : failures + 1;
    if (failures > reconnects) {
      if (rc != CURLE_OK)
        report_transport(o, rc, curl_easy_strerror(rc));
      else
        std::cerr << "kvmictl: " << where(o) << " ended the event stream\n";
      return 3;
    }
    // 0.2 s, 0.4 s, ... 3.2 s: a restarting kvmid is back within them.
    std::cerr << "kvmictl: event stream lost, reconnecting to " << where(o) << "\n";
    usleep(useconds_t(100000) << failures);
  }
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty())
      out.push_back(item);
  return out;
}

// Every range, following the API's pages (`next`) to the end.
int page_access(const options& o, const std::string& vm) {
  json all = {{"ranges", json::array()}};
  std::string from = "0";
  for (;;) {
    auto r = request(o, "GET", "/v1/vms/" + enc(vm) + "/page-access?from=" + from);
    json page;
    int rc = show(o, r, [](const json&) { return std::string(); },
                  [&page](json j) { page = j; return json(); }, /*print=*/false);
    if (rc != 0)
      return rc;
    for (auto& x : page.value("ranges", json::array()))
      all["ranges"].push_back(x);
    if (!page.contains("next") || !page["next"].is_string())
      break;
    from = page["next"].get<std::string>();
  }
  std::cout << (o.json_out ? all.dump() + "\n" : kvmictl::format_page_ranges(all));
  return 0;
}

// Without --enable/--disable: the vCPU's enabled events; with them, the change.
int vcpu_events(const options& o, const std::string& vm, const std::string& vcpu,
                const std::string& enable, const std::string& disable, bool force) {
  if (enable.empty() && disable.empty()) {
    auto r = request(o, "GET", "/v1/vms/" + enc(vm) + "/vcpus");
    auto index = kvmid::control::parse_u64(vcpu);
    auto pick = [&](json j) {
      for (auto& v : j.value("vcpus", json::array()))
        if (v.value("index", json(-1)) == json(*index))
          return json{{"vm", vm}, {"vcpu", *index},
                      {"enabled_events", v.value("enabled_events", json::array())}};
      return json{{"vm", vm}, {"vcpu", *index}, {"enabled_events", json::array()}};
    };
    return show(o, r, [&](const json& j) { return kvmictl::format_enabled(pick(j)); }, pick);
  }
  json body = json::object();
  if (!enable.empty())
    body["enable"] = split_list(enable);
  if (!disable.empty())
    body["disable"] = split_list(disable);
  if (force)
    body["force"] = true;
  return show(o, request(o, "PUT", "/v1/vms/" + enc(vm) + "/vcpus/" + enc(vcpu) + "/events",
                         body.dump()),
              kvmictl::format_enabled);
}

// /metrics is Prometheus text, not JSON: printed as it comes.
int metrics(const options& o) {
  auto r = request(o, "GET", "/metrics");
  if (!r.ok) {
    report_transport(o, r.code, r.error);
    return 3;
  }
  if (r.status < 200 || r.status >= 300) {
    report_status(o, r.status, r.body);
    return 1;
  }
  std::cout << r.body;
  return 0;
}

// The client's version, then the server's: a mismatch is the first thing
// to rule out when a command behaves unexpectedly.
int version(const options& o) {
  auto r = request(o, "GET", "/v1/version");
  std::string client(kvmid::build_version);
  if (!o.json_out)
    std::cout << "client: kvmictl " << client << "\n";
  return show(o, r, [](const json& j) { return kvmictl::format_version(j); }, [&](json j) {
    return json{{"client", {{"version", client}}}, {"server", std::move(j)}};
  });
}

std::optional<std::string> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return std::nullopt;
  std::string t;
  in >> t;
  return t;
}

} // namespace

int main(int argc, char** argv) {
  options o;
  if (const char* s = std::getenv("KVMID_API")) {
    std::string v = s;
    if (v.starts_with("unix:"))
      o.unix_path = v.substr(5);
    else
      o.server = v;
  }
  if (const char* f = std::getenv("KVMID_TOKEN_FILE")) {
    if (auto t = read_token_file(f))
      o.token = *t;
  }
  if (const char* t = std::getenv("KVMID_TOKEN"))
    o.token = t;

  std::vector<std::string> args;
  std::string watch_vm, watch_kind, msrs, enable, disable;
  long watch_count = -1;
  bool help = false, force = false;
  kvmictl::fleet_options fleet;
  std::string nats_password_file;
  std::vector<std::string> command_options; // checked once the command is known
  // A usage error: one line naming what is wrong, exit 2.
  auto usage_error = [](const std::string& why) {
    std::cerr << "kvmictl: " << why << "\n";
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc)
        std::exit(usage_error(a + " needs a value"));
      return argv[++i];
    };
    // --timeout and --count: a whole positive number within hi.
    auto count = [&](uint64_t hi) -> long {
      std::string v = next();
      auto n = kvmid::control::parse_u64(v);
      if (!n || *n == 0 || *n > hi)
        std::exit(usage_error(a + " '" + v + "' must be a number 1.." + std::to_string(hi)));
      return long(*n);
    };
    if (a == "--server") {
      std::string v = next();
      if (v.starts_with("unix:")) {
        o.unix_path = v.substr(5);
      } else {
        o.server = v;
        o.unix_path.clear();
      }
    } else if (a == "--unix") {
      o.unix_path = next();
    } else if (a == "--token") {
      o.token = next();
      std::cerr << "kvmictl: warning: --token shows the secret to every user of this host (ps, "
                   "/proc/PID/cmdline); use --token-file FILE or KVMID_TOKEN_FILE=FILE\n";
    } else if (a == "--token-file") {
      std::string f = next();
      auto t = read_token_file(f);
      if (!t) {
        std::cerr << "kvmictl: cannot read token file " << f << "\n";
        return 2;
      }
      o.token = *t;
    } else if (a == "--nats") {
      fleet.url = next();
    } else if (a == "--nats-prefix") {
      fleet.prefix = next();
    } else if (a == "--nats-creds") {
      fleet.auth.creds_file = next();
    } else if (a == "--nats-user") {
      fleet.auth.user = next();
    } else if (a == "--nats-password-file") {
      nats_password_file = next();
    } else if (a == "--nats-ca") {
      fleet.auth.tls_files.ca_file = next();
    } else if (a == "--nats-cert") {
      fleet.auth.tls_files.cert_file = next();
    } else if (a == "--nats-key") {
      fleet.auth.tls_files.key_file = next();
    } else if (a == "--gather-ms") {
      fleet.gather_ms = count(60000);
    } else if (a == "--json") {
      o.json_out = true;
    } else if (a == "--timeout") {
      o.timeout = count(86400);
    } else if (a == "--vm") {
      watch_vm = next();
      command_options.push_back(a);
    } else if (a == "--kind") {
      watch_kind = next();
      command_options.push_back(a);
    } else if (a == "--count") {
      watch_count = count(1u << 30);
      command_options.push_back(a);
    } else if (a == "--msrs" || a == "--enable" || a == "--disable") {
      (a == "--msrs" ? msrs : a == "--enable" ? enable : disable) = next();
      command_options.push_back(a);
    } else if (a == "--force") {
      force = true;
      command_options.push_back(a);
    } else if (a == "-h" || a == "--help") {
      help = true;
    } else if (a == "--version") {
      kvmid::print_version("kvmictl");
      return 0;
    } else if (a.starts_with("--")) {
      return usage_error("unknown option '" + a + "' ('kvmictl --help' lists the options)");
    } else {
      args.push_back(a);
    }
  }
  // kvmictl --help, kvmictl help [CMD], kvmictl CMD --help
  if (help || (!args.empty() && args[0] == "help")) {
    std::string topic = help ? (args.empty() ? "" : args[0]) : (args.size() > 1 ? args[1] : "");
    if (topic.empty() || topic == "help") {
      std::cout << kvmictl::usage();
      return 0;
    }
    auto* c = kvmictl::find_command(topic);
    if (!c)
      return usage_error("no command '" + topic + "' ('kvmictl help' lists them)");
    std::cout << kvmictl::command_help(*c);
    return 0;
  }
  if (args.empty()) {
    std::cerr << kvmictl::usage();
    return 2;
  }
  auto* command = kvmictl::find_command(args[0]);
  if (!command)
    return usage_error("unknown command '" + args[0] + "' ('kvmictl help' lists them)");
  if (auto why = kvmictl::check_args(*command, {args.begin() + 1, args.end()}); !why.empty())
    return usage_error(why + " ('kvmictl help " + args[0] + "' says more)");
  for (auto& opt : command_options)
    if (auto why = kvmictl::check_option(*command, opt); !why.empty())
      return usage_error(why);
  if (!msrs.empty()) {
    for (auto& m : split_list(msrs))
      if (!kvmid::control::parse_u64(m) || *kvmid::control::parse_u64(m) > UINT32_MAX)
        return usage_error("regs: --msrs '" + m + "' is not an MSR index (decimal or 0x hex)");
  }
  if (args[0] == "completion") {
    std::cout << kvmictl::bash_completion();
    return 0;
  }
  if (!fleet.url.empty()) {
    if (!kvmictl::fleet_command(args[0]))
      return usage_error(args[0] + " is not served over --nats (vms, watch, pause, resume, unhook are)");
    if (!watch_vm.empty())
      return usage_error("watch --vm is not served over --nats (the fleet's stream is by kind)");
    if (auto why = kvmictl::complete_fleet_auth(fleet, nats_password_file,
                                                std::getenv("KVMID_NATS_PASSWORD"));
        !why.empty())
      return usage_error(why);
    fleet.json_out = o.json_out;
    fleet.timeout_s = o.timeout;
    fleet.count = watch_count;
    if (!watch_kind.empty())
      fleet.kind = watch_kind;
    return kvmictl::run_fleet(fleet, args);
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const std::string& cmd = args[0];
  int rc = 2;
  if (cmd == "vms") {
    rc = show(o, request(o, "GET", "/v1/vms"), kvmictl::format_vms);
  } else if (cmd == "vm") {
    rc = show(o, request(o, "GET", "/v1/vms/" + enc(args[1])), kvmictl::format_vm);
  } else if (cmd == "vcpus") {
    rc = show(o, request(o, "GET", "/v1/vms/" + enc(args[1]) + "/vcpus"), kvmictl::format_vcpus);
  } else if (cmd == "pause" || cmd == "resume" || cmd == "unhook" || cmd == "admit") {
    rc = show(o, request(o, "POST", "/v1/vms/" + enc(args[1]) + "/" + cmd, "{}"),
              [&](const json& j) { return args[1] + ": " + j.value("result", cmd) + "\n"; });
  } else if (cmd == "forget") {
    rc = show(o, request(o, "DELETE", "/v1/vms/" + enc(args[1])),
              [&](const json&) { return args[1] + ": forgotten\n"; });
  } else if (cmd == "reload") {
    rc = show(o, request(o, "POST", "/v1/policies/reload", "{}"),
              [](const json&) { return std::string("policies reloaded\n"); });
  } else if (cmd == "regs") {
    std::string q = msrs.empty() ? "" : "?msrs=" + enc(msrs);
    rc = show(o, request(o, "GET", "/v1/vms/" + enc(args[1]) + "/vcpus/" + enc(args[2])
                                     + "/registers" + q),
              kvmictl::format_regs);
  } else if (cmd == "write") {
    json body = {{"gpa", args[2]}, {"data", args[3]}, {"encoding", "hex"}};
    rc = show(o, request(o, "PUT", "/v1/vms/" + enc(args[1]) + "/memory", body.dump()),
              [&](const json& j) {
                return args[1] + ": wrote " + j.value("len", json(0)).dump() + " bytes at "
                       + j.value("gpa", args[2]) + "\n";
              });
  } else if (cmd == "page-access") {
    rc = page_access(o, args[1]);
  } else if (cmd == "set-page-access") {
    json body = {{"gpa", args[2]}, {"access", args[3]}};
    rc = show(o, request(o, "PUT", "/v1/vms/" + enc(args[1]) + "/page-access", body.dump()),
              [&](const json& j) {
                return args[1] + ": " + j.value("gpa", args[2]) + " " + j.value("access", args[3])
                       + "\n";
              });
  } else if (cmd == "breakpoints") {
    rc = show(o, request(o, "GET", "/v1/vms/" + enc(args[1]) + "/breakpoints"),
              kvmictl::format_breakpoints);
  } else if (cmd == "add-breakpoint") {
    json body = {{"gpa", args[2]}};
    rc = show(o, request(o, "POST", "/v1/vms/" + enc(args[1]) + "/breakpoints", body.dump()),
              kvmictl::format_breakpoint);
  } else if (cmd == "remove-breakpoint") {
    rc = show(o, request(o, "DELETE", "/v1/vms/" + enc(args[1]) + "/breakpoints/" + enc(args[2])),
              [&](const json& j) {
                return args[1] + ": breakpoint " + j.value("gpa", args[2]) + " removed\n";
              });
  } else if (cmd == "events") {
    rc = vcpu_events(o, args[1], args[2], enable, disable, force);
  } else if (cmd == "metrics") {
    rc = metrics(o);
  } else if (cmd == "read") {
    rc = show(o,
              request(o, "GET", "/v1/vms/" + enc(args[1]) + "/memory?gpa=" + enc(args[2])
                                  + "&len=" + enc(args[3]) + "&encoding=hex"),
              [](const json& j) {
                std::vector<uint8_t> bytes;
                std::string h = j.value("data", "");
                auto nib = [](char c) {
                  return c >= '0' && c <= '9' ? c - '0'
                         : c >= 'a' && c <= 'f' ? c - 'a' + 10
                         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                };
                for (size_t i = 0; i + 1 < h.size(); i += 2) {
                  int hi = nib(h[i]), lo = nib(h[i + 1]);
                  if (hi < 0 || lo < 0)
                    return "(data is not hex) " + h + "\n";
                  bytes.push_back(static_cast<uint8_t>(hi * 16 + lo));
                }
                uint64_t gpa = std::strtoull(j.value("gpa", "0").c_str(), nullptr, 0);
                return kvmictl::hexdump(gpa, bytes);
              });
  } else if (cmd == "version") {
    rc = version(o);
  } else if (cmd == "watch") {
    rc = watch(o, watch_vm, watch_kind, watch_count);
  }
  curl_global_cleanup();
  return rc;
}
