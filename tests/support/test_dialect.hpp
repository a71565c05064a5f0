// The KVMI dialect a test binary's kvmid and kvmi-sim speak: the e2e
// sources are built once per dialect (KVMID_TEST_DIALECT_V7 for v7), so
// every case runs in both without a copy. Cases that hold for one dialect
// only say so with doctest::skip(only_in(...)).
#pragma once

#include "server/dialect/dialect.hpp"

namespace kvmid::test {

#ifdef KVMID_TEST_DIALECT_V7
inline constexpr protocol test_dialect = protocol::v7;
#else
inline constexpr protocol test_dialect = protocol::v5;
#endif

// For doctest::skip(): true when this binary's dialect is not p.
constexpr bool only_in(protocol p) { return test_dialect != p; }

} // namespace kvmid::test
