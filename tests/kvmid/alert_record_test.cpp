// The alert an operator reads: its line of text and its fields, per kind.
#include "actors/alert_record.hpp"

#include <doctest/doctest.h>

#include <map>

using namespace kvmid;

namespace {

const std::string uuid = "6f1c2a4e-0000-4000-8000-000000000001", vm_name = "web-01";

std::map<std::string, std::string> fields_of(const bus_record& r) {
  return {r.fields.begin(), r.fields.end()};
}

decision denied(std::string_view rule, std::string_view name) {
  decision d;
  d.act = kvmi::action::continue_;
  d.alert = true;
  d.rule = rule;
  d.rule_name = name;
  return d;
}

} // namespace

TEST_CASE("an MSR alert names the MSR and both values in hex") {
  kvmi::event_msg ev;
  ev.common.event = uint16_t(kvmi::event_id::msr);
  ev.data = kvmi::event_msr{0xc0000082, 0, 0xffffffff81800000, 0xdead0000};
  auto r = alert_record({uuid, vm_name, 3}, ev, denied("msr-protection", "lstar"));
  CHECK(r.kind == bus_kind::alert);
  CHECK(r.name == "msr-protection");
  CHECK(r.vm == uuid);
  CHECK(r.vm_name == vm_name);
  CHECK(r.vcpu == 3);
  CHECK(r.message == "denied write of MSR 0xc0000082 (0xffffffff81800000 -> 0xdead0000)");
  auto f = fields_of(r);
  CHECK(f["rule"] == "lstar");
  CHECK(f["action"] == std::string(kvmi::name(kvmi::action::continue_)));
  CHECK(f["msr"] == "3221225602");
  CHECK(f["value"] == "3735879680");
  CHECK(r.fields.size() == 4);
}

TEST_CASE("a CR alert names the register, the write and the forced value") {
  kvmi::event_msg ev;
  ev.common.event = uint16_t(kvmi::event_id::cr);
  kvmi::event_cr cr{};
  cr.cr = 4;
  cr.old_value = 0x3506f0;
  cr.new_value = 0x2506f0;
  ev.data = cr;
  auto d = denied("cr-pin", "cr4.smep");
  d.new_val = 0x3506f0;
  auto r = alert_record({uuid, vm_name, 0}, ev, d);
  CHECK(r.message == "CR4 write 0x2506f0 would clear pinned bits; forced 0x3506f0");
  CHECK(fields_of(r)["cr"] == "4");
  CHECK(r.fields.size() == 3);
}

TEST_CASE("a page alert names the access, the gpa and the gva") {
  kvmi::event_msg ev;
  ev.common.event = uint16_t(kvmi::event_id::pf);
  ev.data = kvmi::event_pf{0xffff888000300010, 0x300010, kvmi::page_access_w, 0};
  auto r = alert_record({uuid, vm_name, 1}, ev, denied("page-protection", "kernel-text"));
  CHECK(r.message == "access 0x2 to protected gpa 0x300010 (gva 0xffff888000300010)");
  auto f = fields_of(r);
  CHECK(f["gpa"] == "3145744");
  CHECK(f["access"] == "2");
  CHECK(f["rule"] == "kernel-text");
}

TEST_CASE("any other kind is a plain policy violation") {
  kvmi::event_msg ev;
  ev.common.event = uint16_t(kvmi::event_id::breakpoint);
  kvmi::event_breakpoint bp{};
  bp.gpa = 0x1000;
  ev.data = bp;
  auto r = alert_record({uuid, vm_name, 0}, ev, denied("breakpoint", "bp"));
  CHECK(r.message == "policy violation");
  CHECK(r.fields.size() == 2);
}

TEST_CASE("an alert filled over an older record is the alert alone, with nothing of the old one") {
  kvmi::event_msg msr;
  msr.common.event = uint16_t(kvmi::event_id::msr);
  msr.data = kvmi::event_msr{0xc0000082, 0, 0xffffffff81800000, 0xdead0000};
  kvmi::event_msg bp;
  bp.common.event = uint16_t(kvmi::event_id::breakpoint);
  bp.data = kvmi::event_breakpoint{};
  // The bus reuses its replay slots: a short alert over a long one, and a
  // long one over a short one, must each read as if built afresh.
  bus_record slot;
  slot.fields.emplace_back("extra", "a value longer than any small-string buffer");
  fill_alert(slot, {uuid, vm_name, 3}, msr, denied("msr-protection", "lstar"));
  CHECK(slot.message == alert_record({uuid, vm_name, 3}, msr, denied("msr-protection", "lstar")).message);
  CHECK(slot.fields == alert_record({uuid, vm_name, 3}, msr, denied("msr-protection", "lstar")).fields);
  fill_alert(slot, {"other-uuid", "db", 7}, bp, denied("breakpoint", "bp"));
  auto fresh = alert_record({"other-uuid", "db", 7}, bp, denied("breakpoint", "bp"));
  CHECK(slot.name == fresh.name);
  CHECK(slot.vm == "other-uuid");
  CHECK(slot.vm_name == "db");
  CHECK(slot.vcpu == 7);
  CHECK(slot.message == "policy violation");
  CHECK(slot.fields == fresh.fields);
  CHECK(slot.fields.size() == 2);
}

TEST_CASE("alerts published in place reach subscribers and the replay ring in order") {
  event_bus bus(nullptr, 2);
  auto live = bus.subscribe(bus_filter{}, 100);
  kvmi::event_msg msr;
  msr.common.event = uint16_t(kvmi::event_id::msr);
  for (uint64_t v = 1; v <= 5; ++v) {
    msr.data = kvmi::event_msr{0xc0000082, 0, v, v};
    bus.publish_filled(bus_kind::alert, [&](bus_record& r) {
      fill_alert(r, {uuid, vm_name, uint16_t(v)}, msr, denied("msr-protection", "lstar"));
    });
  }
  std::vector<bus_record> got;
  REQUIRE(live->poll(got) == 5);
  for (size_t i = 0; i < 5; ++i) {
    CHECK(got[i].seq == i + 1);
    CHECK(got[i].vcpu == int32_t(i + 1));
    CHECK(got[i].time_ns > 0);
    CHECK(fields_of(got[i])["value"] == std::to_string(i + 1));
  }
  // The ring of 2 kept the last two, whole.
  auto late = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), 0});
  got.clear();
  REQUIRE(late->poll(got) == 2);
  CHECK(got[0].seq == 4);
  CHECK(fields_of(got[0])["value"] == "4");
  CHECK(got[1].seq == 5);
  CHECK(got[1].message == "denied write of MSR 0xc0000082 (0x5 -> 0x5)");
}
