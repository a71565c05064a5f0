// The KVMI dialect a test run's kvmid and kvmi-sim speak, chosen at run
// time by KVMID_TEST_DIALECT=v5|v7 (v5 when unset). A suite built once is
// registered twice (kvmid_test_in_both_dialects, tests/CMakeLists.txt): the
// second time listed and run under KVMID_TEST_DIALECT=v7 with ctest names
// prefixed "v7/", so every case runs in both without a second binary.
// A case that holds for one dialect only says why in one line:
//   TEST_CASE("..." * doctest::skip(test::only_in(test::dialect::v5, "why")))
#pragma once

#include "kernel-patches/sim/sim.hpp"

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace kvmid::test {

using dialect = kvmi::sim::protocol;

// Read once: doctest's skip decorators ask during static initialisation,
// before main and in any order of the translation units. A misspelt value
// stops the binary, so a v7 run never quietly runs v5.
inline dialect test_dialect() {
  static const dialect d = [] {
    const char* s = std::getenv("KVMID_TEST_DIALECT");
    std::string_view v = s ? s : "";
    if (v.empty() || v == "v5")
      return dialect::v5;
    if (v == "v7")
      return dialect::v7;
    std::fprintf(stderr, "KVMID_TEST_DIALECT=%s: expected v5 or v7\n", s);
    std::exit(2);
  }();
  return d;
}

// "v5" or "v7": a listener's "protocol" in kvmid's config, the API's name.
inline const char* dialect_name() { return test_dialect() == dialect::v7 ? "v7" : "v5"; }

// For doctest::skip(): true when this run's dialect is not d. `why` is the
// case's one-line reason, kept beside the decorator for the reader.
inline bool only_in(dialect d, [[maybe_unused]] std::string_view why) {
  return test_dialect() != d;
}

} // namespace kvmid::test
