// What a newcomer asks a running kvmid first: is it up (GET /healthz, no
// token), which build is it (GET /v1/version, kvmictl version, the log's
// first line, kvmid_build_info on /metrics).
#include "tests/support/kvmid_process.hpp"

#include "kvmid_version.hpp"

using namespace kvmid;
using namespace kvmid::test;

namespace {
const std::string version(kvmid::build_version);
}

TEST_SUITE("control-e2e") {

TEST_CASE("e2e: kvmid logs its version at start and exports kvmid_build_info") {
  kvmid_process t(one_vm());
  CHECK(t.log().starts_with("kvmid: version " + version + " ("));
  auto m = t.curl("GET", "/metrics");
  REQUIRE(m.status == 200);
  CHECK(m.body.find("\nkvmid_build_info{protocols=\"v5,v7\",version=\"" + version + "\"} 1\n")
        != std::string::npos);
  CHECK(m.body.find("# TYPE kvmid_build_info gauge\n") != std::string::npos);
}

TEST_CASE("e2e: GET /healthz needs no token and GET /v1/version needs one") {
  kvmid_process t(one_vm());
  auto h = t.curl("GET", "/healthz", "", std::string());
  CHECK(h.status == 200);
  CHECK(h.j() == json{{"status", "ok"}});
  CHECK(t.curl("GET", "/v1/version", "", std::string()).status == 401);
  auto v = t.curl("GET", "/v1/version");
  REQUIRE(v.status == 200);
  CHECK(v.j()["version"] == version);
  CHECK(v.j()["protocol"]["dialects"] == json::array({"kvmi", "qemu-v5"}));
}

TEST_CASE("e2e: kvmictl version prints the client's and the server's version") {
  kvmid_process t(one_vm());
  auto r = t.kvmictl({"version"});
  INFO("stderr: " << r.err);
  CHECK(r.status == 0);
  CHECK(r.out == "client: kvmictl " + version + "\nserver: kvmid " + version + " ("
                   + std::string(kvmid::build_type) + "), API v1, KVMI 1, dialects kvmi, qemu-v5\n");
  auto j = t.kvmictl({"--json", "version"});
  REQUIRE(j.status == 0);
  auto body = json::parse(j.out);
  CHECK(body["client"]["version"] == version);
  CHECK(body["server"]["version"] == version);
}

TEST_CASE("e2e: kvmictl version without a server still prints the client version") {
  temp_dir tmp{"e2e-version"};
  auto r = run({KVMICTL_BIN, "--unix", (tmp.path() / "none.sock").string(), "version"});
  CHECK(r.status == 3);
  CHECK(r.out == "client: kvmictl " + version + "\n");
}

}
