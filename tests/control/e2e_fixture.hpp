// End-to-end fixture: a real kvmid process (config, cookie and token in a
// fresh temp dir, API on a UNIX socket), an embedded kvmi-sim fleet
// connected to it, and real clients (curl, kvmictl) run as processes.
#pragma once

#include "kernel-patches/sim/sim.hpp"
#include "proc.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

namespace kvmid::test {

namespace fs = std::filesystem;
using nlohmann::json;

inline constexpr uint64_t hot_gpa = 0x100000; // the sim workload's kernel text
inline constexpr uint32_t lstar = 0xc0000082;

struct http_reply {
  int status = 0;
  std::string body;
  json j() const { return json::parse(body, nullptr, false); }
};

struct e2e_options {
  uint32_t vms = 2, vcpus = 2;
  json api_extra = json::object();
  bool tcp = false;
  bool reconnect = true; // the simulated device manager reconnects after a close
  std::string read_token;  // non-empty: also an api.read_token_file holding it
};

struct e2e {
  fs::path dir;
  std::string token = "e2e-token-7f3a";
  std::vector<uint8_t> cookie;
  std::string api_sock, kvmi_sock;
  pid_t kvmid = -1;
  std::unique_ptr<kvmi::sim::host> sim;
  uint16_t tcp_port = 0;

  using options = e2e_options;

  int64_t started_unix = int64_t(std::time(nullptr));

  explicit e2e(options o = {}) {
    std::string tmpl = (fs::temp_directory_path() / "kvmid-e2e-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
    api_sock = (dir / "api.sock").string();
    kvmi_sock = (dir / "kvmi.sock").string();
    cookie.resize(32);
    for (size_t i = 0; i < cookie.size(); ++i)
      cookie[i] = uint8_t(i * 7 + 3);
    write_file("cookie", std::string(cookie.begin(), cookie.end()));
    write_file("token", token + "\n");
    json listen = json::array({"unix:" + api_sock});
    if (o.tcp) {
      tcp_port = free_port();
      listen.push_back("tcp:127.0.0.1:" + std::to_string(tcp_port));
    }
    json api = {{"listen", listen}, {"token_file", (dir / "token").string()}};
    if (!o.read_token.empty()) {
      write_file("read.token", o.read_token + "\n");
      api["read_token_file"] = (dir / "read.token").string();
    }
    for (auto& [k, v] : o.api_extra.items())
      api[k] = v;
    json cfg = {
      {"log_level", "info"},
      {"cookie_file", (dir / "cookie").string()},
      {"command_timeout_ms", 3000},
      {"state_dir", (dir / "state").string()},
      {"listeners", json::array({{{"type", "unix"}, {"path", kvmi_sock}}})},
      {"policies",
       json::array({{{"name", "e2e"},
                     {"match", json::array({"*"})},
                     {"page_protection",
                      json::array({{{"name", "kernel-text"},
                                    {"gpa", hot_gpa},
                                    {"size", 8192},
                                    {"access", "r-x"},
                                    {"on_violation", "allow-once"}}})},
                     {"msr_protection", json::array({{{"name", "lstar"}, {"msr", lstar}}})}}})},
      {"api", api}};
    write_file("kvmid.json", cfg.dump(2));
    kvmid = spawn({KVMID_BIN, "--config", (dir / "kvmid.json").string()},
                  (dir / "kvmid.out").string(), (dir / "kvmid.err").string());
    REQUIRE(kvmid > 0);
    bool up = false;
    for (int i = 0; i < 200 && !up; ++i) {
      up = fs::exists(api_sock) && curl("GET", "/v1/vms").status == 200;
      if (!up)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    INFO("kvmid stderr: " << log());
    REQUIRE(up);

    kvmi::sim::options so;
    so.unix_path = kvmi_sock;
    so.vms = o.vms;
    so.vcpus_per_vm = o.vcpus;
    so.cookie = cookie;
    so.seed = 42;
    so.reconnect = o.reconnect;
    so.memory.ram_size = 64ull << 20;
    kvmi::sim::gpu_spec gpu;
    gpu.ram_size = 1ull << 30;
    gpu.online_after.reset(); // never trained: its RAM must stay untouched
    so.memory.gpus.push_back(gpu);
    sim = std::make_unique<kvmi::sim::host>(so);
    sim->start();
    REQUIRE(sim->wait_until(
      [&] {
        for (uint32_t v = 0; v < o.vms; ++v)
          if (!sim->hooked(v))
            return false;
        return true;
      },
      kvmi::sim::ms(10000)));
    // kvmid has them all and has finished setting each up (policies applied).
    bool listed = false;
    for (int i = 0; i < 200 && !listed; ++i) {
      auto r = curl("GET", "/v1/vms").j();
      listed = r.contains("vms") && r["vms"].size() == o.vms;
      if (!listed)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    REQUIRE(listed);
  }

  ~e2e() {
    if (sim)
      sim->stop();
    // kvmid exits cleanly on SIGTERM; under ASan a leak or error shows here.
    int rc = stop(kvmid);
    INFO("kvmid stderr: " << log());
    CHECK(rc == 0);
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  void write_file(const std::string& name, const std::string& text) {
    auto p = dir / name;
    std::ofstream(p, std::ios::binary) << text;
    ::chmod(p.c_str(), 0600);
  }

  std::string log() const {
    std::ifstream in(dir / "kvmid.err");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  static uint16_t free_port() {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(s);
    return ntohs(a.sin_port);
  }

  std::vector<std::string> curl_base(const std::string& tok) const {
    std::vector<std::string> a = {CURL_BIN, "-sS", "--max-time", "15", "--unix-socket", api_sock};
    if (!tok.empty())
      a.insert(a.end(), {"-H", "Authorization: Bearer " + tok});
    return a;
  }

  // curl METHOD http://localhost<path> [-d body]; status from -w.
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

  std::string uuid(uint32_t vm) { return kvmi::hs::to_string(sim->vm(vm).uuid); }

  // A raw UNIX-socket client for what curl will not send.
  int raw_connect() {
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, api_sock.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{15, 0}; // a safety net only: the server is expected to answer or close
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return s;
  }
  static void raw_send(int s, std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(s, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0)
        return; // the server may close early (413)
      bytes.remove_prefix(size_t(n));
    }
  }
  // Reads until EOF (the server closed) or the safety timeout.
  static std::string raw_read_all(int s, bool* eof = nullptr) {
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(s, buf, sizeof buf, 0);
      if (n == 0) {
        if (eof)
          *eof = true;
        break;
      }
      if (n < 0) {
        if (errno == ECONNRESET && eof)
          *eof = true;
        break;
      }
      out.append(buf, size_t(n));
    }
    return out;
  }
};

} // namespace kvmid::test
