// Codec tests: round trips of every message kind in both byte orders, the
// exhaustiveness of the id tables, every check() rule, and decode's answer to
// truncated, oversized, padded and garbage input.
#include "proto/codec.hpp"
#include "proto/messages.hpp"
#include "tests/support/kvmi_samples.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <set>
#include <string>

using namespace kvmi;
using namespace kvmi::testing;

namespace {

constexpr byte_order orders[] = {byte_order::native, byte_order::swapped};

std::string order_name(byte_order o) { return o == byte_order::native ? "native" : "swapped"; }

template <class... Fs>
struct overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
overloaded(Fs...) -> overloaded<Fs...>;

// Deep equality of two commands, field bytes and arrays alike.
bool same_command(const command& a, const command& b) {
  if (a.index() != b.index())
    return false;
  return std::visit(
    [&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      const T& y = std::get<T>(b);
      if constexpr (requires { x.req; }) {
        bool arrays;
        if constexpr (requires { x.msrs_idx; })
          arrays = same_bytes(x.msrs_idx, y.msrs_idx);
        else if constexpr (requires { x.entries; })
          arrays = same_bytes(x.entries, y.entries);
        else if constexpr (requires { x.data; })
          arrays = same_bytes(x.data, y.data);
        else
          arrays = same_bytes(x.gpa, y.gpa);
        return same_bytes(x.req, y.req) && arrays;
      } else if constexpr (std::is_empty_v<T>) {
        return true;
      } else {
        return same_bytes(x, y);
      }
    },
    a);
}

bool same_reply(const reply_msg& a, const reply_msg& b) {
  if (a.id != b.id || a.seq != b.seq || a.err != b.err || a.data.index() != b.data.index())
    return false;
  return std::visit(
    [&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      const T& y = std::get<T>(b.data);
      if constexpr (std::is_same_v<T, std::monostate>)
        return true;
      else if constexpr (std::is_same_v<T, registers_reply>)
        return same_bytes(x.fixed, y.fixed) && same_bytes(x.msrs, y.msrs);
      else if constexpr (std::is_same_v<T, page_access_reply>)
        return x.access == y.access;
      else if constexpr (std::is_same_v<T, physical_data>)
        return x.data == y.data;
      else if constexpr (std::is_same_v<T, xsave_reply>)
        return x.region == y.region;
      else
        return same_bytes(x, y);
    },
    a.data);
}

bool same_event_data(const event_data& a, const event_data& b) {
  if (a.index() != b.index())
    return false;
  return std::visit(
    [&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, std::monostate>)
        return true;
      else
        return same_bytes(x, std::get<T>(b));
    },
    a);
}

bool same_event_reply(const event_reply_msg& a, const event_reply_msg& b) {
  if (a.seq != b.seq || !same_bytes(a.common, b.common) || a.extra.index() != b.extra.index())
    return false;
  return std::visit(
    [&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, std::monostate>)
        return true;
      else
        return same_bytes(x, std::get<T>(b.extra));
    },
    a.extra);
}

msg_hdr header_of(const std::vector<uint8_t>& bytes, byte_order o) {
  msg_hdr h;
  std::memcpy(&h, bytes.data(), sizeof h);
  to_order(h, o);
  return h;
}

// Rewrites hdr.size in an encoded frame.
void set_size(std::vector<uint8_t>& bytes, uint16_t size, byte_order o) {
  if (o == byte_order::swapped)
    size = detail::bswap(size);
  std::memcpy(bytes.data() + offsetof(msg_hdr, size), &size, 2);
}

// The payload bytes of a command with no variable part, as raw memory.
std::vector<uint8_t> raw_payload(const command& c) {
  return std::visit(
    [](const auto& x) -> std::vector<uint8_t> {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_empty_v<T>) {
        return {};
      } else if constexpr (requires { x.req; }) {
        std::vector<uint8_t> v(bytes_of(x.req).begin(), bytes_of(x.req).end());
        overloaded{
          [&](const write_physical_cmd& p) { v.insert(v.end(), p.data.begin(), p.data.end()); },
          [&](const auto& p) {
            auto append = [&](const auto& arr) {
              auto b = reinterpret_cast<const uint8_t*>(arr.data());
              v.insert(v.end(), b, b + arr.size() * sizeof(arr[0]));
            };
            if constexpr (requires { p.msrs_idx; })
              append(p.msrs_idx);
            else if constexpr (requires { p.entries; })
              append(p.entries);
            else
              append(p.gpa);
          },
        }(x);
        return v;
      } else {
        return {bytes_of(x).begin(), bytes_of(x).end()};
      }
    },
    c);
}

} // namespace

// --- tables and ids ---------------------------------------------------------

TEST_CASE("every id 1..29 is a known message or in the documented unused list") {
  const std::set<uint16_t> unused{2, 4, 5, 8, 9, 16, 20, 21, 22};
  std::set<uint16_t> commands_covered;
  for (auto& c : sample_commands())
    commands_covered.insert(static_cast<uint16_t>(id_of(c)));
  for (uint16_t id = 1; id < num_messages; ++id) {
    CAPTURE(id);
    bool known = is_known(static_cast<msg_id>(id));
    CHECK(known != (unused.count(id) == 1));
    if (!known) {
      CHECK(name(static_cast<msg_id>(id)) == "unknown");
      continue;
    }
    CHECK(name(static_cast<msg_id>(id)) != "unknown");
    // Known ids are commands with a sample (encode/decode support) or the
    // event and event-reply ids.
    bool is_event = id == static_cast<uint16_t>(msg_id::event)
                    || id == static_cast<uint16_t>(msg_id::event_reply);
    CHECK((commands_covered.count(id) == 1) != is_event);
  }
  CHECK(commands_covered.size() == 18);
  CHECK(std::size(all_msg_ids) == 20);
  CHECK(std::is_sorted(std::begin(all_msg_ids), std::end(all_msg_ids)));
  CHECK_FALSE(is_known(static_cast<msg_id>(0)));
  CHECK_FALSE(is_known(static_cast<msg_id>(num_messages)));
}

TEST_CASE("message_kinds() lists every command with its reply, every event and event reply") {
  auto kinds = message_kinds();
  for (auto id : all_msg_ids) {
    CAPTURE(name(id));
    auto count = [&](std::string_view dir) {
      return std::count_if(kinds.begin(), kinds.end(), [&](const message_kind& k) {
        return k.id == static_cast<uint16_t>(id) && k.direction == dir;
      });
    };
    if (id == msg_id::event) {
      CHECK(count("event") == static_cast<long>(num_events));
    } else if (id == msg_id::event_reply) {
      CHECK(count("event-reply") == static_cast<long>(num_events) - 1); // UNHOOK takes no reply
    } else {
      CHECK(count("command") == 1);
      CHECK(count("reply") == 1);
    }
  }
  // Every kind names a known id, and every event kind appears once.
  std::set<int32_t> events, replies;
  for (auto& k : kinds) {
    CAPTURE(k.name);
    CHECK(is_known(static_cast<msg_id>(k.id)));
    if (k.direction == "event") {
      CHECK(events.insert(k.event).second);
      CHECK(k.size == event_size(static_cast<event_id>(k.event)));
      CHECK(k.name == name(static_cast<event_id>(k.event)));
    } else if (k.direction == "event-reply") {
      CHECK(replies.insert(k.event).second);
      CHECK(k.size == event_reply_size(static_cast<event_id>(k.event)));
    } else {
      CHECK(k.event == -1);
      CHECK(k.name == name(static_cast<msg_id>(k.id)));
    }
  }
  CHECK(events.size() == num_events);
}

TEST_CASE("the command table's fixed sizes agree with the encoded samples") {
  auto kinds = message_kinds();
  std::vector<uint8_t> buf;
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c)));
    auto it = std::find_if(kinds.begin(), kinds.end(), [&](const message_kind& k) {
      return k.id == static_cast<uint16_t>(id_of(c)) && k.direction == "command";
    });
    REQUIRE(it != kinds.end());
    encode(buf, command_msg{1, c});
    size_t payload = buf.size() - sizeof(msg_hdr);
    REQUIRE(payload >= it->size);
    if (it->element == 0)
      CHECK(payload == it->size);
    else
      CHECK((payload - it->size) % it->element == 0);
    // ...and its reply
    auto rit = std::find_if(kinds.begin(), kinds.end(), [&](const message_kind& k) {
      return k.id == static_cast<uint16_t>(id_of(c)) && k.direction == "reply";
    });
    REQUIRE(rit != kinds.end());
    encode(buf, sample_reply(c, 1));
    payload = buf.size() - sizeof(msg_hdr);
    REQUIRE(payload >= rit->size);
    if (rit->element == 0)
      CHECK(payload == rit->size);
    else
      CHECK((payload - rit->size) % rit->element == 0);
  }
}

TEST_CASE("ids, flags and masks have the v5 values") {
  CHECK(known_commands == 0x1F8EFCCA);
  CHECK(known_vcpu_events == 0x5FE);
  CHECK(known_vm_events == 0x201);
  CHECK(allowed_command(msg_id::get_version, 0xffffffff));
  CHECK_FALSE(allowed_command(msg_id::get_version, known_commands & ~flag(msg_id::get_version)));
  // CONTROL_VE is allowed only when the host announces bit 29.
  CHECK_FALSE(allowed_command(msg_id::control_ve, known_commands));
  CHECK(allowed_command(msg_id::control_ve, known_commands | (1u << 29)));
  CHECK(allowed_vcpu_event(event_id::pf, 0x7ff));
  CHECK_FALSE(allowed_vcpu_event(event_id::create_vcpu, 0x7ff));
  CHECK(allowed_vm_event(event_id::create_vcpu, 0x7ff));
  CHECK_FALSE(allowed_vm_event(event_id::pf, 0x7ff));
  for (uint32_t e = 0; e < num_events; ++e) {
    auto ev = static_cast<event_id>(e);
    CAPTURE(name(ev));
    CHECK(name(ev) != "unknown");
    CHECK(((known_vcpu_events >> e) & 1) != ((known_vm_events >> e) & 1));
    uint32_t acts = allowed_actions(ev);
    if (ev == event_id::unhook) {
      CHECK(acts == 0);
    } else {
      CHECK((acts & flag(action::continue_)));
      CHECK((acts & flag(action::crash)));
      CHECK(((acts & flag(action::retry)) != 0)
            == (ev == event_id::breakpoint || ev == event_id::pf));
    }
  }
  CHECK(kvm_error_name(-kvm_eacces) == "EACCES");
  CHECK(kvm_error_name(-kvm_enosys) == "ENOSYS");
  CHECK(kvm_error_name(-12345) == "E?");
  // Any int32 a peer can send, the extremes included, is named safely.
  CHECK(kvm_error_name(INT32_MIN) == "E?");
  CHECK(kvm_error_name(INT32_MAX) == "E?");
  CHECK(kvm_error_name(0) == "OK");
  CHECK(event_reply_size(event_id::cr) == 16);
  CHECK(event_reply_size(event_id::msr) == 16);
  CHECK(event_reply_size(event_id::pf) == 8 + 264);
  CHECK(event_reply_size(event_id::pause_vcpu) == 8);
  CHECK(event_size(event_id::breakpoint) == 536 + 8);
  CHECK(event_size(event_id::pf) == 536 + 24);
  CHECK(event_size(event_id::xsetbv) == 536);
}

// --- round trips --------------------------------------------------------------

TEST_CASE("every command round-trips through encode and decode_from_tool, both byte orders") {
  auto cmds = sample_commands();
  REQUIRE(cmds.size() == std::variant_size_v<command>);
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto& c : cmds) {
      CAPTURE(order_name(o));
      CAPTURE(name(id_of(c)));
      REQUIRE(check(c).ok());
      command_msg m{0xa1b2c3d4, c};
      encode(buf, m, o);
      auto h = header_of(buf, o);
      CHECK(h.id == static_cast<uint16_t>(id_of(c)));
      CHECK(h.seq == 0xa1b2c3d4);
      CHECK(h.size == buf.size() - sizeof(msg_hdr));
      // Native bytes are the structs' raw memory: the ABI is the layout.
      if (o == byte_order::native) {
        auto raw = raw_payload(c);
        CHECK(std::equal(buf.begin() + 8, buf.end(), raw.begin(), raw.end()));
      }
      else
        CHECK(buf[0] == 0); // id < 256, big-endian in the other order
      auto d = decode_from_tool(std::span<const uint8_t>(buf), o);
      REQUIRE(d.ok());
      auto* cm = std::get_if<command_msg>(&*d);
      REQUIRE(cm != nullptr);
      CHECK(cm->seq == 0xa1b2c3d4);
      CHECK(same_command(cm->body, c));
      CHECK(check(cm->body).ok());
      CHECK(vcpu_of(cm->body) == vcpu_of(c));
    }
  }
}

TEST_CASE("swapped encoding is the native encoding with every field byte-reversed") {
  std::vector<uint8_t> nat, swp;
  // control_msr: u16 vcpu, u8 enable, u8 padding, u32 msr.
  command_msg m{0x01020304, control_msr{0x0506, 1, 0, 0xc0000080}};
  encode(nat, m, byte_order::native);
  encode(swp, m, byte_order::swapped);
  REQUIRE(nat.size() == 16);
  REQUIRE(swp.size() == 16);
  const uint8_t expect_swapped[] = {0, 19, 0, 8, 1, 2, 3, 4, 0x05, 0x06, 1, 0, 0xc0, 0, 0, 0x80};
  CHECK(std::equal(swp.begin(), swp.end(), std::begin(expect_swapped)));
  const uint8_t expect_native[] = {19, 0, 8, 0, 4, 3, 2, 1, 0x06, 0x05, 1, 0, 0x80, 0, 0, 0xc0};
  CHECK(std::equal(nat.begin(), nat.end(), std::begin(expect_native)));
}

TEST_CASE("vcpu_of names the vCPU of vCPU commands only") {
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c)));
    bool vm_command = std::holds_alternative<get_version>(c)
                      || std::holds_alternative<pause_all_vcpus>(c)
                      || std::holds_alternative<get_map_token>(c)
                      || std::holds_alternative<read_physical>(c)
                      || std::holds_alternative<write_physical_cmd>(c)
                      || std::holds_alternative<control_vm_events>(c);
    CHECK(vcpu_of(c).has_value() != vm_command);
  }
  CHECK(vcpu_of(command{control_cr{42, 1, 0, 3}}) == 42);
  CHECK(vcpu_of(command{get_registers_cmd{{17, 0, {}}, {}}}) == 17);
}

TEST_CASE("every event round-trips through encode and decode_event, both byte orders") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (uint32_t e = 0; e < num_events; ++e) {
      auto ev = static_cast<event_id>(e);
      CAPTURE(order_name(o));
      CAPTURE(name(ev));
      auto m = sample_event(ev);
      REQUIRE(check(m).ok());
      encode(buf, m, o);
      CHECK(buf.size() == sizeof(msg_hdr) + event_size(ev));
      auto f = parse_frame(buf, o);
      REQUIRE(f.ok());
      CHECK(f->hdr.id == static_cast<uint16_t>(msg_id::event));
      auto d = decode_event(*f, o);
      REQUIRE(d.ok());
      CHECK(d->seq == m.seq);
      CHECK(d->kind() == ev);
      CHECK(same_bytes(d->common, m.common));
      CHECK(same_event_data(d->data, m.data));
      CHECK(check(*d).ok());
      if (o == byte_order::native)
        CHECK(std::memcmp(buf.data() + 8, &m.common, sizeof(event)) == 0);
    }
  }
}

TEST_CASE("every event reply round-trips through encode and decode_from_tool, both byte orders") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (uint32_t e = 1; e < num_events; ++e) {
      auto ev = static_cast<event_id>(e);
      CAPTURE(order_name(o));
      CAPTURE(name(ev));
      auto r = sample_event_reply(ev);
      REQUIRE(check(r).ok());
      encode(buf, r, o);
      CHECK(header_of(buf, o).id == static_cast<uint16_t>(msg_id::event_reply));
      CHECK(header_of(buf, o).seq == r.seq);
      CHECK(buf.size() == sizeof(msg_hdr) + event_reply_size(ev));
      auto d = decode_from_tool(std::span<const uint8_t>(buf), o);
      REQUIRE(d.ok());
      auto* rm = std::get_if<event_reply_msg>(&*d);
      REQUIRE(rm != nullptr);
      CHECK(same_event_reply(*rm, r));
      CHECK(check(*rm).ok());
    }
  }
}

TEST_CASE("every command reply round-trips through encode and decode_reply, both byte orders") {
  std::vector<uint8_t> buf;
  for (auto o : orders) {
    for (auto& c : sample_commands()) {
      CAPTURE(order_name(o));
      CAPTURE(name(id_of(c)));
      auto shape = expected_reply(c);
      auto r = sample_reply(c, 77);
      REQUIRE(check(r).ok());
      encode(buf, r, o);
      CHECK(buf.size() == sizeof(msg_hdr) + sizeof(error_code) + shape.size);
      auto f = parse_frame(buf, o);
      REQUIRE(f.ok());
      auto d = decode_reply(*f, shape, o);
      REQUIRE(d.ok());
      CHECK(same_reply(*d, r));
      CHECK(check(*d).ok());

      // The error form: kvmi_error_code alone.
      reply_msg err{shape.id, 78, -kvm_eagain, {}};
      encode(buf, err, o);
      CHECK(buf.size() == sizeof(msg_hdr) + sizeof(error_code));
      auto fe = parse_frame(buf, o);
      REQUIRE(fe.ok());
      auto de = decode_reply(*fe, shape, o);
      REQUIRE(de.ok());
      CHECK(de->err == -kvm_eagain);
      CHECK(de->seq == 78);
      CHECK(de->data.index() == 0);
    }
  }
}

TEST_CASE("reply shapes follow the command's parameters") {
  get_registers_cmd gr{{0, 5, {}}, {1, 2, 3, 4, 5}};
  CHECK(expected_reply(gr).size == 472 + 5 * 16);
  get_page_access_cmd pa{{0, 3, 0, 0}, {1, 2, 3}};
  CHECK(expected_reply(pa).size == 3);
  CHECK(expected_reply(read_physical{0x1000, 4096}).size == 4096);
  CHECK(expected_reply(get_version{}).size == 16);
  CHECK(expected_reply(get_map_token{}).size == 32);
  CHECK(expected_reply(control_cr{0, 1, 0, 0}).size == 0);
  auto xs = expected_reply(get_xsave{});
  CHECK(xs.variable);
  CHECK(xs.size == xsave_size);
}

TEST_CASE("GET_XSAVE replies of any multiple of 4 up to 4096 bytes decode, others do not") {
  std::vector<uint8_t> buf;
  auto shape = expected_reply(get_xsave{1, {}});
  for (uint32_t n : {4u, 512u, 1024u, 4096u}) {
    CAPTURE(n);
    reply_msg r{msg_id::get_xsave, 5, 0, xsave_reply{std::vector<uint8_t>(n, 0x5a)}};
    encode(buf, r);
    auto f = parse_frame(buf, byte_order::native);
    REQUIRE(f.ok());
    auto d = decode_reply(*f, shape);
    REQUIRE(d.ok());
    CHECK(std::get<xsave_reply>(d->data).region.size() == n);
  }
  // The largest: 4104-byte payload, beyond KVMI_MSG_SIZE, still one frame.
  reply_msg big{msg_id::get_xsave, 5, 0, xsave_reply{std::vector<uint8_t>(4096, 1)}};
  encode(buf, big);
  CHECK(buf.size() - sizeof(msg_hdr) == 4104);
  for (uint32_t n : {0u, 3u, 4097u, 4100u}) {
    CAPTURE(n);
    reply_msg r{msg_id::get_xsave, 5, 0, xsave_reply{std::vector<uint8_t>(n, 1)}};
    encode(buf, r);
    auto f = parse_frame(buf, byte_order::native);
    REQUIRE(f.ok());
    auto d = decode_reply(*f, shape);
    REQUIRE_FALSE(d.ok());
    CHECK(d.err().code == errc::bad_size);
  }
}

// --- check() rules --------------------------------------------------------------

TEST_CASE("check: GET_GUEST_INFO names vcpu 0 and zero padding") {
  CHECK(check(get_guest_info{0, {}}).ok());
  CHECK(check(get_guest_info{1, {}}).code == errc::bad_vcpu);
  CHECK(check(get_guest_info{0, {0, 1, 0}}).code == errc::bad_padding);
}

TEST_CASE("check: padding of fixed commands") {
  CHECK(check(get_cpuid{0, {0, 0, 1}, 0, 0}).code == errc::bad_padding);
  CHECK(check(get_xsave{0, {1, 0, 0}}).code == errc::bad_padding);
  set_registers sr{};
  sr.padding[1] = 9;
  CHECK(check(sr).code == errc::bad_padding);
  CHECK(check(inject_exception{0, 3, 0, 0, 1, 0}).code == errc::bad_padding);
  CHECK(check(control_events{0, 1, 0}).code == errc::bad_padding);
  CHECK(check(control_cr{0, 1, 1, 0}).code == errc::bad_padding);
  CHECK(check(control_msr{0, 1, 1, 0}).code == errc::bad_padding);
  CHECK(check(control_vm_events{0, 1}).code == errc::bad_padding);
  // The same through the command variant.
  CHECK(check(command{control_vm_events{0, 1}}).code == errc::bad_padding);
}

TEST_CASE("check: GET_REGISTERS nmsrs matches its array and the reply fits one frame") {
  get_registers_cmd g{{0, 2, {}}, {1}};
  CHECK(check(g).code == errc::bad_size);
  g.msrs_idx.push_back(2);
  CHECK(check(g).ok());
  g.req.padding[0] = 1;
  CHECK(check(g).code == errc::bad_padding);
  // The reply (8 + 472 + 16 * nmsrs) must fit within max_payload, or the
  // tool's own frame splitter would refuse it.
  get_registers_cmd most{{0, 0, {}}, std::vector<uint32_t>(227, 0x10)};
  most.req.nmsrs = 227;
  CHECK(check(most).ok());
  CHECK(sizeof(error_code) + expected_reply(most).size <= max_payload);
  most.msrs_idx.push_back(0x11);
  most.req.nmsrs = 228;
  CHECK(check(most).code == errc::oversize);
}

TEST_CASE("check: GET_PAGE_ACCESS and SET_PAGE_ACCESS") {
  get_page_access_cmd g{{0, 2, 0, 0}, {0x1000, 0x2000}};
  CHECK(check(g).ok());
  g.req.view = 1;
  CHECK(check(g).code == errc::bad_view);
  g.req.view = 0;
  g.req.padding = 1;
  CHECK(check(g).code == errc::bad_padding);
  g.req.padding = 0;
  g.req.count = 3;
  CHECK(check(g).code == errc::bad_size);
  // A request larger than one frame.
  get_page_access_cmd big{{0, 600, 0, 0}, std::vector<uint64_t>(600, 0x1000)};
  CHECK(check(big).code == errc::oversize);

  set_page_access_cmd s{{0, 1, 0, 0}, {{0x1000, page_access_rwx, {}}}};
  CHECK(check(s).ok());
  for (uint8_t bad : {uint8_t{8}, uint8_t{0x10}, uint8_t{0x80}, uint8_t{0xff}}) {
    s.entries[0].access = bad;
    CHECK(check(s).code == errc::unknown_access_bits);
  }
  s.entries[0].access = page_access_r;
  s.entries[0].padding[6] = 1;
  CHECK(check(s).code == errc::bad_padding);
  s.entries[0].padding[6] = 0;
  s.req.view = 2;
  CHECK(check(s).code == errc::bad_view);
  s.req.view = 0;
  s.req.count = 0;
  CHECK(check(s).code == errc::bad_size);
  set_page_access_cmd sbig{{0, 300, 0, 0}, std::vector<page_access_entry>(300)};
  CHECK(check(sbig).code == errc::oversize);
  set_page_access_cmd spad{{0, 1, 0, 1}, {{0x1000, page_access_r, {}}}};
  CHECK(check(spad).code == errc::bad_padding);
  // The largest that fits: 8 + 16 * 256 = 4104 bytes.
  set_page_access_cmd most{{0, 256, 0, 0}, std::vector<page_access_entry>(256)};
  CHECK(check(most).ok());
}

TEST_CASE("check: INJECT_EXCEPTION vector and has_error") {
  CHECK(check(inject_exception{0, 31, 1, 0, 0, 0}).ok());
  CHECK(check(inject_exception{0, 32, 0, 0, 0, 0}).code == errc::bad_value);
  CHECK(check(inject_exception{0, 3, 2, 0, 0, 0}).code == errc::bad_value);
}

TEST_CASE("check: READ/WRITE_PHYSICAL stay in one page and 1..4096 bytes") {
  CHECK(check(read_physical{0, 4096}).ok());
  CHECK(check(read_physical{0x1fff, 1}).ok());
  CHECK(check(read_physical{0x1800, 0x800}).ok());
  CHECK(check(read_physical{0x1000, 0}).code == errc::bad_range);
  CHECK(check(read_physical{0x1000, 4097}).code == errc::bad_range);
  CHECK(check(read_physical{0x1fff, 2}).code == errc::bad_range);
  CHECK(check(read_physical{0x1001, 4096}).code == errc::bad_range);
  CHECK(check(read_physical{0, ~0ull}).code == errc::bad_range);
  CHECK(check(read_physical{~0ull, 1}).ok()); // last byte of the last page
  CHECK(check(read_physical{~0ull, 2}).code == errc::bad_range);

  write_physical_cmd w{{0x2ffc, 4}, {1, 2, 3, 4}};
  CHECK(check(w).ok());
  w.req.gpa = 0x2ffd;
  CHECK(check(w).code == errc::bad_range);
  w.req.gpa = 0x2000;
  w.data.pop_back();
  CHECK(check(w).code == errc::bad_size);
  write_physical_cmd w0{{0x2000, 0}, {}};
  CHECK(check(w0).code == errc::bad_range);
  write_physical_cmd full{{0x3000, 4096}, std::vector<uint8_t>(4096, 0xcc)};
  CHECK(check(full).ok());
}

TEST_CASE("check: CONTROL_EVENTS and CONTROL_VM_EVENTS accept only their known bits") {
  CHECK(check(control_events{0, 0, known_vcpu_events}).ok());
  CHECK(check(control_events{0, 0, 0}).ok());
  for (uint32_t bit = 0; bit < 32; ++bit) {
    CAPTURE(bit);
    bool vcpu = (known_vcpu_events >> bit) & 1;
    bool vm = (known_vm_events >> bit) & 1;
    CHECK(check(control_events{0, 0, 1u << bit}).ok() == vcpu);
    if (!vcpu)
      CHECK(check(control_events{0, 0, 1u << bit}).code == errc::unknown_event_bits);
    CHECK(check(control_vm_events{1u << bit, 0}).ok() == vm);
    if (!vm)
      CHECK(check(control_vm_events{1u << bit, 0}).code == errc::unknown_event_bits);
  }
}

TEST_CASE("check: CONTROL_CR accepts cr 0, 3 and 4 only") {
  for (uint32_t cr = 0; cr < 20; ++cr) {
    CAPTURE(cr);
    bool ok = cr == 0 || cr == 3 || cr == 4;
    auto e = check(control_cr{1, 1, 0, cr});
    CHECK(e.ok() == ok);
    if (!ok)
      CHECK(e.code == errc::bad_cr);
  }
  CHECK(check(control_cr{1, 1, 0, 0xffffffff}).code == errc::bad_cr);
  CHECK(check(control_cr{1, 2, 0, 3}).code == errc::bad_value);
}

TEST_CASE("check: CONTROL_MSR accepts the two MSR ranges only") {
  for (uint32_t msr : {0u, 0x10u, 0x1fffu, 0xc0000000u, 0xc0000080u, 0xc0001fffu})
    CHECK(check(control_msr{0, 1, 0, msr}).ok());
  for (uint32_t msr : {0x2000u, 0x40000000u, 0xbfffffffu, 0xc0002000u, 0xc0010000u, 0xffffffffu}) {
    CAPTURE(msr);
    CHECK(check(control_msr{0, 1, 0, msr}).code == errc::bad_msr);
  }
  CHECK(valid_control_msr(0x1fff));
  CHECK_FALSE(valid_control_msr(0x2000));
  CHECK(check(control_msr{0, 3, 0, 0x10}).code == errc::bad_value);
}

TEST_CASE("check: CONTROL_VE count, enable and padding") {
  control_ve_cmd v{{0, 1, 1, {}}, {0x1000}};
  CHECK(check(v).ok());
  v.req.enable = 2;
  CHECK(check(v).code == errc::bad_value);
  v.req.enable = 0;
  v.req.padding[2] = 1;
  CHECK(check(v).code == errc::bad_padding);
  v.req.padding[2] = 0;
  v.gpa.clear();
  CHECK(check(v).code == errc::bad_size);
  control_ve_cmd big{{0, 600, 1, {}}, std::vector<uint64_t>(600, 0x1000)};
  CHECK(check(big).code == errc::oversize);
}

TEST_CASE("check: event replies name a known event, an allowed action and the right data") {
  for (uint32_t e = 1; e < num_events; ++e) {
    auto ev = static_cast<event_id>(e);
    CAPTURE(name(ev));
    auto r = sample_event_reply(ev);
    for (uint32_t a = 0; a < 6; ++a) {
      CAPTURE(a);
      r.common.action = a;
      bool ok = a < 3 && (allowed_actions(ev) & (1u << a));
      CHECK(check(r).ok() == ok);
      if (!ok)
        CHECK(check(r).code == errc::bad_action);
    }
    // Data of another kind.
    r = sample_event_reply(ev);
    if (ev == event_id::cr)
      r.extra = event_msr_reply{1};
    else
      r.extra = event_cr_reply{1};
    CHECK(check(r).code == errc::bad_size);
  }
  event_reply_msg r = sample_event_reply(event_id::pf);
  r.extra = std::monostate{};
  CHECK(check(r).code == errc::bad_size);
  r = sample_event_reply(event_id::pf);
  std::get<event_pf_reply>(r.extra).ctx_size = pf_ctx_max + 1;
  CHECK(check(r).code == errc::bad_value);
  r = sample_event_reply(event_id::pf);
  std::get<event_pf_reply>(r.extra).padding = 1;
  CHECK(check(r).code == errc::bad_padding);
  r = sample_event_reply(event_id::pf);
  r.common.event = num_events + 1;
  CHECK(check(r).code == errc::unknown_event);
  // num_events is kvmid's id for a dialect's SINGLESTEP: answered without data.
  r = sample_event_reply(event_id::xsetbv);
  r.common.event = static_cast<uint32_t>(event_id::singlestep);
  CHECK(check(r).ok());
  r.extra = event_pf_reply{};
  CHECK(check(r).code == errc::bad_size);
  r = sample_event_reply(event_id::xsetbv);
  r.common.event = static_cast<uint32_t>(event_id::unhook);
  CHECK(check(r).code == errc::unknown_event);
}

TEST_CASE("check: events") {
  auto m = sample_event(event_id::cr);
  for (uint8_t mode : {uint8_t{0}, uint8_t{1}, uint8_t{3}, uint8_t{16}}) {
    m.common.mode = mode;
    CHECK(check(m).code == errc::bad_value);
  }
  m = sample_event(event_id::cr);
  m.common.padding = 1;
  CHECK(check(m).code == errc::bad_padding);
  m = sample_event(event_id::cr);
  std::get<event_cr>(m.data).padding[0] = 1;
  CHECK(check(m).code == errc::bad_padding);
  m = sample_event(event_id::cr);
  m.data = event_msr{};
  CHECK(check(m).code == errc::bad_size);
  m = sample_event(event_id::xsetbv);
  m.data = event_breakpoint{1};
  CHECK(check(m).code == errc::bad_size);
  m = sample_event(event_id::breakpoint);
  m.data = std::monostate{};
  CHECK(check(m).code == errc::bad_size);
  m = sample_event(event_id::pf);
  std::get<event_pf>(m.data).mode = 8;
  CHECK(check(m).code == errc::unknown_access_bits);
  m = sample_event(event_id::descriptor);
  for (uint8_t d : {uint8_t{0}, uint8_t{5}}) {
    std::get<event_descriptor>(m.data).descriptor = d;
    CHECK(check(m).code == errc::bad_value);
  }
  std::get<event_descriptor>(m.data).descriptor = desc_tr;
  CHECK(check(m).ok());
  std::get<event_descriptor>(m.data).write = 2;
  CHECK(check(m).code == errc::bad_value);
  m = sample_event(event_id::trap);
  m.common.event = num_events;
  CHECK(check(m).code == errc::unknown_event);
  // UNHOOK carries a zeroed common part: mode 0 is fine there.
  m = sample_event(event_id::unhook);
  m.common.mode = 0;
  CHECK(check(m).ok());
}

TEST_CASE("check: command replies") {
  CHECK(check(reply_msg{msg_id::control_cr, 1, -kvm_einval, {}}).ok());
  CHECK(check(reply_msg{msg_id::get_version, 1, -kvm_eperm, {}}).ok());
  CHECK(check(reply_msg{msg_id::control_cr, 1, kvm_einval, {}}).code == errc::bad_value);
  CHECK(check(reply_msg{msg_id::get_version, 1, -kvm_einval, get_version_reply{}}).code
        == errc::bad_size);
  CHECK(check(reply_msg{msg_id::control_cr, 1, 0, {}}).ok());
  // Success replies carry exactly their command's data.
  CHECK(check(reply_msg{msg_id::get_version, 1, 0, {}}).code == errc::bad_size);
  CHECK(check(reply_msg{msg_id::get_version, 1, 0, get_cpuid_reply{}}).code == errc::bad_size);
  CHECK(check(reply_msg{msg_id::control_cr, 1, 0, get_version_reply{}}).code == errc::bad_size);
  CHECK(check(reply_msg{msg_id::get_version, 1, 0, get_version_reply{1, 2, 3, 4}}).code
        == errc::bad_padding);
  registers_reply rr{};
  rr.fixed.msrs.nmsrs = 2;
  rr.msrs.resize(1);
  CHECK(check(reply_msg{msg_id::get_registers, 1, 0, rr}).code == errc::bad_size);
  rr.fixed.msrs.nmsrs = 1;
  CHECK(check(reply_msg{msg_id::get_registers, 1, 0, rr}).ok());
  rr.msrs.resize(300);
  rr.fixed.msrs.nmsrs = 300;
  CHECK(check(reply_msg{msg_id::get_registers, 1, 0, rr}).code == errc::oversize);
  CHECK(check(reply_msg{msg_id::get_xsave, 1, 0, xsave_reply{std::vector<uint8_t>(6)}}).code
        == errc::bad_size);
  CHECK(check(reply_msg{msg_id::get_xsave, 1, 0, xsave_reply{std::vector<uint8_t>(4100)}}).code
        == errc::bad_size);
  CHECK(check(reply_msg{msg_id::read_physical, 1, 0, physical_data{}}).code == errc::bad_size);
  CHECK(check(reply_msg{msg_id::get_page_access, 1, 0, page_access_reply{{1, 7, 8}}}).code
        == errc::unknown_access_bits);
  CHECK(check(reply_msg{msg_id::get_page_access, 1, 0, page_access_reply{{1, 7, 0}}}).ok());
}

// --- decode errors ----------------------------------------------------------------

TEST_CASE("parse_frame: truncated, oversized and trailing bytes") {
  std::vector<uint8_t> buf;
  encode(buf, command_msg{1, control_cr{0, 1, 0, 4}});
  for (size_t n = 0; n < buf.size(); ++n) {
    CAPTURE(n);
    std::vector<uint8_t> prefix(buf.begin(), buf.begin() + n); // exact heap size for ASan
    auto f = parse_frame(prefix, byte_order::native);
    REQUIRE_FALSE(f.ok());
    CHECK(f.err().code == errc::truncated);
    CHECK(decode_from_tool(std::span<const uint8_t>(prefix)).err().code == errc::truncated);
  }
  auto trailing = buf;
  trailing.push_back(0);
  CHECK(parse_frame(trailing, byte_order::native).err().code == errc::bad_size);
  std::vector<uint8_t> huge(sizeof(msg_hdr));
  for (uint32_t size : {max_payload + 1, 0xffffu}) {
    set_size(huge, static_cast<uint16_t>(size), byte_order::native);
    CHECK(parse_frame(huge, byte_order::native).err().code == errc::oversize);
  }
  // max_payload itself is a legal size (WRITE_PHYSICAL of a full page).
  std::vector<uint8_t> most(max_frame);
  set_size(most, static_cast<uint16_t>(max_payload), byte_order::native);
  CHECK(parse_frame(most, byte_order::native).ok());
  // A size beyond the bytes at hand is truncated.
  set_size(huge, 0x0100, byte_order::native);
  CHECK(parse_frame(huge, byte_order::native).err().code == errc::truncated);
}

TEST_CASE("decode_from_tool: unknown ids and events are refused") {
  std::vector<uint8_t> buf(sizeof(msg_hdr));
  for (uint16_t id : {0, 2, 4, 5, 8, 9, 16, 20, 21, 22, 23, 30, 31, 255, 0xffff}) {
    CAPTURE(id);
    std::memcpy(buf.data(), &id, 2);
    auto d = decode_from_tool(std::span<const uint8_t>(buf));
    REQUIRE_FALSE(d.ok());
    CHECK(d.err().code == errc::unknown_id);
  }
  // decode_event only takes KVMI_EVENT frames.
  encode(buf, command_msg{1, get_version{}});
  auto f = parse_frame(buf, byte_order::native);
  REQUIRE(f.ok());
  CHECK(decode_event(*f).err().code == errc::unknown_id);
  // Event and event reply with an event id beyond KVMI_NUM_EVENTS.
  auto ev = sample_event(event_id::xsetbv);
  ev.common.event = num_events;
  encode(buf, ev);
  CHECK(decode_event(*parse_frame(buf, byte_order::native)).err().code == errc::unknown_event);
  auto r = sample_event_reply(event_id::xsetbv);
  r.common.event = 0x1000;
  encode(buf, r);
  CHECK(decode_from_tool(std::span<const uint8_t>(buf)).err().code == errc::unknown_event);
  // decode_reply refuses a reply whose id is not its command's.
  encode(buf, reply_msg{msg_id::get_cpuid, 1, 0, get_cpuid_reply{}});
  CHECK(decode_reply(*parse_frame(buf, byte_order::native), expected_reply(get_version{}))
          .err()
          .code
        == errc::unknown_id);
}

TEST_CASE("decode: every padding byte of every message is checked") {
  // Flips each padding byte of each encoded sample in turn: decode must say
  // bad_padding (the kernel fails such commands with -KVM_EINVAL).
  std::vector<uint8_t> buf;
  auto flip_each = [&](const std::vector<uint8_t>& frame_bytes,
                       const std::vector<uint8_t>& mask, size_t offset, auto decode) {
    int flipped = 0;
    for (size_t i = 0; i < mask.size(); ++i) {
      if (!mask[i])
        continue;
      auto bad = frame_bytes;
      bad[offset + i] ^= 0x01;
      CAPTURE(i);
      CHECK(decode(bad) == errc::bad_padding);
      ++flipped;
    }
    return flipped;
  };
  auto tool = [](const std::vector<uint8_t>& b) {
    return decode_from_tool(std::span<const uint8_t>(b)).err().code;
  };
  int total = 0;
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c)));
    encode(buf, command_msg{1, c});
    std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (requires { x.req; }) {
          total += flip_each(buf, padding_mask<decltype(x.req)>(), 8, tool);
          if constexpr (std::is_same_v<T, set_page_access_cmd>) {
            auto m = padding_mask<page_access_entry>();
            for (size_t k = 0; k < x.entries.size(); ++k)
              total += flip_each(buf, m, 8 + sizeof(x.req) + k * sizeof(page_access_entry), tool);
          }
        } else if constexpr (!std::is_empty_v<T>) {
          total += flip_each(buf, padding_mask<T>(), 8, tool);
        }
      },
      c);
  }
  CHECK(total > 0);
  for (uint32_t e = 0; e < num_events; ++e) {
    auto ev = static_cast<event_id>(e);
    CAPTURE(name(ev));
    auto m = sample_event(ev);
    encode(buf, m);
    auto dec = [](const std::vector<uint8_t>& b) {
      return decode_event(*parse_frame(b, byte_order::native)).err().code;
    };
    total += flip_each(buf, padding_mask<event>(), 8, dec);
    std::visit(
      [&](const auto& d) {
        using T = std::decay_t<decltype(d)>;
        if constexpr (!std::is_same_v<T, std::monostate>)
          total += flip_each(buf, padding_mask<T>(), 8 + sizeof(event), dec);
      },
      m.data);
  }
  encode(buf, sample_event_reply(event_id::pf));
  total += flip_each(buf, padding_mask<event_pf_reply>(), 16, tool);
  // Replies: kvmi_error_code and fixed reply structs.
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c)));
    auto shape = expected_reply(c);
    encode(buf, sample_reply(c, 1));
    auto dec = [&](const std::vector<uint8_t>& b) {
      return decode_reply(*parse_frame(b, byte_order::native), shape).err().code;
    };
    total += flip_each(buf, padding_mask<error_code>(), 8, dec);
    auto r = sample_reply(c, 1);
    std::visit(
      [&](const auto& d) {
        using T = std::decay_t<decltype(d)>;
        if constexpr (std::is_same_v<T, registers_reply>)
          total += flip_each(buf, padding_mask<get_registers_reply>(), 16, dec);
        else if constexpr (std::is_trivially_copyable_v<T> && !std::is_same_v<T, std::monostate>)
          total += flip_each(buf, padding_mask<T>(), 16, dec);
      },
      r.data);
  }
  CHECK(total > 100);
}

TEST_CASE("decode: a payload one byte short or long is bad_size for every kind") {
  std::vector<uint8_t> buf;
  auto resized = [](std::vector<uint8_t> b, int delta) {
    uint16_t size;
    std::memcpy(&size, b.data() + 2, 2);
    size = static_cast<uint16_t>(size + delta);
    std::memcpy(b.data() + 2, &size, 2);
    b.resize(b.size() + delta, 0);
    return b;
  };
  for (auto& c : sample_commands()) {
    CAPTURE(name(id_of(c)));
    encode(buf, command_msg{1, c});
    for (int delta : {-1, 1}) {
      if (delta < 0 && buf.size() == sizeof(msg_hdr))
        continue;
      CAPTURE(delta);
      auto b = resized(buf, delta);
      auto d = decode_from_tool(std::span<const uint8_t>(b));
      REQUIRE_FALSE(d.ok());
      CHECK(d.err().code == errc::bad_size);
    }
    auto shape = expected_reply(c);
    encode(buf, sample_reply(c, 1));
    for (int delta : {-1, 1}) {
      CAPTURE(delta);
      auto b = resized(buf, delta);
      auto d = decode_reply(*parse_frame(b, byte_order::native), shape);
      if (shape.variable && delta < 0)
        continue; // GET_XSAVE: a shorter region of whole u32s is not an error per se
      REQUIRE_FALSE(d.ok());
      CHECK(d.err().code == errc::bad_size);
    }
  }
  for (uint32_t e = 0; e < num_events; ++e) {
    auto ev = static_cast<event_id>(e);
    CAPTURE(name(ev));
    encode(buf, sample_event(ev));
    for (int delta : {-8, -1, 1, 24}) {
      auto b = resized(buf, delta);
      CHECK(decode_event(*parse_frame(b, byte_order::native)).err().code == errc::bad_size);
    }
    if (ev == event_id::unhook)
      continue;
    encode(buf, sample_event_reply(ev));
    for (int delta : {-1, 1, 8}) {
      // Sized by the reply's own event field: any other size closes.
      auto b = resized(buf, delta);
      CHECK(decode_from_tool(std::span<const uint8_t>(b)).err().code == errc::bad_size);
    }
  }
  // An event reply too short to hold kvmi_event_reply.
  std::vector<uint8_t> tiny{24, 0, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0};
  CHECK(decode_from_tool(std::span<const uint8_t>(tiny)).err().code == errc::bad_size);
  // Variable commands whose counts disagree with the payload.
  encode(buf, command_msg{1, get_page_access_cmd{{0, 2, 0, 0}, {1, 2}}});
  buf[8 + 2] = 3; // count 3, two gpas
  CHECK(decode_from_tool(std::span<const uint8_t>(buf)).err().code == errc::bad_size);
  encode(buf, command_msg{1, write_physical_cmd{{0x1000, 4}, {1, 2, 3, 4}}});
  buf[8 + 8] = 5;
  CHECK(decode_from_tool(std::span<const uint8_t>(buf)).err().code == errc::bad_size);
  buf[8 + 8] = 0;
  buf[8 + 9] = 0x20; // 8192: beyond one page
  CHECK(decode_from_tool(std::span<const uint8_t>(buf)).err().code == errc::oversize);
  // A registers reply whose nmsrs disagrees with its length.
  get_registers_cmd gr{{0, 1, {}}, {0x10}};
  auto rr = sample_reply(gr, 1);
  std::get<registers_reply>(rr.data).fixed.msrs.nmsrs = 2;
  encode(buf, rr);
  CHECK(decode_reply(*parse_frame(buf, byte_order::native), expected_reply(gr)).err().code
        == errc::bad_size);
  // An error reply with data, and a positive error code.
  std::vector<uint8_t> ebytes{6, 0, 12, 0, 1, 0, 0, 0, 0xea, 0xff, 0xff, 0xff, 0, 0, 0, 0,
                              1, 2, 3, 4};
  CHECK(decode_reply(*parse_frame(ebytes, byte_order::native), expected_reply(gr)).err().code
        == errc::bad_size);
  std::vector<uint8_t> pos{7, 0, 8, 0, 1, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0};
  CHECK(decode_reply(*parse_frame(pos, byte_order::native), expected_reply(set_registers{}))
          .err()
          .code
        == errc::bad_value);
}

TEST_CASE("decode never reads past a truncated payload") {
  // The frame claims the full size but carries fewer bytes: decoders must
  // go by the span. Exact-size heap copies let ASan see any over-read.
  for (auto o : orders) {
    for (auto& bytes : sample_frames(o)) {
      msg_hdr h = header_of(bytes, o);
      for (size_t n = 0; n + sizeof(msg_hdr) < bytes.size(); n += 1 + n / 8) {
        std::vector<uint8_t> payload(bytes.begin() + 8, bytes.begin() + 8 + n);
        frame f{h, payload};
        CAPTURE(h.id);
        CAPTURE(n);
        if (h.id == static_cast<uint16_t>(msg_id::event)) {
          CHECK_FALSE(decode_event(f, o).ok());
        } else {
          // Reply frames share ids with commands: checked as replies here,
          // as commands below.
          for (auto& c : sample_commands()) {
            if (static_cast<uint16_t>(id_of(c)) == h.id) {
              auto shape = expected_reply(c);
              if (!shape.variable || n < sizeof(error_code))
                CHECK_FALSE(decode_reply(f, shape, o).ok());
            }
          }
        }
      }
    }
  }
  // Every command cut short is refused, whatever its id.
  for (auto o : orders) {
    std::vector<uint8_t> bytes;
    uint32_t seq = 1;
    for (auto& c : sample_commands()) {
      encode(bytes, command_msg{seq++, c}, o);
      msg_hdr h = header_of(bytes, o);
      for (size_t n = 0; n + sizeof(msg_hdr) < bytes.size(); n += 1 + n / 8) {
        std::vector<uint8_t> payload(bytes.begin() + 8, bytes.begin() + 8 + n);
        CAPTURE(h.id);
        CAPTURE(n);
        CHECK_FALSE(decode_from_tool(frame{h, payload}, o).ok());
      }
    }
  }
}

TEST_CASE("decode survives seeded random garbage") {
  // Random headers with random payloads, and valid frames with random bytes
  // overwritten: every result is an error or a message that re-encodes to
  // the same bytes (decode is exact, never lossy).
  std::mt19937_64 rng(20261125);
  auto frames = sample_frames();
  std::vector<uint8_t> re;
  int decoded = 0, refused = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> b;
    if (iter % 2 == 0) {
      size_t n = rng() % 700;
      b.resize(n);
      for (auto& x : b)
        x = static_cast<uint8_t>(rng());
      if (n >= 8) {
        uint16_t id = static_cast<uint16_t>(rng() % 32);
        uint16_t size = static_cast<uint16_t>(n - 8);
        std::memcpy(b.data(), &id, 2);
        std::memcpy(b.data() + 2, &size, 2);
      }
    } else {
      b = frames[rng() % frames.size()];
      int flips = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < flips; ++k)
        b[rng() % b.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    auto o = (iter / 2) % 2 ? byte_order::swapped : byte_order::native;
    auto f = parse_frame(b, o);
    if (!f) {
      ++refused;
      continue;
    }
    auto d = decode_from_tool(*f, o);
    if (d.ok()) {
      ++decoded;
      std::visit([&](const auto& m) { encode(re, m, o); }, *d);
      CHECK(re == b);
    } else {
      ++refused;
    }
    auto e = decode_event(*f, o);
    if (e.ok()) {
      encode(re, *e, o);
      CHECK(re == b);
    }
    for (auto& c : sample_commands()) {
      auto r = decode_reply(*f, expected_reply(c), o);
      if (r.ok()) {
        encode(re, *r, o);
        CHECK(re == b);
      }
    }
  }
  CHECK(decoded > 0);
  CHECK(refused > 0);
}
