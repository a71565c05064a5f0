// kvmid with a "protocol": "v7" listener against a v7 host written with
// proto/v7 (tests/support/v7_host.hpp), in one process over a UNIX socket:
// QEMU's handshake, the bootstrap (pause batch, per-id enables, page
// access), events answered with the v7 reply sizes, and frames kvmid must
// not trust.
#include "actors/core.hpp"
#include "server/kvmi_session.hpp"
#include "server/reactor.hpp"
#include "tests/support/metric_sum.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/v7_host.hpp"
#include "tests/support/wait.hpp"

#include <algorithm>
#include <memory>

using namespace kvmid;
using namespace std::chrono_literals;
namespace v7 = kvmi::v7;
using test::v7_host;

namespace {

constexpr uint64_t protected_gpa = 0x10000;

struct v7_kvmid {
  test::temp_dir tmp{"v7-session"};
  std::string sock = (tmp.path() / "kvmi.sock").string();
  std::vector<uint8_t> cookie = std::vector<uint8_t>(32, 0x37);
  std::unique_ptr<core> c;
  std::unique_ptr<net::reactor> r;

  explicit v7_kvmid(policy_set ps = {}) {
    core_options co;
    co.policies = std::move(ps);
    co.command_timeout = 5000ms;
    c = std::make_unique<core>(co);
    r = std::make_unique<net::reactor>(net::reactor_options{});
    kvmi_listener_options lo;
    lo.cookie = cookie;
    lo.proto = protocol::v7;
    lo.handshake_timeout = 10000ms;
    net::listen_spec s;
    s.path = sock;
    r->add_listener(s, kvmi_handler_factory(*r, *c, lo));
    r->start();
  }
  ~v7_kvmid() {
    r->stop();
    c.reset();
  }

  double metric(const std::string& name, const std::string& label = {},
                const std::string& value = {}) {
    return test::metric_sum(c->metrics(), name, label, value);
  }
  bool wait_metric(const std::string& name, const std::string& label, const std::string& value,
                   double want) {
    return test::wait_until([&] { return metric(name, label, value) >= want; },
                            name + "{" + label + "=\"" + value + "\"} to reach "
                              + std::to_string(want));
  }
};

policy_set protect_page() {
  vm_policy p;
  p.name = "v7";
  p.match = {"*"};
  p.pages.push_back({"text", protected_gpa, kvmi::page_size, kvmi::page_access_r, {}});
  policy_set ps;
  ps.policies.push_back(std::move(p));
  return ps;
}

// Handshake done and every vCPU stopped in its set-up PAUSE event got its
// 16-byte reply: kvmid configured the VM.
void hook(v7_host& h, uint32_t struct_size = 104, std::optional<uint64_t> max_gpa = 1ull << 30) {
  REQUIRE(h.hello(struct_size, max_gpa));
  auto a = h.answer();
  REQUIRE(a);
  REQUIRE(h.serve_until([&] {
    return h.pauses_asked >= h.vcpus
           && size_t(std::count_if(h.replies.begin(), h.replies.end(), [](auto& r) {
                return r.msg.common.event == uint8_t(v7::event_id::pause_vcpu);
              })) >= h.vcpus;
  }));
}

template <class T>
std::vector<const v7::command_msg*> sent(const v7_host& h) {
  std::vector<const v7::command_msg*> out;
  for (auto& c : h.commands)
    if (std::holds_alternative<T>(c.body))
      out.push_back(&c);
  return out;
}

bool replied(const v7_host& h, size_t index) {
  return std::find(h.replied.begin(), h.replied.end(), index) != h.replied.end();
}

// One event to vCPU `vcpu`, served until kvmid replies to it.
const test::v7_event_reply* answer_to(v7_host& h, uint16_t vcpu, v7::event_id kind,
                                      v7::event_data data = {}) {
  uint32_t seq = h.next_seq;
  h.event(vcpu, kind, std::move(data));
  auto find = [&]() -> const test::v7_event_reply* {
    for (auto& r : h.replies)
      if (r.hdr.seq == seq)
        return &r;
    return nullptr;
  };
  if (!h.serve_until([&] { return find() != nullptr; }))
    return nullptr;
  return find();
}

} // namespace

TEST_CASE("v7 handshake answers with the SHA-1 of the cookie and the session starts") {
  v7_kvmid k;
  v7_host h(k.sock);
  REQUIRE(h.hello(96));
  auto a = h.answer();
  REQUIRE(a);
  CHECK(a->struct_size == sizeof(v7::hs::tool_answer));
  CHECK(v7::hs::cookie_matches(*a, k.cookie));
  REQUIRE(h.serve_until([&] { return !sent<v7::get_version>(h).empty(); }));
  CHECK(k.wait_metric("kvmid_vms", {}, {}, 1));
}

TEST_CASE("a QEMU with another secret sees the wrong hash and hangs up") {
  v7_kvmid k;
  {
    v7_host h(k.sock);
    REQUIRE(h.hello(104, 1ull << 30));
    auto a = h.answer();
    REQUIRE(a);
    // QEMU compares the hash with its own secret's and hangs up (with
    // kvmid's GET_VERSION unread: a reset, as a real QEMU's may be).
    CHECK_FALSE(v7::hs::cookie_matches(*a, std::vector<uint8_t>(32, 0x38)));
    REQUIRE(h.serve_until([&] { return !h.commands.empty(); })); // kvmid started the session
  }
  CHECK(k.wait_metric("kvmid_vm_disconnects_total", {}, {}, 1));
  CHECK(test::wait_until([&] { return k.metric("kvmid_vms") == 0; }, "the VM gone"));
  CHECK(k.metric("kvmid_handshake_failures_total") == 0); // kvmid's part succeeded
}

TEST_CASE("v7 handshake takes struct sizes from 32 to 64 KiB and consumes what it does not know") {
  v7_kvmid k;
  for (uint32_t size : {32u, 96u, 104u, 4096u, 65536u}) {
    CAPTURE(size);
    v7_host h(k.sock);
    REQUIRE(h.hello(size, size >= 104 ? std::optional<uint64_t>(1ull << 30) : std::nullopt));
    auto a = h.answer();
    REQUIRE(a);
    CHECK(v7::hs::cookie_matches(*a, k.cookie));
    // The first frame kvmid reads is a command reply, not the hello's tail.
    REQUIRE(h.serve_until([&] { return !sent<v7::get_guest_info>(h).empty(); }));
  }
  CHECK(k.metric("kvmid_handshake_failures_total") == 0);
  CHECK(k.metric("kvmid_protocol_errors_total") == 0);
}

TEST_CASE("v7 handshake refuses struct sizes below 32 or above 64 KiB as bad_size") {
  v7_kvmid k;
  for (uint32_t size : {31u, 65537u, 0xFFFFFFFFu}) {
    CAPTURE(size);
    v7_host h(k.sock);
    // struct_size alone: kvmid refuses it before reading further.
    std::vector<uint8_t> b(4);
    std::memcpy(b.data(), &size, 4);
    REQUIRE(h.send(b));
    CHECK(h.closed_by_kvmid());
  }
  CHECK(k.wait_metric("kvmid_handshake_failures_total", "reason", "bad_size", 3));
}

TEST_CASE("v7 bootstrap pauses every vCPU in one batch answered once and enables events per id") {
  v7_kvmid k;
  v7_host h(k.sock);
  h.vcpus = 3;
  hook(h);
  // CONTROL_CMD_RESPONSE{off} + PAUSE_VCPU x3 + CONTROL_CMD_RESPONSE{on}.
  auto pauses = sent<v7::pause_vcpu>(h);
  REQUIRE(pauses.size() == 3);
  size_t first = size_t(pauses.front() - h.commands.data());
  REQUIRE(first >= 1);
  REQUIRE(first + 3 < h.commands.size());
  auto& off = std::get<v7::control_cmd_response>(h.commands[first - 1].body);
  auto& on = std::get<v7::control_cmd_response>(h.commands[first + 3].body);
  CHECK((off.enable == 0 && off.now == 1));
  CHECK((on.enable == 1 && on.now == 1));
  for (uint16_t i = 0; i < 3; ++i) {
    CHECK(h.commands[first + i].vcpu == i);
    CHECK(std::get<v7::pause_vcpu>(h.commands[first + i].body).wait == 1);
    CHECK_FALSE(replied(h, first + i));
  }
  CHECK_FALSE(replied(h, first - 1));
  CHECK(replied(h, first + 3));
  // Event enables, one id per command: PAUSE_VCPU on every vCPU, UNHOOK
  // and CREATE_VCPU for the VM.
  for (uint16_t i = 0; i < 3; ++i)
    CHECK(h.enabled[i].count(uint16_t(v7::event_id::pause_vcpu)) == 1);
  CHECK(h.vm_enabled.count(uint16_t(v7::event_id::unhook)) == 1);
  CHECK(h.vm_enabled.count(uint16_t(v7::event_id::create_vcpu)) == 1);
  CHECK(k.metric("kvmid_protocol_errors_total") == 0);
}

TEST_CASE("v7 page access is one VM command on view 0") {
  v7_kvmid k(protect_page());
  v7_host h(k.sock);
  hook(h);
  REQUIRE(h.serve_until([&] { return h.access.count(protected_gpa) == 1; }));
  CHECK(h.access[protected_gpa] == kvmi::page_access_r);
  for (auto* c : sent<v7::set_page_access_cmd>(h))
    CHECK(c->vcpu == 0);
  CHECK(std::all_of(h.views.begin(), h.views.end(), [](uint16_t v) { return v == 0; }));
  // Page faults are enabled for the rule.
  CHECK(h.enabled[0].count(uint16_t(v7::event_id::pf)) == 1);
}

TEST_CASE("without a memory bound from QEMU kvmid asks GET_MAX_GFN before the session starts") {
  v7_kvmid k(protect_page());
  v7_host h(k.sock);
  hook(h, 96, std::nullopt);
  auto gfn = sent<v7::get_max_gfn>(h);
  REQUIRE(gfn.size() == 1);
  CHECK(gfn.front() == &h.commands.front()); // before GET_VERSION
  REQUIRE(h.serve_until([&] { return h.access.count(protected_gpa) == 1; }));
  CHECK(h.access[protected_gpa] == kvmi::page_access_r);
}

TEST_CASE("a page rule past the GET_MAX_GFN bound is refused") {
  v7_kvmid k(protect_page());
  v7_host h(k.sock);
  h.max_gfn = protected_gpa / 4096 - 1; // the guest ends below the rule's page
  hook(h, 96, std::nullopt); // the set-up ran before the PAUSE replies
  CHECK(h.access.count(protected_gpa) == 0);
  CHECK(k.metric("kvmid_protocol_errors_total") == 0);
}

TEST_CASE("v7 events are answered on their vCPU with replies of 16 and 24 and 288 bytes") {
  v7_kvmid k(protect_page());
  v7_host h(k.sock);
  hook(h);
  struct want {
    uint16_t vcpu;
    v7::event_id kind;
    v7::event_data data;
    uint16_t size;
  };
  std::vector<want> cases = {
    {0, v7::event_id::cr, v7::event_cr{4, {}, 0x1000, 0x1000}, 24},
    {1, v7::event_id::msr, v7::event_msr{0xc0000082, 0, 1, 2}, 24},
    {0, v7::event_id::pf, v7::event_pf{0xffff0000, protected_gpa, kvmi::page_access_w, 0, 0, 0}, 288},
    {1, v7::event_id::breakpoint, v7::event_breakpoint{0x2000, 1, {}}, 16},
    {0, v7::event_id::xsetbv, {}, 16},
    {1, v7::event_id::hypercall, {}, 16},
    {0, v7::event_id::trap, v7::event_trap{3, 0, 0, 0, 0}, 16},
    {1, v7::event_id::descriptor, v7::event_descriptor{1, 0, {}}, 16},
    {0, v7::event_id::pause_vcpu, {}, 16},
  };
  for (auto& w : cases) {
    CAPTURE(int(w.kind));
    auto* r = answer_to(h, w.vcpu, w.kind, w.data);
    REQUIRE(r);
    CHECK(r->hdr.size == w.size);
    CHECK(r->msg.vcpu == w.vcpu);
    CHECK(r->msg.common.event == uint8_t(w.kind));
  }
  CHECK(k.metric("kvmid_protocol_errors_total") == 0);
}

TEST_CASE("an over-long v7 message closes that VM's socket and is counted") {
  v7_kvmid k;
  v7_host h(k.sock);
  hook(h);
  kvmi::msg_hdr hdr{uint16_t(v7::msg_id::event), uint16_t(v7::max_payload + 1), h.next_seq++};
  std::vector<uint8_t> b(sizeof hdr);
  std::memcpy(b.data(), &hdr, sizeof hdr);
  REQUIRE(h.send(b));
  CHECK(h.closed_by_kvmid());
  CHECK(k.wait_metric("kvmid_vm_disconnects_total", "reason", "protocol_error", 1));
  CHECK(k.wait_metric("kvmid_protocol_errors_total", {}, {}, 1));
}

TEST_CASE("a v7 event whose common part is not 544 bytes closes that VM's socket and is counted") {
  v7_kvmid k;
  v7_host h(k.sock);
  hook(h);
  v7::event_msg e;
  e.seq = h.next_seq++;
  e.common.size = sizeof(v7::event) - 8;
  e.common.event = uint8_t(v7::event_id::xsetbv);
  e.common.arch.mode = 8;
  std::vector<uint8_t> b;
  v7::encode(b, e);
  REQUIRE(h.send(b));
  CHECK(h.closed_by_kvmid());
  CHECK(k.wait_metric("kvmid_vm_disconnects_total", "reason", "protocol_error", 1));
}
