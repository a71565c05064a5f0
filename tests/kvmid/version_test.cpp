// `--version` on the binaries: one line, the version CMake configured
// (kvmid_version.hpp), exit 0, before anything else is looked at.
#include "tests/support/child_process.hpp"

#include "kvmid_version.hpp"

#include <doctest/doctest.h>

using namespace kvmid::test;

TEST_CASE("version: kvmid --version prints the configured version and exits 0") {
  auto r = run({KVMID_BIN, "--version"}, std::chrono::seconds(30));
  INFO("stderr: " << r.err);
  CHECK(r.status == 0);
  CHECK(r.out == "kvmid " + std::string(kvmid::build_version) + "\n");
  CHECK(r.err.empty());
}

TEST_CASE("version: kvmid --version wins over a config that does not exist") {
  // Asking for the version touches no file: a newcomer can run it anywhere.
  auto r = run({KVMID_BIN, "--config", "/nonexistent/kvmid.json", "--version"},
               std::chrono::seconds(30));
  CHECK(r.status == 0);
  CHECK(r.out == "kvmid " + std::string(kvmid::build_version) + "\n");
}

TEST_CASE("version: kvmictl --version prints the same version without a server") {
  auto r = run({KVMICTL_BIN, "--unix", "/nonexistent/api.sock", "--version"},
               std::chrono::seconds(30));
  INFO("stderr: " << r.err);
  CHECK(r.status == 0);
  CHECK(r.out == "kvmictl " + std::string(kvmid::build_version) + "\n");
}

TEST_CASE("version: kvmi-sim --version prints the same version and simulates nothing") {
  auto r = run({KVMI_SIM_BIN, "--version"}, std::chrono::seconds(30));
  INFO("stderr: " << r.err);
  CHECK(r.status == 0);
  CHECK(r.out == "kvmi-sim " + std::string(kvmid::build_version) + "\n");
}

TEST_CASE("version: the configured version starts with the project version") {
  // The string is never empty and never lost its base, git or no git.
  CHECK(std::string_view(kvmid::build_version).starts_with(KVMID_PROJECT_VERSION));
}
