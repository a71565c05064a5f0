// The vCPU actor: owner of one vCPU's state, its one outstanding event, the
// policy decision and the reply. Events come from the ring thread that runs
// the actor: handled in place when the actor is idle, else through its
// mailbox; the reply goes straight to the link, on that same thread.
#include "actors/vcpu_actor.hpp"

#include "actors/alert_record.hpp"
#include "actors/event_fields.hpp"
#include "actors/log.hpp"
#include "actors/ring_unit.hpp"
#include "actors/skip_instruction.hpp"

#include <cstdio>

namespace kvmid {

namespace {

// The registers of an event, for the kinds whose handling reads them: a
// hypercall's report reads its arguments, and a denied write to a protected
// page is skipped by decoding the faulting instruction.
constexpr bool reads_registers(kvmi::event_id k) {
  return k == kvmi::event_id::pf || k == kvmi::event_id::hypercall;
}
struct event_registers {
  kvm_regs regs{};
  kvm_sregs sregs{};
};

// What decide(), the alerts, the reports and a denied write read of an
// event, kept while the vCPU is configured. Every vCPU of an attaching VM
// waits here at once, with a PAUSE_VCPU event that needs no registers: they
// are kept only when read (456 of 488 bytes, per vCPU, at every attach).
struct waiting_event {
  kvmi::event_data data;
  std::unique_ptr<event_registers> saved;
};

// Kept small: an idle vCPU costs its CAF actor plus this (one actor per
// vCPU, docs/architecture.md; thousands of them sit idle).
struct vcpu_st {
  static inline const char* name = "kvmid.vcpu";
  vcpu_params p;
  // The event waiting for its reply: what the reply needs, not the whole
  // 576-byte event.
  uint32_t seq = 0, event = 0;
  int64_t t_recv = 0;
  int64_t t_hold = 0; // when an operator pause began holding the event
  std::unique_ptr<waiting_event> unconfigured; // only while configuring
  uint8_t config_gen = 0; // bumped by a new policy or event mask
  bool configured = false, in_event = false, holding = false;
  bool releasing = false; // an unhook waits to hear that no event of ours waits
};

using vcpu_actor = caf::stateful_actor<vcpu_st, ring_actor>; // runs on the ring (ring_unit.hpp)

constexpr auto request_timeout = std::chrono::seconds(30);

void set_state(vcpu_st& s, vcpu_state v) {
  s.p.stats->state.store(static_cast<uint8_t>(v), std::memory_order_relaxed);
}

// An unhook released this vCPU and no event of it waits any more.
void report_released(vcpu_actor* self) {
  auto& s = self->state;
  s.releasing = false;
  self->send(s.p.vm, released_atom::value, s.p.index);
}

void send_reply(vcpu_actor* self, const decision& d) {
  auto& s = self->state;
  if (!s.in_event)
    return;
  auto& sh = *s.p.shared;
  auto msg = make_reply(s.seq, s.event, d);
  if (auto e = kvmi::check(msg)) {
    // Never send what the kernel would tear the session down for.
    std::fprintf(stderr, "kvmid: vm %s vcpu %u: refusing an invalid event reply: %.*s\n",
                 sh.uuid.c_str(), s.p.index, int(e.reason.size()), e.reason.data());
    msg = make_reply(s.seq, s.event, decision{});
  }
  // Counted and marked running before the send: whoever sees the vCPU run
  // on must also see its reply (and any hold) in the metrics and the API.
  auto& m = sh.c->internals().m;
  int64_t now = now_ns();
  int64_t held = s.holding ? now - s.t_hold : 0;
  m.reply_latency->observe(double(now - s.t_recv - held) / 1e9);
  if (s.holding)
    m.hold->observe(double(held) / 1e9);
  s.in_event = false;
  s.holding = false;
  s.p.stats->event.store(-1, std::memory_order_relaxed);
  set_state(s, vcpu_state::running);
  sh.link->send(msg);
  if (s.releasing)
    report_released(self);
}

// Not inlined: bench/profile-event-path.sh attributes the alert path by it.
[[gnu::noinline]] void publish_alert(vcpu_actor* self, const kvmi::event_msg& ev,
                                     const decision& d) {
  auto& s = self->state;
  auto& sh = *s.p.shared;
  auto& m = sh.c->internals().m;
  m.alert(d.rule).inc();
  s.p.stats->alerts.fetch_add(1, std::memory_order_relaxed);
  sh.alerts.fetch_add(1, std::memory_order_relaxed);
  sh.rule_hits.count(d.rule, d.rule_name);
  sh.c->bus().publish_filled(bus_kind::alert, [&](bus_record& r) {
    fill_alert(r, {sh.uuid, sh.name, s.p.index}, ev, d);
  });
}

// The event is the one in state.seq/event (in_event): decide, then reply now
// or after a follow-up.
void decide_and_reply(vcpu_actor* self, const kvmi::event_msg& ev) {
  auto& s = self->state;
  auto& sh = *s.p.shared;
  auto d = decide(ev, *s.p.policy, *s.p.snapshot);
  if (d.alert)
    publish_alert(self, ev, d);
  if (d.report) {
    bus_record r;
    r.kind = bus_kind::report;
    r.name = "agent-report"; // the raw KVMI event is "hypercall"
    r.vm = sh.uuid;
    r.vm_name = sh.name;
    r.vcpu = s.p.index;
    r.message = "guest agent hypercall report";
    auto& regs = ev.common.regs;
    r.fields.emplace_back("rdi", hex_value(regs.rdi));
    r.fields.emplace_back("rsi", hex_value(regs.rsi));
    r.fields.emplace_back("rdx", hex_value(regs.rdx));
    sh.c->bus().publish(std::move(r));
  }
  switch (d.then) {
    case follow_up::none: send_reply(self, d); return;
    case follow_up::hold:
      s.holding = true;
      s.t_hold = now_ns();
      set_state(s, vcpu_state::paused);
      self->send(s.p.vm, held_atom::value, s.p.index);
      return;
    case follow_up::unprotect_page:
      self->request(s.p.vm, request_timeout, unprotect_atom::value, d.gpa, s.p.index)
        .then([=](bool ok) {
          auto d2 = d;
          if (!ok) // the page stays protected: let the kernel emulate this once
            d2.act = kvmi::action::continue_;
          send_reply(self, d2);
        },
              [=](caf::error&) {
                auto d2 = d;
                d2.act = kvmi::action::continue_;
                send_reply(self, d2);
              });
      return;
    case follow_up::rearm_breakpoint:
      self->request(s.p.vm, request_timeout, rearm_bp_atom::value, s.p.index)
        .then([=](bool) { send_reply(self, d); }, [=](caf::error&) { send_reply(self, d); });
      return;
    case follow_up::skip_instruction: {
      auto vm = s.p.vm;
      command_fn send = [self, vm](kvmi::command c, std::function<void(cmd_result)> k) {
        self->request(vm, request_timeout, command_atom::value, std::move(c))
          .then([k](cmd_result& r) { k(std::move(r)); },
                [k](caf::error& e) {
                  cmd_result r;
                  r.failure = "the VM actor did not answer: " + caf::to_string(e);
                  k(std::move(r));
                });
      };
      skip_request req{s.p.index, ev.common.regs, ev.common.sregs, sh.regions};
      uint64_t at = std::get<kvmi::event_pf>(ev.data).gpa;
      skip_instruction(std::move(send), std::move(req), [=](const std::string& err) {
        auto d2 = d;
        if (!err.empty()) {
          // Not denied: RETRY at the same RIP would fault there for good.
          d2.act = kvmi::action::continue_;
          if (log_on(log_warn))
            std::fprintf(stderr, "kvmid: vm %s vcpu %u: write to gpa 0x%llx let through: %s\n",
                         self->state.p.shared->uuid.c_str(), self->state.p.index,
                         (unsigned long long)at, err.c_str());
        }
        send_reply(self, d2);
      });
      return;
    }
    case follow_up::restore_breakpoint:
      self->request(s.p.vm, request_timeout, restore_bp_atom::value, d.gpa, s.p.index)
        .then([=](bool ok) {
          auto d2 = d;
          if (!ok) // INT3 still there: RETRY would loop, hand #BP to the guest
            d2.act = kvmi::action::continue_;
          send_reply(self, d2);
        },
              [=](caf::error&) {
                auto d2 = d;
                d2.act = kvmi::action::continue_;
                send_reply(self, d2);
              });
      return;
  }
}

// The VM actor sends this vCPU's CONTROL_EVENTS / CR / MSR and makes sure
// the VM-wide set-up ran, then answers with the policy and state to decide
// by; then the decision on the event that gave us the chance.
void configure(vcpu_actor* self, const kvmi::event_msg& ev) {
  auto& s = self->state;
  s.unconfigured.reset(new waiting_event{ev.data, nullptr});
  if (reads_registers(ev.kind()))
    s.unconfigured->saved.reset(new event_registers{ev.common.regs, ev.common.sregs});
  uint8_t gen = s.config_gen;
  auto done = [=] {
    auto& s2 = self->state;
    // A policy or mask that changed meanwhile is applied at the next event.
    s2.configured = s2.config_gen == gen;
    auto w = std::move(s2.unconfigured);
    if (!w)
      return;
    kvmi::event_msg again;
    again.seq = s2.seq;
    again.common.event = s2.event;
    again.common.vcpu = s2.p.index;
    if (w->saved) {
      again.common.regs = w->saved->regs;
      again.common.sregs = w->saved->sregs;
    }
    again.data = std::move(w->data);
    decide_and_reply(self, again);
  };
  // await, not then: its handler is freed with the answer, where then()
  // leaves a slot in every vCPU actor's response table for good. Messages
  // that arrive meanwhile (newer snapshots, policies) are handled after it.
  // No timeout of our own: the VM actor answers every command within its
  // command timeout and answers this after the set-up; and when it goes,
  // so do we. A CAF request timeout would sit in the clock for its whole
  // duration (CAF 0.17 does not cancel it on the response), per vCPU.
  self->request(s.p.vm, caf::infinite, configure_atom::value, s.p.index)
    .await(
      [=](policy_ptr& pol, state_ptr& snap) {
        auto& s2 = self->state;
        if (pol)
          s2.p.policy = std::move(pol);
        if (snap)
          s2.p.snapshot = std::move(snap);
        done();
      },
      [=](caf::error&) { done(); });
}

vcpu_actor* running_vcpu() { return static_cast<vcpu_actor*>(ring_actor::running()); }

// An event of this vCPU, t its arrival: from the mailbox, or in place
// (deliver_event_in_place). Not inlined: bench/profile-event-path.sh
// attributes the handler by it, whichever way the event came.
[[gnu::noinline]] void on_event(vcpu_actor* self, kvmi::event_msg& ev, int64_t t) {
  auto& s = self->state;
  auto& sh = *s.p.shared;
  if (s.in_event) {
    self->send(s.p.vm, proto_err_atom::value,
               protocol_fault{protocol_error_reason::second_event,
                              "second event from a vCPU before its reply"});
    return;
  }
  auto& m = sh.c->internals().m;
  auto kind = static_cast<uint32_t>(ev.kind());
  if (kind < kvmi::num_events)
    m.events[kind]->inc();
  s.p.stats->events.fetch_add(1, std::memory_order_relaxed);
  if (ev.kind() == kvmi::event_id::pause_vcpu)
    s.p.stats->pause_events.fetch_add(1, std::memory_order_relaxed);
  sh.events.fetch_add(1, std::memory_order_relaxed);
  s.p.stats->event.store(int32_t(kind), std::memory_order_relaxed);
  set_state(s, vcpu_state::in_event);
  if (sh.c->bus().wants_events()) {
    bus_record r;
    r.kind = bus_kind::event;
    r.name = std::string(kvmi::name(ev.kind()));
    r.vm = sh.uuid;
    r.vm_name = sh.name;
    r.vcpu = s.p.index;
    r.fields = event_fields(ev);
    sh.c->bus().publish(std::move(r));
  }
  s.in_event = true;
  s.seq = ev.seq;
  s.event = ev.common.event;
  s.t_recv = t;
  if (!s.configured)
    configure(self, ev);
  else
    decide_and_reply(self, ev);
}

// The handlers of every vCPU actor: one behavior shared by all of them,
// captureless, so an idle vCPU does not hold its own copy (128 bytes).
caf::behavior vcpu_handlers() {
  return {
    [](event_atom, kvmi::event_msg& ev, int64_t t) { on_event(running_vcpu(), ev, t); },
    [](update_atom, vcpu_update& u) {
      auto* self = running_vcpu();
      auto& s = self->state;
      if (u.snapshot)
        s.p.snapshot = std::move(u.snapshot);
      if (u.policy || u.reconfig) {
        s.configured = false; // re-applied at the next event
        s.config_gen++;
      }
      if (u.policy)
        s.p.policy = std::move(u.policy);
      if (u.release) {
        // The reply goes to the link before released_atom goes to the VM
        // actor, so it is queued ahead of the close that follows.
        s.releasing = true;
        if (!s.in_event)
          report_released(self);
      }
      if ((u.resume || u.release) && s.holding)
        send_reply(self, decision{});
    },
  };
}

caf::behavior vcpu_behavior(vcpu_actor* self, vcpu_params p) {
  auto& st = self->state;
  st.p = std::move(p);
  // A vCPU actor that fails (a bug) closes its VM's session, as a link to
  // the VM actor would, without a link per vCPU. No capture: no allocation.
  self->set_exception_handler([](caf::scheduled_actor* a, std::exception_ptr& e) -> caf::error {
    auto& s = static_cast<vcpu_actor*>(a)->state;
    std::string what = "vcpu " + std::to_string(s.p.index) + ": ";
    try {
      if (e)
        std::rethrow_exception(e);
      what += "failed";
    } catch (const std::exception& x) {
      what += x.what();
    } catch (...) {
      what += "unknown exception";
    }
    s.p.shared->link->close(disconnect_reason::actor_error, std::move(what));
    caf::anon_send(s.p.vm, closed_atom::value);
    return caf::sec::runtime_error;
  });
  static const caf::behavior shared = vcpu_handlers();
  return shared; // a reference to the one behavior, not a copy of it
}

} // namespace

caf::actor spawn_vcpu(caf::local_actor& vm, vcpu_params p) {
  return vm.spawn(vcpu_behavior, std::move(p));
}

bool deliver_event_in_place(const caf::actor& vcpu, caf::execution_unit* unit,
                            kvmi::event_msg& ev, int64_t t) {
  auto* self = static_cast<vcpu_actor*>(caf::actor_cast<caf::abstract_actor*>(vcpu));
  bool ran = false;
  self->run_in_place(unit, [&] {
    // Only the plain case: a vCPU being configured, or one that sent a
    // second event (a protocol error), takes the mailbox as before.
    auto& s = self->state;
    if (!s.configured || s.in_event)
      return;
    ran = true;
    on_event(self, ev, t);
  });
  return ran;
}

} // namespace kvmid
