// Raw event records carry the event's data in hex, not only its RIP.
#include "actors/event_fields.hpp"

#include <doctest/doctest.h>

#include <map>

using namespace kvmid;

namespace {
std::map<std::string, std::string> fields_of(const kvmi::event_msg& ev) {
  auto f = event_fields(ev);
  return {f.begin(), f.end()};
}
} // namespace

TEST_CASE("raw event records carry the data of their kind in hex") {
  kvmi::event_msg ev;
  ev.seq = 42;
  ev.common.regs.rip = 0xffffffff81000010;
  ev.common.event = uint16_t(kvmi::event_id::msr);
  ev.data = kvmi::event_msr{0xc0000082, 0, 0xffffffff81800000, 0xdead0000};
  auto m = fields_of(ev);
  CHECK(m["seq"] == "42");
  CHECK(m["rip"] == "0xffffffff81000010");
  CHECK(m["msr"] == "0xc0000082");
  CHECK(m["old_value"] == "0xffffffff81800000");
  CHECK(m["new_value"] == "0xdead0000");

  ev.data = kvmi::event_pf{0xffff888000300010, 0x300010, kvmi::page_access_w, 0};
  m = fields_of(ev);
  CHECK(m["gpa"] == "0x300010");
  CHECK(m["gva"] == "0xffff888000300010");
  CHECK(m["access"] == "-w-");

  kvmi::event_cr cr{};
  cr.cr = 4;
  cr.old_value = 0x3506f0;
  cr.new_value = 0x2506f0;
  ev.data = cr;
  m = fields_of(ev);
  CHECK(m["cr"] == "4");
  CHECK(m["new_value"] == "0x2506f0");

  ev.data = kvmi::event_breakpoint{0x400010};
  CHECK(fields_of(ev)["gpa"] == "0x400010");
  ev.data = std::monostate{};
  CHECK(event_fields(ev).size() == 2); // seq and rip
}
