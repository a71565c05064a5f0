// Reads Prometheus text exposition as a scraper does: each sample line's
// series (name and label set, as written) and value.
#pragma once

#include <map>
#include <sstream>
#include <string>

namespace kvmid::test {

// "name{labels}" or "name" -> value; comments and blank lines skipped.
inline std::map<std::string, double> exposition_samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    auto sp = line.rfind(' ');
    if (sp == std::string::npos)
      continue;
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

// The sum of a family's samples.
inline double exposition_sum(const std::string& text, const std::string& family) {
  double total = 0;
  for (auto& [series, v] : exposition_samples(text))
    if (series == family || series.starts_with(family + "{"))
      total += v;
  return total;
}

} // namespace kvmid::test
