// A real kvmid process (config, cookie and token in a fresh temp dir, API
// on a UNIX socket), an embedded kvmi-sim fleet connected to it, and real
// clients (curl, kvmictl) run as processes. Both ends speak the run's KVMI
// dialect (tests/support/host_dialect.hpp). Needs KVMID_BIN, KVMICTL_BIN
// and CURL_BIN from the build.
#pragma once

#include "kernel-patches/sim/sim.hpp"
#include "tests/support/constants.hpp"
#include "tests/support/host_dialect.hpp"
#include "tests/support/kvmid_daemon.hpp"

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
  std::string tcp_address; // with tcp: "host:port" instead of 127.0.0.1 and a free port
  std::vector<std::string> launcher; // kvmid_daemon::launcher
  bool reconnect = true; // the simulated device manager reconnects after a close
  std::string read_token;  // non-empty: also an api.read_token_file holding it
  json extra = json::object(); // more top-level config sections ("nats": {...})
};

// One VM with one vCPU: enough for a test about kvmid rather than a fleet.
inline kvmid_process_options one_vm() {
  kvmid_process_options o;
  o.vms = 1;
  o.vcpus = 1;
  return o;
}

struct kvmid_process : kvmid_daemon {
  using options = kvmid_process_options;

  std::unique_ptr<kvmi::sim::host> sim;
  uint16_t tcp_port = 0;
  int64_t started_unix = int64_t(std::time(nullptr));

  explicit kvmid_process(options o = {}) : kvmid_daemon("e2e", e2e_cookie(), "e2e-token-7f3a") {
    if (!o.read_token.empty())
      write_file("read.token", o.read_token + "\n");
    if (o.tcp && o.tcp_address.empty())
      tcp_port = free_loopback_port();
    launcher = o.launcher;
    start(make_config(o, dir.string(), tcp_port));

    kvmi::sim::options so;
    so.unix_path = kvmi_sock;
    so.vms = o.vms;
    so.vcpus_per_vm = o.vcpus;
    so.cookie = cookie;
    so.seed = 42;
    speak_test_dialect(so);
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

  static std::vector<uint8_t> e2e_cookie() {
    std::vector<uint8_t> c(32);
    for (size_t i = 0; i < c.size(); ++i)
      c[i] = uint8_t(i * 7 + 3);
    return c;
  }

  // Stops the simulator, then kvmid by SIGTERM; its exit code. kvmid exits
  // cleanly on SIGTERM: under ASan a leak or error shows here.
  int stop_kvmid() {
    if (sim)
      sim->stop();
    return stop();
  }

  // The config kvmid runs with: its files in `dir`, the API on
  // dir/api.sock (and 127.0.0.1:tcp_port if o.tcp), KVMI on dir/kvmi.sock.
  static json make_config(const options& o, const std::string& dir, uint16_t tcp_port = 0) {
    json listen = json::array({"unix:" + dir + "/api.sock"});
    if (o.tcp) {
      std::string tcp = "tcp:";
      tcp += o.tcp_address.empty() ? "127.0.0.1:" + std::to_string(tcp_port) : o.tcp_address;
      listen.push_back(tcp);
    }
    json api = {{"listen", listen}, {"token_file", dir + "/token"}};
    if (!o.read_token.empty())
      api["read_token_file"] = dir + "/read.token";
    for (auto& [k, v] : o.api_extra.items())
      api[k] = v;
    json kvmi = {{"type", "unix"}, {"path", dir + "/kvmi.sock"}};
    speak_test_dialect(kvmi);
    json listeners = json::array({kvmi});
    for (auto& l : o.extra_listeners)
      listeners.push_back(l);
    json cfg = {{"log_level", o.log_level},
                {"cookie_file", dir + "/cookie"},
                {"command_timeout_ms", 3000},
                {"state_dir", dir + "/state"},
                {"listeners", listeners},
                {"policies", o.policies},
                {"api", api}};
    for (auto& [k, v] : o.extra.items())
      cfg[k] = v;
    return cfg;
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

  std::string uuid(uint32_t vm) { return kvmi::hs::to_string(sim->vm(vm).uuid); }

};

} // namespace kvmid::test
