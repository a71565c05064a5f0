#include "server/control/audit.hpp"

#include "server/control/encoding.hpp"

#include <cstdio>

namespace kvmid::control {

namespace {

// 8-4-4-4-12 hex digits: how the core spells a VM's uuid.
bool looks_like_uuid(std::string_view s) {
  if (s.size() != 36)
    return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-') || (!dash && hexval(s[i]) < 0))
      return false;
  }
  return true;
}

// A VM name comes from the client's (percent-decoded) path: keep the log
// line one line of key=value words.
std::string log_safe(std::string_view v) {
  std::string out;
  for (unsigned char c : v) {
    if (c <= 0x20 || c == 0x7f || c == '=' || c == '%') {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> fields_of(const audit_entry& e) {
  std::vector<std::pair<std::string, std::string>> f = {
    {"role", std::string(name(e.who))}, {"peer", e.peer}, {"method", e.method},
    {"route", e.route}};
  if (!e.vm.empty())
    f.emplace_back("vm", e.vm);
  if (e.vcpu >= 0)
    f.emplace_back("vcpu", std::to_string(e.vcpu));
  if (e.gpa)
    f.emplace_back("gpa", hex_u64(*e.gpa));
  if (e.len)
    f.emplace_back("len", std::to_string(*e.len));
  f.insert(f.end(), e.details.begin(), e.details.end());
  f.emplace_back("status", std::to_string(e.status));
  return f;
}

} // namespace

bus_record to_record(const audit_entry& e) {
  bus_record r;
  r.kind = bus_kind::lifecycle;
  r.name = "api-call";
  (looks_like_uuid(e.vm) ? r.vm : r.vm_name) = e.vm;
  r.vcpu = e.vcpu;
  r.message = e.method + " " + e.route + " by the " + std::string(name(e.who)) + " token from "
              + e.peer + ": " + std::to_string(e.status);
  r.fields = fields_of(e);
  return r;
}

std::string log_line(const audit_entry& e) {
  std::string s = "kvmid: api-call";
  for (auto& [k, v] : fields_of(e)) {
    s += ' ';
    s += k;
    s += '=';
    s += log_safe(v);
  }
  return s;
}

} // namespace kvmid::control
