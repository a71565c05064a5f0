// UNHOOK: undoes everything kvmid set in the guest before the socket
// closes. Every vCPU is stopped first (held in PAUSE_VCPU, so none raises
// another event and SET_PAGE_ACCESS has a vCPU to run on); then the bytes
// under kvmid's INT3s go back, restricted pages get rwx, kvmid's events go
// off; then every vCPU is released with its reply, and the socket closes.
// Each wait has a bound (the command timeout, or half of what is left to
// the deadline), after which the unhook goes on with what it has.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

static void release_vcpus(vm_actor* self);

static size_t live_vcpus(const vm_st& s) {
  size_t n = 0;
  for (auto& v : s.vcpus)
    n += v ? 1 : 0;
  return n;
}

static std::chrono::nanoseconds unhook_bound(vm_actor* self) {
  auto& s = self->state;
  auto b = std::chrono::duration_cast<std::chrono::nanoseconds>(s.c->options().command_timeout);
  if (s.unhook_deadline != 0)
    b = std::min(b, std::chrono::nanoseconds(std::max<int64_t>(0, (s.unhook_deadline - now_ns()) / 2)));
  return b;
}

static void arm_unhook_wait(vm_actor* self) {
  self->delayed_send(self, unhook_bound(self), unhook_wait_atom::value,
                     static_cast<uint8_t>(self->state.unhook));
}

static void unhook_problem(vm_actor* self, std::string problem) {
  log(self, "unhook: %s", problem);
  self->state.unhook_problems.push_back(std::move(problem));
}

void request_unhook(vm_actor* self, int64_t deadline,
                    std::function<void(std::vector<std::string>)> done) {
  auto& s = self->state;
  s.unhook_waiters.push_back(std::move(done));
  if (deadline != 0 && (s.unhook_deadline == 0 || deadline < s.unhook_deadline))
    s.unhook_deadline = deadline;
  if (s.unhook == unhook_phase::none) {
    s.unhook = unhook_phase::asked;
    start_unhook(self);
  }
}

// Once kvmid knows its INT3s in the guest (the registry's history) and no
// set-up is planting more.
void start_unhook(vm_actor* self) {
  auto& s = self->state;
  if (s.unhook != unhook_phase::asked || !s.hist_ready || s.setup_running || s.closed
      || s.closing)
    return;
  s.unhook = unhook_phase::stopping;
  for (auto& w : s.pause_waiters)
    w.deliver(fail(api_errc::conflict, "the VM is being unhooked"));
  s.pause_waiters.clear();
  arm_unhook_wait(self);
  if (!s.st.paused) { // an operator pause holds them already
    s.st.paused = true;
    s.held.clear();
    publish_snapshot(self);
    send_pause_all(self, [=](cmd_result r) {
      if (r.ok())
        return;
      log(self, "unhook: %s", what(r));
      if (self->state.unhook == unhook_phase::stopping)
        undo_hooks(self); // none will stop: go on with what is stopped
    });
  }
  check_paused(self);
}

static void restore_for_unhook(vm_actor* self, uint64_t gpa, done_fn next) {
  restore_breakpoint(self, gpa, [=](bool ok) {
    if (!ok)
      unhook_problem(self, "breakpoint at gpa " + std::to_string(gpa)
                             + ": the original byte could not be written back");
    next();
  });
}

// Sends every command at once; next() once all are answered.
static void send_all(vm_actor* self, std::vector<kvmi::command> cmds, done_fn next) {
  if (cmds.empty())
    return next();
  auto left = std::make_shared<size_t>(cmds.size());
  for (auto& c : cmds)
    send_cmd(self, std::move(c), [=](cmd_result r) {
      if (!r.ok())
        log(self, "unhook: %s", what(r));
      if (--*left == 0)
        next();
    });
}


void undo_hooks(vm_actor* self) {
  auto& s = self->state;
  s.unhook = unhook_phase::undoing;
  if (size_t live = live_vcpus(s); s.held.size() < live)
    log(self, "unhook: %s", std::to_string(live - s.held.size()) + " of "
                              + std::to_string(live) + " vCPUs did not stop in time");
  auto q = std::make_shared<std::deque<std::function<void(done_fn)>>>();
  // Their bytes are the original already; the INT3 is not put back.
  for (auto& [vcpu, gpa] : std::exchange(s.stepping, {})) {
    s.p.link->singlestep(vcpu, false);
    if (auto bp = s.st.breakpoints.find(gpa); bp == s.st.breakpoints.end() || !bp->second.planted)
      drop_record(self, gpa);
  }
  for (auto& [gpa, bp] : s.st.breakpoints)
    if (bp.planted) {
      uint64_t g = gpa;
      q->push_back([=](done_fn next) { restore_for_unhook(self, g, next); });
    }
  // Left by an earlier session and not adopted yet (no set-up ran).
  for (auto& [gpa, orig] : std::exchange(s.inherited, {})) {
    uint64_t g = gpa;
    uint8_t o = orig;
    q->push_back([=](done_fn next) {
      adopt_breakpoint(self, g, o, [=] { restore_for_unhook(self, g, next); });
    });
  }
  bool found = !s.held.empty();
  uint16_t carrier = found ? *s.held.begin() : any_stopped_vcpu(self, found);
  if (!s.st.pages.empty() && !found)
    log(self, "unhook: %s", "no stopped vCPU to carry SET_PAGE_ACCESS; the kernel lifts "
                            "the page restrictions when the socket closes");
  if (!s.st.pages.empty() && found) {
    std::vector<kvmi::page_access_entry> entries;
    for (auto& [gpa, pg] : s.st.pages)
      entries.push_back({gpa, kvmi::page_access_rwx, {}});
    q->push_back([=](done_fn next) {
      set_access(self, carrier, entries, [=](bool ok, std::string err) {
        if (!ok)
          log(self, "unhook: page access: %s", err);
        self->state.st.pages.clear();
        self->state.snap.reset();
        next();
      });
    });
  }
  // No event of kvmid's from the held vCPUs once released, nor CREATE_VCPU:
  // none is left waiting when the socket closes.
  std::vector<kvmi::command> off;
  for (auto v : s.held) {
    off.push_back(kvmi::control_events{v, 0, 0});
    if (auto st = stats_of(s, v))
      st->enabled.store(0, std::memory_order_relaxed);
  }
  off.push_back(kvmi::control_vm_events{0, 0});
  q->push_back([=](done_fn next) { send_all(self, off, next); });
  chain(q, [=] { release_vcpus(self); });
}

static void close_unhooked(vm_actor* self) {
  auto& s = self->state;
  s.unhook = unhook_phase::closing;
  publish(self, bus_kind::lifecycle, "vm-unhooked", "kvmid removed its hooks and closed");
  s.closing = true;
  s.p.link->close(disconnect_reason::unhook); // after the replies queued before it
}

void check_released(vm_actor* self) {
  auto& s = self->state;
  if (s.unhook != unhook_phase::releasing || s.released.size() < live_vcpus(s))
    return;
  // A vCPU held in another event still owes the PAUSE_VCPU of the stop:
  // it comes right after its release, and must be answered before the close.
  if (!pauses_settled(s)) {
    self->delayed_send(self, std::chrono::milliseconds(2), released_check_atom::value);
    return;
  }
  close_unhooked(self);
}

static void release_vcpus(vm_actor* self) {
  auto& s = self->state;
  s.unhook = unhook_phase::releasing;
  s.st.paused = false;
  s.held.clear();
  s.released.clear();
  s.snap = std::make_shared<const vm_state>(s.st);
  vcpu_update u;
  u.snapshot = s.snap;
  u.release = true;
  for (auto& v : s.vcpus)
    if (v)
      self->send(v, update_atom::value, u);
  arm_unhook_wait(self);
  check_released(self);
}

void on_unhook_wait(vm_actor* self, uint8_t phase) {
  auto& s = self->state;
  if (static_cast<uint8_t>(s.unhook) != phase)
    return; // that wait ended in time
  if (s.unhook == unhook_phase::stopping)
    undo_hooks(self);
  else if (s.unhook == unhook_phase::releasing) {
    log(self, "unhook: %s", std::to_string(live_vcpus(s) - s.released.size())
                              + " vCPUs still in an event when the socket closes");
    close_unhooked(self);
  }
}

// The socket closed: every unhook waiter learns what could not be undone.
// A session the other end closed first (the VM went away) is no failure of
// the unhook: its INT3s stay recorded for the session that comes back.
void finish_unhook(vm_actor* self) {
  auto& s = self->state;
  if (s.unhook != unhook_phase::closing) {
    size_t left = s.inherited.size();
    for (auto& [gpa, bp] : s.st.breakpoints)
      left += bp.planted ? 1 : 0;
    if (left)
      log(self, "unhook: %s", "the session closed before the unhook finished; "
                                + std::to_string(left) + " INT3 byte(s) of kvmid's stay recorded");
    // What failed on the way (a byte not written back) failed because the
    // session went: the record covers it, so it is no failure of the unhook.
    s.unhook_problems.clear();
  }
  for (auto& w : std::exchange(s.unhook_waiters, {}))
    w(s.unhook_problems);
}

} // namespace kvmid::vm_impl
