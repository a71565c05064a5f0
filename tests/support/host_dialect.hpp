// Both ends of a real kvmid process's KVMI in the run's dialect
// (test_dialect.hpp): kvmi-sim's options and kvmid's listener entry. A v7
// host sends QEMU's E820 map: the simulated guests hold MMIO and GPU RAM,
// which only that map tells apart from RAM (a bound would call it all RAM).
#pragma once

#include "tests/support/test_dialect.hpp"

#include <nlohmann/json.hpp>

namespace kvmid::test {

inline void speak_test_dialect(kvmi::sim::options& so) {
  so.dialect = test_dialect();
  if (so.dialect == dialect::v7)
    so.v7_hello = kvmi::sim::qemu_v7_hello::e820;
}

inline void speak_test_dialect(nlohmann::json& listener) {
  listener["protocol"] = dialect_name();
  if (test_dialect() == dialect::v7)
    listener["qemu_layout"] = "e820";
}

} // namespace kvmid::test
