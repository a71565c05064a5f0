// kvmictl against a real kvmid: a refused or missing token is explained
// with where the token comes from.
#include "tests/support/kvmid_process.hpp"

using namespace kvmid;
using namespace kvmid::test;

TEST_SUITE("control-e2e") {

TEST_CASE("e2e: kvmictl explains a 401 with where the token comes from") {
  kvmid_process t(one_vm());
  auto none = t.kvmictl({"--unix", t.api_sock, "vms"}, false);
  CHECK(none.status == 1);
  CHECK(none.err.find("HTTP 401 unauthorized") != std::string::npos);
  CHECK(none.err.find("kvmictl: no token given: ") != std::string::npos);
  CHECK(none.err.find("api.token_file") != std::string::npos);
  t.write_file("wrong.token", "not-the-token\n");
  auto wrong = t.kvmictl({"--unix", t.api_sock, "--token-file", (t.dir / "wrong.token").string(),
                          "watch", "--count", "1"},
                         false);
  CHECK(wrong.status == 1);
  CHECK(wrong.err.find("kvmictl: the server refused the token: ") != std::string::npos);
  // With the right token nothing is added.
  auto ok = t.kvmictl({"vms"});
  CHECK(ok.status == 0);
  CHECK(ok.err.empty());
}

}
