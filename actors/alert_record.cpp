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

// Sets field i, reusing the strings already there.
void set_field(bus_record& r, size_t i, std::string_view key, std::string_view value) {
  if (i == r.fields.size())
    r.fields.emplace_back();
  r.fields[i].first.assign(key);
  r.fields[i].second.assign(value);
}

void set_dec_field(bus_record& r, size_t i, std::string_view key, uint64_t v) {
  char b[24];
  auto res = std::to_chars(b, b + sizeof b, v);
  set_field(r, i, key, std::string_view(b, size_t(res.ptr - b)));
}

} // namespace

void fill_alert(bus_record& r, const alert_source& from, const kvmi::event_msg& ev,
                const decision& d) {
  r.kind = bus_kind::alert;
  r.name.assign(d.rule);
  r.vm.assign(from.vm);
  r.vm_name.assign(from.vm_name);
  r.vcpu = from.vcpu;
  r.fields.reserve(4);
  size_t n = 0;
  set_field(r, n++, "rule", d.rule_name);
  set_field(r, n++, "action", kvmi::name(d.act));
  std::string& m = r.message;
  m.clear();
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
      set_dec_field(r, n++, "msr", e.msr);
      set_dec_field(r, n++, "value", e.new_value);
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
      set_dec_field(r, n++, "cr", e.cr);
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
      set_dec_field(r, n++, "gpa", e.gpa);
      set_dec_field(r, n++, "access", e.mode);
      break;
    }
    default: m.append("policy violation"); break;
  }
  r.fields.resize(n);
}

bus_record alert_record(const alert_source& from, const kvmi::event_msg& ev, const decision& d) {
  bus_record r;
  fill_alert(r, from, ev, d);
  return r;
}

} // namespace kvmid
