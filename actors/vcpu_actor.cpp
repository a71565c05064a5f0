// The vCPU actor: owner of one vCPU's state, its one outstanding event, the
// policy decision and the reply. Events arrive straight from the ring thread
// (one hop); the reply goes straight to the link (one hop back).
#include "actors/vcpu_actor.hpp"
#include "actors/log.hpp"

#include <cstdio>

namespace kvmid {

namespace {

struct vcpu_st {
  static inline const char* name = "kvmid.vcpu";
  core* c = nullptr;
  vcpu_params p;
  policy_ptr policy;
  state_ptr snap;
  bool configured = false;
  std::optional<kvmi::event_msg> cur;
  int64_t t_recv = 0;
  bool holding = false;
  std::vector<uint8_t> buf;
};

using vcpu_actor = caf::stateful_actor<vcpu_st>;

constexpr auto request_timeout = std::chrono::seconds(30);

void set_state(vcpu_st& s, vcpu_state v) {
  s.p.stats->state.store(static_cast<uint8_t>(v), std::memory_order_relaxed);
}

void send_reply(vcpu_actor* self, const decision& d) {
  auto& s = self->state;
  if (!s.cur)
    return;
  auto msg = make_reply(*s.cur, d);
  if (auto e = kvmi::check(msg)) {
    // Never send what the kernel would tear the session down for.
    std::fprintf(stderr, "kvmid: vm %s vcpu %u: refusing an invalid event reply: %.*s\n",
                 s.p.uuid.c_str(), s.p.index, int(e.reason.size()), e.reason.data());
    msg = make_reply(*s.cur, decision{});
  }
  auto buf = s.p.link->take_buffer();
  kvmi::encode(buf, msg, s.p.order);
  s.p.link->send(std::move(buf));
  auto& m = s.c->internals().m;
  m.reply_latency->observe(double(now_ns() - s.t_recv) / 1e9);
  s.cur.reset();
  s.holding = false;
  s.p.stats->event.store(-1, std::memory_order_relaxed);
  set_state(s, vcpu_state::running);
}

void publish_alert(vcpu_actor* self, const decision& d) {
  auto& s = self->state;
  auto& m = s.c->internals().m;
  m.alert(d.rule).inc();
  s.p.stats->alerts.fetch_add(1, std::memory_order_relaxed);
  s.p.vm_alerts->fetch_add(1, std::memory_order_relaxed);
  bus_record r;
  r.kind = bus_kind::alert;
  r.name = std::string(d.rule);
  r.vm = s.p.uuid;
  r.vm_name = s.p.name;
  r.vcpu = s.p.index;
  r.fields.emplace_back("rule", std::string(d.rule_name));
  r.fields.emplace_back("action", std::string(kvmi::name(d.act)));
  auto& ev = *s.cur;
  char buf[160];
  switch (ev.kind()) {
    case kvmi::event_id::msr: {
      auto& e = std::get<kvmi::event_msr>(ev.data);
      std::snprintf(buf, sizeof buf, "denied write of MSR 0x%x (0x%llx -> 0x%llx)", e.msr,
                    (unsigned long long)e.old_value, (unsigned long long)e.new_value);
      r.fields.emplace_back("msr", std::to_string(e.msr));
      r.fields.emplace_back("value", std::to_string(e.new_value));
      break;
    }
    case kvmi::event_id::cr: {
      auto& e = std::get<kvmi::event_cr>(ev.data);
      std::snprintf(buf, sizeof buf, "CR%u write 0x%llx would clear pinned bits; forced 0x%llx",
                    e.cr, (unsigned long long)e.new_value, (unsigned long long)d.new_val);
      r.fields.emplace_back("cr", std::to_string(e.cr));
      break;
    }
    case kvmi::event_id::pf: {
      auto& e = std::get<kvmi::event_pf>(ev.data);
      std::snprintf(buf, sizeof buf, "access 0x%x to protected gpa 0x%llx (gva 0x%llx)", e.mode,
                    (unsigned long long)e.gpa, (unsigned long long)e.gva);
      r.fields.emplace_back("gpa", std::to_string(e.gpa));
      r.fields.emplace_back("access", std::to_string(e.mode));
      break;
    }
    default: std::snprintf(buf, sizeof buf, "policy violation"); break;
  }
  r.message = buf;
  s.c->bus().publish(std::move(r));
}

void decide_and_reply(vcpu_actor* self) {
  auto& s = self->state;
  if (!s.cur)
    return;
  auto d = decide(*s.cur, *s.policy, *s.snap);
  if (d.alert)
    publish_alert(self, d);
  if (d.report) {
    bus_record r;
    r.kind = bus_kind::report;
    r.name = "hypercall";
    r.vm = s.p.uuid;
    r.vm_name = s.p.name;
    r.vcpu = s.p.index;
    r.message = "guest agent hypercall report";
    auto& regs = s.cur->common.regs;
    r.fields.emplace_back("rdi", std::to_string(regs.rdi));
    r.fields.emplace_back("rsi", std::to_string(regs.rsi));
    r.fields.emplace_back("rdx", std::to_string(regs.rdx));
    s.c->bus().publish(std::move(r));
  }
  switch (d.then) {
    case follow_up::none: send_reply(self, d); return;
    case follow_up::hold:
      s.holding = true;
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
    case follow_up::restore_breakpoint:
      self->request(s.p.vm, request_timeout, restore_bp_atom::value, d.gpa)
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

// CONTROL_EVENTS / CR / MSR for this vCPU, then the VM-wide set-up, then
// the decision on the event that gave us the chance.
void configure(vcpu_actor* self) {
  auto& s = self->state;
  std::vector<kvmi::command> cmds;
  uint32_t mask = s.policy->vcpu_events() & s.p.allowed_events & kvmi::known_vcpu_events;
  cmds.push_back(kvmi::control_events{s.p.index, 0, mask});
  if (mask & kvmi::flag(kvmi::event_id::cr)) {
    std::vector<uint32_t> crs;
    for (auto& pin : s.policy->crs)
      if (std::find(crs.begin(), crs.end(), pin.cr) == crs.end())
        crs.push_back(pin.cr);
    for (auto cr : crs)
      cmds.push_back(kvmi::control_cr{s.p.index, 1, 0, cr});
  }
  if (mask & kvmi::flag(kvmi::event_id::msr))
    for (auto& r : s.policy->msrs)
      if (kvmi::valid_control_msr(r.msr))
        cmds.push_back(kvmi::control_msr{s.p.index, 1, 0, r.msr});
  auto left = std::make_shared<size_t>(cmds.size());
  auto finish = [=] {
    if (--*left > 0)
      return;
    self->state.configured = true;
    self->request(self->state.p.vm, request_timeout, vm_setup_atom::value, self->state.p.index)
      .then([=](bool) { decide_and_reply(self); },
            [=](caf::error&) { decide_and_reply(self); });
  };
  s.p.stats->enabled.store(mask, std::memory_order_relaxed);
  for (auto& c : cmds)
    self->request(s.p.vm, request_timeout, command_atom::value, c)
      .then(
        [=](cmd_result& r) {
          if (!r.ok() && log_on(log_warn))
            std::fprintf(stderr, "kvmid: vm %s vcpu %u: configuring: %s %s\n",
                         self->state.p.uuid.c_str(), self->state.p.index,
                         r.failure.empty() ? "kernel error"
                                           : r.failure.c_str(),
                         std::string(kvmi::kvm_error_name(r.reply.err)).c_str());
          finish();
        },
        [=](caf::error&) { finish(); });
}

caf::behavior vcpu_behavior(vcpu_actor* self, core* c, vcpu_params p) {
  self->state.c = c;
  self->state.p = std::move(p);
  self->state.policy = self->state.p.policy;
  self->state.snap = self->state.p.snapshot;
  return {
    [=](event_atom, kvmi::event_msg& ev, int64_t t) {
      auto& s = self->state;
      if (s.cur) {
        self->send(s.p.vm, proto_err_atom::value,
                   std::string("second event from a vCPU before its reply"));
        return;
      }
      auto& m = s.c->internals().m;
      auto kind = static_cast<uint32_t>(ev.kind());
      if (kind < kvmi::num_events)
        m.events[kind]->inc();
      s.p.stats->events.fetch_add(1, std::memory_order_relaxed);
      s.p.vm_events->fetch_add(1, std::memory_order_relaxed);
      s.p.stats->event.store(int32_t(kind), std::memory_order_relaxed);
      set_state(s, vcpu_state::in_event);
      if (s.c->bus().wants_events()) {
        bus_record r;
        r.kind = bus_kind::event;
        r.name = std::string(kvmi::name(ev.kind()));
        r.vm = s.p.uuid;
        r.vm_name = s.p.name;
        r.vcpu = s.p.index;
        r.fields.emplace_back("seq", std::to_string(ev.seq));
        r.fields.emplace_back("rip", std::to_string(ev.common.regs.rip));
        s.c->bus().publish(std::move(r));
      }
      s.cur = std::move(ev);
      s.t_recv = t;
      if (!s.configured)
        configure(self);
      else
        decide_and_reply(self);
    },
    [=](snapshot_atom, state_ptr& st) { self->state.snap = std::move(st); },
    [=](policy_atom, policy_ptr& pol) {
      self->state.policy = std::move(pol);
      self->state.configured = false; // re-applied at the next event
    },
    [=](reconfig_atom, uint32_t allowed_events) {
      self->state.p.allowed_events = allowed_events;
      self->state.configured = false;
    },
    [=](resume_atom) {
      if (self->state.holding)
        send_reply(self, decision{});
    },
  };
}

} // namespace

caf::actor spawn_vcpu(core& c, vcpu_params p) {
  return c.system().spawn(vcpu_behavior, &c, std::move(p));
}

} // namespace kvmid
