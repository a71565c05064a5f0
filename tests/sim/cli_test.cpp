// The kvmi-sim command: runs, reports JSON on stdout, and its exit code
// says whether the introspector broke a rule.
#include "tests/sim/mini_tool.hpp"
#include "tests/sim/mini_tool_v7.hpp"
#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <set>

using namespace kvmi;
using namespace kvmi::test;
using kvmid::test::child;

namespace {

// The simulator runs until the test has done its part and stops it
// (SIGTERM, then it reports): no window of wall-clock time to fit in.
std::vector<std::string> sim_args(const listener& l, std::string vms) {
  return {KVMI_SIM_BIN, "--unix", l.path(), "--vms", vms, "--vcpus", "3", "--cookie",
          test_cookie_hex, "--duration", "600", "--progress", "200"};
}

} // namespace

TEST_CASE("sim: kvmi-sim command reports JSON and exits 0 for a well-behaved tool") {
  listener l;
  child p(sim_args(l, "2"));
  std::vector<std::unique_ptr<conn>> cs;
  for (int i = 0; i < 2; ++i) {
    int fd = l.accept(30000ms);
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
  // A GET_VERSION round trip: the host has read every reply sent before it.
  for (auto& c : cs)
    REQUIRE(c->call(get_version{}));
  p.terminate();
  auto run = p.finish(60000ms);
  INFO(run.err);
  CHECK(run.status == 0);
  auto j = nlohmann::json::parse(run.out);
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
  child p(sim_args(l, "1"));
  int fd = l.accept(30000ms);
  REQUIRE(fd >= 0);
  conn c(fd);
  REQUIRE(c.handshake());
  auto r = c.call(control_vm_events{0, 7}); // padding not zero
  REQUIRE(r);
  CHECK(r->err == -kvm_einval);
  p.terminate();
  auto run = p.finish(60000ms);
  INFO(run.err);
  CHECK(run.status == 1);
  auto j = nlohmann::json::parse(run.out);
  CHECK(j["ok"] == false);
  CHECK(j["violations"]["bad_padding"] == 1);
}

TEST_CASE("sim: kvmi-sim runs the example scenario file") {
  listener l;
  child p({KVMI_SIM_BIN, "--unix", l.path(), "--vcpus", "2", "--cookie", test_cookie_hex,
             "--scenario", KVMI_SIM_SCENARIOS "/example.json"});
  int fd = l.accept(30000ms);
  REQUIRE(fd >= 0);
  conn c(fd);
  REQUIRE(c.handshake());
  // The tool enables nothing: every step runs without events, and the
  // final unhook closes the session from the host's side.
  CHECK(c.wait_closed(60000ms));
  auto run = p.finish(60000ms);
  INFO(run.err);
  CHECK(run.status == 0);
  auto j = nlohmann::json::parse(run.out);
  REQUIRE(j["scenario"].size() == 9);
  for (auto& step : j["scenario"])
    CHECK_FALSE(step.value("failed", false));
  CHECK(j["scenario"][3]["guest_exception"] == true); // the guest's own INT3
  CHECK(j["scenario"][6]["vcpu"] == 2);
  CHECK(j["vcpus"] == 3);
}

TEST_CASE("sim: kvmi-sim exits non-zero when it cannot connect - and backs off between attempts") {
  kvmid::test::temp_dir d("sim-cli");
  auto missing = (d / "no.sock").string();
  // Two seconds of its own clock: 40 attempts at the 50 ms reconnect delay,
  // at most 6 when each failure doubles it (50 + 100 + ... + 1600 ms).
  auto run = kvmid::test::run({KVMI_SIM_BIN, "--unix", missing, "--vms", "1", "--vcpus", "1",
                               "--cookie", test_cookie_hex, "--duration", "2", "--progress", "100"});
  INFO(run.err);
  CHECK(run.status == 1);
  CHECK(run.err.find("cannot connect to " + missing + ": No such file or directory") !=
        std::string::npos);
  // The progress line shows that nothing got a session.
  CHECK(run.err.find("sessions=0 ") != std::string::npos);
  CHECK(run.err.find("connect_failures=") != std::string::npos);
  auto j = nlohmann::json::parse(run.out);
  CHECK(j["ok"] == false);
  CHECK(j["sessions"] == 0);
  CHECK(j["connect_error"] == "No such file or directory");
  CHECK(j["connect_failures"].get<uint64_t>() >= 1);
  CHECK(j["connect_failures"].get<uint64_t>() <= 6);
}

TEST_CASE("sim: kvmi-sim with the wrong cookie reports its handshake failures and exits non-zero") {
  // v5: the tool refuses the device manager's MAC; v7: QEMU, which has the
  // secret, refuses the tool's hash of another cookie.
  for (std::string dialect : {"v5", "v7"}) {
    CAPTURE(dialect);
    listener l;
    child p({KVMI_SIM_BIN, "--unix", l.path(), "--protocol", dialect, "--vms", "1", "--vcpus",
             "1", "--cookie", "00112233445566778899aabbccddeeff", "--duration", "600"});
    // The second connection comes once the first one failed and was counted.
    for (int i = 0; i < 2; ++i) {
      int fd = l.accept(30000ms);
      REQUIRE(fd >= 0);
      if (dialect == "v5") {
        conn c(fd);
        CHECK_FALSE(c.handshake());
      } else {
        v7tool::conn c(fd);
        REQUIRE(c.handshake(test_cookie()));
        CHECK(c.wait_closed());
      }
    }
    p.terminate();
    auto run = p.finish(60000ms);
    INFO(run.err);
    CHECK(run.status == 1);
    CHECK(run.err.find(dialect == "v5" ? "handshake failures (MAC mismatch: wrong cookie?)"
                                       : "handshake failures (cookie hash mismatch: wrong cookie?)")
          != std::string::npos);
    auto j = nlohmann::json::parse(run.out);
    CHECK(j["ok"] == false);
    CHECK(j["sessions"] == 0);
    CHECK(j["handshake_failures"].get<uint64_t>() >= 1);
    CHECK(j["error"].get<std::string>().find("wrong cookie?") != std::string::npos);
  }
}

TEST_CASE("sim: kvmi-sim refuses a bad or missing cookie and a bad name pattern as usage errors") {
  kvmid::test::temp_dir d("sim-cli");
  auto sock = (d / "kvmi.sock").string();
  struct bad {
    std::vector<std::string> args;
    std::string says;
  };
  for (auto& b : std::vector<bad>{
         {{"--cookie", "6b766d692d73696d2d636f6f6b69653"}, "odd number of hex digits"},
         {{"--cookie", "zz766d692d73696d2d636f6f6b696531"}, "not hex"},
         {{}, "need --cookie HEX or --cookie-file PATH"},
         {{"--cookie", test_cookie_hex, "--name", "web"}, "--name wants one %d"},
         {{"--cookie", test_cookie_hex, "--name", "web-%d-%s"}, "--name wants one %d"},
         {{"--protocol", "v6"}, "--protocol v5|v7"},
         {{"--protocol", "v7", "--qemu-hello", "big"}, "--qemu-hello plain|max-gpa|e820"},
         {{"--protocol", "v7", "--swapped"}, "--handshake and --swapped are v5's"},
       }) {
    std::vector<std::string> args{KVMI_SIM_BIN, "--unix", sock, "--duration", "600"};
    args.insert(args.end(), b.args.begin(), b.args.end());
    auto run = kvmid::test::run(args);
    INFO(run.err);
    CHECK(run.status == 2);
    CHECK(run.err.find(b.says) != std::string::npos);
    CHECK(run.out.empty());
  }
}

TEST_CASE("sim: kvmi-sim names its VMs after --name") {
  listener l;
  child p({KVMI_SIM_BIN, "--unix", l.path(), "--vms", "2", "--vcpus", "1", "--cookie",
           test_cookie_hex, "--name", "web-%d", "--duration", "600"});
  std::set<std::string> names;
  std::vector<std::unique_ptr<conn>> cs;
  for (int i = 0; i < 2; ++i) {
    int fd = l.accept(30000ms);
    REQUIRE(fd >= 0);
    cs.push_back(std::make_unique<conn>(fd));
    REQUIRE(cs.back()->handshake());
    names.insert(cs.back()->info().name);
  }
  CHECK(names == std::set<std::string>{"web-0", "web-1"});
  p.terminate();
  auto run = p.finish(60000ms);
  INFO(run.err);
  CHECK(run.status == 0);
  CHECK(nlohmann::json::parse(run.out)["sessions"] == 2);
}

TEST_CASE("sim: kvmi-sim --protocol v7 without a secret hooks a tool with any cookie hash and reports v7 names") {
  listener l;
  child p({KVMI_SIM_BIN, "--unix", l.path(), "--protocol", "v7", "--vms", "1", "--vcpus", "2",
           "--duration", "600"});
  int fd = l.accept(30000ms);
  REQUIRE(fd >= 0);
  v7tool::conn c(fd);
  REQUIRE(c.handshake(std::vector<uint8_t>{'a', 'n', 'y'}));
  auto seqs = c.send_batch({{v7::pause_vcpu{1, 0, 0, 0}, 0}, {v7::pause_vcpu{1, 0, 0, 0}, 1}});
  auto r = c.wait_reply(seqs.back());
  REQUIRE(r);
  CHECK(r->err == 0);
  for (int i = 0; i < 2; ++i) {
    auto e = c.next_event();
    REQUIRE(e);
    CHECK(e->kind() == v7::event_id::pause_vcpu);
    c.reply(*e, action::continue_);
  }
  REQUIRE(c.call(v7::get_version{}));
  p.terminate();
  auto run = p.finish(60000ms);
  INFO(run.err);
  CHECK(run.status == 0);
  auto j = nlohmann::json::parse(run.out);
  CHECK(j["ok"] == true);
  CHECK(j["sessions"] == 1);
  CHECK(j["events"]["pause_vcpu"] == 2);
  CHECK(j["commands"]["control_cmd_response"] == 2);
  CHECK(j["commands"]["pause_vcpu"] == 2);
}
