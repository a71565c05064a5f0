// The value a test reads off kvmid's metrics registry: the sum of a
// family's samples, or of those carrying label=value.
#pragma once

#include "actors/metrics.hpp"

#include <string>

namespace kvmid::test {

inline double metric_sum(metrics_registry& m, const std::string& name,
                         const std::string& label = {}, const std::string& value = {}) {
  double total = 0;
  for (auto& f : m.snapshot())
    if (f.name == name)
      for (auto& s : f.samples) {
        bool ok = label.empty();
        for (auto& [k, v] : s.lbls)
          ok = ok || (k == label && v == value);
        if (ok)
          total += s.value;
      }
  return total;
}

} // namespace kvmid::test
