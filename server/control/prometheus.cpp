#include "server/control/prometheus.hpp"

#include <charconv>
#include <cmath>

namespace kvmid::control {

namespace {
bool name_char(char c, bool first, bool colon) {
  bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
  return alpha || (!first && c >= '0' && c <= '9');
}

void put_labels(std::string& out, const labels& l, std::string_view extra_name = {},
                std::string_view extra_value = {}) {
  if (l.empty() && extra_name.empty())
    return;
  out += '{';
  bool first = true;
  for (auto& [k, v] : l) {
    if (!first)
      out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape_label_value(v);
    out += '"';
  }
  if (!extra_name.empty()) {
    if (!first)
      out += ',';
    out += extra_name;
    out += "=\"";
    out += extra_value;
    out += '"';
  }
  out += '}';
}

std::string_view type_name(metric_type t) {
  switch (t) {
    case metric_type::counter: return "counter";
    case metric_type::gauge: return "gauge";
    case metric_type::histogram: return "histogram";
  }
  return "untyped";
}
} // namespace

bool valid_metric_name(std::string_view s) {
  if (s.empty())
    return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (!name_char(s[i], i == 0, true))
      return false;
  return true;
}

bool valid_label_name(std::string_view s) {
  if (s.empty() || s.starts_with("__"))
    return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (!name_char(s[i], i == 0, false))
      return false;
  return true;
}

std::string escape_label_value(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string escape_help(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v))
    return "NaN";
  if (std::isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc{})
    return "NaN";
  return std::string(buf, p);
}

std::string render_prometheus(std::span<const metric_family> families) {
  std::string out;
  for (auto& f : families) {
    if (!valid_metric_name(f.name)) {
      out += "# skipped a family with an invalid name\n";
      continue;
    }
    out += "# HELP ";
    out += f.name;
    out += ' ';
    out += escape_help(f.help.empty() ? f.name : f.help);
    out += "\n# TYPE ";
    out += f.name;
    out += ' ';
    out += type_name(f.type);
    out += '\n';
    for (auto& s : f.samples) {
      bool ok = true;
      for (auto& [k, v] : s.lbls)
        ok = ok && valid_label_name(k) && !(f.type == metric_type::histogram && k == "le");
      if (!ok) {
        out += "# skipped a sample with an invalid label name\n";
        continue;
      }
      if (f.type != metric_type::histogram) {
        out += f.name;
        put_labels(out, s.lbls);
        out += ' ';
        out += format_value(s.value);
        out += '\n';
        continue;
      }
      // Buckets are cumulative and end with +Inf == count (the format's rule).
      for (size_t i = 0; i < s.bounds.size() && i < s.cumulative.size(); ++i) {
        out += f.name;
        out += "_bucket";
        put_labels(out, s.lbls, "le", format_value(s.bounds[i]));
        out += ' ';
        out += std::to_string(s.cumulative[i]);
        out += '\n';
      }
      out += f.name;
      out += "_bucket";
      put_labels(out, s.lbls, "le", "+Inf");
      out += ' ';
      out += std::to_string(s.count);
      out += '\n';
      out += f.name;
      out += "_sum";
      put_labels(out, s.lbls);
      out += ' ';
      out += format_value(s.sum);
      out += '\n';
      out += f.name;
      out += "_count";
      put_labels(out, s.lbls);
      out += ' ';
      out += std::to_string(s.count);
      out += '\n';
    }
  }
  return out;
}

} // namespace kvmid::control
