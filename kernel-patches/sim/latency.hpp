// Event latency (event sent -> reply received) as kvmi-sim records it.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

namespace kvmi::sim::detail {

// Log-linear latency histogram in nanoseconds (64 sub-buckets per power of
// two: quantiles within 1.6%), fixed size so recording never allocates.
struct histogram {
  static constexpr int sub_bits = 6;
  static constexpr uint64_t subs = uint64_t{1} << sub_bits;
  std::array<uint64_t, 64 * subs> b{};
  uint64_t n = 0, max = 0;
  static size_t bucket(uint64_t v) {
    if (v < subs)
      return v;
    int msb = 63 - __builtin_clzll(v);
    return static_cast<size_t>((msb - sub_bits + 1) * subs) + ((v >> (msb - sub_bits)) & (subs - 1));
  }
  static uint64_t lower(size_t i) {
    if (i < subs)
      return i;
    size_t msb = i / subs + sub_bits - 1, sub = i % subs;
    return (uint64_t{1} << msb) | (uint64_t{sub} << (msb - sub_bits));
  }
  void add(uint64_t v) {
    ++b[bucket(v)];
    ++n;
    max = std::max(max, v);
  }
  void merge(const histogram& o) {
    for (size_t i = 0; i < b.size(); ++i)
      b[i] += o.b[i];
    n += o.n;
    max = std::max(max, o.max);
  }
  uint64_t quantile(double q) const {
    if (n == 0)
      return 0;
    uint64_t want = static_cast<uint64_t>(q * static_cast<double>(n - 1)) + 1, seen = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      seen += b[i];
      if (seen >= want)
        return std::min(max, lower(i + 1));
    }
    return max;
  }
};

} // namespace kvmi::sim::detail
