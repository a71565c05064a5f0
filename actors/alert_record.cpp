#include "actors/alert_record.hpp"

#include <charconv>

namespace kvmid {

namespace {

// A number as the message shows it: 0x-prefixed hex, or decimal.
struct hex {
  uint64_t v;
};
struct dec {
  uint64_t v;
};

void append_part(std::string& s, std::string_view text) { s.append(text); }
void append_part(std::string& s, hex h) {
  char b[24];
  auto r = std::to_chars(b, b + sizeof b, h.v, 16);
  s.append("0x").append(b, r.ptr);
}
void append_part(std::string& s, dec d) {
  char b[24];
  auto r = std::to_chars(b, b + sizeof b, d.v);
  s.append(b, r.ptr);
}

// The message, part after part.
template <class... Parts>
void append(std::string& s, Parts... parts) {
  (append_part(s, parts), ...);
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
      append(m, "denied write of MSR ", hex{e.msr}, " (", hex{e.old_value}, " -> ",
             hex{e.new_value}, ")");
      set_dec_field(r, n++, "msr", e.msr);
      set_dec_field(r, n++, "value", e.new_value);
      break;
    }
    case kvmi::event_id::cr: {
      auto& e = std::get<kvmi::event_cr>(ev.data);
      append(m, "CR", dec{e.cr}, " write ", hex{e.new_value}, " would clear pinned bits; forced ",
             hex{d.new_val});
      set_dec_field(r, n++, "cr", e.cr);
      break;
    }
    case kvmi::event_id::pf: {
      auto& e = std::get<kvmi::event_pf>(ev.data);
      append(m, "access ", hex{e.mode}, " to protected gpa ", hex{e.gpa}, " (gva ", hex{e.gva}, ")");
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
