// A real kvmid process (config, cookie and token in a fresh temp dir, API
// on a UNIX socket), an embedded kvmi-sim fleet connected to it, and real
// clients (curl, kvmictl) run as processes. Needs KVMID_BIN, KVMICTL_BIN
// and CURL_BIN from the build.
#pragma once

#include "kernel-patches/sim/sim.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/constants.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>

namespace kvmid::test {

namespace fs = std::filesystem;
using nlohmann::json;

inline constexpr uint64_t hot_gpa = sim_kernel_text;

struct http_reply {
  int status = 0;
  std::string body;
  json j() const { return json::parse(body, nullptr, false); }
};

// The default policy: kernel text read/execute only, LSTAR pinned.
inline json default_policies() {
  return json::array({{{"name", "e2e"},
                       {"match", json::array({"*"})},
                       {"page_protection", json::array({{{"name", "kernel-text"},
                                                         {"gpa", hot_gpa},
                                                         {"size", 8192},
                                                         {"access", "r-x"},
                                                         {"on_violation", "allow-once"}}})},
                       {"msr_protection", json::array({{{"name", "lstar"}, {"msr", msr_lstar}}})}}});
}

struct kvmid_process_options {
  uint32_t vms = 2, vcpus = 2;
  json api_extra = json::object();
  json policies = default_policies();
  json extra_listeners = json::array(); // KVMI listeners beside the fleet's UNIX socket
  std::string log_level = "info";
  bool tcp = false;      // an API listener on 127.0.0.1 as well
  bool reconnect = true; // the simulated device manager reconnects after a close
  std::string read_token;  // non-empty: also an api.read_token_file holding it
};

// One VM with one vCPU: enough for a test about kvmid rather than a fleet.
inline kvmid_process_options one_vm() {
  kvmid_process_options o;
  o.vms = 1;
  o.vcpus = 1;
  return o;
}

struct kvmid_process {
  using options = kvmid_process_options;

  temp_dir tmp{"e2e"};
  fs::path dir = tmp.path();
  std::string token = "e2e-token-7f3a";
  std::vector<uint8_t> cookie;
  std::string api_sock, kvmi_sock;
  json config;
  pid_t kvmid = -1;
  std::unique_ptr<kvmi::sim::host> sim;
  // Kills kvmid when the constructor fails half-way (no destructor then).
  struct reaper {
    pid_t* pid;
    ~reaper() {
      if (*pid > 0) {
        ::kill(*pid, SIGKILL);
        ::waitpid(*pid, nullptr, 0);
      }
    }
  } reap{&kvmid};
  uint16_t tcp_port = 0;
  int64_t started_unix = int64_t(std::time(nullptr));

  explicit kvmid_process(options o = {}) {
    api_sock = (dir / "api.sock").string();
    kvmi_sock = (dir / "kvmi.sock").string();
    cookie.resize(32);
    for (size_t i = 0; i < cookie.size(); ++i)
      cookie[i] = uint8_t(i * 7 + 3);
    tmp.write("cookie", std::string(cookie.begin(), cookie.end()));
    tmp.write("token", token + "\n");
    if (!o.read_token.empty())
      tmp.write("read.token", o.read_token + "\n");
    if (o.tcp)
      tcp_port = free_loopback_port();
    config = make_config(o, dir.string(), tcp_port);
    write_config(config);
    kvmid = spawn({KVMID_BIN, "--config", config_path()}, (dir / "kvmid.out").string(),
                  (dir / "kvmid.err").string());
    REQUIRE(kvmid > 0);
    INFO("kvmid stderr: " << log());
    REQUIRE(wait_until([&] { return fs::exists(api_sock) && curl("GET", "/v1/vms").status == 200; },
                       "kvmid's API to answer"));

    kvmi::sim::options so;
    so.unix_path = kvmi_sock;
    so.vms = o.vms;
    so.vcpus_per_vm = o.vcpus;
    so.cookie = cookie;
    so.seed = 42;
    so.reconnect = o.reconnect;
    so.memory = sim_memory();
    sim = std::make_unique<kvmi::sim::host>(so);
    sim->start();
    REQUIRE(wait_until(
      [&] {
        for (uint32_t v = 0; v < o.vms; ++v)
          if (!sim->hooked(v))
            return false;
        return true;
      },
      "every simulated VM to be hooked"));
    // kvmid has them all and has finished setting each up (policies applied).
    REQUIRE(wait_until(
      [&] {
        auto r = curl("GET", "/v1/vms").j();
        return r.contains("vms") && r["vms"].size() == o.vms;
      },
      "kvmid to list every VM"));
  }

  ~kvmid_process() {
    if (kvmid > 0) {
      int rc = stop_kvmid();
      INFO("kvmid stderr: " << log());
      CHECK(rc == 0);
    }
  }

  // Stops the simulator, then kvmid by SIGTERM; its exit code. kvmid exits
  // cleanly on SIGTERM: under ASan a leak or error shows here.
  int stop_kvmid() {
    if (sim)
      sim->stop();
    int rc = stop(kvmid);
    kvmid = -1;
    return rc;
  }
  kvmid_process(const kvmid_process&) = delete;
  kvmid_process& operator=(const kvmid_process&) = delete;

  // The config kvmid runs with: its files in `dir`, the API on
  // dir/api.sock (and 127.0.0.1:tcp_port if o.tcp), KVMI on dir/kvmi.sock.
  static json make_config(const options& o, const std::string& dir, uint16_t tcp_port = 0) {
    json listen = json::array({"unix:" + dir + "/api.sock"});
    if (o.tcp)
      listen.push_back("tcp:127.0.0.1:" + std::to_string(tcp_port));
    json api = {{"listen", listen}, {"token_file", dir + "/token"}};
    if (!o.read_token.empty())
      api["read_token_file"] = dir + "/read.token";
    for (auto& [k, v] : o.api_extra.items())
      api[k] = v;
    json listeners = json::array({{{"type", "unix"}, {"path", dir + "/kvmi.sock"}}});
    for (auto& l : o.extra_listeners)
      listeners.push_back(l);
    return {{"log_level", o.log_level},
            {"cookie_file", dir + "/cookie"},
            {"command_timeout_ms", 3000},
            {"state_dir", dir + "/state"},
            {"listeners", listeners},
            {"policies", o.policies},
            {"api", api}};
  }

  // 64 MiB of RAM, the MMIO hole, and a GPU whose links are never trained:
  // its RAM must stay untouched.
  static kvmi::sim::memory_spec sim_memory() {
    kvmi::sim::memory_spec m;
    m.ram_size = 64ull << 20;
    kvmi::sim::gpu_spec gpu;
    gpu.ram_size = 1ull << 30;
    gpu.online_after.reset();
    m.gpus.push_back(gpu);
    return m;
  }

  std::string config_path() const { return (dir / "kvmid.json").string(); }
  void write_config(const json& cfg) const { tmp.write("kvmid.json", cfg.dump(2)); }
  void write_file(const std::string& name, const std::string& text) const {
    tmp.write(name, text);
  }
  std::string log() const { return tmp.read("kvmid.err"); }

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

  std::string uuid(uint32_t vm) { return kvmi::hs::to_string(sim->vm(vm).uuid); }

  // A raw client of the API socket.
  int raw_connect() const { return connect_unix(api_sock); }
};

} // namespace kvmid::test
