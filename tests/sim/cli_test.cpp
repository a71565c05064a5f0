// The kvmi-sim command: runs, reports JSON on stdout, and its exit code
// says whether the introspector broke a rule.
#include "tests/sim/mini_tool.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

extern char** environ;

using namespace kvmi;
using namespace kvmi::test;

namespace {

struct process {
  pid_t pid = -1;
  int out = -1;
  std::string text;
  int status = -1;

  explicit process(std::vector<std::string> args) {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[1]);
    out = p[0];
  }
  ~process() {
    if (pid > 0 && status < 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out >= 0)
      ::close(out);
  }
  // Reads stdout to EOF and reaps the process; false if it did not end in time.
  bool finish(ms timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (true) {
      auto left = std::chrono::duration_cast<ms>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return false;
      pollfd p{out, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return false;
      auto n = ::read(out, buf, sizeof buf);
      if (n <= 0)
        break;
      text.append(buf, static_cast<size_t>(n));
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    return true;
  }
};

std::vector<std::string> sim_args(const listener& l, std::string vms) {
  return {KVMI_SIM_BIN, "--unix", l.path(), "--vms", vms, "--vcpus", "3", "--cookie",
          test_cookie_hex, "--duration", "1", "--progress", "200"};
}

} // namespace

TEST_CASE("sim: kvmi-sim command reports JSON and exits 0 for a well-behaved tool") {
  listener l;
  process p(sim_args(l, "2"));
  std::vector<std::unique_ptr<conn>> cs;
  for (int i = 0; i < 2; ++i) {
    int fd = l.accept(10000ms);
    REQUIRE(fd >= 0);
    cs.push_back(std::make_unique<conn>(fd));
    REQUIRE(cs.back()->handshake());
    auto r = cs.back()->call(pause_all_vcpus{});
    REQUIRE(r);
    for (int k = 0; k < 3; ++k) {
      auto e = cs.back()->next_event();
      REQUIRE(e);
      cs.back()->reply(*e, action::continue_);
    }
  }
  REQUIRE(p.finish(20000ms));
  CHECK(p.status == 0);
  auto j = nlohmann::json::parse(p.text);
  CHECK(j["ok"] == true);
  CHECK(j["vms"] == 2);
  CHECK(j["vcpus"] == 6);
  CHECK(j["sessions"] == 2);
  CHECK(j["events"]["pause_vcpu"] == 6);
  CHECK(j["replies"]["continue"] == 6);
  CHECK(j["violations_total"] == 0);
  CHECK(j["latency_us"]["count"] == 6);
}

TEST_CASE("sim: kvmi-sim exits non-zero when the tool breaks a rule") {
  listener l;
  process p(sim_args(l, "1"));
  int fd = l.accept(10000ms);
  REQUIRE(fd >= 0);
  conn c(fd);
  REQUIRE(c.handshake());
  auto r = c.call(control_vm_events{0, 7}); // padding not zero
  REQUIRE(r);
  CHECK(r->err == -kvm_einval);
  REQUIRE(p.finish(20000ms));
  CHECK(p.status == 1);
  auto j = nlohmann::json::parse(p.text);
  CHECK(j["ok"] == false);
  CHECK(j["violations"]["bad_padding"] == 1);
}

TEST_CASE("sim: kvmi-sim runs the example scenario file") {
  listener l;
  process p({KVMI_SIM_BIN, "--unix", l.path(), "--vcpus", "2", "--cookie", test_cookie_hex,
             "--scenario", KVMI_SIM_SCENARIOS "/example.json"});
  int fd = l.accept(10000ms);
  REQUIRE(fd >= 0);
  conn c(fd);
  REQUIRE(c.handshake());
  // The tool enables nothing: every step runs without events, and the
  // final unhook closes the session from the host's side.
  CHECK(c.wait_closed(20000ms));
  REQUIRE(p.finish(20000ms));
  CHECK(p.status == 0);
  auto j = nlohmann::json::parse(p.text);
  REQUIRE(j["scenario"].size() == 9);
  for (auto& step : j["scenario"])
    CHECK_FALSE(step.value("failed", false));
  CHECK(j["scenario"][3]["guest_exception"] == true); // the guest's own INT3
  CHECK(j["scenario"][6]["vcpu"] == 2);
  CHECK(j["vcpus"] == 3);
}
