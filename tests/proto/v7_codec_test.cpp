// KVMI v7 dialect codec tests: the id and size tables, round trips of every
// message kind in both byte orders, the vCPU header, the event reply size
// rule, every check() rule, and decode's answer to bad input.
#include "proto/v7/codec.hpp"
#include "tests/support/kvmi_v7_samples.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>

using namespace kvmi::v7;
using namespace kvmi::v7::testing;
using kvmi::byte_order;
using kvmi::errc;
using kvmi::page_access_r;
using kvmi::page_access_rwx;
using kvmi::page_access_w;
namespace v7 = kvmi::v7;
using kvmi::testing::bytes_of;
using kvmi::testing::padding_mask;
using kvmi::testing::same_bytes;

namespace {

constexpr byte_order orders[] = {byte_order::native, byte_order::swapped};

kvmi::msg_hdr header_of(const std::vector<uint8_t>& b, byte_order o) {
  kvmi::msg_hdr h;
  std::memcpy(&h, b.data(), sizeof h);
  kvmi::to_order(h, o);
  return h;
}

kvmi::frame frame_of(const std::vector<uint8_t>& b, byte_order o = byte_order::native) {
  auto f = kvmi::parse_frame(b, o, max_payload);
  REQUIRE(f.ok());
  return *f;
}

errc tool_err(const std::vector<uint8_t>& b) {
  return v7::decode_from_tool(std::span<const uint8_t>(b)).err().code;
}

// The payload a command carries natively: the vCPU header, then the struct
// (and its array) exactly as it lies in memory.
std::vector<uint8_t> raw_payload(const command_msg& m) {
  std::vector<uint8_t> p;
  auto add = [&](std::span<const uint8_t> b) { p.insert(p.end(), b.begin(), b.end()); };
  if (scope_of(id_of(m.body)) == scope::vcpu) {
    vcpu_hdr h{m.vcpu, 0, 0};
    add(bytes_of(h));
  }
  std::visit(
    [&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (requires { x.req; }) {
        add(bytes_of(x.req));
        auto arr = [&](const auto& v) {
          add({reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0])});
        };
        if constexpr (requires { x.msrs_idx; })
          arr(x.msrs_idx);
        else if constexpr (requires { x.entries; })
          arr(x.entries);
        else if constexpr (requires { x.data; })
          arr(x.data);
        else
          arr(x.gpa);
      } else if constexpr (!std::is_empty_v<T>) {
        add(bytes_of(x));
      }
    },
    m.body);
  return p;
}

std::vector<uint8_t> resized(std::vector<uint8_t> b, int delta) {
  uint16_t size;
  std::memcpy(&size, b.data() + 2, 2);
  size = static_cast<uint16_t>(size + delta);
  std::memcpy(b.data() + 2, &size, 2);
  b.resize(b.size() + delta, 0);
  return b;
}

} // namespace

// --- tables ---------------------------------------------------------------------

TEST_CASE("v7: message ids and scopes are the v7 table's") {
  struct row {
    msg_id id;
    uint16_t value;
    scope s;
    bool supported;
  };
  const row rows[] = {
    {msg_id::event_reply, 0, scope::vcpu, false},
    {msg_id::event, 1, scope::none, false},
    {msg_id::get_version, 2, scope::vm, true},
    {msg_id::check_command, 3, scope::vm, true},
    {msg_id::check_event, 4, scope::vm, true},
    {msg_id::get_guest_info, 5, scope::vm, true},
    {msg_id::get_vcpu_info, 6, scope::vcpu, true},
    {msg_id::pause_vcpu, 7, scope::vcpu, true},
    {msg_id::control_vm_events, 8, scope::vm, true},
    {msg_id::control_events, 9, scope::vcpu, true},
    {msg_id::control_cr, 10, scope::vcpu, true},
    {msg_id::control_msr, 11, scope::vcpu, true},
    {msg_id::control_ve, 12, scope::none, false},
    {msg_id::get_registers, 13, scope::vcpu, true},
    {msg_id::set_registers, 14, scope::vcpu, true},
    {msg_id::get_cpuid, 15, scope::vcpu, true},
    {msg_id::get_xsave, 16, scope::vcpu, true},
    {msg_id::read_physical, 17, scope::vm, true},
    {msg_id::write_physical, 18, scope::vm, true},
    {msg_id::inject_exception, 19, scope::vcpu, true},
    {msg_id::get_page_access, 20, scope::vm, true},
    {msg_id::set_page_access, 21, scope::vm, true},
    {msg_id::get_map_token, 22, scope::vm, true},
    {msg_id::get_mtrr_type, 23, scope::vcpu, false},
    {msg_id::control_spp, 24, scope::vm, false},
    {msg_id::get_page_write_bitmap, 25, scope::vm, false},
    {msg_id::set_page_write_bitmap, 26, scope::vm, false},
    {msg_id::control_cmd_response, 27, scope::vm, true},
    {msg_id::set_ve_info_page, 28, scope::vcpu, false},
    {msg_id::get_max_gfn, 29, scope::vm, true},
    {msg_id::get_next_available_gfn, 31, scope::vm, false},
    {msg_id::switch_ept_view, 32, scope::vcpu, false},
    {msg_id::disable_ve, 33, scope::vcpu, false},
    {msg_id::get_ept_view, 34, scope::vcpu, false},
    {msg_id::vcpu_translate_gva, 35, scope::vcpu, false},
    {msg_id::control_ept_view, 36, scope::vcpu, false},
    {msg_id::vcpu_get_xcr, 37, scope::vcpu, false},
    {msg_id::vcpu_set_xsave, 38, scope::vcpu, false},
    {msg_id::query_physical, 39, scope::vm, false},
    {msg_id::vcpu_alloc_gfn, 41, scope::vcpu, false},
    {msg_id::vcpu_free_gfn, 42, scope::vcpu, false},
    {msg_id::create_ept_view, 43, scope::vm, false},
    {msg_id::destroy_ept_view, 44, scope::vm, false},
    {msg_id::vcpu_change_gfn, 60, scope::vcpu, false},
    {msg_id::vcpu_control_singlestep, 63, scope::vcpu, true},
  };
  REQUIRE(std::size(rows) == std::size(all_msg_ids));
  std::set<std::string_view> names;
  size_t supported = 0;
  for (size_t i = 0; i < std::size(rows); ++i) {
    CAPTURE(name(rows[i].id));
    CHECK(all_msg_ids[i] == rows[i].id);
    CHECK(static_cast<uint16_t>(rows[i].id) == rows[i].value);
    CHECK(scope_of(rows[i].id) == rows[i].s);
    CHECK(is_supported(rows[i].id) == rows[i].supported);
    CHECK(is_known(rows[i].id));
    CHECK(names.insert(name(rows[i].id)).second);
    supported += rows[i].supported;
  }
  CHECK(supported == std::variant_size_v<command>);
  CHECK(num_messages == 64);
  for (uint16_t v : {30, 40, 45, 59, 61, 62, 64, 0xffff})
    CHECK_FALSE(is_known(static_cast<msg_id>(v)));
  CHECK(msg_size == 8184);
  CHECK(max_frame == 8192);
}

TEST_CASE("v7: event ids keep 0..10 and add SINGLESTEP 11 and CPUID 13 but not CMD_ERROR 12") {
  const std::map<std::string_view, int> want = {
    {"unhook", 0},      {"cr", 1},          {"msr", 2},         {"xsetbv", 3},
    {"breakpoint", 4},  {"hypercall", 5},   {"pf", 6},          {"trap", 7},
    {"descriptor", 8},  {"create_vcpu", 9}, {"pause_vcpu", 10}, {"singlestep", 11},
    {"cpuid", 13},
  };
  REQUIRE(std::size(all_event_ids) == want.size());
  for (auto e : all_event_ids) {
    CAPTURE(name(e));
    REQUIRE(want.count(name(e)) == 1);
    CHECK(want.at(name(e)) == static_cast<int>(e));
  }
  CHECK(kernel_only_cmd_error_event == 12);
  CHECK_FALSE(is_known(static_cast<event_id>(12)));
  CHECK(name(static_cast<event_id>(12)) == "unknown");
  CHECK(num_events == 14);
  CHECK(is_vm_event(event_id::unhook));
  CHECK(is_vm_event(event_id::create_vcpu));
  CHECK_FALSE(is_vm_event(event_id::pause_vcpu));
}

TEST_CASE("v7: event and event reply sizes are the table's") {
  const std::map<event_id, int> specific = {
    {event_id::cr, 24},        {event_id::msr, 24},       {event_id::breakpoint, 16},
    {event_id::pf, 24},        {event_id::trap, 16},      {event_id::descriptor, 8},
    {event_id::singlestep, 8}, {event_id::cpuid, 16},
  };
  for (auto e : all_event_ids) {
    CAPTURE(name(e));
    int extra = specific.count(e) ? specific.at(e) : 0;
    CHECK(event_size(e) == 544 + extra);
    int reply = e == event_id::cr || e == event_id::msr ? 24 : e == event_id::pf ? 288 : 16;
    CHECK(event_reply_size(e) == reply);
  }
}

// --- round trips ----------------------------------------------------------------

TEST_CASE("v7: every command round-trips through encode and decode_from_tool in both orders") {
  auto cmds = sample_commands();
  REQUIRE(cmds.size() == std::variant_size_v<command>);
  std::set<size_t> kinds;
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto& c : cmds) {
      CAPTURE(name(id_of(c.body)));
      CAPTURE(o == byte_order::native);
      kinds.insert(c.body.index());
      REQUIRE(check(c).ok());
      encode(buf, c, o);
      auto h = header_of(buf, o);
      CHECK(h.id == static_cast<uint16_t>(id_of(c.body)));
      CHECK(h.seq == c.seq);
      CHECK(h.size == buf.size() - sizeof(kvmi::msg_hdr));
      if (o == byte_order::native) {
        auto raw = raw_payload(c);
        CHECK(std::equal(buf.begin() + 8, buf.end(), raw.begin(), raw.end()));
      }
      auto d = v7::decode_from_tool(std::span<const uint8_t>(buf), o);
      REQUIRE(d.ok());
      auto* cm = std::get_if<command_msg>(&*d);
      REQUIRE(cm != nullptr);
      CHECK(cm->seq == c.seq);
      CHECK(cm->vcpu == c.vcpu);
      CHECK(cm->body.index() == c.body.index());
      CHECK(check(*cm).ok());
      CHECK(raw_payload(*cm) == raw_payload(c));
    }
  }
  CHECK(kinds.size() == std::variant_size_v<command>);
}

TEST_CASE("v7: a vCPU command is kvmi_vcpu_hdr then its struct as libkvmi writes it") {
  std::vector<uint8_t> buf;
  encode(buf, command_msg{0x01020304, 0x0506,
                          control_events{static_cast<uint16_t>(event_id::pf), 1, 0, 0}});
  const std::vector<uint8_t> want = {
    9, 0, 16, 0, 0x04, 0x03, 0x02, 0x01, // hdr: id 9, size 16, seq
    0x06, 0x05, 0, 0, 0, 0, 0, 0,        // kvmi_vcpu_hdr
    6, 0, 1, 0, 0, 0, 0, 0,              // event_id 6, enable 1
  };
  CHECK(buf == want);
  // SET_PAGE_ACCESS is a VM command in v7: no vCPU header.
  set_page_access_cmd spa{{3, 1, 0}, {{0x5000, page_access_r, 0, 0, 0}}};
  encode(buf, command_msg{1, 0, spa});
  CHECK(buf.size() == 8 + 8 + 16);
  CHECK(buf[8] == 3); // view first
  // A VM command naming a vCPU is refused: the wire has no place for it.
  CHECK(check(command_msg{1, 2, spa}).code == errc::bad_vcpu);
  // A vCPU command shorter than its vCPU header.
  std::vector<uint8_t> shorty = {static_cast<uint8_t>(msg_id::get_vcpu_info), 0, 4, 0, 1, 0, 0, 0,
                                 0, 0, 0, 0};
  CHECK(tool_err(shorty) == errc::bad_size);
}

TEST_CASE("v7: every event round-trips through encode and decode_event in both orders") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto e : all_event_ids) {
      CAPTURE(name(e));
      auto m = sample_event(e);
      REQUIRE(check(m).ok());
      encode(buf, m, o);
      CHECK(header_of(buf, o).size == event_size(e));
      CHECK(header_of(buf, o).id == static_cast<uint16_t>(msg_id::event));
      if (o == byte_order::native) {
        CHECK(buf[8] == 0x20); // size 544 = 0x220, first
        CHECK(buf[9] == 0x02);
        CHECK(buf[8 + 4] == static_cast<uint8_t>(e));
      }
      auto d = v7::decode_event(frame_of(buf, o), o);
      REQUIRE(d.ok());
      CHECK(same_bytes(d->common, m.common));
      CHECK(d->data.index() == m.data.index());
      CHECK(check(*d).ok());
    }
  }
}

TEST_CASE("v7: decode_event refuses CMD_ERROR and a common part that is not 544 bytes") {
  std::vector<uint8_t> buf;
  auto m = sample_event(event_id::pause_vcpu);
  encode(buf, m);
  auto cmd_error = buf;
  cmd_error[8 + 4] = kernel_only_cmd_error_event;
  auto e = v7::decode_event(frame_of(cmd_error));
  CHECK(e.err().code == errc::unknown_event);
  CHECK(e.err().reason.find("kernel branch") != std::string_view::npos);
  auto other_size = buf;
  other_size[8] = 0x28; // 552
  CHECK(v7::decode_event(frame_of(other_size)).err().code == errc::bad_size);
  m.common.size = 536;
  CHECK(check(m).code == errc::bad_size);
  auto unknown = buf;
  unknown[8 + 4] = 14;
  CHECK(v7::decode_event(frame_of(unknown)).err().code == errc::unknown_event);
}

TEST_CASE("v7: every event reply round-trips in both orders at its full size") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto e : all_event_ids) {
      CAPTURE(name(e));
      auto r = sample_event_reply(e);
      REQUIRE(check(r).ok());
      encode(buf, r, o);
      CHECK(header_of(buf, o).size == event_reply_size(e));
      auto d = v7::decode_from_tool(std::span<const uint8_t>(buf), o);
      REQUIRE(d.ok());
      auto* m = std::get_if<event_reply_msg>(&*d);
      REQUIRE(m != nullptr);
      CHECK(m->seq == r.seq);
      CHECK(m->vcpu == r.vcpu);
      CHECK(m->wire_size == 0);
      CHECK(same_bytes(m->common, r.common));
      CHECK(m->extra.index() == r.extra.index());
      std::vector<uint8_t> again;
      encode(again, *m, o);
      CHECK(again == buf);
    }
  }
}

TEST_CASE("v7: a smaller event reply is zero-filled and a larger one refused") {
  std::vector<uint8_t> full;
  auto r = sample_event_reply(event_id::pf);
  encode(full, r);
  REQUIRE(full.size() == 8 + 288);
  // Down to the 16 bytes of vCPU header and common part: accepted.
  for (int cut : {1, 100, 256, 272}) {
    CAPTURE(cut);
    auto shorter = resized(full, -cut);
    auto d = v7::decode_from_tool(std::span<const uint8_t>(shorter));
    REQUIRE(d.ok());
    auto& m = std::get<event_reply_msg>(*d);
    CHECK(m.wire_size == 288 - cut);
    auto& pf = std::get<event_pf_reply>(m.extra);
    // What did not arrive reads as zero.
    std::vector<uint8_t> got(sizeof pf);
    std::memcpy(got.data(), &pf, sizeof pf);
    size_t arrived = 288 - cut - 16;
    CHECK(std::equal(got.begin(), got.begin() + arrived, full.begin() + 8 + 16));
    CHECK(std::all_of(got.begin() + arrived, got.end(), [](uint8_t b) { return b == 0; }));
    std::vector<uint8_t> again;
    encode(again, m);
    CHECK(again == shorter);
  }
  CHECK(tool_err(resized(full, -273)) == errc::bad_size); // 15 bytes: no common part
  CHECK(tool_err(resized(full, 1)) == errc::bad_size);
  std::vector<uint8_t> cr;
  encode(cr, sample_event_reply(event_id::cr));
  CHECK(tool_err(resized(cr, 1)) == errc::bad_size);
  CHECK(tool_err(resized(cr, -8)) == errc::ok);
  std::vector<uint8_t> pause;
  encode(pause, sample_event_reply(event_id::pause_vcpu));
  CHECK(tool_err(resized(pause, 8)) == errc::bad_size);
  // check(): a short reply keeps its headers and is never longer than full.
  r.wire_size = 15;
  CHECK(check(r).code == errc::bad_size);
  r.wire_size = 289;
  CHECK(check(r).code == errc::bad_size);
  r.wire_size = 16;
  CHECK(check(r).ok());
}

TEST_CASE("v7: every command reply round-trips through decode_reply in both orders") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto& c : sample_commands()) {
      CAPTURE(name(id_of(c.body)));
      auto r = sample_reply(c.body, c.seq);
      REQUIRE(check(r).ok());
      encode(buf, r, o);
      auto shape = expected_reply(c.body);
      CHECK(header_of(buf, o).size == 8 + shape.size);
      auto d = decode_reply(frame_of(buf, o), shape, o);
      REQUIRE(d.ok());
      CHECK(d->data.index() == r.data.index());
      CHECK(check(*d).ok());
      std::vector<uint8_t> again;
      encode(again, *d, o);
      CHECK(again == buf);
      // A failed reply is the error code alone.
      reply_msg failed{r.id, r.seq, -kvmi::kvm_einval, {}};
      CHECK(check(failed).ok());
      encode(buf, failed, o);
      CHECK(header_of(buf, o).size == 8);
      CHECK(decode_reply(frame_of(buf, o), shape, o)->err == -kvmi::kvm_einval);
    }
  }
}

TEST_CASE("v7: GET_VERSION replies of 16 bytes carry features and 8-byte ones read as none") {
  std::vector<uint8_t> buf;
  reply_shape shape = expected_reply(get_version{});
  CHECK(shape.size == 16);
  reply_msg full{msg_id::get_version, 5, 0, version_reply{{1, 0, {1, 0, 1, 1, {}}}, true}};
  encode(buf, full);
  CHECK(buf.size() == 8 + 8 + 16);
  auto d = decode_reply(frame_of(buf), shape);
  REQUIRE(d.ok());
  auto& v = std::get<version_reply>(d->data);
  CHECK(v.has_features);
  CHECK(v.fixed.features.spp == 1);
  CHECK(v.fixed.features.ve == 1);
  reply_msg old{msg_id::get_version, 6, 0, version_reply{{1, 0, {}}, false}};
  CHECK(check(old).ok());
  encode(buf, old);
  CHECK(buf.size() == 8 + 8 + 8);
  d = decode_reply(frame_of(buf), shape);
  REQUIRE(d.ok());
  CHECK_FALSE(std::get<version_reply>(d->data).has_features);
  CHECK(std::get<version_reply>(d->data).fixed.version == 1);
  // Any other size is wrong.
  CHECK(decode_reply(frame_of(resized(buf, 4)), shape).err().code == errc::bad_size);
  // A short reply claiming features it cannot carry.
  old.data = version_reply{{1, 0, {1, 0, 0, 0, {}}}, false};
  CHECK(check(old).code == errc::bad_size);
}

// --- check() rules ----------------------------------------------------------------

TEST_CASE("v7 check: CONTROL_EVENTS and CONTROL_VM_EVENTS take one id of their scope") {
  auto ev = [](event_id e, uint8_t enable = 1) {
    return command_msg{1, 0, control_events{static_cast<uint16_t>(e), enable, 0, 0}};
  };
  auto vm = [](uint16_t e, uint8_t enable = 1) {
    return command_msg{1, 0, control_vm_events{e, enable, 0, 0}};
  };
  for (auto e : all_event_ids) {
    CAPTURE(name(e));
    CHECK(check(ev(e)).ok() == !is_vm_event(e));
    CHECK(check(vm(static_cast<uint16_t>(e))).ok() == is_vm_event(e));
  }
  CHECK(check(ev(static_cast<event_id>(12))).code == errc::unknown_event);
  CHECK(check(vm(0x109)).code == errc::unknown_event); // not truncated to 9
  CHECK(check(command_msg{1, 0, control_events{0x10a, 1, 0, 0}}).code == errc::unknown_event);
  CHECK(check(ev(event_id::pf, 2)).code == errc::bad_value);
  CHECK(check(vm(9, 0)).ok());
  CHECK(check(command_msg{1, 0, control_events{6, 1, 1, 0}}).code == errc::bad_padding);
}

TEST_CASE("v7 check: CR MSR singlestep pause and batching flags") {
  auto c = [](auto x) { return check(command_msg{1, 0, x}).code; };
  CHECK(c(control_cr{1, 0, 0, 4}) == errc::ok);
  CHECK(c(control_cr{1, 0, 0, 2}) == errc::bad_cr);
  CHECK(c(control_cr{2, 0, 0, 0}) == errc::bad_value);
  CHECK(c(control_msr{0, 0, 0, 0x1fff}) == errc::ok);
  CHECK(c(control_msr{0, 0, 0, 0x2000}) == errc::bad_msr);
  CHECK(c(control_msr{0, 0, 1, 0x10}) == errc::bad_padding);
  CHECK(c(vcpu_control_singlestep{0, {}}) == errc::ok);
  CHECK(c(vcpu_control_singlestep{2, {}}) == errc::bad_value);
  CHECK(c(vcpu_control_singlestep{1, {0, 0, 0, 0, 0, 0, 1}}) == errc::bad_padding);
  CHECK(c(pause_vcpu{0, 0, 0, 0}) == errc::ok);
  CHECK(c(pause_vcpu{2, 0, 0, 0}) == errc::bad_value);
  CHECK(c(pause_vcpu{1, 0, 0, 1}) == errc::bad_padding);
  CHECK(c(control_cmd_response{1, 1, 0, 0}) == errc::ok);
  CHECK(c(control_cmd_response{2, 1, 0, 0}) == errc::bad_value);
  CHECK(c(control_cmd_response{1, 2, 0, 0}) == errc::bad_value);
  CHECK(c(control_cmd_response{0, 0, 1, 0}) == errc::bad_padding);
  CHECK(c(check_command{3, 1, 0}) == errc::bad_padding);
  CHECK(c(check_event{13, 0, 1}) == errc::bad_padding);
}

TEST_CASE("v7 check: INJECT_EXCEPTION physical ranges and page access") {
  auto c = [](auto x) { return check(command_msg{1, 0, x}).code; };
  CHECK(c(inject_exception{31, 0, 0, 0xffffffff, 0}) == errc::ok);
  CHECK(c(inject_exception{32, 0, 0, 0, 0}) == errc::bad_value);
  CHECK(c(inject_exception{3, 1, 0, 0, 0}) == errc::bad_padding);
  CHECK(c(read_physical{0x1000, 4096}) == errc::ok);
  CHECK(c(read_physical{0x1001, 4096}) == errc::bad_range);
  CHECK(c(read_physical{0x1000, 0}) == errc::bad_range);
  CHECK(c(write_physical_cmd{{0x10, 2}, {1}}) == errc::bad_size);
  set_page_access_cmd spa{{7, 1, 0}, {{0x1000, page_access_rwx, 0, 0, 0}}};
  CHECK(c(spa) == errc::ok); // any view
  spa.entries[0].access = page_access_sve;
  CHECK(c(spa) == errc::unknown_access_bits);
  spa.entries[0] = {0x1000, 0, 0, 1, 0};
  CHECK(c(spa) == errc::bad_padding);
  spa.req.count = 2;
  CHECK(c(spa) == errc::bad_size);
  get_page_access_cmd gpa{{9, 1, 0}, {0x2000}};
  CHECK(c(gpa) == errc::ok);
  gpa.req.padding = 1;
  CHECK(c(gpa) == errc::bad_padding);
  // Within KVMI_MSG_SIZE: 8 + 16 * 511 fits in 8184, 512 entries do not.
  set_page_access_cmd big{{0, 511, 0}, std::vector<page_access_entry>(511)};
  CHECK(c(big) == errc::ok);
  big.req.count = 512;
  big.entries.resize(512);
  CHECK(c(big) == errc::oversize);
  get_registers_cmd regs{{481, 0, 0}, std::vector<uint32_t>(481)}; // 8+472+16*481 = 8176
  CHECK(c(regs) == errc::ok);
  regs.req.nmsrs = 482;
  regs.msrs_idx.resize(482);
  CHECK(c(regs) == errc::oversize);
}

TEST_CASE("v7 check: event replies name a known event an allowed action and the right data") {
  auto r = sample_event_reply(event_id::cr);
  CHECK(check(r).ok());
  r.common.action = static_cast<uint8_t>(kvmi::action::retry);
  CHECK(check(r).code == errc::bad_action);
  r.common.action = 3;
  CHECK(check(r).code == errc::bad_action);
  r = sample_event_reply(event_id::cr);
  r.extra = event_msr_reply{1};
  CHECK(check(r).code == errc::bad_size);
  r = sample_event_reply(event_id::pf);
  std::get<event_pf_reply>(r.extra).ctx_size = 257;
  CHECK(check(r).code == errc::bad_value);
  r = sample_event_reply(event_id::pf);
  std::get<event_pf_reply>(r.extra).singlestep = 2;
  CHECK(check(r).code == errc::bad_value);
  r = sample_event_reply(event_id::singlestep);
  CHECK(check(r).ok());
  r.common.event = 12;
  CHECK(check(r).code == errc::unknown_event);
  r = sample_event_reply(event_id::unhook);
  CHECK(check(r).ok());
  r.common.padding2 = 1;
  CHECK(check(r).code == errc::bad_padding);
}

TEST_CASE("v7 check: events") {
  auto m = sample_event(event_id::pf);
  CHECK(check(m).ok());
  std::get<event_pf>(m.data).access = page_access_sve;
  CHECK(check(m).code == errc::unknown_access_bits);
  m = sample_event(event_id::cr);
  m.common.arch.mode = 3;
  CHECK(check(m).code == errc::bad_value);
  m = sample_event(event_id::cr);
  m.data = std::monostate{};
  CHECK(check(m).code == errc::bad_size);
  m = sample_event(event_id::descriptor);
  std::get<event_descriptor>(m.data).descriptor = 5;
  CHECK(check(m).code == errc::bad_value);
  m = sample_event(event_id::singlestep);
  std::get<event_singlestep>(m.data).failed = 2;
  CHECK(check(m).code == errc::bad_value);
  m = sample_event(event_id::trap);
  m.common.arch.padding2[3] = 1;
  CHECK(check(m).code == errc::bad_padding);
  m = sample_event(event_id::cpuid);
  std::get<event_cpuid>(m.data).padding2 = 1;
  CHECK(check(m).code == errc::bad_padding);
}

TEST_CASE("v7 check: command replies") {
  reply_msg r{msg_id::get_max_gfn, 1, 0, get_max_gfn_reply{0x12345}};
  CHECK(check(r).ok());
  r.id = msg_id::get_vcpu_info;
  CHECK(check(r).code == errc::bad_size);
  r = {msg_id::control_cr, 1, 0, {}};
  CHECK(check(r).ok());
  r.err = 22;
  CHECK(check(r).code == errc::bad_value);
  r = {msg_id::get_max_gfn, 1, -kvmi::kvm_enoent, get_max_gfn_reply{1}};
  CHECK(check(r).code == errc::bad_size);
  r = {msg_id::get_page_access, 1, 0, page_access_reply{{page_access_sve}}};
  CHECK(check(r).code == errc::unknown_access_bits);
  r = {msg_id::get_guest_info, 1, 0, get_guest_info_reply{4, {0, 1, 0}}};
  CHECK(check(r).code == errc::bad_padding);
}

// --- bad input --------------------------------------------------------------------

TEST_CASE("v7: frames are bounded by KVMI_MSG_SIZE 8184") {
  std::vector<uint8_t> most(8 + 8184, 0);
  uint16_t size = 8184;
  std::memcpy(most.data() + 2, &size, 2);
  CHECK(kvmi::parse_frame(most, byte_order::native, max_payload).ok());
  auto over = most;
  size = 8185;
  std::memcpy(over.data() + 2, &size, 2);
  over.push_back(0);
  CHECK(kvmi::parse_frame(over, byte_order::native, max_payload).err().code == errc::oversize);
  CHECK(tool_err(over) == errc::oversize);
  // A frame whose payload disagrees with its header.
  kvmi::frame lying{{static_cast<uint16_t>(msg_id::get_version), 10, 1},
                    std::span<const uint8_t>(most).first(5)};
  CHECK(v7::decode_from_tool(lying).err().code == errc::truncated);
  // The v5 bound stays 4112.
  CHECK(kvmi::parse_frame(most, byte_order::native).err().code == errc::oversize);
  // The shared splitter takes the v7 bound.
  kvmi::frame_splitter sp(byte_order::native, max_payload);
  size_t frames = 0;
  CHECK(sp.feed(most, [&](const kvmi::frame& f) { frames += f.payload.size() == 8184; }).ok());
  CHECK(frames == 1);
  CHECK(sp.feed(over, [](const kvmi::frame&) {}).code == errc::oversize);
}

TEST_CASE("v7: unknown and unsupported ids are refused with different reasons") {
  std::vector<uint8_t> b = {0, 0, 0, 0, 1, 0, 0, 0};
  auto with_id = [&](uint16_t id) {
    auto x = b;
    std::memcpy(x.data(), &id, 2);
    return v7::decode_from_tool(std::span<const uint8_t>(x));
  };
  for (uint16_t id : {1, 30, 40, 64, 0xffff}) {
    CAPTURE(id);
    CHECK(with_id(id).err().code == errc::unknown_id);
    CHECK(with_id(id).err().reason == "no v7 command with this id");
  }
  for (auto id : all_msg_ids) {
    if (is_supported(id) || id == msg_id::event || id == msg_id::event_reply)
      continue;
    CAPTURE(name(id));
    auto x = b;
    uint16_t v = static_cast<uint16_t>(id);
    std::memcpy(x.data(), &v, 2);
    x[2] = 8; // a vCPU header's worth
    x.resize(16, 0);
    auto d = v7::decode_from_tool(std::span<const uint8_t>(x));
    CHECK(d.err().code == errc::unknown_id);
    CHECK(d.err().reason.find("does not support") != std::string_view::npos);
  }
}

TEST_CASE("v7 decode: every padding byte of every message is checked") {
  std::vector<uint8_t> buf;
  int total = 0;
  auto flip_each = [&](const std::vector<uint8_t>& bytes, const std::vector<uint8_t>& mask,
                       size_t offset, auto decode) {
    for (size_t i = 0; i < mask.size(); ++i) {
      if (!mask[i])
        continue;
      auto bad = bytes;
      bad[offset + i] ^= 0x01;
      CAPTURE(i);
      CHECK(decode(bad) == errc::bad_padding);
      ++total;
    }
  };
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c.body)));
    encode(buf, c);
    size_t at = 8;
    if (scope_of(id_of(c.body)) == scope::vcpu) {
      flip_each(buf, padding_mask<vcpu_hdr>(), at, tool_err);
      at += sizeof(vcpu_hdr);
    }
    std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (requires { x.req; }) {
          flip_each(buf, padding_mask<decltype(x.req)>(), at, tool_err);
          if constexpr (std::is_same_v<T, set_page_access_cmd>)
            for (size_t k = 0; k < x.entries.size(); ++k)
              flip_each(buf, padding_mask<page_access_entry>(),
                        at + sizeof(x.req) + k * sizeof(page_access_entry), tool_err);
        } else if constexpr (!std::is_empty_v<T>) {
          flip_each(buf, padding_mask<T>(), at, tool_err);
        }
      },
      c.body);
  }
  for (auto e : all_event_ids) {
    CAPTURE(name(e));
    auto m = sample_event(e);
    encode(buf, m);
    auto dec = [](const std::vector<uint8_t>& b) { return v7::decode_event(frame_of(b)).err().code; };
    flip_each(buf, padding_mask<event>(), 8, dec);
    std::visit(
      [&](const auto& d) {
        using T = std::decay_t<decltype(d)>;
        if constexpr (!std::is_same_v<T, std::monostate>)
          flip_each(buf, padding_mask<T>(), 8 + sizeof(event), dec);
      },
      m.data);
    encode(buf, sample_event_reply(e));
    flip_each(buf, padding_mask<vcpu_hdr>(), 8, tool_err);
    flip_each(buf, padding_mask<event_reply>(), 16, tool_err);
  }
  encode(buf, sample_event_reply(event_id::pf));
  flip_each(buf, padding_mask<event_pf_reply>(), 24, tool_err);
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c.body)));
    auto shape = expected_reply(c.body);
    auto r = sample_reply(c.body, 1);
    encode(buf, r);
    auto dec = [&](const std::vector<uint8_t>& b) {
      return decode_reply(frame_of(b), shape).err().code;
    };
    flip_each(buf, padding_mask<kvmi::error_code>(), 8, dec);
    std::visit(
      [&](const auto& d) {
        using T = std::decay_t<decltype(d)>;
        if constexpr (std::is_same_v<T, registers_reply>)
          flip_each(buf, padding_mask<get_registers_reply>(), 16, dec);
        else if constexpr (std::is_same_v<T, version_reply>)
          flip_each(buf, padding_mask<get_version_reply>(), 16, dec);
        else if constexpr (std::is_trivially_copyable_v<T> && !std::is_same_v<T, std::monostate>)
          flip_each(buf, padding_mask<T>(), 16, dec);
      },
      r.data);
  }
  CHECK(total > 150);
}

TEST_CASE("v7 decode: a command or event one byte short or long is bad_size") {
  std::vector<uint8_t> buf;
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c.body)));
    encode(buf, c);
    CHECK(tool_err(resized(buf, 1)) == errc::bad_size);
    if (buf.size() > 8)
      CHECK(tool_err(resized(buf, -1)) == errc::bad_size);
    auto shape = expected_reply(c.body);
    encode(buf, sample_reply(c.body, 1));
    if (shape.size > 0 && !shape.variable) {
      CHECK(decode_reply(frame_of(resized(buf, 1)), shape).err().code == errc::bad_size);
      CHECK(decode_reply(frame_of(resized(buf, -1)), shape).err().code == errc::bad_size);
    }
  }
  for (auto e : all_event_ids) {
    CAPTURE(name(e));
    encode(buf, sample_event(e));
    CHECK(v7::decode_event(frame_of(resized(buf, 1))).err().code == errc::bad_size);
    CHECK(v7::decode_event(frame_of(resized(buf, -1))).err().code == errc::bad_size);
  }
}

TEST_CASE("v7 decode: seeded garbage and truncations never crash and what decodes re-encodes") {
  std::mt19937_64 rng(7);
  std::vector<std::vector<uint8_t>> pool;
  for (auto o : orders)
    for (auto& f : sample_frames(o))
      pool.push_back(f);
  std::vector<uint8_t> re;
  size_t accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    auto b = pool[rng() % pool.size()];
    auto o = orders[rng() % 2];
    int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      if (rng() % 4 == 0)
        b.resize(rng() % b.size());
      else
        b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    auto f = kvmi::parse_frame(b, o, max_payload);
    if (!f)
      continue;
    if (auto d = v7::decode_from_tool(*f, o); d.ok()) {
      std::visit([&](const auto& m) { encode(re, m, o); }, *d);
      CHECK(re == b);
      ++accepted;
    }
    if (auto e = v7::decode_event(*f, o); e.ok()) {
      encode(re, *e, o);
      CHECK(re == b);
      (void)check(*e);
    }
  }
  CHECK(accepted > 100);
}
