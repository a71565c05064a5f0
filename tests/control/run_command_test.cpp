// The run command of the README (kvmid --simulate) exits 0 when the
// simulator saw nothing wrong and non-zero when it saw a protocol
// violation. The violation comes from a host that allows no time for
// UNHOOK (kvmid's --simulate-impatient-unhook test hook).
#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>

#include <chrono>

using namespace kvmid::test;
using namespace std::chrono_literals;

TEST_CASE("kvmid --simulate exits 0 when the simulator saw no violation") {
  auto r = run({KVMID_BIN, "--simulate", "1x2", "--duration", "1"}, 120s);
  INFO(r.out << r.err);
  CHECK(r.status == 0);
  CHECK(r.out.find(" 0 protocol violations, 0 HMIs") != std::string::npos);
}

TEST_CASE("kvmid --simulate exits non-zero when the simulator sees a violation") {
  auto r = run({KVMID_BIN, "--simulate", "1x2", "--duration", "1", "--simulate-impatient-unhook"},
               120s);
  INFO(r.out << r.err);
  CHECK(r.status == 3);
  CHECK(r.out.find(" 1 protocol violations") != std::string::npos);
}
