// kvmid --check-config FILE: exit 0 and the effective config as JSON, or
// exit 1 and "kvmid: bad config FILE: FIELD: REASON"; either way nothing
// is bound, locked or created.
#include "tests/support/child_process.hpp"
#include "tests/support/temp_dir.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>

using namespace kvmid::test;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

run_result check(const std::string& file) {
  return run({KVMID_BIN, "--check-config", file}, std::chrono::seconds(30));
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (auto& e : fs::recursive_directory_iterator(dir))
    names.insert(e.path().string());
  return names;
}

// A config whose every path lies in `dir`: sockets, state, secrets.
json config_in(const fs::path& dir) {
  std::string d = dir.string();
  return {{"cookie_file", d + "/cookie"},
          {"state_dir", d + "/state"},
          {"listeners", json::array({{{"type", "unix"}, {"path", d + "/kvmi.sock"}},
                                     {{"type", "tcp"}, {"host", "127.0.0.1"}, {"port", 0}}})},
          {"api", {{"listen", json::array({"unix:" + d + "/api.sock"})},
                   {"token_file", d + "/token"}}}};
}

} // namespace

TEST_CASE("check-config: the shipped config/kvmid.json is valid and shows its defaults") {
  auto r = check(KVMID_SOURCE_DIR "/config/kvmid.json");
  INFO("stderr: " << r.err);
  REQUIRE(r.status == 0);
  auto j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["log_level"] == "info");
  CHECK(j["handshake"] == "kvmi");
  CHECK(j["listeners"][0]["type"] == "unix");
  CHECK(j["listeners"][0]["mode"] == "0660");
  CHECK(j["listeners"][1]["cid"] == -1);
  CHECK(j["listeners"][1]["cookie_file"] == "/etc/kvmid/vsock.cookie");
  CHECK(j["listeners"][0]["cookie_file"] == "/etc/kvmid/cookie"); // the default, filled in
  CHECK(j["policies"][0]["page_protection"][1]["on_violation"] == "crash");
  CHECK(j["policies"][1]["hypercalls"] == true); // not in the file: the default
  // The api section's defaults, none of which the shipped file sets.
  CHECK(j["api"]["max_connections"] == 256);
  CHECK(j["api"]["heartbeat_ms"] == 15000);
  CHECK(j["api"]["allow_remote"] == false);
  CHECK(j["api"]["tls"]["key_file"] == "/etc/kvmid/api.key");
}

TEST_CASE("check-config: the effective config is itself a valid config that prints the same") {
  temp_dir tmp{"check-config"};
  auto first = check(KVMID_SOURCE_DIR "/config/kvmid.json");
  REQUIRE(first.status == 0);
  auto file = tmp.write("effective.json", first.out);
  auto second = check(file.string());
  INFO("stderr: " << second.err);
  CHECK(second.status == 0);
  CHECK(second.out == first.out);
}

TEST_CASE("check-config: a broken config names file and field and reason and exits 1") {
  temp_dir tmp{"check-config"};
  struct bad {
    const char* what;
    json patch;
    std::string field, reason;
  } cases[] = {
    {"tcp listener without port",
     {{"listeners", json::array({{{"type", "tcp"}}})}},
     "/listeners/0/port", "required for a tcp listener"},
    {"unknown top-level field", {{"workerz", 2}}, "/workerz", "unknown field"},
    {"api section field out of range",
     {{"api", {{"listen", json::array({"unix:/tmp/x.sock"})}, {"token_file", "/t"},
               {"max_connections", 0}}}},
     "/api", "api.max_connections: must be an integer"},
  };
  for (auto& c : cases) {
    CAPTURE(c.what);
    json cfg = config_in(tmp.path());
    cfg.merge_patch(c.patch);
    auto file = tmp.write("bad.json", cfg.dump(2)).string();
    auto r = check(file);
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err.starts_with("kvmid: bad config " + file + ": " + c.field + ": " + c.reason));
  }
  auto r = check((tmp.path() / "missing.json").string());
  CHECK(r.status == 1);
  CHECK(r.err.find("missing.json: cannot open the file") != std::string::npos);
}

TEST_CASE("check-config: binds nothing and creates no state - missing secrets are warnings") {
  temp_dir tmp{"check-config"};
  auto file = tmp.write("kvmid.json", config_in(tmp.path()).dump(2));
  auto before = listing(tmp.path());
  auto r = check(file.string());
  INFO("stderr: " << r.err);
  CHECK(r.status == 0);
  // No socket, lock or state directory appeared.
  CHECK(listing(tmp.path()) == before);
  CHECK(r.err.find("listening") == std::string::npos);
  // The cookie and token do not exist: each is named, the check still passes.
  CHECK(r.err.find("kvmid: warning: " + file.string() + ": /cookie_file: cookie file ")
        != std::string::npos);
  CHECK(r.err.find("kvmid: warning: " + file.string() + ": /api/token_file: ") != std::string::npos);
  auto j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["state_dir"] == (tmp.path() / "state").string());
  CHECK(j["listeners"][0]["mode"] == "0600");
  CHECK(j["listeners"][1]["port"] == 0);
}
