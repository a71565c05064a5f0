// A real kvmid process and what it runs with: config, cookie and token in a
// fresh temp dir, the API on dir/api.sock, KVMI on dir/kvmi.sock. Started,
// restarted, SIGKILLed and stopped by pid; killed when the test ends, also
// when it aborts half-way. Clients: a raw HTTP/1.1 request on the API
// socket, curl and kvmictl as processes. Needs KVMID_BIN, KVMICTL_BIN and
// CURL_BIN from the build.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/wait.h>
#include <vector>

namespace kvmid::test {

struct http_reply {
  int status = 0;
  std::string body;
  nlohmann::json j() const { return nlohmann::json::parse(body, nullptr, false); }
};

struct kvmid_daemon {
  temp_dir tmp;
  std::filesystem::path dir = tmp.path();
  std::string token;
  std::vector<uint8_t> cookie;
  std::string api_sock = (dir / "api.sock").string();
  std::string kvmi_sock = (dir / "kvmi.sock").string();
  nlohmann::json config;
  // Put before kvmid's command line, e.g. {"ip", "netns", "exec", name}:
  // it must exec kvmid in place, so the pid is kvmid's.
  std::vector<std::string> launcher;
  pid_t kvmid = -1;
  // Kills kvmid when a constructor fails half-way or a test forgets to stop.
  struct reaper {
    pid_t* pid;
    ~reaper() {
      if (*pid > 0) {
        ::kill(*pid, SIGKILL);
        ::waitpid(*pid, nullptr, 0);
      }
    }
  } reap{&kvmid};

  kvmid_daemon(const std::string& name, std::vector<uint8_t> cookie_bytes, std::string api_token)
      : tmp(name), token(std::move(api_token)), cookie(std::move(cookie_bytes)) {
    tmp.write("cookie", std::string(cookie.begin(), cookie.end()));
    tmp.write("token", token + "\n");
  }
  kvmid_daemon(const kvmid_daemon&) = delete;
  kvmid_daemon& operator=(const kvmid_daemon&) = delete;

  // What every test's kvmid has: its files here, one UNIX KVMI listener,
  // the API on a UNIX socket with the token.
  nlohmann::json base_config(std::chrono::milliseconds command_timeout,
                             const std::string& log_level) const {
    using nlohmann::json;
    return {{"log_level", log_level},
            {"cookie_file", (dir / "cookie").string()},
            {"command_timeout_ms", command_timeout.count()},
            {"state_dir", (dir / "state").string()},
            {"listeners", json::array({{{"type", "unix"}, {"path", kvmi_sock}}})},
            {"api",
             {{"listen", json::array({"unix:" + api_sock})},
              {"token_file", (dir / "token").string()}}}};
  }

  std::string config_path() const { return (dir / "kvmid.json").string(); }
  void write_config(const nlohmann::json& cfg) const { tmp.write("kvmid.json", cfg.dump(2)); }
  void write_file(const std::string& name, const std::string& text) const {
    tmp.write(name, text);
  }
  std::string log() const { return tmp.read("kvmid.err"); }

  // Writes `cfg` and starts kvmid with it.
  void start(const nlohmann::json& cfg) {
    config = cfg;
    write_config(config);
    start();
  }
  // (Re)starts kvmid with the config written last; returns once its API
  // answers.
  void start() {
    REQUIRE(kvmid <= 0);
    std::vector<std::string> cmd = launcher;
    cmd.insert(cmd.end(), {KVMID_BIN, "--config", config_path()});
    kvmid = spawn(cmd, (dir / "kvmid.out").string(), (dir / "kvmid.err").string());
    REQUIRE(kvmid > 0);
    INFO("kvmid stderr: " << log());
    REQUIRE(wait_until(
      [&] { return std::filesystem::exists(api_sock) && http("GET", "/v1/vms").status == 200; },
      "kvmid's API to answer"));
  }

  // SIGTERM (SIGKILL past `grace`); kvmid's exit code, -1 if it was killed.
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(10000)) {
    int rc = test::stop(kvmid, grace);
    kvmid = -1;
    return rc;
  }
  // SIGKILL, as a crash would end it; true if the signal ended it.
  bool kill_now() {
    ::kill(kvmid, SIGKILL);
    int st = 0;
    bool reaped = ::waitpid(kvmid, &st, 0) == kvmid;
    kvmid = -1;
    return reaped && WIFSIGNALED(st);
  }
  bool running() const {
    int st = 0;
    return kvmid > 0 && ::waitpid(kvmid, &st, WNOHANG) == 0;
  }

  // A raw client of the API socket (-1 if the connect failed).
  int raw_connect() const {
    try {
      return connect_unix(api_sock, 20);
    } catch (const std::exception&) {
      return -1;
    }
  }

  // One HTTP/1.1 request on its own connection, without a child process
  // (cheap under load); {0, ""} if the connection failed. Bodies of the
  // small JSON replies used here, not chunked streams.
  http_reply http(const std::string& method, const std::string& path,
                  const std::string& body = "") const {
    int s = raw_connect();
    if (s < 0)
      return {};
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ";
    req += token;
    req += "\r\nConnection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    if (!body.empty())
      req += "Content-Type: application/json\r\n";
    req += "\r\n";
    req += body;
    send_all(s, req);
    std::string in = read_all(s);
    ::close(s);
    http_reply r;
    if (in.rfind("HTTP/1.1 ", 0) == 0)
      r.status = std::atoi(in.c_str() + 9);
    if (auto at = in.find("\r\n\r\n"); at != std::string::npos)
      r.body = in.substr(at + 4);
    return r;
  }

  std::vector<std::string> curl_base(const std::string& tok) const {
    std::vector<std::string> a = {CURL_BIN, "-sS", "--max-time", "30", "--unix-socket", api_sock};
    if (!tok.empty())
      a.insert(a.end(), {"-H", "Authorization: Bearer " + tok});
    return a;
  }

  // curl METHOD http://localhost<path> [-d body]; status from -w (0: curl failed).
  http_reply curl(const std::string& method, const std::string& path,
                  const std::string& body = "", std::optional<std::string> tok = std::nullopt) {
    auto a = curl_base(tok.value_or(token));
    a.insert(a.end(), {"-X", method, "-w", "\n%{http_code}"});
    if (!body.empty() || method != "GET")
      a.insert(a.end(), {"-H", "Content-Type: application/json", "--data-binary", body});
    a.push_back("http://localhost" + path);
    auto r = run(a);
    http_reply h;
    auto nl = r.out.rfind('\n');
    if (r.status != 0 || nl == std::string::npos)
      return h;
    h.status = std::atoi(r.out.c_str() + nl + 1);
    h.body = r.out.substr(0, nl);
    return h;
  }

  run_result kvmictl(std::vector<std::string> args, bool with_env = true) {
    std::vector<std::string> a = {KVMICTL_BIN};
    if (with_env)
      a.insert(a.end(), {"--unix", api_sock, "--token-file", (dir / "token").string()});
    a.insert(a.end(), args.begin(), args.end());
    return run(a);
  }
};

} // namespace kvmid::test
