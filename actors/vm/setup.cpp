// Setting a session up: the bootstrap (version, guest info, VM events,
// every vCPU paused), each vCPU's configuration in its first event, the
// VM-wide part of the policy, and the place at the setup gate meanwhile.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

// The set-up ended, one way or another: the next VM may start its own.
void leave_gate(vm_actor* self) {
  auto& s = self->state;
  if (s.gate == gate_phase::waiting)
    s.c->internals().setups->withdraw(self->address());
  s.gate = gate_phase::left;
  s.place.reset();
  std::vector<bool>().swap(s.configured_once); // read only while the set-up runs
}

// The set-up is over once PAUSE_ALL_VCPUS was answered and every vCPU was
// configured in its first event (which waits for the VM-wide set-up).
void check_set_up(vm_actor* self) {
  auto& s = self->state;
  if (s.gate != gate_phase::holding || !s.paused_all)
    return;
  bool any = false;
  for (size_t i = 0; i < s.vcpus.size(); ++i)
    if (s.vcpus[i]) {
      if (i >= s.configured_once.size() || !s.configured_once[i])
        return;
      any = true;
    }
  if (any && !s.setup_done && s.unhook == unhook_phase::none)
    return; // its vCPUs wait for the VM-wide set-up, still running
  leave_gate(self);
}

static void bootstrap(vm_actor* self);

// A place at the setup gate, given at once or later (setup_go_atom): the
// set-up starts, unless the VM went or is being unhooked meanwhile (then
// the place goes back as this returns).
void on_setup_place(vm_actor* self, setup_gate::place_ptr place) {
  auto& s = self->state;
  if (s.gate != gate_phase::waiting)
    return;
  if (s.closed || s.closing || s.unhook != unhook_phase::none)
    return leave_gate(self);
  s.gate = gate_phase::holding;
  s.place = std::move(place);
  // Bounded: a VM whose vCPUs never stop (or a slow host) does not keep the
  // others waiting.
  self->delayed_send(self, 2 * s.c->options().command_timeout, setup_bound_atom::value);
  bootstrap(self);
}

void enter_setup_gate(vm_actor* self) {
  auto& gate = *self->state.c->internals().setups;
  if (auto place = gate.enter(caf::actor_cast<caf::actor>(self)))
    on_setup_place(self, std::move(place));
}

// The VM-wide part of the policy: page restrictions and breakpoints. Needs
// a vCPU stopped in an event (SET_PAGE_ACCESS is a vCPU command).
static void run_setup(vm_actor* self, uint16_t vcpu) {
  auto& s = self->state;
  s.setup_running = true;
  auto& pol = *s.policy;
  // Desired page protections: from the rules, keeping operator ones.
  std::map<uint64_t, protected_page> want;
  for (auto& [gpa, pg] : s.st.pages)
    if (pg.rule < 0)
      want[gpa] = pg;
  for (size_t i = 0; i < pol.pages.size(); ++i) {
    auto& r = pol.pages[i];
    for (uint64_t a = r.gpa; a < r.gpa + r.size; a += kvmi::page_size) {
      if (auto why = unsafe_reason(s.p.guest.regions, a, kvmi::page_size); !why.empty()) {
        log(self, "page rule %s", r.name + ": skipping gpa " + std::to_string(a) + ": " + why);
        continue;
      }
      want[a] = protected_page{r.access, int(i), r.on_violation, r.name, r.deny_gpa, r.deny_size};
    }
  }
  std::vector<kvmi::page_access_entry> entries;
  for (auto& [gpa, pg] : s.st.pages)
    if (!want.count(gpa))
      entries.push_back({gpa, kvmi::page_access_rwx, {}});
  for (auto& [gpa, pg] : want) {
    auto it = s.st.pages.find(gpa);
    if (it == s.st.pages.end() || it->second.access != pg.access)
      entries.push_back({gpa, pg.access, {}});
  }
  auto q = std::make_shared<std::deque<std::function<void(done_fn)>>>();
  q->push_back([=, want = std::move(want), entries = std::move(entries)](done_fn next) mutable {
    set_access(self, vcpu, std::move(entries), [=, want = std::move(want)](bool ok, std::string err) {
      if (!ok)
        log(self, "page protection: %s", err);
      self->state.st.pages = want; // kvmid's intent; failures are logged
      self->state.snap.reset();
      next();
    });
  });
  auto inherited = std::move(s.inherited);
  s.inherited.clear();
  for (auto& [gpa, orig] : inherited) {
    uint64_t g = gpa;
    uint8_t o = orig;
    q->push_back([=](done_fn next) { adopt_breakpoint(self, g, o, next); });
  }
  for (auto& b : pol.breakpoints) {
    auto it = s.st.breakpoints.find(b.gpa);
    if (it != s.st.breakpoints.end() && (it->second.planted || it->second.spent))
      continue; // planted, or hit in a session that cannot plant it again
    if (stepped(s, b.gpa))
      continue; // its SINGLESTEP plants it again
    q->push_back([=](done_fn next) {
      auto now = self->state.st.breakpoints.find(b.gpa);
      if (now != self->state.st.breakpoints.end() && now->second.planted) {
        now->second.name = b.name; // adopted above
        return next();
      }
      plant_breakpoint(self, b.gpa, b.name, [=](bool ok, std::string err) {
        if (!ok)
          log(self, "breakpoint: %s", err);
        next();
      });
    });
  }
  chain(q, [=, started = s.policy] {
    auto& s2 = self->state;
    s2.setup_running = false;
    // A reload while this ran: set up again for the policy now in force,
    // on the same vCPU (it waits in its event for setup_waiters), rather
    // than call the VM set up by the old one and drop the new rules.
    if (s2.policy != started && !s2.closed && !s2.closing && s2.unhook == unhook_phase::none)
      return run_setup(self, vcpu);
    s2.setup_done = true;
    publish_snapshot(self);
    for (auto& rp : s2.setup_waiters)
      rp.deliver(s2.policy, s2.snap);
    // Sized for a whole VM configuring at once: give it back.
    std::vector<caf::response_promise>().swap(s2.setup_waiters);
    check_set_up(self);
    start_unhook(self); // if one waited for this set-up
  });
}

void ensure_vcpu(vm_actor* self, uint16_t i) {
  auto& s = self->state;
  if (i < s.vcpus.size() && s.vcpus[i])
    return;
  if (s.vcpus.size() <= i)
    s.vcpus.resize(size_t(i) + 1);
  while (s.sh->stats.size() <= i)
    s.sh->stats.emplace_back(); // a hot-plugged index beyond the others
  if (!s.snap) // one snapshot shared by the vCPUs, not a copy each
    s.snap = std::make_shared<const vm_state>(s.st);
  vcpu_params vp;
  vp.index = i;
  vp.vm = caf::actor_cast<caf::actor>(self);
  vp.shared = s.sh;
  vp.stats = &s.sh->stats[i];
  vp.policy = s.policy;
  vp.snapshot = s.snap;
  auto a = spawn_vcpu(*self, std::move(vp));
  s.vcpus[i] = a;
  s.p.link->set_vcpu(i, a);
  s.c->internals().m.vcpus->add(1);
}

// CONTROL_EVENTS / CR / MSR for one vCPU, from the policy and what the host
// allows; also shown in its stats.
std::vector<kvmi::command> vcpu_commands(vm_actor* self, uint16_t vcpu) {
  auto& s = self->state;
  auto& pol = *s.policy;
  std::vector<kvmi::command> cmds;
  // One allocation, not a growing vector: every vCPU of an attaching VM
  // comes here at once.
  cmds.reserve(1 + pol.crs.size() + pol.msrs.size()
               + (size_t(vcpu) < s.intercepting.size() && s.intercepting[vcpu]
                    ? s.intercepting[vcpu]->crs.size() + s.intercepting[vcpu]->msrs.size()
                    : 0));
  uint32_t mask = pol.vcpu_events() & s.version.events & kvmi::known_vcpu_events;
  cmds.push_back(kvmi::control_events{vcpu, 0, mask});
  vm_st::intercepts now;
  if (mask & kvmi::flag(kvmi::event_id::cr))
    for (auto& pin : pol.crs)
      if (std::find(now.crs.begin(), now.crs.end(), pin.cr) == now.crs.end())
        now.crs.push_back(pin.cr);
  if (mask & kvmi::flag(kvmi::event_id::msr))
    for (auto& r : pol.msrs)
      if (kvmi::valid_control_msr(r.msr)
          && std::find(now.msrs.begin(), now.msrs.end(), r.msr) == now.msrs.end())
        now.msrs.push_back(r.msr);
  if (s.intercepting.size() <= vcpu)
    s.intercepting.resize(size_t(vcpu) + 1);
  auto& slot = s.intercepting[vcpu];
  static const vm_st::intercepts none;
  const auto& before = slot ? *slot : none;
  auto dropped = [](const std::vector<uint32_t>& old, const std::vector<uint32_t>& cur) {
    std::vector<uint32_t> out;
    for (auto x : old)
      if (std::find(cur.begin(), cur.end(), x) == cur.end())
        out.push_back(x);
    return out;
  };
  for (auto cr : dropped(before.crs, now.crs))
    cmds.push_back(kvmi::control_cr{vcpu, 0, 0, cr});
  for (auto msr : dropped(before.msrs, now.msrs))
    cmds.push_back(kvmi::control_msr{vcpu, 0, 0, msr});
  for (auto cr : now.crs)
    cmds.push_back(kvmi::control_cr{vcpu, 1, 0, cr});
  for (auto msr : now.msrs)
    cmds.push_back(kvmi::control_msr{vcpu, 1, 0, msr});
  // Share the set of the vCPU configured last when it is the same.
  if (!s.last_intercepts || *s.last_intercepts != now)
    s.last_intercepts = std::make_shared<const vm_st::intercepts>(std::move(now));
  slot = s.last_intercepts;
  if (auto st = stats_of(s, vcpu))
    st->enabled.store(mask, std::memory_order_relaxed);
  return cmds;
}

// Answers rp with the policy and state to decide by once the VM-wide
// set-up ran; it needs a vCPU waiting in an event, `vcpu`, which waits for
// this answer.
void after_setup(vm_actor* self, uint16_t vcpu, caf::response_promise rp) {
  auto& s = self->state;
  if (s.setup_done || s.unhook != unhook_phase::none) { // an unhook sets nothing up
    if (!s.snap)
      s.snap = std::make_shared<const vm_state>(s.st);
    rp.deliver(s.policy, s.snap);
    return;
  }
  s.setup_waiters.push_back(std::move(rp));
  if (!s.hist_ready) {
    s.setup_vcpu = vcpu; // it waits in an event until the set-up ran
    return;
  }
  if (!s.setup_running)
    run_setup(self, vcpu);
}

void history_ready(vm_actor* self) {
  auto& s = self->state;
  s.hist_ready = true;
  if (!s.closed && !s.closing && s.unhook == unhook_phase::none && !s.setup_waiters.empty()
      && !s.setup_running)
    run_setup(self, s.setup_vcpu);
  start_unhook(self); // if one waited for the history
}

static void bootstrap(vm_actor* self) {
  send_cmd(self, kvmi::get_version{}, [=](cmd_result r) {
    auto& s2 = self->state;
    if (!r.ok())
      return protocol_error(self, protocol_error_reason::get_version_failed,
                            "GET_VERSION failed");
    s2.version = std::get<kvmi::get_version_reply>(r.reply.data);
    if (s2.version.version < kvmi::version)
      log(self, "%s", "host reports an older KVMI version");
    vcpu_update u;
    u.reconfig = true;
    for (auto& v : s2.vcpus)
      if (v)
        self->send(v, update_atom::value, u);
    // GET_GUEST_INFO is a vCPU command and may see EAGAIN before the first
    // event; the handshake's vCPU count stands then.
    if (kvmi::allowed_command(kvmi::msg_id::get_guest_info, s2.version.commands))
      send_cmd(self, kvmi::get_guest_info{0, {}}, [=](cmd_result gi) {
        if (gi.ok()) {
          auto& g = std::get<kvmi::get_guest_info_reply>(gi.reply.data);
          self->state.tsc_speed = g.tsc_speed;
          for (uint32_t i = 0; i < g.vcpu_count && i < max_vcpus; ++i)
            ensure_vcpu(self, static_cast<uint16_t>(i));
        }
      });
    uint32_t vm_events = (kvmi::flag(kvmi::event_id::create_vcpu) | kvmi::flag(kvmi::event_id::unhook))
                         & s2.version.events;
    send_cmd(self, kvmi::control_vm_events{vm_events, 0}, [=](cmd_result cv) {
      if (!cv.ok())
        log(self, "CONTROL_VM_EVENTS: %s", what(cv));
      // Every vCPU stops in PAUSE_VCPU (after any CREATE_VCPU) and is
      // configured there, then released.
      send_pause_all(self, [=](cmd_result pr) {
        if (!pr.ok()) {
          log(self, "PAUSE_ALL_VCPUS: %s", what(pr));
          return leave_gate(self); // no vCPU stops to be configured now
        }
        auto& pa = std::get<kvmi::pause_all_vcpus_reply>(pr.reply.data);
        for (uint32_t i = 0; i < pa.vcpu_count && i < max_vcpus; ++i)
          ensure_vcpu(self, static_cast<uint16_t>(i));
        self->state.paused_all = true;
        check_set_up(self);
      });
    });
  });
}

} // namespace kvmid::vm_impl
