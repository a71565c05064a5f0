#include "actors/event_fields.hpp"

#include "proto/overloaded.hpp"

#include <cstdio>

namespace kvmid {

std::string hex_value(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

std::vector<std::pair<std::string, std::string>> event_fields(const kvmi::event_msg& ev) {
  std::vector<std::pair<std::string, std::string>> f;
  f.emplace_back("seq", std::to_string(ev.seq));
  f.emplace_back("rip", hex_value(ev.common.regs.rip));
  std::visit(kvmi::overloaded{
               [](std::monostate) {},
               [&](const kvmi::event_cr& e) {
                 f.emplace_back("cr", std::to_string(e.cr));
                 f.emplace_back("old_value", hex_value(e.old_value));
                 f.emplace_back("new_value", hex_value(e.new_value));
               },
               [&](const kvmi::event_msr& e) {
                 f.emplace_back("msr", hex_value(e.msr));
                 f.emplace_back("old_value", hex_value(e.old_value));
                 f.emplace_back("new_value", hex_value(e.new_value));
               },
               [&](const kvmi::event_breakpoint& e) { f.emplace_back("gpa", hex_value(e.gpa)); },
               [&](const kvmi::event_pf& e) {
                 f.emplace_back("gpa", hex_value(e.gpa));
                 f.emplace_back("gva", hex_value(e.gva));
                 f.emplace_back("access", std::string(kvmi::access_name(uint8_t(e.mode))));
               },
               [&](const kvmi::event_trap& e) {
                 f.emplace_back("vector", std::to_string(e.vector));
                 f.emplace_back("error_code", hex_value(e.error_code));
                 f.emplace_back("cr2", hex_value(e.cr2));
               },
               [&](const kvmi::event_descriptor& e) {
                 f.emplace_back("descriptor", std::to_string(e.descriptor));
                 f.emplace_back("write", e.write ? "true" : "false");
               },
             },
             ev.data);
  return f;
}

} // namespace kvmid
