// The VM actor: one per KVMI session. Owns the VM-wide pending-command table
// (replies arrive out of order, matched by seq), the memory map and its
// safety rules, page-access state, kvmid-owned breakpoints, the session
// bootstrap, UNHOOK, and operator requests: each in its own file beside
// this one (vm_state.hpp). Here: the messages it takes, and its end.
#include "actors/vm/vm_state.hpp"

namespace kvmid {
namespace vm_impl {
namespace {

// The socket closed: every waiter is answered, the vCPU actors go, and the
// registry keeps this session's history.
void on_closed(vm_actor* self) {
  auto& s = self->state;
  if (s.closed)
    return;
  s.closed = true;
  leave_gate(self);
  auto pend = std::move(s.pending);
  s.pending.clear();
  for (auto& [seq, pc] : pend) {
    cmd_result r;
    r.reply.id = pc.shape.id;
    r.failure = "the VM's session closed";
    r.code = api_errc::conflict;
    pc.done(std::move(r));
  }
  for (auto& rp : s.setup_waiters)
    rp.deliver(caf::make_error(caf::sec::request_receiver_down));
  s.setup_waiters.clear();
  for (auto& w : s.pause_waiters)
    w.deliver(fail(api_errc::conflict, "the VM disconnected"));
  s.pause_waiters.clear();
  size_t n = 0;
  for (auto& v : s.vcpus)
    if (v) {
      ++n;
      self->send_exit(v, caf::exit_reason::user_shutdown);
    }
  s.c->internals().m.vcpus->add(-int64_t(n));
  s.c->internals().m.vms->add(-1);
  s.p.link->clear_routes();
  // This session's counts only: the registry owns the totals.
  s.hist.events = s.sh->events.load();
  s.hist.alerts = s.sh->alerts.load();
  s.hist.rule_hits = s.sh->rule_hits.snapshot();
  s.hist.protocol_errors = s.protocol_errors;
  s.hist.saw_history = s.saw_history;
  for (auto& [gpa, bp] : s.st.breakpoints)
    s.hist.breakpoints[gpa] = bp;
  s.hist.last = make_info(self, true);
  s.hist.last.connected = false;
  for (auto& v : s.hist.last.vcpus) { // what they do now is not kvmid's to know
    v.state = vcpu_state::disconnected;
    v.event.clear();
  }
  s.vcpus.clear();
  if (s.unhook != unhook_phase::none)
    finish_unhook(self);
  if (n >= 64) // thousands of such VMs going free as much as they held
    self->send(s.registry, heap_settle_atom::value);
  publish(self, bus_kind::lifecycle, "vm-disconnected", "session closed");
  self->send(s.registry, unregister_atom::value, s.hist);
  self->quit();
}

caf::behavior vm_behavior(vm_actor* self, core* c, session_params p) {
  auto& s = self->state;
  s.c = c;
  s.p = std::move(p);
  s.uuid = kvmi::hs::to_string(s.p.guest.id);
  s.order = s.p.guest.order;
  s.sh->c = c;
  s.sh->uuid = s.uuid;
  s.sh->name = s.p.guest.name;
  s.sh->link = s.p.link;
  s.sh->regions = s.p.guest.regions;
  auto pols = c->internals().current_policies();
  s.policy = std::make_shared<const vm_policy>(pols->select(s.uuid, s.p.guest.name));
  s.hist.uuid = s.uuid;
  s.hist.name = s.p.guest.name;
  s.connected_since = static_cast<int64_t>(std::time(nullptr));
  c->internals().m.vms->add(1);
  for (uint32_t i = 0; i < s.p.guest.vcpu_count && i < max_vcpus; ++i)
    ensure_vcpu(self, static_cast<uint16_t>(i));
  // The vCPUs go when the VM actor goes, however it goes (on_closed sends
  // their exits first; this covers the rest): one attachable per VM, where
  // a link per vCPU would keep two 40-byte attachables in every idle vCPU.
  self->attach_functor([link = s.p.link] {
    for (auto& v : link->take_vcpus())
      if (v)
        caf::anon_send_exit(v, caf::exit_reason::user_shutdown);
  });
  self->set_down_handler([](caf::down_msg&) {});
  self->set_exit_handler([=](caf::exit_msg& m) {
    // The registry stops its VMs when kvmid stops; any other exit (a vCPU
    // actor that failed) is a bug that ends the session.
    bool stopping = m.source == self->state.registry.address();
    self->state.p.link->close(stopping ? disconnect_reason::shutdown : disconnect_reason::actor_error,
                              caf::to_string(m.reason));
    on_closed(self);
  });
  s.registry = c->registry();
  self->request(s.registry, std::chrono::seconds(10), register_atom::value, s.uuid, s.p.guest.name)
    .then(
      [=](vm_history& h) {
        auto& s2 = self->state;
        s2.hist.sessions = h.sessions; // the registry counted this session
        s2.base_protocol_errors = h.protocol_errors;
        s2.base_events = h.events;
        s2.base_alerts = h.alerts;
        s2.base_rule_hits = std::move(h.rule_hits);
        keep_only(s2.base_rule_hits, *s2.policy);
        s2.saw_history = true;
        for (auto& [gpa, bp] : h.breakpoints)
          if (!s2.st.breakpoints.count(gpa)) {
            auto b = bp;
            b.planted = false; // planted afresh, or adopted in the set-up
            b.spent = false;
            s2.st.breakpoints[gpa] = b;
            s2.snap.reset();
            if (bp.planted && bp.original != 0xCC)
              s2.inherited[gpa] = bp.original;
          }
        history_ready(self);
      },
      [=](caf::error&) { history_ready(self); });
  publish(self, bus_kind::lifecycle, "vm-connected", "session from " + s.p.peer);
  enter_setup_gate(self);
  return {
    [=](setup_go_atom, setup_gate::place_ptr& place) { on_setup_place(self, std::move(place)); },
    [=](setup_bound_atom) {
      if (self->state.gate == gate_phase::holding)
        leave_gate(self);
    },
    [=](event_atom, kvmi::event_msg& ev, int64_t t) {
      auto& s2 = self->state;
      if (ev.kind() == kvmi::event_id::unhook) // no reply: the close is the answer
        return request_unhook(self, 0, [](std::vector<std::string>) {});
      uint16_t v = ev.common.vcpu;
      if (v >= max_vcpus)
        return protocol_error(self, protocol_error_reason::vcpu_out_of_range,
                              "event from a vCPU index beyond any VM");
      ensure_vcpu(self, v);
      self->send(s2.vcpus[v], event_atom::value, std::move(ev), t);
    },
    [=](reply_atom, raw_frame& rf) { on_reply_frame(self, rf); },
    [=](cmd_sweep_atom) { sweep_commands(self); },
    [=](closed_atom) { on_closed(self); },
    [=](proto_err_atom, const protocol_fault& why) {
      protocol_error(self, why.reason, why.detail);
    },
    [=](command_atom, kvmi::command& cmd) {
      auto rp = self->make_response_promise<cmd_result>();
      send_cmd(self, std::move(cmd), [rp](cmd_result r) mutable { rp.deliver(std::move(r)); });
      return rp;
    },
    [=](configure_atom, uint16_t vcpu) -> caf::result<policy_ptr, state_ptr> {
      auto rp = self->make_response_promise<policy_ptr, state_ptr>();
      auto cmds = vcpu_commands(self, vcpu);
      auto left = std::make_shared<size_t>(cmds.size());
      auto next = [=]() mutable {
        if (--*left != 0)
          return;
        auto& s2 = self->state;
        if (s2.gate == gate_phase::holding) {
          if (s2.configured_once.size() <= vcpu)
            s2.configured_once.resize(size_t(vcpu) + 1);
          s2.configured_once[vcpu] = true;
        }
        after_setup(self, vcpu, rp);
        check_set_up(self);
      };
      for (auto& cmd : cmds) // never empty: CONTROL_EVENTS is always there
        send_cmd(self, std::move(cmd), [=](cmd_result r) mutable {
          if (!r.ok() && log_on(log_warn))
            std::fprintf(stderr, "kvmid: vm %s vcpu %u: configuring: %s %s\n",
                         self->state.uuid.c_str(), vcpu,
                         r.failure.empty() ? "kernel error" : r.failure.c_str(),
                         std::string(kvmi::kvm_error_name(r.reply.err)).c_str());
          next();
        });
      return rp;
    },
    [=](unprotect_atom, uint64_t gpa, uint16_t vcpu) -> caf::result<bool> {
      auto& s2 = self->state;
      auto it = s2.st.pages.find(gpa);
      if (it == s2.st.pages.end())
        return true; // another vCPU got there first
      auto rp = self->make_response_promise<bool>();
      set_access(self, vcpu, {{gpa, kvmi::page_access_rwx, {}}},
                 [=](bool ok, std::string err) mutable {
                   if (ok) {
                     self->state.st.pages.erase(gpa);
                     publish_snapshot(self);
                   } else
                     log(self, "unprotect: %s", err);
                   rp.deliver(ok);
                 });
      return rp;
    },
    [=](restore_bp_atom, uint64_t gpa, uint16_t vcpu) -> caf::result<bool> {
      auto& s2 = self->state;
      auto it = s2.st.breakpoints.find(gpa);
      if (it == s2.st.breakpoints.end())
        return false;
      it->second.hits++;
      bus_record r;
      r.kind = bus_kind::report;
      r.name = "breakpoint-hit";
      r.vm = s2.uuid;
      r.vm_name = s2.p.guest.name;
      r.message = "kvmid breakpoint " + it->second.name + " hit";
      r.fields.emplace_back("gpa", hex_value(gpa));
      s2.c->bus().publish(std::move(r));
      auto rp = self->make_response_promise<bool>();
      auto can_rearm = [self] {
        auto& s3 = self->state;
        return s3.p.link->can_singlestep() && s3.unhook == unhook_phase::none && !s3.closing;
      };
      bool rearm = can_rearm();
      restore_breakpoint(
        self, gpa,
        [=](bool ok) mutable {
          auto& s3 = self->state;
          auto bp = s3.st.breakpoints.find(gpa);
          if (ok && bp != s3.st.breakpoints.end() && !bp->second.planted) {
            // Also when another vCPU restored it first: this one runs the
            // original instruction too before the INT3 may go back.
            if (can_rearm()) {
              s3.stepping[vcpu] = gpa;
              s3.p.link->singlestep(vcpu, true);
            } else {
              bp->second.spent = true;
              if (rearm)
                drop_record(self, gpa);
            }
          }
          publish_snapshot(self);
          rp.deliver(ok);
        },
        rearm);
      return rp;
    },
    [=](rearm_bp_atom, uint16_t vcpu) -> caf::result<bool> {
      auto& s2 = self->state;
      s2.p.link->singlestep(vcpu, false);
      auto it = s2.stepping.find(vcpu);
      if (it == s2.stepping.end())
        return true; // an unhook stopped it, or a stray SINGLESTEP
      uint64_t gpa = it->second;
      s2.stepping.erase(it);
      auto bp = s2.st.breakpoints.find(gpa);
      if (stepped(s2, gpa))
        return true; // another vCPU still runs the original
      bool gone = bp == s2.st.breakpoints.end();
      if (gone || bp->second.planted || s2.unhook != unhook_phase::none || s2.closing) {
        if (gone || !bp->second.planted)
          drop_record(self, gpa); // nothing to put back
        return true;
      }
      auto rp = self->make_response_promise<bool>();
      // Read and written afresh (the byte under it may have changed); the
      // registry kept its record since the hit, a new byte is recorded anew.
      plant_breakpoint(
        self, gpa, bp->second.name,
        [=](bool ok, std::string err) mutable {
          if (!ok)
            log(self, "breakpoint: %s", err);
          publish_snapshot(self);
          rp.deliver(ok);
        },
        bp->second.original);
      return rp;
    },
    [=](held_atom, uint16_t vcpu) {
      self->state.held.insert(vcpu);
      check_paused(self);
    },
    [=](released_check_atom) { check_released(self); },
    [=](released_atom, uint16_t vcpu) {
      self->state.released.insert(vcpu);
      check_released(self);
    },
    [=](unhook_atom, int64_t deadline) -> caf::result<std::vector<std::string>> {
      auto rp = self->make_response_promise<std::vector<std::string>>();
      request_unhook(self, deadline,
                     [rp](std::vector<std::string> problems) mutable { rp.deliver(std::move(problems)); });
      return rp;
    },
    [=](unhook_wait_atom, uint8_t phase) { on_unhook_wait(self, phase); },
    [=](policy_atom, policy_ptr& pol) {
      auto& s2 = self->state;
      if (s2.unhook != unhook_phase::none)
        return; // going away: nothing more is set up
      s2.policy = pol;
      // Only the rules of the policy in force keep their counts.
      s2.sh->rule_hits.keep_only(*pol);
      keep_only(s2.base_rule_hits, *pol);
      s2.setup_done = false;
      vcpu_update u;
      u.policy = pol;
      for (auto& v : s2.vcpus)
        if (v)
          self->send(v, update_atom::value, u);
      // Stop every vCPU once more so the new policy is applied at its next
      // event (CONTROL_* on each, then the VM-wide set-up).
      send_pause_all(self, [](cmd_result) {});
    },
    [=](api_atom, api_request& req) {
      auto rp = self->make_response_promise<api_response>();
      handle_api(self, req, rp);
      return rp;
    },
  };
}

} // namespace
} // namespace vm_impl

caf::actor spawn_vm(core& c, session_params p) {
  auto link = p.link;
  auto a = c.system().spawn(vm_impl::vm_behavior, &c, std::move(p));
  link->set_vm(a);
  return a;
}

} // namespace kvmid
