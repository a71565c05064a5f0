#include "actors/alert_record.hpp"

#include <charconv>

namespace kvmid {

namespace {

void append_dec(std::string& s, uint64_t v) {
  char b[24];
  auto r = std::to_chars(b, b + sizeof b, v);
  s.append(b, r.ptr);
}

void append_hex(std::string& s, uint64_t v) {
  char b[24];
  auto r = std::to_chars(b, b + sizeof b, v, 16);
  s.append("0x").append(b, r.ptr);
}

std::string dec(uint64_t v) {
  std::string s;
  append_dec(s, v);
  return s;
}

} // namespace

bus_record alert_record(const alert_source& from, const kvmi::event_msg& ev, const decision& d) {
  bus_record r;
  r.kind = bus_kind::alert;
  r.name = std::string(d.rule);
  r.vm = from.vm;
  r.vm_name = from.vm_name;
  r.vcpu = from.vcpu;
  r.fields.reserve(4);
  r.fields.emplace_back("rule", std::string(d.rule_name));
  r.fields.emplace_back("action", std::string(kvmi::name(d.act)));
  std::string& m = r.message;
  m.reserve(80);
  switch (ev.kind()) {
    case kvmi::event_id::msr: {
      auto& e = std::get<kvmi::event_msr>(ev.data);
      m.append("denied write of MSR ");
      append_hex(m, e.msr);
      m.append(" (");
      append_hex(m, e.old_value);
      m.append(" -> ");
      append_hex(m, e.new_value);
      m.append(")");
      r.fields.emplace_back("msr", dec(e.msr));
      r.fields.emplace_back("value", dec(e.new_value));
      break;
    }
    case kvmi::event_id::cr: {
      auto& e = std::get<kvmi::event_cr>(ev.data);
      m.append("CR");
      append_dec(m, e.cr);
      m.append(" write ");
      append_hex(m, e.new_value);
      m.append(" would clear pinned bits; forced ");
      append_hex(m, d.new_val);
      r.fields.emplace_back("cr", dec(e.cr));
      break;
    }
    case kvmi::event_id::pf: {
      auto& e = std::get<kvmi::event_pf>(ev.data);
      m.append("access ");
      append_hex(m, e.mode);
      m.append(" to protected gpa ");
      append_hex(m, e.gpa);
      m.append(" (gva ");
      append_hex(m, e.gva);
      m.append(")");
      r.fields.emplace_back("gpa", dec(e.gpa));
      r.fields.emplace_back("access", dec(e.mode));
      break;
    }
    default: m.append("policy violation"); break;
  }
  return r;
}

} // namespace kvmid
