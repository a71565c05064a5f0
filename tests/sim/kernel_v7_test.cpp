// kvmi-sim --protocol v7 behaves like the kvmi-v7 kernel branch and its
// QEMU: driven through the v7 test introspector in mini_tool_v7.hpp over a
// real UNIX socket.
#include "kernel-patches/sim/sim.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/sim/mini_tool_v7.hpp"

#include <doctest/doctest.h>

#include <future>

using namespace kvmi::test;
namespace v7 = kvmi::v7;
using kvmi::action;

namespace {

constexpr uint64_t hot = 0x100000;
constexpr uint32_t msr_star = 0xc0000081;

std::vector<uint8_t> wrong_cookie() {
  std::string_view s = "not-the-secret!!";
  return {s.begin(), s.end()};
}

struct fixture {
  listener l;
  kvmi::sim::options o;
  std::unique_ptr<kvmi::sim::host> h;
  std::unique_ptr<v7tool::conn> c;

  // A host in v7 mode, without a secret unless the test sets one.
  template <class F>
  void start(F&& adjust) {
    o.unix_path = l.path();
    o.dialect = kvmi::sim::protocol::v7;
    o.vms = 1;
    o.vcpus_per_vm = 2;
    o.reconnect_delay = kvmi::sim::ms{10};
    adjust(o);
    h = std::make_unique<kvmi::sim::host>(o);
    h->start();
    c = accept_conn(test_cookie());
    REQUIRE(h->wait_until([&] { return h->hooked(0); }, 30000ms));
  }
  void start() {
    start([](kvmi::sim::options&) {});
  }
  std::unique_ptr<v7tool::conn> accept_conn(std::span<const uint8_t> cookie) {
    int fd = l.accept(30000ms);
    REQUIRE(fd >= 0);
    auto k = std::make_unique<v7tool::conn>(fd);
    REQUIRE(k->handshake(cookie));
    return k;
  }
  int32_t err_of(v7::command cmd, uint16_t vcpu = 0) {
    auto r = c->call(std::move(cmd), vcpu);
    REQUIRE(r);
    return r->err;
  }
  // libkvmi's kvmi_pause_all_vcpus: one PAUSE_VCPU{wait=1} per vCPU in a
  // batch; returns the PAUSE_VCPU events by vCPU.
  std::vector<v7::event_msg> pause_all() {
    std::vector<std::pair<v7::command, uint16_t>> cs;
    for (uint16_t i = 0; i < o.vcpus_per_vm; ++i)
      cs.emplace_back(v7::pause_vcpu{1, 0, 0, 0}, i);
    auto seqs = c->send_batch(std::move(cs));
    auto r = c->wait_reply(seqs.back());
    REQUIRE(r);
    REQUIRE(r->err == 0);
    std::vector<v7::event_msg> evs(o.vcpus_per_vm);
    for (uint32_t i = 0; i < o.vcpus_per_vm; ++i) {
      auto e = c->next_event();
      REQUIRE(e);
      REQUIRE(e->kind() == v7::event_id::pause_vcpu);
      evs[e->common.vcpu] = *e;
    }
    return evs;
  }
  // Enables vCPU events by id on vCPU 0 while it is paused, then resumes.
  void enable(std::vector<v7::event_id> ids, std::vector<v7::command> extra = {}) {
    auto p = pause_all();
    for (auto id : ids)
      CHECK(err_of(v7::control_events{uint16_t(id), 1, 0, 0}, 0) == 0);
    for (auto& x : extra)
      CHECK(err_of(x, 0) == 0);
    for (auto& e : p)
      c->reply(e, action::continue_);
  }
  // Everything the host sent before the reply to a GET_VERSION sent now
  // has arrived: what is not queued then was never sent.
  void sync() { REQUIRE(err_of(v7::get_version{}) == 0); }
  kvmi::sim::counters counts() { return h->vm_counters(0); }
  uint64_t violations() { return counts().violation_count(); }
};

template <class T>
T get(std::future<T>& f) {
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

} // namespace

TEST_CASE("sim v7: QEMU's 96-byte struct - without a secret any cookie hash hooks - GET_VERSION") {
  fixture f;
  f.start();
  CHECK(f.c->hello().struct_size == 96);
  CHECK(f.c->hello().name == "sim-vm-0");
  CHECK(f.c->hello().uuid == f.h->vm(0).uuid);
  auto r = f.c->call(v7::get_version{});
  REQUIRE(r);
  REQUIRE(r->err == 0);
  auto& v = std::get<v7::version_reply>(r->data);
  CHECK(v.fixed.version == 1);
  CHECK(v.has_features);
  auto gi = f.c->call(v7::get_guest_info{});
  REQUIRE(gi);
  CHECK(std::get<v7::get_guest_info_reply>(gi->data).vcpu_count == 2);
  auto mg = f.c->call(v7::get_max_gfn{});
  REQUIRE(mg);
  CHECK(std::get<v7::get_max_gfn_reply>(mg->data).gfn == (256u << 20) / 4096 - 1);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: the max-gpa layout appends the highest gpa") {
  fixture f;
  f.o.v7_hello = kvmi::sim::qemu_v7_hello::max_gpa;
  f.start();
  CHECK(f.c->hello().struct_size == 104);
  REQUIRE(f.c->hello().max_gpa);
  CHECK(*f.c->hello().max_gpa > (256u << 20));
}

TEST_CASE("sim v7: with a secret a wrong cookie hash is refused and counted - the right one hooks") {
  fixture f;
  f.o.unix_path = f.l.path();
  f.o.dialect = kvmi::sim::protocol::v7;
  f.o.cookie = test_cookie();
  f.o.reconnect_delay = kvmi::sim::ms{10};
  f.h = std::make_unique<kvmi::sim::host>(f.o);
  f.h->start();
  {
    auto bad = f.accept_conn(wrong_cookie());
    CHECK(bad->wait_closed());
  }
  REQUIRE(f.h->wait_until([&] { return f.counts().handshake_failures == 1; }, 30000ms));
  CHECK_FALSE(f.h->hooked(0));
  f.c = f.accept_conn(test_cookie());
  REQUIRE(f.h->wait_until([&] { return f.h->hooked(0); }, 30000ms));
  CHECK(f.err_of(v7::get_version{}) == 0);
  CHECK(f.counts().sessions == 1);
}

TEST_CASE("sim v7: a PAUSE_VCPU batch gets one reply - the last CCR - and one PAUSE_VCPU event per command") {
  fixture f;
  f.start();
  auto p = f.pause_all();
  for (uint16_t i = 0; i < 2; ++i) {
    CHECK(p[i].common.size == sizeof(v7::event));
    CHECK(p[i].common.vcpu == i);
  }
  f.sync();
  CHECK(f.c->queued_replies() == 0); // neither CCR{0} nor the PAUSE_VCPUs answered
  CHECK(f.c->queued_events() == 0);
  // Two commands for one vCPU: two events, one after the other's reply.
  for (auto& e : p)
    f.c->reply(e, action::continue_);
  auto seqs = f.c->send_batch({{v7::pause_vcpu{1, 0, 0, 0}, 1}, {v7::pause_vcpu{1, 0, 0, 0}, 1}});
  REQUIRE(f.c->wait_reply(seqs.back()));
  auto e1 = f.c->next_event();
  REQUIRE(e1);
  CHECK(e1->kind() == v7::event_id::pause_vcpu);
  CHECK(e1->common.vcpu == 1);
  f.c->reply(*e1, action::continue_);
  auto e2 = f.c->next_event();
  REQUIRE(e2);
  CHECK(e2->common.vcpu == 1);
  f.c->reply(*e2, action::continue_);
  f.sync();
  CHECK(f.c->queued_events() == 0);
  CHECK(f.counts().events[size_t(kvmi::event_id::pause_vcpu)] == 4);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: CCR{enable 1 now 0} is not answered itself - the commands after it are") {
  fixture f;
  f.start();
  auto off = f.c->send(v7::control_cmd_response{0, 1, 0, 0});
  auto quiet = f.c->send(v7::get_guest_info{});
  auto on_later = f.c->send(v7::control_cmd_response{1, 0, 0, 0});
  f.sync();
  CHECK(f.c->queued_replies() == 0);
  (void)off, (void)quiet, (void)on_later;
  CHECK(f.counts().commands["get_guest_info"] == 1);
}

TEST_CASE("sim v7: CR and MSR events only once enabled by id - new_val applies - a short reply is zero-filled") {
  fixture f;
  f.start();
  // Watched but the MSR event not enabled: no event.
  auto p = f.pause_all();
  CHECK(f.err_of(v7::control_msr{1, 0, 0, msr_star}, 0) == 0);
  CHECK(f.err_of(v7::control_cr{1, 0, 0, 4}, 0) == 0);
  for (auto& e : p)
    f.c->reply(e, action::continue_);
  auto quiet = f.h->write_msr(0, 0, msr_star, 0x1111);
  auto q = get(quiet);
  CHECK(q.events == 0);
  CHECK(q.value == 0x1111);

  f.enable({v7::event_id::cr, v7::event_id::msr});
  auto cr = f.h->write_cr(0, 0, 4, 0x3406f0);
  auto ce = f.c->next_event();
  REQUIRE(ce);
  REQUIRE(ce->kind() == v7::event_id::cr);
  CHECK(ce->common.vcpu == 0);
  CHECK(std::get<kvmi::event_cr>(ce->data).new_value == 0x3406f0);
  f.c->reply(*ce, action::continue_, 0x3406e0);
  CHECK(get(cr).value == 0x3406e0);

  // 16 of the 24 bytes: the kernel reads new_val as 0.
  auto msr = f.h->write_msr(0, 0, msr_star, 0x2222);
  auto me = f.c->next_event();
  REQUIRE(me);
  REQUIRE(me->kind() == v7::event_id::msr);
  f.c->reply(*me, action::continue_, std::nullopt, 16);
  auto mo = get(msr);
  CHECK(mo.events == 1);
  CHECK(mo.value == 0);
  CHECK(f.h->msr(0, 0, msr_star) == 0u);
  CHECK(f.violations() == 0);
  CHECK(f.counts().replies[0] == 6); // 2 x 2 pauses, CR, MSR
}

TEST_CASE("sim v7: an event reply longer than the kernel's struct is a violation and closes") {
  fixture f;
  f.start();
  f.enable({v7::event_id::cr}, {v7::control_cr{1, 0, 0, 4}});
  auto cr = f.h->write_cr(0, 0, 4, 0x3406f0);
  auto ce = f.c->next_event();
  REQUIRE(ce);
  f.c->reply(*ce, action::continue_, std::nullopt, 0, 8);
  CHECK(f.c->wait_closed());
  CHECK(get(cr).aborted);
  REQUIRE(f.h->wait_until([&] { return f.counts().violations["reply_bad_size"] == 1; }, 30000ms));
}

TEST_CASE("sim v7: SET_PAGE_ACCESS is a VM command on view 0 - PF with the access - RETRY re-executes") {
  fixture f;
  f.start();
  f.enable({v7::event_id::pf});
  v7::set_page_access_cmd sp{{0, 1, 0}, {v7::page_access_entry{hot, kvmi::page_access_r, 0, 0, 0}}};
  CHECK(f.err_of(sp) == 0);
  auto view1 = sp;
  view1.req.view = 1;
  CHECK(f.err_of(view1) == -kvmi::kvm_einval);
  auto ga = f.c->call(v7::get_page_access_cmd{{0, 1, 0}, {hot}});
  REQUIRE(ga);
  REQUIRE(ga->err == 0);
  CHECK(std::get<v7::page_access_reply>(ga->data).access == std::vector<uint8_t>{kvmi::page_access_r});
  CHECK(f.h->page_access(0, hot) == kvmi::page_access_r);

  auto w = f.h->access(0, 0, hot + 8, kvmi::page_access_w);
  auto pf = f.c->next_event();
  REQUIRE(pf);
  REQUIRE(pf->kind() == v7::event_id::pf);
  auto& d = std::get<v7::event_pf>(pf->data);
  CHECK(d.gpa == hot + 8);
  CHECK(d.access == kvmi::page_access_w);
  CHECK(d.view == 0);
  // RETRY with the page still read-only: the same PF again.
  f.c->reply(*pf, action::retry);
  auto again = f.c->next_event();
  REQUIRE(again);
  CHECK(again->kind() == v7::event_id::pf);
  sp.entries[0].access = kvmi::page_access_rwx;
  CHECK(f.err_of(sp) == 0);
  f.c->reply(*again, action::retry);
  auto o = get(w);
  CHECK(o.allowed);
  CHECK(o.events == 2);
  CHECK(f.counts().pf_retried == 2);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: with page walks a write-protected page table raises PF on the table first") {
  fixture f;
  f.o.workload.page_walks = true;
  f.start();
  f.enable({v7::event_id::pf});
  auto cr3 = *f.h->cr(0, 0, 3) & ~uint64_t{0xfff};
  v7::set_page_access_cmd sp{{0, 1, 0}, {v7::page_access_entry{cr3, uint8_t(kvmi::page_access_r | kvmi::page_access_x), 0, 0, 0}}};
  CHECK(f.err_of(sp) == 0);
  auto r = f.h->access(0, 0, hot, kvmi::page_access_r);
  auto pf = f.c->next_event();
  REQUIRE(pf);
  REQUIRE(pf->kind() == v7::event_id::pf);
  CHECK(std::get<v7::event_pf>(pf->data).gpa == cr3);
  CHECK(std::get<v7::event_pf>(pf->data).access == kvmi::page_access_w);
  f.c->reply(*pf, action::continue_);
  auto o = get(r);
  CHECK(o.allowed);
  CHECK(o.events == 1);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: SINGLESTEP events only while both the event and singlestep are on - never event 12") {
  fixture f;
  f.start();
  auto p = f.pause_all();
  // Singlestep without the event enabled: no event.
  CHECK(f.err_of(v7::vcpu_control_singlestep{1, {}}, 0) == 0);
  f.c->reply(p[1], action::continue_);
  f.c->reply(p[0], action::continue_);
  f.sync();
  CHECK(f.c->queued_events() == 0);
  CHECK(f.err_of(v7::control_events{12, 1, 0, 0}, 0) == -kvmi::kvm_einval); // CMD_ERROR
  CHECK(f.err_of(v7::check_event{12, 0, 0}) == -kvmi::kvm_eperm);
  CHECK(f.err_of(v7::check_event{11, 0, 0}) == 0);

  CHECK(f.err_of(v7::control_events{uint16_t(v7::event_id::singlestep), 1, 0, 0}, 0) == 0);
  auto s1 = f.c->next_event();
  REQUIRE(s1);
  REQUIRE(s1->kind() == v7::event_id::singlestep);
  CHECK(std::get<v7::event_singlestep>(s1->data).failed == 0);
  auto rip = s1->common.arch.regs.rip;
  f.c->reply(*s1, action::continue_);
  auto s2 = f.c->next_event();
  REQUIRE(s2);
  REQUIRE(s2->kind() == v7::event_id::singlestep);
  CHECK(s2->common.arch.regs.rip == rip + 1);
  CHECK(f.err_of(v7::vcpu_control_singlestep{0, {}}, 0) == 0);
  f.c->reply(*s2, action::continue_);
  f.sync();
  CHECK(f.c->queued_events() == 0);
  CHECK(f.counts().v7_events["singlestep"] == 2);
  CHECK(f.counts().v7_events.size() == 1); // no CMD_ERROR, no CPUID
  CHECK(f.counts().violations["invalid_command"] == 1); // CONTROL_EVENTS for 12
  CHECK(f.violations() == 1);
}

// How a tool puts a breakpoint back behind its instruction: restore the
// byte, single-step, RETRY; the SINGLESTEP comes after the original
// instruction ran, and the INT3 written then fires on the next execution.
TEST_CASE("sim v7: a single-stepped vCPU runs the instruction under a restored INT3 before its SINGLESTEP - the INT3 put back fires again") {
  fixture f;
  f.start();
  constexpr uint64_t at = hot + 0x40;
  constexpr uint8_t original = 0x55;
  f.h->guest_write(0, at, {original});
  f.enable({v7::event_id::breakpoint});
  constexpr int n = 3;
  for (int i = 0; i < n; ++i) {
    INFO("execution " << i);
    CHECK(f.err_of(v7::write_physical_cmd{{at, 1}, {0xcc}}) == 0);
    auto x = f.h->execute(0, 0, at);
    auto bp = f.c->next_event();
    REQUIRE(bp);
    REQUIRE(bp->kind() == v7::event_id::breakpoint);
    CHECK(std::get<v7::event_breakpoint>(bp->data).gpa == at);
    CHECK(f.err_of(v7::write_physical_cmd{{at, 1}, {original}}) == 0);
    CHECK(f.err_of(v7::control_events{uint16_t(v7::event_id::singlestep), 1, 0, 0}, 0) == 0);
    CHECK(f.err_of(v7::vcpu_control_singlestep{1, {}}, 0) == 0);
    f.c->reply(*bp, action::retry);
    auto ss = f.c->next_event();
    REQUIRE(ss);
    REQUIRE(ss->kind() == v7::event_id::singlestep);
    // The instruction ran: the execution is over, without a #BP.
    auto o = get(x);
    CHECK(o.events == 1);
    CHECK(o.reply == action::retry);
    CHECK_FALSE(o.guest_exception);
    CHECK(f.err_of(v7::write_physical_cmd{{at, 1}, {0xcc}}) == 0);
    CHECK(f.err_of(v7::vcpu_control_singlestep{0, {}}, 0) == 0);
    f.c->reply(*ss, action::continue_);
    f.sync();
    CHECK(f.c->queued_events() == 0); // single-stepping is off again
    CHECK(f.err_of(v7::write_physical_cmd{{at, 1}, {original}}) == 0);
  }
  CHECK(f.counts().breakpoint_hits == uint64_t(n));
  CHECK(f.counts().v7_events["singlestep"] == uint64_t(n));
  CHECK(f.h->memory(0, at, 1)[0] == original);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: unknown ids ENOSYS - absent features EOPNOTSUPP - messages up to 8184 bytes") {
  fixture f;
  f.start();
  auto unknown = f.c->send_raw(50, std::vector<uint8_t>(8, 0));
  auto r = f.c->wait_reply(unknown);
  REQUIRE(r);
  CHECK(r->err == -kvmi::kvm_enosys);
  auto mtrr = f.c->send_raw(uint16_t(v7::msg_id::get_mtrr_type), std::vector<uint8_t>(16, 0));
  r = f.c->wait_reply(mtrr);
  REQUIRE(r);
  CHECK(r->err == -kvmi::kvm_eopnotsupp);
  // 511 entries: 8 + 16 * 511 = 8184 bytes.
  v7::set_page_access_cmd big{{0, 511, 0}, {}};
  for (uint64_t i = 0; i < 511; ++i)
    big.entries.push_back(v7::page_access_entry{hot + i * 4096, kvmi::page_access_rwx, 0, 0, 0});
  CHECK(f.err_of(big) == 0);
  CHECK(f.violations() == 0);
  CHECK_FALSE(f.c->closed());
}

TEST_CASE("sim v7: fault injection speaks v7 - a stray GET_VERSION reply and a torn event") {
  fixture f;
  f.start();
  auto stray = f.h->inject_fault(0, "unknown_seq_reply");
  REQUIRE(get(stray).ok);
  f.sync();
  CHECK(f.c->queued_replies() == 1); // the stray one, decodable as v7
  auto torn = f.h->inject_fault(0, "torn");
  auto p = f.pause_all();
  CHECK(get(torn).ok);
  for (auto& e : p)
    f.c->reply(e, action::continue_);
  CHECK(f.violations() == 0);
}

TEST_CASE("sim v7: the E820 layout carries the CPU type and the memory map") {
  fixture f;
  f.o.v7_hello = kvmi::sim::qemu_v7_hello::e820;
  f.o.unix_path = f.l.path();
  f.o.dialect = kvmi::sim::protocol::v7;
  f.h = std::make_unique<kvmi::sim::host>(f.o);
  f.h->start();
  int fd = f.l.accept(30000ms);
  REQUIRE(fd >= 0);
  f.c = std::make_unique<v7tool::conn>(fd);
  REQUIRE(f.c->handshake(test_cookie(), v7::hs::layout::e820));
  auto& h = f.c->hello();
  auto regions = f.h->vm(0).regions;
  CHECK(h.struct_size == 104 + 24 * regions.size());
  CHECK(h.cpu_type == v7::hs::cpu_type_x86_64);
  REQUIRE(h.e820.size() == regions.size());
  CHECK(h.e820[0].address == 0);
  CHECK(h.e820[0].type == 1); // RAM: usable
  CHECK_FALSE(static_cast<bool>(v7::hs::check(h, v7::hs::layout::e820)));
  REQUIRE(f.h->wait_until([&] { return f.h->hooked(0); }, 30000ms));
}

TEST_CASE("sim v7: vCPU queries on a paused vCPU and guest memory - as libkvmi asks for them") {
  fixture f;
  f.start();
  auto p = f.pause_all();
  auto regs = f.c->call(v7::get_registers_cmd{{2, 0, 0}, {0xc0000082, 0xc0000080}}, 1);
  REQUIRE(regs);
  REQUIRE(regs->err == 0);
  auto& rr = std::get<v7::registers_reply>(regs->data);
  CHECK(rr.fixed.mode == 8);
  CHECK(rr.fixed.regs.rip == p[1].common.arch.regs.rip);
  REQUIRE(rr.msrs.size() == 2);
  CHECK(rr.msrs[0].data == *f.h->msr(0, 1, 0xc0000082));
  auto unknown_msr = f.c->call(v7::get_registers_cmd{{1, 0, 0}, {0x12345}}, 1);
  REQUIRE(unknown_msr);
  CHECK(unknown_msr->err == -kvmi::kvm_einval);
  auto id = f.c->call(v7::get_cpuid{0, 0}, 0);
  REQUIRE(id);
  CHECK(std::get<kvmi::get_cpuid_reply>(id->data).ebx == 0x756e6547); // "Genu"
  CHECK(f.err_of(v7::get_cpuid{0x4711, 0}, 0) == -kvmi::kvm_enoent);
  auto xs = f.c->call(v7::get_xsave{}, 0);
  REQUIRE(xs);
  CHECK(std::get<v7::xsave_reply>(xs->data).region.size() == kvmi::xsave_size);
  auto tsc = f.c->call(v7::get_vcpu_info{}, 0);
  REQUIRE(tsc);
  CHECK(std::get<v7::get_vcpu_info_reply>(tsc->data).tsc_speed > 0);
  CHECK(f.err_of(v7::get_vcpu_info{}, 7) == -kvmi::kvm_einval); // no vCPU 7
  CHECK(f.err_of(v7::write_physical_cmd{{0x2000, 3}, {1, 2, 3}}) == 0);
  auto rd = f.c->call(v7::read_physical{0x2000, 3});
  REQUIRE(rd);
  CHECK(std::get<v7::physical_data>(rd->data).data == std::vector<uint8_t>{1, 2, 3});
  auto tok = f.c->call(v7::get_map_token{});
  REQUIRE(tok);
  CHECK(tok->err == 0);
  for (auto& e : p)
    f.c->reply(e, action::continue_);
  // On a running vCPU: queued to it, served from its thread, counted.
  auto before = f.counts().commands_on_running_vcpus;
  CHECK(f.err_of(v7::get_vcpu_info{}, 1) == 0);
  CHECK(f.counts().commands_on_running_vcpus == before + 1);
  CHECK(f.violations() == 0);
}
