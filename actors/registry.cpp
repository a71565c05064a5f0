// The registry: every VM (connected or not) by uuid, with the history that
// survives reconnects; the control plane's way in to a VM actor.
#include "actors/core_impl.hpp"

#include <cstdio>
#include <malloc.h>
#include <map>

namespace kvmid {

namespace {

struct reg_entry {
  caf::actor vm; // null while disconnected
  vm_history hist;
};

struct reg_st {
  static inline const char* name = "kvmid.registry";
  core* c = nullptr;
  std::map<std::string, reg_entry> vms;
  // INT3s kvmid planted and has not restored, by uuid: the source of truth
  // for the next session (in memory and, with a state_dir, on disk).
  planted_map planted;
  // Heap trim after bursts (heap_settle_atom): the last burst's end,
  // events seen so far, and whether a trim is scheduled.
  int64_t settled_at = 0;
  uint64_t events_seen = 0;
  bool trim_armed = false;
  // unhook_all: once asked, every VM (also one connecting later) is
  // unhooked by the deadline; `drain` owes the answer until each answered.
  struct drain_run {
    caf::typed_response_promise<std::vector<unhook_result>> rp;
    std::vector<unhook_result> results;
    size_t left = 1; // +1 until every request is out
  };
  std::shared_ptr<drain_run> drain;
  bool draining = false;
  int64_t drain_deadline = 0;
};

// How long the fleet must be quiet after a burst before the heap is trimmed,
// and how many events it may answer meanwhile and still count as idle: the
// trim holds glibc's arena locks and its pages fault back in when reused,
// which a busy fleet's event round trips would feel (and it reuses them anyway).
constexpr auto trim_quiet = std::chrono::milliseconds(200);
constexpr uint64_t trim_quiet_events = 100;

uint64_t events_total(core& c) {
  uint64_t n = 0;
  for (auto* e : c.internals().m.events)
    n += e->value();
  return n;
}

using reg_actor = caf::stateful_actor<reg_st>;

// The INT3s of kvmid's still in the VM's guest, as the registry recorded them.
void check_planted(reg_actor* self, unhook_result& r) {
  auto it = self->state.planted.find(r.uuid);
  if (it != self->state.planted.end() && !it->second.empty())
    r.problems.push_back(std::to_string(it->second.size())
                         + " INT3 byte(s) of kvmid's left in the guest (kept in the state "
                           "directory for the next start)");
}

void drain_step(reg_actor* self, const std::shared_ptr<reg_st::drain_run>& run) {
  if (--run->left != 0)
    return;
  for (auto& r : run->results)
    if (!r.finished)
      check_planted(self, r);
  run->rp.deliver(std::move(run->results));
  if (self->state.drain == run)
    self->state.drain.reset();
}

// Unhooks one VM for unhook_all: its result once its socket closed, or a
// timeout at the deadline.
void drain_vm(reg_actor* self, const std::string& uuid, const std::string& name,
              const caf::actor& vm) {
  auto& st = self->state;
  auto run = st.drain;
  if (!run) // answered already: unhook it all the same
    return caf::anon_send(vm, unhook_atom::value, st.drain_deadline);
  size_t i = run->results.size();
  run->results.push_back(unhook_result{uuid, name, false, {}});
  ++run->left;
  auto left = std::chrono::nanoseconds(std::max<int64_t>(st.drain_deadline - now_ns(), 1000000));
  self->request(vm, std::chrono::duration_cast<std::chrono::milliseconds>(left),
                unhook_atom::value, st.drain_deadline)
    .then(
      [=](std::vector<std::string>& problems) {
        run->results[i].finished = true;
        run->results[i].problems = std::move(problems);
        drain_step(self, run);
      },
      [=](caf::error& e) {
        if (e == caf::sec::request_timeout)
          run->results[i].problems.push_back("did not finish by the deadline");
        else // the VM went away meanwhile: its INT3s stay recorded
          run->results[i].finished = true;
        drain_step(self, run);
      });
}

// DELETE /v1/vms/{vm}: only a VM that is gone, and leaves nothing of
// kvmid's in its guest, may be forgotten.
api_response forget(reg_actor* self, const std::string& uuid) {
  auto& st = self->state;
  auto it = st.vms.find(uuid);
  if (it->second.vm)
    return {std::nullopt, {api_errc::conflict, "the VM is connected: unhook it first"}};
  if (auto p = st.planted.find(uuid); p != st.planted.end() && !p->second.empty())
    return {std::nullopt,
            {api_errc::conflict, std::to_string(p->second.size())
                                   + " INT3 byte(s) of kvmid's are still recorded in its guest: "
                                     "they are restored when it reconnects"}};
  st.vms.erase(it);
  return {api_value{done{}}, {}};
}

api_response from_history(const vm_history& h, const api_request& req) {
  if (std::holds_alternative<op::info>(req))
    return {api_value{h.last}, {}};
  if (std::holds_alternative<op::vcpus>(req))
    return {api_value{h.last.vcpus}, {}};
  if (std::holds_alternative<op::list_bps>(req)) {
    std::vector<breakpoint_info> v;
    for (auto& [gpa, bp] : h.breakpoints)
      v.push_back({gpa, bp.original, false, bp.hits});
    return {api_value{v}, {}};
  }
  return {std::nullopt, {api_errc::conflict, "the VM is disconnected"}};
}

caf::behavior registry_behavior(reg_actor* self, core* c) {
  self->state.c = c;
  self->state.planted = c->options().planted;
  return {
    [=](register_atom, const std::string& uuid, const std::string& name) -> vm_history {
      auto& e = self->state.vms[uuid];
      e.hist.name = name;
      e.hist.uuid = uuid;
      e.hist.sessions++; // counted here, never taken from a VM actor's copy
      e.hist.last.sessions = e.hist.sessions;
      e.vm = caf::actor_cast<caf::actor>(self->current_sender());
      auto h = e.hist;
      if (self->state.draining) // its unhook waits for the history returned here
        drain_vm(self, uuid, name, e.vm);
      // What kvmid's INT3s are still in the guest, with the bytes under them.
      if (auto it = self->state.planted.find(uuid); it != self->state.planted.end())
        for (auto& [gpa, orig] : it->second) {
          auto& bp = h.breakpoints[gpa];
          if (bp.name.empty())
            bp.name = "restored";
          bp.original = orig;
          bp.planted = true;
        }
      return h;
    },
    // Attaching or configuring thousands of vCPUs frees as much short-lived
    // memory (event copies, commands, their messages) as the actors it
    // leaves behind, interleaved with them: glibc keeps those pages (in each
    // thread's arena) unless asked. One malloc_trim once the fleet is quiet
    // gives them back; it runs here, on a CAF worker, never on the ring.
    [=](heap_settle_atom) {
      auto& s = self->state;
      s.settled_at = now_ns();
      if (!s.trim_armed) {
        s.trim_armed = true;
        s.events_seen = events_total(*s.c);
        self->delayed_send(self, trim_quiet, heap_trim_atom::value);
      }
    },
    [=](heap_trim_atom) {
      auto& s = self->state;
      auto quiet = std::chrono::nanoseconds(now_ns() - s.settled_at);
      if (quiet < trim_quiet) {
        self->delayed_send(self, trim_quiet - quiet, heap_trim_atom::value);
        return;
      }
      auto events = events_total(*s.c);
      if (events - s.events_seen > trim_quiet_events) { // busy: look again later
        s.events_seen = events;
        self->delayed_send(self, trim_quiet, heap_trim_atom::value);
        return;
      }
      s.trim_armed = false;
      malloc_trim(0);
    },
    [=](unregister_atom, vm_history& h) {
      auto& e = self->state.vms[h.uuid];
      if (e.vm && e.vm.address() == self->current_sender())
        e.vm = caf::actor{};
      e.hist.uuid = h.uuid;
      if (!h.name.empty())
        e.hist.name = h.name;
      e.hist.events += h.events;
      e.hist.alerts += h.alerts;
      e.hist.protocol_errors += h.protocol_errors;
      if (h.saw_history)
        e.hist.breakpoints = std::move(h.breakpoints);
      else
        for (auto& [gpa, bp] : h.breakpoints)
          e.hist.breakpoints[gpa] = bp;
      e.hist.last = std::move(h.last);
      add(e.hist.rule_hits, h.rule_hits);
      if (e.hist.last.policy_rules) { // bounded by the last policy, as the session was
        keep_only(e.hist.rule_hits, *e.hist.last.policy_rules);
        e.hist.last.rule_hits =
          rule_hits_of(*e.hist.last.policy_rules, e.hist.rule_hits, e.hist.breakpoints);
      }
      e.hist.last.sessions = e.hist.sessions;
      e.hist.last.events = e.hist.events;
      e.hist.last.alerts = e.hist.alerts;
      e.hist.last.protocol_errors = e.hist.protocol_errors;
    },
    [=](persist_bp_atom, const std::string& uuid, uint64_t gpa, uint8_t original,
        bool planted) -> bool {
      auto& st = self->state;
      auto& m = st.planted[uuid];
      if (planted)
        m[gpa] = original;
      else if (!m.erase(gpa))
        return true; // nothing recorded, nothing to write
      bool ok = true;
      if (!st.c->options().state_dir.empty()) {
        std::string err;
        ok = save_planted(st.c->options().state_dir, uuid, m, err);
        if (!ok)
          std::fprintf(stderr, "kvmid: cannot record breakpoint state: %s\n", err.c_str());
      }
      if (m.empty())
        st.planted.erase(uuid);
      return ok;
    },
    [=](unhook_all_atom, int64_t deadline) -> caf::result<std::vector<unhook_result>> {
      auto& st = self->state;
      if (st.drain) // one at a time
        return caf::make_error(caf::sec::runtime_error, "unhook_all is already running");
      st.draining = true;
      st.drain_deadline = deadline;
      st.drain = std::make_shared<reg_st::drain_run>();
      st.drain->rp = self->make_response_promise<std::vector<unhook_result>>();
      auto rp = st.drain->rp;
      auto run = st.drain;
      for (auto& [uuid, e] : st.vms)
        if (e.vm)
          drain_vm(self, uuid, e.hist.name, e.vm);
      drain_step(self, run);
      return rp;
    },
    [=](find_atom, const std::string& key) -> caf::actor {
      for (auto& [uuid, e] : self->state.vms)
        if (uuid == key || e.hist.name == key || e.hist.last.name == key)
          return e.vm;
      return caf::actor{};
    },
    [=](api_atom, const std::string& key, api_request& req) -> caf::result<api_response> {
      for (auto& [uuid, e] : self->state.vms) {
        if (uuid != key && e.hist.name != key)
          continue;
        if (std::holds_alternative<op::forget>(req))
          return forget(self, uuid);
        if (e.vm) {
          // Not delegate(): a VM actor that is just going away must still
          // yield an answer, from the history it sends before it quits.
          auto rp = self->make_response_promise<api_response>();
          std::string id = uuid;
          auto r = req;
          self->request(e.vm, std::chrono::seconds(30), api_atom::value, std::move(req))
            .then([rp](api_response& x) mutable { rp.deliver(std::move(x)); },
                  [=](caf::error& err) mutable {
                    if (err == caf::sec::request_timeout) {
                      rp.deliver(api_response{std::nullopt,
                                              {api_errc::timeout, "the VM actor did not answer"}});
                      return;
                    }
                    auto it = self->state.vms.find(id);
                    if (it == self->state.vms.end())
                      rp.deliver(api_response{std::nullopt, {api_errc::not_found, "no VM " + id}});
                    else
                      rp.deliver(from_history(it->second.hist, r));
                  });
          return rp;
        }
        return from_history(e.hist, req);
      }
      return api_response{std::nullopt, {api_errc::not_found, "no VM " + key}};
    },
    [=](list_atom) -> caf::result<std::vector<vm_info>> {
      auto rp = self->make_response_promise<std::vector<vm_info>>();
      auto out = std::make_shared<std::vector<vm_info>>();
      auto left = std::make_shared<size_t>(1); // +1 until all requests are out
      auto finish = [=]() mutable {
        if (--*left == 0) {
          std::sort(out->begin(), out->end(),
                    [](const vm_info& a, const vm_info& b) { return a.uuid < b.uuid; });
          rp.deliver(std::move(*out));
        }
      };
      for (auto& [uuid, e] : self->state.vms) {
        if (!e.vm) {
          out->push_back(e.hist.last);
          continue;
        }
        ++*left;
        auto last = e.hist.last;
        self->request(e.vm, std::chrono::seconds(5), api_atom::value, api_request{op::info{}})
          .then(
            [=](api_response& r) mutable {
              if (r.value)
                if (auto* v = std::get_if<vm_info>(&*r.value)) {
                  v->vcpus.clear();
                  out->push_back(std::move(*v));
                }
              finish();
            },
            [=](caf::error&) mutable { finish(); });
      }
      finish();
      return rp;
    },
    [=](reload_atom, std::shared_ptr<const policy_set>& ps) {
      for (auto& [uuid, e] : self->state.vms)
        if (e.vm)
          self->send(e.vm, policy_atom::value,
                     std::make_shared<const vm_policy>(ps->select(uuid, e.hist.name)));
    },
  };
}

} // namespace

caf::actor spawn_registry(core& c) { return c.system().spawn(registry_behavior, &c); }

} // namespace kvmid
