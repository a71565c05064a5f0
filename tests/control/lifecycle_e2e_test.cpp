// kvmid's process life, with real kvmid processes: SIGHUP reloads the
// policies (and a broken file keeps the old ones), and a second kvmid on
// the same state directory or socket path fails without harming the first.
#include "e2e_fixture.hpp"

#include <csignal>

using namespace kvmid;
using namespace kvmid::test;

namespace {

bool alive(pid_t pid) { return ::waitpid(pid, nullptr, WNOHANG) == 0; }

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

bool log_has(e2e& f, const std::string& what) {
  for (int i = 0; i < 200; ++i) {
    if (f.log().find(what) != std::string::npos)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

bool rules_have(e2e& f, const std::string& vm, const std::string& rule) {
  for (int i = 0; i < 200; ++i) {
    auto r = f.curl("GET", "/v1/vms/" + vm);
    if (r.status == 200 && r.j().contains("policy_rules")
        && r.j()["policy_rules"].dump().find(rule) != std::string::npos)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

} // namespace

TEST_SUITE("control-e2e") {

TEST_CASE("e2e: SIGHUP reloads the policies and a broken file keeps the old ones") {
  e2e f;
  auto vm = f.uuid(0);
  auto before = f.curl("GET", "/v1/vms/" + vm);
  REQUIRE(before.status == 200);
  REQUIRE(before.body.find("sysenter-eip") == std::string::npos);
  auto cfg = read_json(f.dir / "kvmid.json");
  cfg["policies"][0]["msr_protection"].push_back({{"name", "sysenter-eip"}, {"msr", 0x176}});
  f.write_file("kvmid.json", cfg.dump(2));
  REQUIRE(::kill(f.kvmid, SIGHUP) == 0);
  INFO("kvmid stderr: " << f.log());
  CHECK(log_has(f, "SIGHUP: policies reloaded"));
  CHECK(rules_have(f, vm, "sysenter-eip"));
  CHECK(alive(f.kvmid));

  f.write_file("kvmid.json", "{ \"policies\": [ broken");
  REQUIRE(::kill(f.kvmid, SIGHUP) == 0);
  CHECK(log_has(f, "SIGHUP: policy reload failed, the old policies stay"));
  CHECK(alive(f.kvmid));
  CHECK(rules_have(f, vm, "sysenter-eip"));
  CHECK(f.curl("GET", "/v1/vms").status == 200);
  f.write_file("kvmid.json", cfg.dump(2)); // as it was, for a clean stop
}

TEST_CASE("e2e: a second kvmid on the same socket or state directory fails and the first keeps serving") {
  e2e f;
  auto base = read_json(f.dir / "kvmid.json");
  auto second = [&](const std::string& name, const json& cfg) {
    f.write_file(name, cfg.dump(2));
    return run({KVMID_BIN, "--config", (f.dir / name).string()}, std::chrono::milliseconds(20000));
  };
  auto holder = "pid " + std::to_string(f.kvmid);
  {
    // Same KVMI socket path, its own state directory and API socket.
    auto cfg = base;
    cfg["state_dir"] = (f.dir / "state2").string();
    cfg["api"]["listen"] = json::array({"unix:" + (f.dir / "api2.sock").string()});
    auto r = second("second-socket.json", cfg);
    INFO("second kvmid stderr: " << r.err);
    CHECK(r.status != 0);
    CHECK(r.err.find(f.kvmi_sock) != std::string::npos);
    CHECK(r.err.find(holder) != std::string::npos);
  }
  {
    // Same state directory, sockets of its own.
    auto cfg = base;
    cfg["listeners"][0]["path"] = (f.dir / "kvmi2.sock").string();
    cfg["api"]["listen"] = json::array({"unix:" + (f.dir / "api3.sock").string()});
    auto r = second("second-state.json", cfg);
    INFO("second kvmid stderr: " << r.err);
    CHECK(r.status != 0);
    CHECK(r.err.find("state directory " + (f.dir / "state").string()) != std::string::npos);
    CHECK(r.err.find(holder) != std::string::npos);
  }
  // The first still owns its path: a new peer reaches it, the API answers.
  CHECK(fs::exists(f.kvmi_sock));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, f.kvmi_sock.c_str(), sizeof a.sun_path - 1);
  CHECK(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::close(fd);
  CHECK(f.curl("GET", "/v1/vms").j()["vms"].size() == 2);
  CHECK(alive(f.kvmid));
}

} // TEST_SUITE
