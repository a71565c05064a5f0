// Config validation: every bad field is named with its JSON pointer.
#include "server/config.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

using namespace kvmid;
using nlohmann::json;

namespace {

json good() {
  return json::parse(R"({
    "log_level": "info",
    "cookie_file": "/etc/kvmid/cookie",
    "listeners": [
      {"type": "unix", "path": "/run/kvmid/kvmi.sock", "mode": "0660"},
      {"type": "tcp", "host": "127.0.0.1", "port": 0},
      {"type": "vsock", "cid": -1, "port": 9999, "cookie_file": "/etc/kvmid/vsock.cookie"}
    ],
    "policies": [{
      "name": "linux", "match": ["*"],
      "page_protection": [{"name": "text", "gpa": "0x100000", "size": "0x200000",
                           "access": "r-x", "on_violation": "allow-and-unprotect"}],
      "msr_protection": [{"name": "lstar", "msr": "0xc0000082"}],
      "cr_pins": ["cr0.wp", "cr4.smep"],
      "breakpoints": [{"name": "probe", "gpa": 4096}],
      "hypercalls": false
    }]
  })");
}

std::string field_of(const json& j) {
  try {
    parse_config(j, "test.json");
  } catch (const config_error& e) {
    CHECK(e.file == "test.json");
    CHECK_FALSE(e.reason.empty());
    return e.field;
  }
  return "(accepted)";
}

} // namespace

TEST_CASE("a good config parses into listeners and policies") {
  auto c = parse_config(good(), "test.json");
  REQUIRE(c.listeners.size() == 3);
  CHECK(c.listeners[0].spec.mode == 0660);
  CHECK(c.listeners[2].spec.cid == 0xFFFFFFFFu);
  CHECK(c.listeners[2].cookie_file == "/etc/kvmid/vsock.cookie");
  REQUIRE(c.policies.policies.size() == 1);
  auto& p = c.policies.policies[0];
  CHECK(p.pages[0].gpa == 0x100000);
  CHECK(p.pages[0].access == (kvmi::page_access_r | kvmi::page_access_x));
  CHECK(p.pages[0].on_violation == pf_action::allow_and_unprotect);
  CHECK(p.msrs[0].msr == 0xc0000082);
  CHECK(p.crs.size() == 2);
  CHECK(p.breakpoints[0].gpa == 4096);
  CHECK_FALSE(p.hypercalls);
}

TEST_CASE("bad fields are named") {
  auto j = good();
  j["listeners"][0]["mode"] = "rw-rw----";
  CHECK(field_of(j) == "/listeners/0/mode");
  j = good();
  j["policies"][0]["msr_protection"][0]["msr"] = "0x40000000";
  CHECK(field_of(j) == "/policies/0/msr_protection/0/msr");
  j = good();
  j["policies"][0]["page_protection"][0]["gpa"] = "0x100001";
  CHECK(field_of(j) == "/policies/0/page_protection/0/gpa");
  j = good();
  j["policies"][0]["page_protection"][0]["on_violation"] = "ignore";
  CHECK(field_of(j) == "/policies/0/page_protection/0/on_violation");
  j = good();
  j["policies"][0]["cr_pins"][1] = "cr4.pae";
  CHECK(field_of(j) == "/policies/0/cr_pins/1");
  j = good();
  j["listeners"][1]["type"] = "udp";
  CHECK(field_of(j) == "/listeners/1/type");
  j = good();
  j["bogus"] = 1;
  CHECK(field_of(j) == "/bogus");
  j = good();
  j.erase("cookie_file");
  CHECK(field_of(j) == "/listeners/0/cookie_file");
  j = good();
  j["listeners"] = json::array();
  CHECK(field_of(j) == "/listeners");
  j = good();
  j["handshake"] = "v4";
  CHECK(field_of(j) == "/handshake");
  j = good();
  j["workers"] = -3;
  CHECK(field_of(j) == "/workers");
  j = good();
  j["poll_us"] = 5000;
  CHECK(field_of(j) == "/poll_us");
  j = good();
  j["poll_us"] = "fast";
  CHECK(field_of(j) == "/poll_us");
  j = good();
  j["state_dir"] = "";
  CHECK(field_of(j) == "/state_dir");
  j = good();
  j["state_dir"] = 7;
  CHECK(field_of(j) == "/state_dir");
}

TEST_CASE("poll_us defaults to 0 (no polling) and is taken in microseconds") {
  auto j = good();
  j.erase("poll_us");
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(0));
  j["poll_us"] = 50;
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(50));
  j["poll_us"] = 1000;
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(1000));
}

TEST_CASE("state_dir is optional and taken as given") {
  auto j = good();
  CHECK(parse_config(j, "t.json").state_dir.empty());
  j["state_dir"] = "/var/lib/kvmid-test";
  CHECK(parse_config(j, "t.json").state_dir == "/var/lib/kvmid-test");
}

TEST_CASE("max_handshakes defaults to 64 and must be 1..100000") {
  auto j = good();
  CHECK(parse_config(j, "t.json").max_handshakes == 64);
  j["max_handshakes"] = 5;
  CHECK(parse_config(j, "t.json").max_handshakes == 5);
  for (int bad : {0, 100001}) {
    j["max_handshakes"] = bad;
    CHECK(field_of(j) == "/max_handshakes");
  }
}

TEST_CASE("the shipped example config is valid") {
  auto path = std::filesystem::path(KVMID_SOURCE_DIR) / "config" / "kvmid.json";
  auto c = load_config(path.string());
  CHECK_FALSE(c.listeners.empty());
  CHECK_FALSE(c.policies.policies.empty());
}

TEST_CASE("files: unreadable config and short cookies are reported with their file") {
  CHECK_THROWS_AS(load_config("/nonexistent/kvmid.json"), config_error);
  auto dir = std::filesystem::temp_directory_path() / ("kvmid-cfg-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "bad.json") << "{ not json";
    std::ofstream(dir / "short") << "abc\n";
  }
  try {
    load_config((dir / "bad.json").string());
    FAIL("accepted broken JSON");
  } catch (const config_error& e) {
    CHECK(e.file == (dir / "bad.json").string());
  }
  try {
    read_cookie((dir / "short").string(), "k.json", "/cookie_file");
    FAIL("accepted a 3-byte cookie");
  } catch (const config_error& e) {
    CHECK(e.field == "/cookie_file");
  }
  std::filesystem::remove_all(dir);
}
