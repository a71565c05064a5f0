// kvmid refusing bad files at start-up: each is a config (or state) error
// naming the config file, the field and the reason, and kvmid exits 1 -
// never an uncaught exception (exit 134) and never a secret others can read.
#include "tests/control/proc.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sys/stat.h>

using namespace kvmid::test;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct startup {
  fs::path dir;
  json cfg;

  startup() {
    std::string t = (fs::temp_directory_path() / "kvmid-startup-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()));
    dir = t;
    write("cookie", std::string(32, 'c'), 0600);
    write("token", "startup-token\n", 0600);
    cfg = {{"cookie_file", (dir / "cookie").string()},
           {"state_dir", (dir / "state").string()},
           {"listeners", json::array({{{"type", "unix"}, {"path", (dir / "kvmi.sock").string()}}})},
           {"api",
            {{"listen", json::array({"unix:" + (dir / "api.sock").string()})},
             {"token_file", (dir / "token").string()}}}};
  }
  ~startup() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string write(const std::string& name, const std::string& bytes, mode_t mode) const {
    auto f = dir / name;
    std::ofstream(f, std::ios::binary) << bytes;
    REQUIRE(::chmod(f.c_str(), mode) == 0);
    return f.string();
  }
  std::string config_path() const { return (dir / "kvmid.json").string(); }
  // --duration bounds kvmid should it start after all.
  run_result run_kvmid(const std::string& config) {
    return run({KVMID_BIN, "--config", config, "--duration", "5"}, std::chrono::seconds(30));
  }
  run_result run_kvmid() {
    write("kvmid.json", cfg.dump(2), 0600);
    return run_kvmid(config_path());
  }
};

} // namespace

TEST_CASE("start-up: a cookie_file that is a directory is a config error - exit 1 not an abort") {
  startup s;
  s.cfg["cookie_file"] = s.dir.string();
  auto r = s.run_kvmid();
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("kvmid: bad config " + s.config_path() + ": /cookie_file: cookie file "
                   + s.dir.string() + ": not a regular file")
        != std::string::npos);
}

TEST_CASE("start-up: a config file that is a directory is a config error") {
  startup s;
  auto r = s.run_kvmid(s.dir.string());
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("kvmid: bad config " + s.dir.string() + ": not a regular file")
        != std::string::npos);
}

TEST_CASE("start-up: a cookie file others may read stops kvmid naming the mode and the fix") {
  startup s;
  auto cookie = s.write("cookie", std::string(32, 'c'), 0644);
  auto r = s.run_kvmid();
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("kvmid: bad config " + s.config_path() + ": /cookie_file: cookie file " + cookie
                   + ": mode 0644 lets group or others access it (chmod 600 " + cookie + ")")
        != std::string::npos);
}

TEST_CASE("start-up: an API token file the group may read stops kvmid naming the mode and the fix") {
  startup s;
  auto token = s.write("token", "startup-token\n", 0640);
  auto r = s.run_kvmid();
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("kvmid: bad config " + s.config_path() + ": /api/token_file: api token file "
                   + token + ": mode 0640 lets group or others access it (chmod 600 " + token
                   + ")")
        != std::string::npos);
}

TEST_CASE("start-up: a state record that is a directory is a state error") {
  startup s;
  auto record = s.dir / "state" / "breakpoints-00000000-0000-0000-0000-000000000001.json";
  fs::create_directories(record);
  auto r = s.run_kvmid();
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("kvmid: bad state file " + record.string() + ": not a regular file")
        != std::string::npos);
}
