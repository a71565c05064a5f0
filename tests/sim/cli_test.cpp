// The kvmi-sim command: runs, reports JSON on stdout, and its exit code
// says whether the introspector broke a rule.
#include "tests/sim/mini_tool.hpp"
#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

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
