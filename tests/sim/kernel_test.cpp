// kvmi-sim behaves like the v5 kernel: driven through the minimal test
// introspector in mini_tool.hpp over a real UNIX socket.
#include "kernel-patches/sim/sim.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/support/constants.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <future>
#include <map>
#include <random>

#include <arpa/inet.h>
#include <netinet/in.h>

using namespace kvmi;
using namespace kvmi::test;
using sim::outcome;

namespace {

using kvmid::test::msr_lstar;
constexpr uint64_t hot = 0x100000;

struct fixture {
  listener l;
  sim::options o;
  std::unique_ptr<sim::host> h;
  std::unique_ptr<conn> c;

  template <class F>
  void start(F&& adjust) {
    o.unix_path = l.path();
    o.cookie = test_cookie();
    o.vms = 1;
    o.vcpus_per_vm = 2;
    o.reconnect_delay = sim::ms{10};
    adjust(o);
    h = std::make_unique<sim::host>(o);
    h->start();
    c = accept_conn();
  }
  void start() {
    start([](sim::options&) {});
  }
  std::unique_ptr<conn> accept_conn(hs::mode m = hs::mode::kvmi) {
    int fd = l.accept(30000ms);
    REQUIRE(fd >= 0);
    auto k = std::make_unique<conn>(fd, test_cookie(), m);
    REQUIRE(k->handshake());
    REQUIRE(h->wait_until([&] { return h->hooked(0); }, 30000ms));
    return k;
  }
  // PAUSE_ALL_VCPUS; returns one PAUSE_VCPU event per vCPU, by vCPU.
  std::vector<event_msg> pause_all() {
    auto r = c->call(pause_all_vcpus{});
    REQUIRE(r);
    REQUIRE(r->err == 0);
    auto n = std::get<pause_all_vcpus_reply>(r->data).vcpu_count;
    std::vector<event_msg> evs(n);
    for (uint32_t i = 0; i < n; ++i) {
      auto e = c->next_event();
      REQUIRE(e);
      REQUIRE(e->kind() == event_id::pause_vcpu);
      REQUIRE(e->common.vcpu < n);
      evs[e->common.vcpu] = *e;
    }
    return evs;
  }
  int32_t err_of(command cmd) {
    auto r = c->call(std::move(cmd));
    REQUIRE(r);
    return r->err;
  }
  // Enables events on vCPU 0 while it is paused, then resumes everyone.
  void enable(uint32_t events, std::vector<command> extra = {}) {
    auto p = pause_all();
    CHECK(err_of(control_events{0, 0, events}) == 0);
    for (auto& x : extra)
      CHECK(err_of(x) == 0);
    for (auto& e : p)
      c->reply(e, action::continue_);
  }
  sim::counters counts() { return h->vm_counters(0); }
  uint64_t violations(const std::string& k) {
    auto v = counts().violations;
    return v.count(k) ? v[k] : 0;
  }
};

template <class T>
T get(std::future<T>& f) {
  REQUIRE(f.wait_for(30s) == std::future_status::ready);
  return f.get();
}

} // namespace

TEST_CASE("sim: handshake carries uuid, name, vcpus and the memory map - GET_VERSION reports masks") {
  fixture f;
  f.start([](sim::options& o) { o.memory.gpus.push_back(sim::gpu_spec{32ull << 30, std::nullopt}); });
  auto view = f.h->vm(0);
  CHECK(f.c->info().id == view.uuid);
  CHECK(f.c->info().name == view.name);
  CHECK(f.c->info().vcpu_count == 2);
  REQUIRE(f.c->info().regions.size() == view.regions.size());
  bool gpu = false, atsd = false;
  for (auto& r : f.c->info().regions) {
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram)) {
      gpu = true;
      CHECK(r.size == (32ull << 30));
      CHECK((r.flags & hs::region_online) == 0);
      CHECK(r.tgt != 0);
    }
    if (r.type == uint32_t(hs::region_type::nvlink2_atsd)) {
      atsd = true;
      CHECK(r.size == 64 * 1024);
    }
  }
  CHECK(gpu);
  CHECK(atsd);
  auto r = f.c->call(get_version{});
  REQUIRE(r);
  REQUIRE(r->err == 0);
  auto v = std::get<get_version_reply>(r->data);
  CHECK(v.version == kvmi::version);
  CHECK(v.commands == 0x1F8EFCCA);
  CHECK(v.events == 0x7FF);
}

TEST_CASE("sim: vCPU commands on a running vCPU are served and counted") {
  fixture f;
  f.start();
  auto r = f.c->call(get_registers_cmd{{0, 1, {}}, {msr_lstar}});
  REQUIRE(r);
  REQUIRE(r->err == 0);
  auto& regs = std::get<registers_reply>(r->data);
  CHECK(regs.fixed.regs.rip == f.h->vcpu(0, 0)->regs.rip);
  REQUIRE(regs.msrs.size() == 1);
  CHECK(regs.msrs[0].data == *f.h->msr(0, 0, msr_lstar));
  CHECK(f.err_of(control_events{1, 0, flag(event_id::msr)}) == 0);
  CHECK(f.h->vcpu(0, 1)->enabled_events == flag(event_id::msr));
  CHECK(f.err_of(get_cpuid{0, {}, 0, 0}) == 0);
  auto gi = f.c->call(get_guest_info{0, {}});
  REQUIRE(gi);
  REQUIRE(gi->err == 0);
  CHECK(std::get<get_guest_info_reply>(gi->data).vcpu_count == 2);
  // SET_REGISTERS outside an event: the kernel drops them and answers 0.
  auto before = f.h->vcpu(0, 0)->regs;
  auto changed = before;
  changed.rip += 0x10;
  CHECK(f.err_of(set_registers{0, {}, changed}) == 0);
  // The vCPUs stopped only to serve the commands: they run on, and a
  // write the guest makes next is not held.
  CHECK(f.h->vcpu(0, 0)->state == sim::vcpu_state::running);
  CHECK(f.h->vcpu(0, 0)->regs.rip == before.rip);
  auto w = f.h->write_msr(0, 0, msr_lstar, 0x1234);
  CHECK(get(w).events == 0);
  auto n = f.counts();
  CHECK(n.commands_on_running_vcpus == 5);
  CHECK(n.errors.empty());
  CHECK(f.h->make_report().ok());
  CHECK(sim::to_json(f.h->make_report())["commands_on_running_vcpus"] == 5);
}

TEST_CASE("sim: a vCPU the guest has not started answers EAGAIN - once started it serves") {
  fixture f;
  f.start([](sim::options& o) { o.hotplug_start_after = std::nullopt; });
  auto hp = f.h->hotplug(0);
  auto out = get(hp);
  REQUIRE(out.ok);
  REQUIRE(out.vcpu == 2);
  CHECK_FALSE(f.h->vcpu(0, 2)->initialised);
  CHECK(f.err_of(get_registers_cmd{{2, 0, {}}, {}}) == -kvm_eagain);
  CHECK(f.err_of(control_events{2, 0, flag(event_id::msr)}) == -kvm_eagain);
  CHECK(f.h->vcpu(0, 2)->enabled_events == 0);
  // The running vCPUs next to it serve theirs.
  CHECK(f.err_of(get_registers_cmd{{1, 0, {}}, {}}) == 0);
  auto n = f.counts();
  CHECK(n.commands_on_running_vcpus == 1);
  CHECK(n.errors["EAGAIN"] == 2);
  // An action on it waits until the guest starts it; it never does here.
  auto w = f.h->write_msr(0, 2, msr_lstar, 0x1234);
  CHECK(w.wait_for(200ms) == std::future_status::timeout);
}

TEST_CASE("sim: bad vCPU EINVAL - unknown ids") {
  fixture f;
  f.start();
  CHECK(f.err_of(control_events{7, 0, 0}) == -kvm_einval);
  // VM commands work at any time.
  CHECK(f.err_of(get_map_token{}) == 0);
  // An unused id below 29 without payload: ENOSYS, the session stays.
  msg_hdr h{2, 0, 4242};
  f.c->send_all(std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&h), sizeof h));
  auto r = f.c->next_raw();
  REQUIRE(r);
  CHECK(r->hdr.id == 2);
  CHECK(r->hdr.seq == 4242);
  REQUIRE(r->payload.size() == sizeof(error_code));
  error_code ec;
  std::memcpy(&ec, r->payload.data(), sizeof ec);
  CHECK(ec.err == -kvm_enosys);
  CHECK(f.err_of(get_version{}) == 0);
  // An id >= 29 closes the session (a v5 kernel has no CONTROL_VE).
  msg_hdr ve{29, 0, 4243};
  f.c->send_all(std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&ve), sizeof ve));
  CHECK(f.c->wait_closed());
  CHECK(f.violations("unknown_id") == 1);
}

TEST_CASE("sim: unknown id with a payload closes the session, and the device manager reconnects") {
  fixture f;
  f.start();
  uint8_t msg[16] = {};
  msg_hdr h{4, 8, 1};
  std::memcpy(msg, &h, sizeof h);
  f.c->send_all(msg);
  CHECK(f.c->wait_closed());
  auto c2 = f.accept_conn();
  CHECK(f.h->wait_until([&] { return f.counts().reconnects == 1; }, 30000ms));
  CHECK(f.counts().sessions == 2);
  auto r = c2->call(get_version{});
  REQUIRE(r);
  CHECK(r->err == 0);
}

TEST_CASE("sim: PAUSE_ALL_VCPUS: one PAUSE_VCPU per vCPU, held replies keep the vCPU paused") {
  fixture f;
  f.start([](sim::options& o) { o.vcpus_per_vm = 3; });
  auto evs = f.pause_all();
  REQUIRE(evs.size() == 3);
  for (uint32_t i = 0; i < 3; ++i) {
    auto v = f.h->vcpu(0, i);
    REQUIRE(v);
    CHECK(v->state == sim::vcpu_state::paused);
    CHECK(evs[i].common.mode == 8);
    CHECK(evs[i].common.regs.rip == v->regs.rip);
  }
  // The guest wants to write an MSR on vCPU 1: it cannot run while paused.
  auto w = f.h->write_msr(0, 1, msr_lstar, 0xffffffff81234560ull);
  // vCPU commands work while the vCPU waits in the event.
  auto r = f.c->call(get_registers_cmd{{1, 1, {}}, {msr_lstar}});
  REQUIRE(r);
  REQUIRE(r->err == 0);
  auto& regs = std::get<registers_reply>(r->data);
  REQUIRE(regs.msrs.size() == 1);
  CHECK(regs.msrs[0].data == 0xffffffff81a00010ull);
  CHECK(w.wait_for(0s) != std::future_status::ready);
  CHECK(f.h->vcpu(0, 1)->state == sim::vcpu_state::paused);
  CHECK(f.h->msr(0, 1, msr_lstar) == 0xffffffff81a00010ull);
  f.c->reply(evs[1], action::continue_);
  auto out = get(w);
  CHECK(out.ok);
  CHECK(out.events == 0); // MSR events not enabled
  CHECK(out.value == 0xffffffff81234560ull);
  CHECK(f.h->msr(0, 1, msr_lstar) == 0xffffffff81234560ull);
  CHECK(f.h->vcpu(0, 1)->state == sim::vcpu_state::running);
  CHECK(f.h->vcpu(0, 0)->state == sim::vcpu_state::paused);
  f.c->reply(evs[0], action::continue_);
  f.c->reply(evs[2], action::continue_);
  CHECK(f.h->wait_until([&] { return f.counts().replies[0] == 3; }, 30000ms));
  CHECK(f.counts().violation_count() == 0);
}

TEST_CASE("sim: replies come out of order: VM commands at once, vCPU commands from the vCPU") {
  fixture f;
  f.start();
  auto evs = f.pause_all();
  auto seqs = f.c->send_batch({get_registers_cmd{{0, 0, {}}, {}}, get_cpuid{1, {}, 0, 0},
                               get_version{}, read_physical{hot, 8}});
  for (auto s : seqs) {
    auto r = f.c->wait_reply(s);
    REQUIRE(r);
    CHECK(r->err == 0);
  }
  auto& order = f.c->arrival();
  REQUIRE(order.size() >= 4);
  // The host read all four commands at once: the VM thread's replies
  // (GET_VERSION, READ_PHYSICAL) precede the vCPU threads'.
  auto pos = [&](uint32_t s) { return std::find(order.begin(), order.end(), s) - order.begin(); };
  CHECK(pos(seqs[2]) < pos(seqs[0]));
  CHECK(pos(seqs[3]) < pos(seqs[1]));
  for (auto& e : evs)
    f.c->reply(e, action::continue_);
}

TEST_CASE("sim: allow masks: disallowed commands EACCES, disallowed events EPERM") {
  fixture f;
  f.start([](sim::options& o) {
    o.allowed_commands = known_commands & ~flag(msg_id::read_physical);
    o.allowed_events = known_events & ~flag(event_id::msr) & ~flag(event_id::create_vcpu);
  });
  auto v = f.c->call(get_version{});
  REQUIRE(v);
  auto gv = std::get<get_version_reply>(v->data);
  CHECK((gv.commands & flag(msg_id::read_physical)) == 0);
  CHECK((gv.commands & flag(msg_id::get_version)) != 0);
  CHECK((gv.events & flag(event_id::msr)) == 0);
  CHECK(f.err_of(read_physical{hot, 8}) == -kvm_eacces);
  CHECK(f.err_of(control_vm_events{flag(event_id::create_vcpu), 0}) == -kvm_eperm);
  CHECK(f.err_of(control_vm_events{flag(event_id::unhook), 0}) == 0);
  auto evs = f.pause_all();
  CHECK(f.err_of(control_events{0, 0, flag(event_id::msr)}) == -kvm_eperm);
  CHECK(f.err_of(control_events{0, 0, flag(event_id::cr)}) == 0);
  // Unknown bits are EINVAL, not EPERM.
  CHECK(f.err_of(control_events{0, 0, 1u << 20}) == -kvm_einval);
  for (auto& e : evs)
    f.c->reply(e, action::continue_);
}

TEST_CASE("sim: CREATE_VCPU for every existing vCPU once enabled, and on hot-plug") {
  fixture f;
  f.start([](sim::options& o) { o.vcpus_per_vm = 4; });
  CHECK(f.err_of(control_vm_events{flag(event_id::create_vcpu), 0}) == 0);
  std::vector<bool> seen(4);
  for (int i = 0; i < 4; ++i) {
    auto e = f.c->next_event();
    REQUIRE(e);
    CHECK(e->kind() == event_id::create_vcpu);
    REQUIRE(e->common.vcpu < 4);
    CHECK_FALSE(seen[e->common.vcpu]);
    seen[e->common.vcpu] = true;
    // Holding the reply keeps the new vCPU from running: the tool can set it up.
    CHECK(f.err_of(control_events{e->common.vcpu, 0, flag(event_id::hypercall)}) == 0);
    f.c->reply(*e, action::continue_);
  }
  auto hp = f.h->hotplug(0);
  auto out = get(hp);
  CHECK(out.ok);
  CHECK(out.vcpu == 4);
  auto e = f.c->next_event();
  REQUIRE(e);
  CHECK(e->kind() == event_id::create_vcpu);
  CHECK(e->common.vcpu == 4);
  CHECK(f.h->vcpu(0, 4)->state == sim::vcpu_state::in_event);
  auto gi = f.c->call(get_guest_info{0, {}});
  REQUIRE(gi); // vCPU 0 is running: it serves the command
  REQUIRE(gi->err == 0);
  CHECK(std::get<get_guest_info_reply>(gi->data).vcpu_count == 5);
  f.c->reply(*e, action::continue_);
  auto hc = f.h->hypercall(0, 2);
  auto ev = f.c->next_event();
  REQUIRE(ev);
  CHECK(ev->kind() == event_id::hypercall);
  CHECK(ev->common.regs.rax == kvm_hc_xen_hvm_op);
  CHECK(ev->common.regs.rdi == xen_hvm_op_guest_request_vm_event);
  f.c->reply(*ev, action::continue_);
  CHECK(get(hc).events == 1);
  CHECK(f.counts().events[size_t(event_id::create_vcpu)] == 5);
}

TEST_CASE("sim: MSR and CR events: CONTINUE with new_val sets what the guest sees") {
  fixture f;
  f.start();
  f.enable(flag(event_id::msr) | flag(event_id::cr),
           {control_msr{0, 1, 0, msr_lstar}, control_cr{0, 1, 0, 4}});
  auto old = *f.h->msr(0, 0, msr_lstar);
  auto w = f.h->write_msr(0, 0, msr_lstar, 0xdeadbeef000ull);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::msr);
  auto& m = std::get<event_msr>(e->data);
  CHECK(m.msr == msr_lstar);
  CHECK(m.old_value == old);
  CHECK(m.new_value == 0xdeadbeef000ull);
  CHECK(f.h->vcpu(0, 0)->state == sim::vcpu_state::in_event);
  f.c->reply(*e, action::continue_, old); // deny: keep the old value
  auto out = get(w);
  CHECK(out.events == 1);
  CHECK(out.reply == action::continue_);
  CHECK(out.value == old);
  CHECK(f.h->msr(0, 0, msr_lstar) == old);
  // An unwatched MSR raises nothing; an unchanged value raises nothing.
  CHECK(get(w = f.h->write_msr(0, 0, 0xc0000081, 0x1234)).events == 0);
  CHECK(get(w = f.h->write_msr(0, 0, msr_lstar, old)).events == 0);
  // CR4: SMEP cleared by the guest, forced back by the tool.
  auto cr4 = *f.h->cr(0, 0, 4);
  auto wc = f.h->write_cr(0, 0, 4, cr4 & ~(1ull << 20));
  auto ce = f.c->next_event();
  REQUIRE(ce);
  REQUIRE(ce->kind() == event_id::cr);
  CHECK(std::get<event_cr>(ce->data).cr == 4);
  CHECK(std::get<event_cr>(ce->data).old_value == cr4);
  f.c->reply(*ce, action::continue_, cr4);
  CHECK(get(wc).value == cr4);
  CHECK(f.h->cr(0, 0, 4) == cr4);
  // CR0 is not watched.
  CHECK(get(wc = f.h->write_cr(0, 0, 0, 0x80000033)).events == 0);
  CHECK(f.counts().violation_count() == 0);
}

TEST_CASE("sim: SET_REGISTERS takes effect only at the event reply") {
  fixture f;
  f.start();
  auto evs = f.pause_all();
  auto regs = f.h->vcpu(0, 0)->regs;
  auto changed = regs;
  changed.rip = 0xffffffff8100abcdull;
  changed.rax = 77;
  CHECK(f.err_of(set_registers{0, {}, changed}) == 0);
  CHECK(f.h->vcpu(0, 0)->regs.rip == regs.rip);
  f.c->reply(evs[0], action::continue_);
  CHECK(f.h->wait_until([&] { return f.h->vcpu(0, 0)->regs.rip == changed.rip; }, 30000ms));
  CHECK(f.h->vcpu(0, 0)->regs.rax == 77);
  f.c->reply(evs[1], action::continue_);
}

TEST_CASE("sim: page access: PF on restricted pages, RETRY re-executes, rwx forgets, EINVAL bits") {
  fixture f;
  f.start();
  auto evs = f.pause_all();
  CHECK(f.err_of(control_events{0, 0, flag(event_id::pf)}) == 0);
  set_page_access_cmd sp{{0, 1, 0, 0}, {page_access_entry{hot, page_access_r | page_access_x, {}}}};
  CHECK(f.err_of(sp) == 0);
  CHECK(f.h->page_access(0, hot + 100) == (page_access_r | page_access_x));
  auto ga = f.c->call(get_page_access_cmd{{0, 2, 0, 0}, {hot, hot + 4096}});
  REQUIRE(ga);
  REQUIRE(ga->err == 0);
  CHECK(std::get<page_access_reply>(ga->data).access ==
        std::vector<uint8_t>{page_access_r | page_access_x, page_access_rwx});
  // Unknown access bits and a view other than 0 are EINVAL.
  CHECK(f.err_of(set_page_access_cmd{{0, 1, 0, 0}, {page_access_entry{hot, 8, {}}}}) == -kvm_einval);
  CHECK(f.err_of(get_page_access_cmd{{0, 1, 1, 0}, {hot}}) == -kvm_einval);
  for (auto& e : evs)
    f.c->reply(e, action::continue_);

  auto a = f.h->access(0, 0, hot + 8, page_access_w);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::pf);
  CHECK(std::get<event_pf>(e->data).gpa == hot + 8);
  CHECK(std::get<event_pf>(e->data).mode == page_access_w);
  f.c->reply(*e, action::retry); // still restricted: faults again
  auto e2 = f.c->next_event();
  REQUIRE(e2);
  REQUIRE(e2->kind() == event_id::pf);
  CHECK(e2->seq != e->seq);
  // Unprotect while the vCPU waits, then retry: the write goes through.
  CHECK(f.err_of(set_page_access_cmd{{0, 1, 0, 0}, {page_access_entry{hot, page_access_rwx, {}}}}) == 0);
  CHECK(f.h->page_access(0, hot) == page_access_rwx);
  f.c->reply(*e2, action::retry);
  auto out = get(a);
  CHECK(out.events == 2);
  CHECK(out.allowed);
  CHECK(f.h->memory(0, hot + 8, 1)[0] == 0x90);
  CHECK(f.counts().pf_retried == 2);
  // Reads of an r-x page raise nothing.
  CHECK(get(a = f.h->access(0, 0, hot + 8, page_access_r)).events == 0);
}

TEST_CASE("sim: breakpoints: INT3 raises BREAKPOINT - RETRY after restoring the byte runs on") {
  fixture f;
  f.start();
  uint64_t gpa = hot + 0x234;
  f.h->guest_write(0, gpa, {0x90});
  f.enable(flag(event_id::breakpoint));
  // The tool plants its breakpoint through WRITE_PHYSICAL, keeping the original byte.
  auto rd = f.c->call(read_physical{gpa, 1});
  REQUIRE(rd);
  REQUIRE(rd->err == 0);
  auto original = std::get<physical_data>(rd->data).data.at(0);
  CHECK(original == 0x90);
  CHECK(f.err_of(write_physical_cmd{{gpa, 1}, {0xcc}}) == 0);
  auto x = f.h->execute(0, 0, gpa);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::breakpoint);
  CHECK(std::get<event_breakpoint>(e->data).gpa == gpa);
  CHECK(f.err_of(write_physical_cmd{{gpa, 1}, {original}}) == 0);
  f.c->reply(*e, action::retry);
  auto out = get(x);
  CHECK(out.events == 1);
  CHECK(out.reply == action::retry);
  CHECK_FALSE(out.guest_exception);
  // The guest's own INT3: CONTINUE re-injects #BP into the guest.
  f.h->guest_write(0, gpa + 1, {0xcc});
  auto y = f.h->execute(0, 0, gpa + 1);
  auto e2 = f.c->next_event();
  REQUIRE(e2);
  f.c->reply(*e2, action::continue_);
  CHECK(get(y).guest_exception);
  CHECK(f.counts().breakpoint_hits == 2);
}

TEST_CASE("sim: READ/WRITE_PHYSICAL beyond one page tears the session down - rwx restored") {
  fixture f;
  f.start();
  auto evs = f.pause_all();
  CHECK(f.err_of(set_page_access_cmd{{0, 1, 0, 0}, {page_access_entry{hot, page_access_r, {}}}}) == 0);
  CHECK(f.h->page_access(0, hot) == page_access_r);
  // No memslot there: EINVAL, the session stays.
  CHECK(f.err_of(read_physical{0x100000000000ull, 8}) == -kvm_einval);
  f.c->send(read_physical{hot + 4000, 200});
  CHECK(f.c->wait_closed());
  CHECK(f.h->wait_until([&] { return !f.h->hooked(0); }, 30000ms));
  CHECK(f.violations("physical_range") == 1);
  CHECK(f.h->page_access(0, hot) == page_access_rwx);
  // The waiting vCPUs were released (the kernel aborts all waits).
  CHECK(f.counts().unanswered_at_close == 2);
  CHECK(f.h->vcpu(0, 0)->state == sim::vcpu_state::running);
  auto c2 = f.accept_conn();
  c2->send(write_physical_cmd{{hot, 0}, {}});
  CHECK(c2->wait_closed());
}

TEST_CASE("sim: event replies: unknown seq and wrong size close - a mismatched event is not applied") {
  fixture f;
  f.start([](sim::options& o) { o.vcpus_per_vm = 1; });
  auto evs = f.pause_all();
  // Right size for its own event field (MSR: 16) but not the pending PAUSE: not applied.
  event_reply_msg r;
  r.seq = evs[0].seq;
  r.common = event_reply{0, uint32_t(event_id::msr)};
  r.extra = event_msr_reply{5};
  std::vector<uint8_t> out;
  encode(out, r, f.c->order());
  f.c->send_all(out);
  CHECK(f.h->wait_until([&] { return f.violations("reply_event_mismatch") == 1; }, 30000ms));
  CHECK(f.h->vcpu(0, 0)->state == sim::vcpu_state::running);
  // The same seq again is unknown now: the session closes.
  f.c->reply(evs[0], action::continue_);
  CHECK(f.c->wait_closed());
  CHECK(f.violations("reply_unknown_seq") == 1);

  auto c2 = f.accept_conn();
  f.c = std::move(c2);
  auto evs2 = f.pause_all();
  // A PAUSE reply carrying 8 extra bytes: size does not fit its event field.
  event_reply_msg bad;
  bad.seq = evs2[0].seq;
  bad.common = event_reply{0, uint32_t(event_id::pause_vcpu)};
  encode(out, bad, f.c->order());
  out.insert(out.end(), 8, 0);
  uint16_t sz = static_cast<uint16_t>(out.size() - 8);
  std::memcpy(out.data() + 2, &sz, 2);
  f.c->send_all(out);
  CHECK(f.c->wait_closed());
  CHECK(f.violations("reply_bad_size") == 1);
}

TEST_CASE("sim: padding must be zero: commands get EINVAL and the violation is counted") {
  fixture f;
  f.start();
  control_vm_events c{flag(event_id::create_vcpu), 1};
  CHECK(f.err_of(c) == -kvm_einval);
  CHECK(f.violations("bad_padding") == 1);
  CHECK(f.err_of(get_version{}) == 0);
}

TEST_CASE("sim: UNHOOK is sent without waiting - the session ends when the tool closes") {
  fixture f;
  f.start();
  CHECK(f.err_of(control_vm_events{flag(event_id::unhook), 0}) == 0);
  auto u = f.h->request_unhook(0);
  auto e = f.c->next_event();
  REQUIRE(e);
  CHECK(e->kind() == event_id::unhook);
  CHECK(e->common.vcpu == 0);
  // Still hooked: the tool removes its hooks first.
  CHECK(u.wait_for(0s) != std::future_status::ready);
  CHECK(f.h->hooked(0));
  CHECK(f.err_of(get_version{}) == 0);
  f.c->close();
  CHECK(get(u).ok);
  auto v = f.h->vm(0);
  CHECK(v.unhooked);
  CHECK_FALSE(v.hooked);
  // No reconnect after an unhook.
  CHECK(f.l.accept(200ms) < 0);
  CHECK(f.counts().violation_count() == 0);
}

TEST_CASE("sim: CRASH ends the VM: no reconnect, later actions are rejected") {
  fixture f;
  f.start();
  f.enable(flag(event_id::xsetbv));
  auto x = f.h->xsetbv(0, 0, 0x3);
  auto e = f.c->next_event();
  REQUIRE(e);
  CHECK(e->kind() == event_id::xsetbv);
  f.c->reply(*e, action::crash);
  auto out = get(x);
  CHECK(out.crashed);
  CHECK(f.c->wait_closed());
  CHECK(f.h->vm(0).crashed);
  CHECK_FALSE(get(x = f.h->hypercall(0, 1)).ok);
  CHECK(f.l.accept(200ms) < 0);
}

TEST_CASE("sim: injected exceptions that get overwritten raise TRAP") {
  fixture f;
  f.start([](sim::options& o) { o.workload.mix.trap = 1; });
  auto evs = f.pause_all();
  CHECK(f.err_of(control_events{0, 0, flag(event_id::trap)}) == 0);
  CHECK(f.err_of(inject_exception{0, 14, 1, 2, 0, 0x7000}) == 0);
  f.c->reply(evs[0], action::continue_);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::trap);
  auto& t = std::get<event_trap>(e->data);
  CHECK(t.vector == 14);
  CHECK(t.error_code == 2);
  CHECK(t.cr2 == 0x7000);
  f.c->reply(*e, action::continue_);
  f.c->reply(evs[1], action::continue_);
}

TEST_CASE("sim: vCPU query commands: CPUID (ENOENT), XSAVE, guest info, descriptor events") {
  fixture f;
  f.start([](sim::options& o) { o.max_tokens = 2; });
  auto evs = f.pause_all();
  auto r = f.c->call(get_cpuid{0, {}, 0, 0});
  REQUIRE(r);
  REQUIRE(r->err == 0);
  CHECK(std::get<get_cpuid_reply>(r->data).ebx == 0x756e6547);
  CHECK(f.err_of(get_cpuid{0, {}, 0x4fffffff, 0}) == -kvm_enoent);
  auto x = f.c->call(get_xsave{1, {}});
  REQUIRE(x);
  REQUIRE(x->err == 0);
  CHECK(std::get<xsave_reply>(x->data).region.size() == xsave_size);
  auto gi = f.c->call(get_guest_info{0, {}});
  REQUIRE(gi);
  REQUIRE(gi->err == 0);
  CHECK(std::get<get_guest_info_reply>(gi->data).vcpu_count == 2);
  CHECK(f.err_of(get_guest_info{1, {}}) == -kvm_einval);
  CHECK(f.err_of(control_cr{0, 1, 0, 2}) == -kvm_einval);
  CHECK(f.err_of(control_msr{0, 1, 0, 0x40000000}) == -kvm_einval);
  CHECK(f.err_of(get_registers_cmd{{0, 1, {}}, {0x12345}}) == -kvm_einval);
  CHECK(f.err_of(get_map_token{}) == 0);
  CHECK(f.err_of(get_map_token{}) == 0);
  CHECK(f.err_of(get_map_token{}) == -kvm_eagain);
  CHECK(f.err_of(control_events{0, 0, flag(event_id::descriptor)}) == 0);
  for (auto& e : evs)
    f.c->reply(e, action::continue_);
  auto d = f.h->descriptor(0, 0, desc_gdtr, true);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::descriptor);
  CHECK(std::get<event_descriptor>(e->data).descriptor == desc_gdtr);
  CHECK(std::get<event_descriptor>(e->data).write == 1);
  f.c->reply(*e, action::continue_);
  CHECK(get(d).events == 1);
}

TEST_CASE("sim: NVLink2: touching offline GPU RAM or ATSD counts an HMI - RAM and online GPU RAM do not") {
  fixture f;
  f.start([](sim::options& o) {
    o.memory.gpus.push_back(sim::gpu_spec{16ull << 30, std::nullopt}); // never trained
    o.memory.gpus.push_back(sim::gpu_spec{16ull << 30, sim::ms{0}});  // online at once
  });
  std::vector<hs::region> gpu, atsd;
  for (auto& r : f.c->info().regions) {
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
      gpu.push_back(r);
    if (r.type == uint32_t(hs::region_type::nvlink2_atsd))
      atsd.push_back(r);
  }
  REQUIRE(gpu.size() == 2);
  REQUIRE(atsd.size() == 2);
  CHECK((gpu[0].flags & hs::region_online) == 0);
  CHECK((gpu[1].flags & hs::region_online) != 0);
  CHECK(f.err_of(read_physical{hot, 16}) == 0);
  CHECK(f.counts().hmis == 0);
  CHECK(f.err_of(read_physical{gpu[1].gpa + 0x10000, 16}) == 0);
  CHECK(f.err_of(write_physical_cmd{{gpu[1].gpa + (8ull << 30), 2}, {1, 2}}) == 0);
  CHECK(f.counts().hmis == 0);
  CHECK(f.err_of(read_physical{gpu[0].gpa + 0x10000, 16}) == 0);
  CHECK(f.counts().hmis == 1);
  CHECK(f.err_of(read_physical{atsd[1].gpa, 8}) == 0);
  CHECK(f.counts().hmis == 2);
  auto rep = f.h->make_report();
  CHECK_FALSE(rep.ok());
}

TEST_CASE("sim: swapped byte order: the handshake tells, and the whole session is converted") {
  fixture f;
  f.start([](sim::options& o) { o.order = byte_order::swapped; });
  CHECK(f.c->order() == byte_order::swapped);
  CHECK(f.c->info().vcpu_count == 2);
  auto v = f.c->call(get_version{});
  REQUIRE(v);
  CHECK(std::get<get_version_reply>(v->data).commands == 0x1F8EFCCA);
  f.enable(flag(event_id::msr), {control_msr{0, 1, 0, msr_lstar}});
  auto w = f.h->write_msr(0, 0, msr_lstar, 0xabcdef00ull);
  auto e = f.c->next_event();
  REQUIRE(e);
  CHECK(std::get<event_msr>(e->data).new_value == 0xabcdef00ull);
  f.c->reply(*e, action::continue_, 0x1111000ull);
  CHECK(get(w).value == 0x1111000ull);
  CHECK(f.counts().violation_count() == 0);
}

TEST_CASE("sim: qemu-v5 handshake mode") {
  listener l;
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
  o.handshake = hs::mode::qemu_v5;
  sim::host h(o);
  h.start();
  int fd = l.accept(30000ms);
  REQUIRE(fd >= 0);
  conn c(fd, test_cookie(), hs::mode::qemu_v5);
  REQUIRE(c.handshake());
  CHECK(c.info().name == h.vm(0).name);
  CHECK(c.info().id == h.vm(0).uuid);
  auto r = c.call(get_version{});
  REQUIRE(r);
  CHECK(r->err == 0);
}

TEST_CASE("sim: a device manager that fails its MAC is refused and retries") {
  listener l;
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
  o.faults.bad_mac = 1;
  o.reconnect_delay = sim::ms{10};
  sim::host h(o);
  h.start();
  for (int i = 0; i < 2; ++i) {
    int fd = l.accept(30000ms);
    REQUIRE(fd >= 0);
    conn c(fd);
    CHECK_FALSE(c.handshake());
  }
  CHECK(h.wait_until([&] { return h.vm_counters(0).handshake_failures >= 1; }, 30000ms));
  CHECK(h.vm_counters(0).sessions == 0);
}

TEST_CASE("sim: fault injection on demand: garbage, a frame cut mid-way, torn frames, unknown seqs") {
  fixture f;
  // A long pause, so the tool surely reads the first part of a torn frame alone.
  f.start([](sim::options& o) { o.faults.torn_pause = sim::ms{300}; });
  auto gf = f.h->inject_fault(0, "garbage");
  REQUIRE(get(gf).ok);
  // The tool sees a frame with an id no kernel sends: it must close.
  auto raw = f.c->next_raw();
  REQUIRE(raw);
  CHECK(raw->hdr.id == 0xbeef);
  CHECK_FALSE(decode_event(raw->view(), f.c->order()).ok());
  f.c->close();
  auto c2 = f.accept_conn();
  f.c = std::move(c2);
  auto df = f.h->inject_fault(0, "drop_mid_frame");
  REQUIRE(get(df).ok);
  CHECK(f.c->wait_closed());
  CHECK(f.c->queued_frames() == 0); // half a frame never becomes a frame
  f.c = f.accept_conn();
  // A torn frame is still one frame: the reply arrives whole after the pause.
  // The fault tears the next frame, so it is delivered with that reply.
  auto tf = f.h->inject_fault(0, "torn");
  CHECK(f.c->partial_reads() == 0);
  CHECK(f.err_of(get_version{}) == 0);
  REQUIRE(get(tf).ok);
  CHECK(f.c->partial_reads() == 1);
  CHECK(f.err_of(get_map_token{}) == 0);
  CHECK_FALSE(f.c->stream_error());
  // A reply with a seq the tool never used.
  auto us = f.h->inject_fault(0, "unknown_seq_reply");
  REQUIRE(get(us).ok);
  auto raw2 = f.c->next_raw();
  REQUIRE(raw2);
  CHECK(raw2->hdr.id == uint16_t(msg_id::get_version));
  CHECK((raw2->hdr.seq & 0xffff0000u) == 0xdead0000u);
  CHECK(f.counts().faults_injected == 4);
  auto bad = f.h->inject_fault(0, "no-such-fault");
  CHECK_FALSE(get(bad).ok);
}

TEST_CASE("sim: scenario JSON drives exact sequences and checks expectations") {
  fixture f;
  f.start();
  auto sc = nlohmann::json::parse(R"({"steps": [
    {"op": "write_msr", "vm": 0, "vcpu": 1, "msr": 3221225602, "value": 4096,
     "expect": {"ok": true, "events": 0, "value": 4096}},
    {"op": "guest_write", "gpa": 1048576, "bytes": [204]},
    {"op": "execute", "gpa": 1048576, "expect": {"guest_exception": true}},
    {"op": "hotplug", "expect": {"vcpu": 2}},
    {"op": "write_cr", "cr": 5, "value": 1, "expect": {"ok": true}}
  ]})");
  auto res = f.h->run_scenario(sc);
  REQUIRE(res.size() == 5);
  CHECK_FALSE(res[0].value("failed", false));
  CHECK_FALSE(res[2].value("failed", false));
  CHECK_FALSE(res[3].value("failed", false));
  CHECK(res[4].value("failed", false)); // cr 5 does not exist: expectation fails
  CHECK(f.h->msr(0, 1, msr_lstar) == 4096);
  CHECK(f.counts().breakpoint_hits == 1);
}

TEST_CASE("sim: GPU RAM becomes online when the links are trained - then it is safe") {
  fixture f;
  f.start([](sim::options& o) { o.memory.gpus.push_back(sim::gpu_spec{16ull << 30, sim::ms{100}}); });
  hs::region gpu{};
  for (auto& r : f.c->info().regions)
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
      gpu = r;
  REQUIRE(gpu.size == (16ull << 30));
  CHECK((gpu.flags & hs::region_online) == 0); // not trained at handshake time
  auto online = [&] {
    for (auto& r : f.h->vm(0).regions)
      if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
        return (r.flags & hs::region_online) != 0;
    return false;
  };
  REQUIRE(f.h->wait_until(online, 30000ms));
  CHECK(f.err_of(read_physical{gpu.gpa + 0x123000, 64}) == 0);
  CHECK(f.counts().hmis == 0);
  // A new session announces the region online.
  f.c->close();
  auto c2 = f.accept_conn();
  bool announced = false;
  for (auto& r : c2->info().regions)
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
      announced = (r.flags & hs::region_online) != 0;
  CHECK(announced);
}

TEST_CASE("sim: a memory map per VM") {
  listener l;
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
  o.vms = 2;
  o.memory.ram_size = 8ull << 30;
  o.memory_per_vm[1].ram_size = 512ull << 20;
  o.memory_per_vm[1].gpus.push_back(sim::gpu_spec{32ull << 30, sim::ms{0}});
  sim::host h(o);
  h.start();
  std::map<std::string, std::vector<hs::region>> maps;
  for (int i = 0; i < 2; ++i) {
    conn c(l.accept(30000ms));
    REQUIRE(c.handshake());
    maps[c.info().name] = c.info().regions;
  }
  auto& big = maps[h.vm(0).name];
  auto& gpu = maps[h.vm(1).name];
  REQUIRE(big.size() == 3); // RAM below the hole, the MMIO hole, RAM above 4 GiB
  CHECK(big[0].size + big[2].size == (8ull << 30));
  CHECK(big[1].type == uint32_t(hs::region_type::mmio));
  REQUIRE(gpu.size() == 4); // RAM, MMIO hole, GPU RAM, ATSD
  CHECK(gpu[0].size == (512ull << 20));
  CHECK(gpu[2].type == uint32_t(hs::region_type::nvlink2_gpu_ram));
  CHECK((gpu[2].flags & hs::region_online) != 0);
  CHECK(gpu[3].type == uint32_t(hs::region_type::nvlink2_atsd));
}

TEST_CASE("sim: TCP on loopback") {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(lfd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(lfd, 16) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  sim::options o;
  o.tcp_host = "127.0.0.1";
  o.tcp_port = ntohs(a.sin_port);
  o.cookie = test_cookie();
  o.vms = 2;
  sim::host h(o);
  h.start();
  for (int i = 0; i < 2; ++i) {
    pollfd p{lfd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
    conn c(::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(c.handshake());
    auto r = c.call(get_version{});
    REQUIRE(r);
    CHECK(r->err == 0);
  }
  ::close(lfd);
}

TEST_CASE("sim: random bytes from the tool never crash the host - it closes and counts") {
  fixture f;
  f.start([](sim::options& o) { o.reconnect_delay = sim::ms{1}; });
  std::mt19937_64 rng(99);
  int closes = 0;
  for (int round = 0; round < 60; ++round) {
    // A frame with a random id (mostly known ones), size and payload.
    uint16_t id = static_cast<uint16_t>(rng() % 3 == 0 ? rng() % 64 : 1 + rng() % 28);
    uint16_t size = static_cast<uint16_t>(rng() % 3 == 0 ? rng() % 600 : rng() % 40);
    std::vector<uint8_t> bytes(sizeof(msg_hdr) + size);
    msg_hdr h{id, size, static_cast<uint32_t>(rng())};
    std::memcpy(bytes.data(), &h, sizeof h);
    for (size_t i = sizeof h; i < bytes.size(); ++i)
      bytes[i] = static_cast<uint8_t>(rng() % 4 == 0 ? rng() : 0);
    f.c->send_all(bytes);
    // Either a reply comes back or the host closes: both are fine.
    auto r = f.c->next_raw(2000ms);
    if (!r) {
      REQUIRE(f.c->closed());
      ++closes;
      f.c = f.accept_conn();
    }
  }
  CHECK(closes > 0);
  auto c = f.counts();
  CHECK(c.violation_count() > 0);
  CHECK(c.sessions == static_cast<uint64_t>(closes + 1));
  auto r = f.c->call(get_version{});
  REQUIRE(r);
  CHECK(r->err == 0);
}

TEST_CASE("sim: an action the event does not accept is a violation and taken as CONTINUE") {
  fixture f;
  f.start();
  f.enable(flag(event_id::msr), {control_msr{0, 1, 0, msr_lstar}});
  auto w = f.h->write_msr(0, 0, msr_lstar, 0x5000);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::msr);
  f.c->reply(*e, action::retry, 0x6000); // MSR events take CONTINUE or CRASH only
  auto out = get(w);
  CHECK(out.reply == action::continue_);
  CHECK(out.value == 0x6000);
  CHECK(f.violations("reply_bad_action") == 1);
  CHECK(f.h->hooked(0)); // the session stays
  CHECK(f.err_of(get_version{}) == 0);
}

// A reconnect storm that drains first turns an event the tool never answered
// into a counted lost reply, where a plain close would have hidden it among
// the events a close cuts off. (The storm's first strike comes a second after
// start: the set-up below is done long before.)
TEST_CASE("sim: a drained reconnect storm counts a never-answered event as reply_lost") {
  fixture f;
  f.start([](sim::options& o) {
    o.faults.reconnect_storm_every = sim::ms{1000};
    o.faults.reconnect_drain = sim::ms{200};
  });
  f.enable(flag(event_id::msr), {control_msr{0, 1, 0, msr_lstar}});
  auto w = f.h->write_msr(0, 0, msr_lstar, 0xdeadbeef000ull);
  auto e = f.c->next_event();
  REQUIRE(e);
  REQUIRE(e->kind() == event_id::msr);
  CHECK(f.violations("reply_lost") == 0);
  // No reply: the storm drains, gives up after 200 ms and closes.
  REQUIRE(f.h->wait_until([&] { return f.violations("reply_lost") == 1; }, 30000ms));
  CHECK(get(w).aborted);
  CHECK(f.counts().unanswered_at_close == 1);
  CHECK(f.counts().faults_injected >= 1);
}
