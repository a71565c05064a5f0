// The VM actor: one per KVMI session. Owns the VM-wide pending-command table
// (replies arrive out of order, matched by seq), the memory map and its
// safety rules, page-access state, kvmid-owned breakpoints, the session
// bootstrap, UNHOOK, and operator requests.
#include "actors/core_impl.hpp"
#include "actors/event_fields.hpp"
#include "actors/log.hpp"
#include "actors/ring_unit.hpp"
#include "actors/vcpu_actor.hpp"

#include <cstdio>
#include <ctime>
#include <deque>
#include <set>
#include <unordered_map>
#include <utility>

namespace kvmid {

namespace {

constexpr uint16_t max_vcpus = 4096; // bound on a vCPU index from the wire
constexpr uint64_t max_api_bytes = 64 * 1024;

struct pending_cmd {
  kvmi::reply_shape shape;
  std::function<void(cmd_result)> done;
  int64_t deadline = 0; // now_ns() after which it times out
};

struct vm_st {
  static inline const char* name = "kvmid.vm";
  core* c = nullptr;
  // The registry, held from the start: the core drops its own handle when
  // it stops, while a VM past the shutdown bound may still be finishing.
  caf::actor registry;
  session_params p;
  std::string uuid;
  kvmi::byte_order order = kvmi::byte_order::native;
  policy_ptr policy;
  vm_state st;
  uint32_t next_seq = 1;
  std::unordered_map<uint32_t, pending_cmd> pending;
  std::set<uint32_t> timed_out; // late replies to these are legal
  // One sweep timer per VM, not one timer message per command: thousands
  // of vCPUs configuring at once would each keep several in CAF's clock.
  bool sweep_armed = false;
  std::vector<caf::actor> vcpus;
  // Shared with the vCPU actors: identity, counters, per-vCPU stats.
  vm_shared_ptr sh = std::make_shared<vm_shared>();
  // The last snapshot published, handed to new vCPUs (null: make one).
  state_ptr snap;
  kvmi::get_version_reply version{0, kvmi::known_commands | kvmi::flag(kvmi::msg_id::get_version),
                                  kvmi::known_events, 0};
  uint64_t tsc_speed = 0;
  bool setup_done = false, setup_running = false;
  std::vector<caf::response_promise> setup_waiters;
  // Its place at the setup gate (setup_gate.hpp): waited for, then held
  // from GET_VERSION until PAUSE_ALL_VCPUS was answered and every vCPU
  // configured in its first event, then given back.
  enum class gate_phase : uint8_t { waiting, holding, left };
  gate_phase gate = gate_phase::waiting;
  setup_gate::place_ptr place;
  bool paused_all = false;            // the set-up's PAUSE_ALL_VCPUS was answered
  std::vector<bool> configured_once;  // by vCPU, since the set-up began
  std::set<uint16_t> held;
  std::vector<caf::response_promise> pause_waiters;
  // The CRs and MSRs each vCPU intercepts, so that a reloaded policy which
  // drops one also turns its interception off. By vCPU index; the vCPUs
  // of a VM nearly always share one set, so equal sets are one allocation
  // (a per-vCPU copy was about 150 bytes of every idle vCPU).
  struct intercepts {
    std::vector<uint32_t> crs, msrs;
    bool operator==(const intercepts&) const = default;
  };
  std::vector<std::shared_ptr<const intercepts>> intercepting;
  std::shared_ptr<const intercepts> last_intercepts;
  vm_history hist;
  uint64_t base_events = 0, base_alerts = 0, base_protocol_errors = 0;
  rule_counts base_rule_hits; // the registry's totals before this session
  uint64_t protocol_errors = 0; // this session's
  int64_t connected_since = 0;  // unix seconds of this session's handshake
  // The registry's history arrived (the VM-wide set-up waits for it, so it
  // knows which INT3s in the guest are kvmid's own).
  bool hist_ready = false, saw_history = false;
  uint16_t setup_vcpu = 0;
  // gpa -> original byte of INT3s kvmid planted in an earlier session (or
  // before a restart) and never restored: adopted when still 0xCC.
  std::map<uint64_t, uint8_t> inherited;
  // vCPU -> gpa of the breakpoint it is single-stepped past: its byte is
  // the original until the last such vCPU's SINGLESTEP puts the INT3 back.
  std::map<uint16_t, uint64_t> stepping;
  // UNHOOK (the kernel's event, an operator, shutdown), one at a time: how
  // far it got, who waits for the socket to close, what it could not undo.
  enum class unhook_phase : uint8_t { none, asked, stopping, undoing, releasing, closing };
  unhook_phase unhook = unhook_phase::none;
  int64_t unhook_deadline = 0; // now_ns(); 0: none
  std::vector<std::function<void(std::vector<std::string>)>> unhook_waiters;
  std::vector<std::string> unhook_problems;
  std::set<uint16_t> released; // vCPUs with no event waiting since the release
  // PAUSE_VCPU events each vCPU owes: the kernel sends one per vCPU for
  // every PAUSE_ALL_VCPUS, also after the vCPU was answered in another.
  std::vector<uint32_t> pauses_asked;
  bool closed = false, closing = false;
  std::vector<uint8_t> buf;
};

using vm_actor = caf::stateful_actor<vm_st, ring_actor>; // runs on the ring (ring_unit.hpp)
using done_fn = std::function<void()>;
using unhook_phase = vm_st::unhook_phase;
using gate_phase = vm_st::gate_phase;

void start_unhook(vm_actor* self);
void undo_hooks(vm_actor* self);

// The stats of vCPU i, or null when that vCPU has no actor.
vcpu_stats* stats_of(vm_st& s, size_t i) {
  return i < s.vcpus.size() && s.vcpus[i] ? &s.sh->stats[i] : nullptr;
}

api_response fail(api_errc c, std::string msg) { return api_response{std::nullopt, {c, std::move(msg)}}; }
api_response okv(api_value v) { return api_response{std::move(v), {}}; }

api_errc errc_of(const cmd_result& r) {
  if (!r.failure.empty())
    return r.code;
  if (r.reply.err == -kvmi::kvm_eagain)
    return api_errc::conflict;
  if (r.reply.err == -kvmi::kvm_einval || r.reply.err == -kvmi::kvm_enoent)
    return api_errc::invalid;
  return api_errc::kernel;
}
std::string what(const cmd_result& r) {
  if (!r.failure.empty())
    return r.failure;
  return std::string(kvmi::name(r.reply.id)) + " failed: -KVM_"
         + std::string(kvmi::kvm_error_name(r.reply.err));
}

void log(vm_actor* self, const char* fmt, const std::string& a) {
  if (!log_on(log_warn))
    return;
  std::fprintf(stderr, "kvmid: vm %s (%s): ", self->state.uuid.c_str(),
               self->state.p.guest.name.c_str());
  std::fprintf(stderr, fmt, a.c_str());
  std::fputc('\n', stderr);
}

void publish(vm_actor* self, bus_kind k, std::string name, std::string msg) {
  bus_record r;
  r.kind = k;
  r.name = std::move(name);
  r.vm = self->state.uuid;
  r.vm_name = self->state.p.guest.name;
  r.message = std::move(msg);
  self->state.c->bus().publish(std::move(r));
}

void protocol_error(vm_actor* self, protocol_error_reason reason, const std::string& detail) {
  auto& s = self->state;
  // A command failed because the session closed is no error of the host's.
  if (s.closing || s.closed)
    return;
  s.closing = true;
  s.c->internals().m.protocol_error(reason).inc();
  s.protocol_errors++;
  // The session's close line (kvmi_session) logs the reason.
  publish(self, bus_kind::lifecycle, "protocol-error", detail);
  s.p.link->close(disconnect_reason::protocol_error, detail);
}

// --- commands -------------------------------------------------------------

void send_cmd(vm_actor* self, kvmi::command cmd, std::function<void(cmd_result)> done);

// PAUSE_ALL_VCPUS, with what each vCPU now owes counted (and forgiven if
// the kernel refused it).
// The set-up ended, one way or another: the next VM may start its own.
void leave_gate(vm_actor* self) {
  auto& s = self->state;
  if (s.gate == gate_phase::waiting)
    s.c->internals().setups->withdraw(self->address());
  s.gate = gate_phase::left;
  s.place.reset();
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

void send_pause_all(vm_actor* self, std::function<void(cmd_result)> done) {
  auto& s = self->state;
  s.pauses_asked.resize(s.vcpus.size());
  for (size_t i = 0; i < s.vcpus.size(); ++i)
    if (s.vcpus[i])
      ++s.pauses_asked[i];
  size_t asked = s.vcpus.size();
  send_cmd(self, kvmi::pause_all_vcpus{}, [=, done = std::move(done)](cmd_result r) {
    if (!r.ok()) {
      auto& s2 = self->state;
      for (size_t i = 0; i < asked && i < s2.pauses_asked.size(); ++i)
        if (s2.pauses_asked[i] > 0)
          --s2.pauses_asked[i];
    }
    done(std::move(r));
  });
}

// Every PAUSE_VCPU event owed has arrived and been answered.
bool pauses_settled(vm_st& s) {
  for (size_t i = 0; i < s.vcpus.size() && i < s.pauses_asked.size(); ++i) {
    auto* st = stats_of(s, i);
    if (st && (st->pause_events.load(std::memory_order_relaxed) < s.pauses_asked[i]
               || st->state.load(std::memory_order_relaxed)
                    != static_cast<uint8_t>(vcpu_state::running)))
      return false;
  }
  return true;
}

void send_cmd(vm_actor* self, kvmi::command cmd, std::function<void(cmd_result)> done) {
  auto& s = self->state;
  auto id = kvmi::id_of(cmd);
  cmd_result r;
  r.reply.id = id;
  if (s.closed || s.closing) {
    r.failure = "the VM's session is closed";
    r.code = api_errc::conflict;
    return done(std::move(r));
  }
  if (auto e = kvmi::check(cmd)) {
    r.failure = std::string(kvmi::name(id)) + ": " + std::string(e.reason);
    r.code = api_errc::invalid;
    return done(std::move(r));
  }
  if (!kvmi::allowed_command(id, s.version.commands)) {
    r.failure = std::string(kvmi::name(id)) + " is not allowed by the host";
    r.code = api_errc::conflict;
    s.c->internals().m.command(id, "not_allowed").inc();
    return done(std::move(r));
  }
  uint32_t seq = s.next_seq++;
  if (s.next_seq == 0)
    s.next_seq = 1;
  auto shape = kvmi::expected_reply(cmd);
  auto timeout = s.c->options().command_timeout;
  s.pending.emplace(
    seq, pending_cmd{shape, std::move(done),
                     now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count()});
  s.p.link->send(kvmi::command_msg{seq, std::move(cmd)});
  if (!s.sweep_armed) {
    s.sweep_armed = true;
    self->delayed_send(self, timeout, cmd_sweep_atom::value);
  }
}

// Times out every command past its deadline, then sleeps until the oldest
// left is due (at least an eighth of the timeout, so a steady stream of
// commands does not wake it for each one): a command times out between
// its timeout and 1.125 times it.
void sweep_commands(vm_actor* self) {
  auto& s = self->state;
  s.sweep_armed = false;
  auto now = now_ns();
  std::vector<std::pair<uint32_t, pending_cmd>> expired;
  int64_t next = 0;
  for (auto it = s.pending.begin(); it != s.pending.end();) {
    if (it->second.deadline <= now) {
      expired.emplace_back(it->first, std::move(it->second));
      it = s.pending.erase(it);
    } else {
      if (next == 0 || it->second.deadline < next)
        next = it->second.deadline;
      ++it;
    }
  }
  if (next != 0) {
    auto timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(s.c->options().command_timeout);
    auto wait = std::max(std::chrono::nanoseconds(next - now), timeout / 8);
    s.sweep_armed = true;
    self->delayed_send(self, wait, cmd_sweep_atom::value);
  }
  for (auto& [seq, pc] : expired) {
    s.timed_out.insert(seq);
    if (s.timed_out.size() > 4096)
      s.timed_out.erase(s.timed_out.begin());
    s.c->internals().m.command(pc.shape.id, "timeout").inc();
    cmd_result r;
    r.reply.id = pc.shape.id;
    r.failure = std::string(kvmi::name(pc.shape.id)) + ": the kernel did not answer in time";
    r.code = api_errc::timeout;
    pc.done(std::move(r));
  }
}

// Runs fns one after another (each calls its continuation), then last.
void chain(std::shared_ptr<std::deque<std::function<void(done_fn)>>> q, done_fn last) {
  if (q->empty())
    return last();
  auto f = std::move(q->front());
  q->pop_front();
  f([q, last] { chain(q, last); });
}

void publish_snapshot(vm_actor* self) {
  auto& s = self->state;
  s.snap = std::make_shared<const vm_state>(s.st);
  vcpu_update u;
  u.snapshot = s.snap;
  for (auto& v : s.vcpus)
    if (v)
      self->send(v, update_atom::value, u);
}

uint16_t any_stopped_vcpu(vm_actor* self, bool& found) {
  auto& s = self->state;
  for (size_t i = 0; i < s.vcpus.size(); ++i)
    if (auto st = stats_of(s, i);
        st && st->state.load(std::memory_order_relaxed) != static_cast<uint8_t>(vcpu_state::running)) {
      found = true;
      return static_cast<uint16_t>(i);
    }
  found = false;
  return 0;
}

// SET_PAGE_ACCESS for many pages, in commands that stay below KVMI_MSG_SIZE.
void set_access(vm_actor* self, uint16_t vcpu, std::vector<kvmi::page_access_entry> entries,
                std::function<void(bool, std::string)> done) {
  constexpr size_t per_cmd = (kvmi::msg_size - sizeof(kvmi::set_page_access))
                             / sizeof(kvmi::page_access_entry);
  if (entries.empty())
    return done(true, {});
  auto left = std::make_shared<size_t>((entries.size() + per_cmd - 1) / per_cmd);
  auto ok = std::make_shared<bool>(true);
  auto err = std::make_shared<std::string>();
  for (size_t i = 0; i < entries.size(); i += per_cmd) {
    kvmi::set_page_access_cmd c{};
    c.entries.assign(entries.begin() + i, entries.begin() + std::min(entries.size(), i + per_cmd));
    c.req.vcpu = vcpu;
    c.req.count = static_cast<uint16_t>(c.entries.size());
    send_cmd(self, std::move(c), [=](cmd_result r) {
      if (!r.ok()) {
        *ok = false;
        *err = what(r);
      }
      if (--*left == 0)
        done(*ok, *err);
    });
  }
}

// The registry's record of an INT3 kept through a re-arm that ends without
// one (restore_breakpoint's keep_record).
void drop_record(vm_actor* self, uint64_t gpa) {
  caf::anon_send(self->state.registry, persist_bp_atom::value, self->state.uuid, gpa, uint8_t(0),
                 false);
}

// `recorded`: the byte the registry already holds for gpa (a re-arm after a
// single step); the same byte under it needs no new record.
void plant_breakpoint(vm_actor* self, uint64_t gpa, std::string name,
                      std::function<void(bool, std::string)> done,
                      std::optional<uint8_t> recorded = std::nullopt) {
  auto& s = self->state;
  // No INT3 of kvmid's goes in: a record kept for it goes too.
  auto refuse = [=](std::string why) {
    if (recorded)
      drop_record(self, gpa);
    done(false, std::move(why));
  };
  if (auto why = unsafe_reason(s.p.guest.regions, gpa, 1); !why.empty())
    return refuse("breakpoint at " + std::to_string(gpa) + ": " + why);
  send_cmd(self, kvmi::read_physical{gpa, 1}, [=](cmd_result r) {
    if (!r.ok())
      return refuse(what(r));
    auto& data = std::get<kvmi::physical_data>(r.reply.data).data;
    uint8_t original = data.empty() ? 0 : data[0];
    if (original == 0xCC) // the guest's own INT3 (kvmid's were adopted in the set-up)
      return refuse("gpa already holds an INT3");
    auto write_int3 = [=] {
      if (self->state.unhook != unhook_phase::none) { // undo_hooks may have passed it
        caf::anon_send(self->state.registry, persist_bp_atom::value, self->state.uuid, gpa,
                       original, false);
        return done(false, "the VM is being unhooked");
      }
      kvmi::write_physical_cmd w{};
      w.req = {gpa, 1};
      w.data = {0xCC};
      send_cmd(self, std::move(w), [=](cmd_result r2) {
        if (!r2.ok()) {
          if (r2.failure.empty()) // the kernel refused it: no INT3 went in
            caf::anon_send(self->state.registry, persist_bp_atom::value, self->state.uuid, gpa,
                           original, false);
          else // unanswered, perhaps written: kept, and checked like an earlier session's
            self->state.inherited[gpa] = original;
          return done(false, what(r2));
        }
        self->state.snap.reset(); // st changed: new vCPUs get a fresh snapshot
        auto& bp = self->state.st.breakpoints[gpa];
        bp.name = name;
        bp.original = original;
        bp.planted = true;
        done(true, {});
      });
    };
    if (recorded == original)
      return write_int3();
    // Recorded (durably, with a state_dir) before the INT3 goes in, so a
    // restarted kvmid knows the byte under it.
    self->request(self->state.registry, std::chrono::seconds(30), persist_bp_atom::value,
                  self->state.uuid, gpa, original, true)
      .then([=](bool) { write_int3(); },
            [=](caf::error&) { done(false, "the registry did not record the breakpoint"); });
  });
}

// An INT3 kvmid planted in an earlier session: still 0xCC means still ours,
// with the recorded byte under it; anything else means it is gone.
void adopt_breakpoint(vm_actor* self, uint64_t gpa, uint8_t original, done_fn done) {
  send_cmd(self, kvmi::read_physical{gpa, 1}, [=](cmd_result r) {
    if (!r.ok()) {
      log(self, "breakpoint left by an earlier session: %s", what(r));
      return done();
    }
    auto& data = std::get<kvmi::physical_data>(r.reply.data).data;
    self->state.snap.reset();
    auto& bp = self->state.st.breakpoints[gpa];
    if (!data.empty() && data[0] == 0xCC) {
      if (bp.name.empty())
        bp.name = "restored";
      bp.original = original;
      bp.planted = true;
    } else {
      bp.planted = false;
      caf::anon_send(self->state.registry, persist_bp_atom::value, self->state.uuid, gpa,
                 original, false);
    }
    done();
  });
}

// Some vCPU is single-stepped past the breakpoint at gpa.
bool stepped(const vm_st& s, uint64_t gpa) {
  for (auto& [v, g] : s.stepping)
    if (g == gpa)
      return true;
  return false;
}

// keep_record: the INT3 goes back after a single step, and the registry
// keeps its record meanwhile (a restarted kvmid finds the original byte
// there and drops the record).
void restore_breakpoint(vm_actor* self, uint64_t gpa, std::function<void(bool)> done,
                        bool keep_record = false) {
  auto it = self->state.st.breakpoints.find(gpa);
  if (it == self->state.st.breakpoints.end() || !it->second.planted)
    return done(true);
  kvmi::write_physical_cmd w{};
  w.req = {gpa, 1};
  w.data = {it->second.original};
  uint8_t original = it->second.original;
  send_cmd(self, std::move(w), [=](cmd_result r) {
    if (r.ok()) {
      auto it2 = self->state.st.breakpoints.find(gpa);
      if (it2 != self->state.st.breakpoints.end())
        it2->second.planted = false;
      self->state.snap.reset();
      if (!keep_record)
        caf::anon_send(self->state.registry, persist_bp_atom::value, self->state.uuid, gpa,
                       original, false);
    }
    done(r.ok());
  });
}

// The VM-wide part of the policy: page restrictions and breakpoints. Needs
// a vCPU stopped in an event (SET_PAGE_ACCESS is a vCPU command).
void run_setup(vm_actor* self, uint16_t vcpu) {
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
  chain(q, [=] {
    auto& s2 = self->state;
    s2.setup_done = true;
    s2.setup_running = false;
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

void check_paused(vm_actor* self) {
  auto& s = self->state;
  size_t live = 0;
  for (auto& v : s.vcpus)
    live += v ? 1 : 0;
  if (s.st.paused && s.held.size() >= live) {
    for (auto& rp : s.pause_waiters)
      rp.deliver(api_response{api_value{done{}}, {}});
    s.pause_waiters.clear();
    if (s.unhook == unhook_phase::stopping)
      undo_hooks(self);
  }
}

vm_info make_info(vm_actor* self, bool with_vcpus) {
  auto& s = self->state;
  vm_info v;
  v.uuid = s.uuid;
  v.name = s.p.guest.name;
  v.connected = !s.closed;
  v.peer = s.p.peer;
  v.sessions = s.hist.sessions;
  v.start_time = s.p.guest.start_time;
  v.byte_order = s.order == kvmi::byte_order::native ? "native" : "swapped";
  v.protocol = s.p.protocol;
  v.vcpu_count = 0;
  for (auto& x : s.vcpus)
    v.vcpu_count += x ? 1 : 0;
  v.paused = s.st.paused;
  v.setup = s.gate == gate_phase::waiting   ? "waiting"
            : s.gate == gate_phase::holding ? "running"
                                            : "done";
  v.commands_mask = s.version.commands;
  v.events_mask = s.version.events;
  v.events = s.base_events + s.sh->events.load();
  v.alerts = s.base_alerts + s.sh->alerts.load();
  v.protocol_errors = s.base_protocol_errors + s.protocol_errors;
  v.connected_since = s.connected_since;
  v.policy = s.policy->name;
  if (with_vcpus) { // the one-VM view shows the rules in force and their hits
    v.policy_rules = s.policy;
    auto hits = s.base_rule_hits;
    add(hits, s.sh->rule_hits.snapshot());
    v.rule_hits = rule_hits_of(*s.policy, hits, s.st.breakpoints);
  }
  for (auto& r : s.p.guest.regions) {
    region_info ri;
    ri.gpa = r.gpa;
    ri.size = r.size;
    switch (static_cast<kvmi::hs::region_type>(r.type)) {
      case kvmi::hs::region_type::ram: ri.type = "ram"; break;
      case kvmi::hs::region_type::mmio: ri.type = "mmio"; break;
      case kvmi::hs::region_type::nvlink2_gpu_ram: ri.type = "nvlink2-gpu-ram"; break;
      case kvmi::hs::region_type::nvlink2_atsd: ri.type = "nvlink2-atsd"; break;
      default: ri.type = "unknown"; break;
    }
    ri.online = r.flags & kvmi::hs::region_online;
    ri.tgt = r.tgt;
    v.regions.push_back(ri);
  }
  if (with_vcpus)
    for (size_t i = 0; i < s.vcpus.size(); ++i) {
      auto st = stats_of(s, i);
      if (!st)
        continue;
      vcpu_info ci;
      ci.index = static_cast<uint16_t>(i);
      ci.state = static_cast<vcpu_state>(st->state.load());
      int32_t e = st->event.load();
      if (e >= 0)
        ci.event = std::string(kvmi::name(static_cast<kvmi::event_id>(e)));
      ci.enabled_events = st->enabled.load();
      ci.events = st->events.load();
      ci.alerts = st->alerts.load();
      v.vcpus.push_back(std::move(ci));
    }
  return v;
}

// --- UNHOOK -----------------------------------------------------------------
// Undoes everything kvmid set in the guest before the socket closes: every
// vCPU is stopped first (held in PAUSE_VCPU, so none raises another event
// and SET_PAGE_ACCESS has a vCPU to run on); then the bytes under kvmid's
// INT3s go back, restricted pages get rwx, kvmid's events go off; then every
// vCPU is released with its reply, and the socket closes. Each wait has a
// bound (the command timeout, or half of what is left to the deadline),
// after which the unhook goes on with what it has.

size_t live_vcpus(const vm_st& s) {
  size_t n = 0;
  for (auto& v : s.vcpus)
    n += v ? 1 : 0;
  return n;
}

std::chrono::nanoseconds unhook_bound(vm_actor* self) {
  auto& s = self->state;
  auto b = std::chrono::duration_cast<std::chrono::nanoseconds>(s.c->options().command_timeout);
  if (s.unhook_deadline != 0)
    b = std::min(b, std::chrono::nanoseconds(std::max<int64_t>(0, (s.unhook_deadline - now_ns()) / 2)));
  return b;
}

void arm_unhook_wait(vm_actor* self) {
  self->delayed_send(self, unhook_bound(self), unhook_wait_atom::value,
                     static_cast<uint8_t>(self->state.unhook));
}

void unhook_problem(vm_actor* self, std::string problem) {
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

void restore_for_unhook(vm_actor* self, uint64_t gpa, done_fn next) {
  restore_breakpoint(self, gpa, [=](bool ok) {
    if (!ok)
      unhook_problem(self, "breakpoint at gpa " + std::to_string(gpa)
                             + ": the original byte could not be written back");
    next();
  });
}

// Sends every command at once; next() once all are answered.
void send_all(vm_actor* self, std::vector<kvmi::command> cmds, done_fn next) {
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

void release_vcpus(vm_actor* self);

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

void close_unhooked(vm_actor* self) {
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

void release_vcpus(vm_actor* self) {
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

void handle_api(vm_actor* self, api_request& req, caf::response_promise rp) {
  auto& s = self->state;
  auto need_session = [&]() -> bool {
    if (s.closed || s.closing) {
      rp.deliver(fail(api_errc::conflict, "the VM is disconnected"));
      return false;
    }
    if (s.unhook != unhook_phase::none) {
      rp.deliver(fail(api_errc::conflict, "the VM is being unhooked"));
      return false;
    }
    return true;
  };
  auto known_vcpu = [&](uint16_t v) -> bool {
    if (stats_of(s, v))
      return true;
    rp.deliver(fail(api_errc::not_found, "no vCPU " + std::to_string(v)));
    return false;
  };
  auto stopped_vcpu = [&](uint16_t v) -> bool {
    if (!known_vcpu(v))
      return false;
    if (stats_of(s, v)->state.load() == static_cast<uint8_t>(vcpu_state::running)) {
      rp.deliver(fail(api_errc::conflict, "vCPU " + std::to_string(v)
                                            + " is running: pause the VM first"));
      return false;
    }
    return true;
  };
  std::visit(
    [&](auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, op::info>) {
        rp.deliver(okv(make_info(self, true)));
      } else if constexpr (std::is_same_v<T, op::vcpus>) {
        rp.deliver(okv(make_info(self, true).vcpus));
      } else if constexpr (std::is_same_v<T, op::pause>) {
        if (!need_session())
          return;
        s.pause_waiters.push_back(rp);
        if (!s.st.paused) {
          s.st.paused = true;
          s.held.clear();
          publish_snapshot(self);
          send_pause_all(self, [=](cmd_result r) {
            if (!r.ok()) {
              for (auto& w : self->state.pause_waiters)
                w.deliver(fail(errc_of(r), what(r)));
              self->state.pause_waiters.clear();
            }
          });
          publish(self, bus_kind::lifecycle, "vm-paused", "operator pause");
        }
        check_paused(self);
      } else if constexpr (std::is_same_v<T, op::resume>) {
        if (s.unhook != unhook_phase::none)
          return rp.deliver(fail(api_errc::conflict, "the VM is being unhooked"));
        s.st.paused = false;
        s.held.clear();
        publish_snapshot(self);
        vcpu_update u;
        u.resume = true;
        for (auto& v : s.vcpus)
          if (v)
            self->send(v, update_atom::value, u);
        for (auto& w : s.pause_waiters)
          w.deliver(fail(api_errc::conflict, "resumed before every vCPU stopped"));
        s.pause_waiters.clear();
        publish(self, bus_kind::lifecycle, "vm-resumed", "operator resume");
        rp.deliver(okv(done{}));
      } else if constexpr (std::is_same_v<T, op::get_registers>) {
        // The kernel kicks a running vCPU out of the guest to serve the
        // read; only one it has not initialised yet answers EAGAIN (409).
        if (!need_session() || !known_vcpu(x.vcpu))
          return;
        kvmi::get_registers_cmd c{};
        c.req.vcpu = x.vcpu;
        c.req.nmsrs = static_cast<uint16_t>(x.msrs.size());
        c.msrs_idx = x.msrs;
        send_cmd(self, std::move(c), [=](cmd_result r) mutable {
          if (!r.ok())
            return rp.deliver(fail(errc_of(r), what(r)));
          auto& rr = std::get<kvmi::registers_reply>(r.reply.data);
          registers_info ri;
          ri.mode = rr.fixed.mode;
          ri.regs = rr.fixed.regs;
          ri.sregs = rr.fixed.sregs;
          for (auto& e : rr.msrs)
            ri.msrs.emplace_back(e.index, e.data);
          rp.deliver(okv(std::move(ri)));
        });
      } else if constexpr (std::is_same_v<T, op::read_phys>) {
        if (!need_session())
          return;
        if (x.size == 0 || x.size > max_api_bytes)
          return rp.deliver(fail(api_errc::invalid, "size must be 1..65536"));
        if (auto why = unsafe_reason(s.p.guest.regions, x.gpa, x.size); !why.empty())
          return rp.deliver(fail(api_errc::unsafe_region, why));
        auto out = std::make_shared<std::vector<uint8_t>>(x.size);
        auto left = std::make_shared<size_t>(0);
        auto err = std::make_shared<std::optional<cmd_result>>();
        std::vector<std::pair<uint64_t, uint64_t>> parts;
        for (uint64_t at = x.gpa; at < x.gpa + x.size;) {
          uint64_t n = std::min<uint64_t>(x.gpa + x.size - at,
                                          kvmi::page_size - (at & (kvmi::page_size - 1)));
          parts.emplace_back(at, n);
          at += n;
        }
        *left = parts.size();
        uint64_t base = x.gpa;
        for (auto [at, n] : parts)
          send_cmd(self, kvmi::read_physical{at, n}, [=](cmd_result r) mutable {
            if (!r.ok())
              *err = r;
            else {
              auto& d = std::get<kvmi::physical_data>(r.reply.data).data;
              std::copy(d.begin(), d.end(), out->begin() + (at - base));
            }
            if (--*left == 0) {
              if (*err)
                rp.deliver(fail(errc_of(**err), what(**err)));
              else
                rp.deliver(okv(std::move(*out)));
            }
          });
      } else if constexpr (std::is_same_v<T, op::write_phys>) {
        if (!need_session())
          return;
        if (x.data.empty() || x.data.size() > max_api_bytes)
          return rp.deliver(fail(api_errc::invalid, "size must be 1..65536"));
        if (auto why = unsafe_reason(s.p.guest.regions, x.gpa, x.data.size()); !why.empty())
          return rp.deliver(fail(api_errc::unsafe_region, why));
        auto left = std::make_shared<size_t>(0);
        auto err = std::make_shared<std::optional<cmd_result>>();
        std::vector<kvmi::write_physical_cmd> parts;
        for (uint64_t at = x.gpa; at < x.gpa + x.data.size();) {
          uint64_t n = std::min<uint64_t>(x.gpa + x.data.size() - at,
                                          kvmi::page_size - (at & (kvmi::page_size - 1)));
          kvmi::write_physical_cmd w{};
          w.req = {at, n};
          w.data.assign(x.data.begin() + (at - x.gpa), x.data.begin() + (at - x.gpa + n));
          parts.push_back(std::move(w));
          at += n;
        }
        *left = parts.size();
        for (auto& w : parts)
          send_cmd(self, std::move(w), [=](cmd_result r) mutable {
            if (!r.ok())
              *err = r;
            if (--*left == 0) {
              if (*err)
                rp.deliver(fail(errc_of(**err), what(**err)));
              else
                rp.deliver(okv(done{}));
            }
          });
      } else if constexpr (std::is_same_v<T, op::get_access>) {
        std::vector<page_access_info> v;
        for (auto& [gpa, pg] : s.st.pages)
          v.push_back({gpa, pg.access});
        rp.deliver(okv(std::move(v)));
      } else if constexpr (std::is_same_v<T, op::set_access>) {
        if (!need_session())
          return;
        if (x.access & ~kvmi::page_access_rwx)
          return rp.deliver(fail(api_errc::invalid, "access has bits other than rwx"));
        uint64_t page = x.gpa & ~uint64_t(kvmi::page_size - 1);
        if (auto why = unsafe_reason(s.p.guest.regions, page, kvmi::page_size); !why.empty())
          return rp.deliver(fail(api_errc::unsafe_region, why));
        bool found = false;
        uint16_t v = any_stopped_vcpu(self, found);
        if (!found)
          return rp.deliver(
            fail(api_errc::conflict, "SET_PAGE_ACCESS needs a stopped vCPU: pause the VM first"));
        uint8_t acc = x.access;
        set_access(self, v, {{page, acc, {}}}, [=](bool ok, std::string err) mutable {
          if (!ok)
            return rp.deliver(fail(api_errc::kernel, err));
          auto& st = self->state.st;
          if (acc == kvmi::page_access_rwx)
            st.pages.erase(page);
          else
            st.pages[page] = protected_page{acc, -1, pf_action::allow_once, "operator"};
          publish_snapshot(self);
          rp.deliver(okv(done{}));
        });
      } else if constexpr (std::is_same_v<T, op::list_bps>) {
        std::vector<breakpoint_info> v;
        for (auto& [gpa, bp] : s.st.breakpoints)
          v.push_back({gpa, bp.original, bp.planted, bp.hits});
        rp.deliver(okv(std::move(v)));
      } else if constexpr (std::is_same_v<T, op::add_bp>) {
        if (!need_session())
          return;
        if (auto it = s.st.breakpoints.find(x.gpa); it != s.st.breakpoints.end() && it->second.planted)
          return rp.deliver(fail(api_errc::conflict, "a breakpoint is already planted there"));
        if (auto why = unsafe_reason(s.p.guest.regions, x.gpa, 1); !why.empty())
          return rp.deliver(fail(api_errc::unsafe_region, why));
        uint64_t gpa = x.gpa;
        plant_breakpoint(self, gpa, "operator", [=](bool ok, std::string err) mutable {
          if (!ok)
            return rp.deliver(fail(api_errc::conflict, err));
          publish_snapshot(self);
          auto& bp = self->state.st.breakpoints[gpa];
          rp.deliver(okv(breakpoint_info{gpa, bp.original, bp.planted, bp.hits}));
        });
      } else if constexpr (std::is_same_v<T, op::remove_bp>) {
        if (!s.st.breakpoints.count(x.gpa))
          return rp.deliver(fail(api_errc::not_found, "no breakpoint there"));
        uint64_t gpa = x.gpa;
        restore_breakpoint(self, gpa, [=](bool ok) mutable {
          if (!ok)
            return rp.deliver(fail(api_errc::kernel, "could not restore the original byte"));
          self->state.st.breakpoints.erase(gpa);
          publish_snapshot(self);
          rp.deliver(okv(done{}));
        });
      } else if constexpr (std::is_same_v<T, op::set_events>) {
        if (!need_session() || !stopped_vcpu(x.vcpu))
          return;
        if (x.mask & ~kvmi::known_vcpu_events)
          return rp.deliver(fail(api_errc::invalid, "mask has bits that are not vCPU events"));
        uint32_t mask = x.mask & s.version.events;
        auto st = stats_of(s, x.vcpu);
        send_cmd(self, kvmi::control_events{x.vcpu, 0, mask}, [=](cmd_result r) mutable {
          if (!r.ok())
            return rp.deliver(fail(errc_of(r), what(r)));
          st->enabled.store(mask);
          rp.deliver(okv(done{}));
        });
      } else if constexpr (std::is_same_v<T, op::unhook>) {
        if (s.closed || s.closing)
          return rp.deliver(fail(api_errc::conflict, "the VM is disconnected"));
        request_unhook(self, 0, [=](std::vector<std::string> problems) mutable {
          if (problems.empty())
            return rp.deliver(okv(done{}));
          std::string msg = "unhooked, but:";
          for (auto& p : problems)
            msg += " " + p + ";";
          msg.pop_back();
          rp.deliver(fail(api_errc::kernel, msg));
        });
      } else if constexpr (std::is_same_v<T, op::forget>) { // the registry's (not sent here)
        rp.deliver(fail(api_errc::conflict, "the VM is connected: unhook it first"));
      }
    },
    req);
}

void on_reply_frame(vm_actor* self, raw_frame& rf) {
  auto& s = self->state;
  auto f = kvmi::parse_frame(rf.bytes, s.order);
  if (!f)
    return protocol_error(self, protocol_error_reason::bad_frame,
                          std::string(kvmi::name(f.err().code)));
  auto it = s.pending.find(f->hdr.seq);
  if (it == s.pending.end()) {
    if (s.timed_out.erase(f->hdr.seq))
      return; // the answer to a command we gave up on
    return protocol_error(self, protocol_error_reason::unknown_seq, "reply with an unknown seq");
  }
  auto pc = std::move(it->second);
  s.pending.erase(it);
  if (s.pending.empty() && s.pending.bucket_count() > 64) {
    // A burst of commands (a VM's vCPUs configuring) was answered: give
    // back its buckets, and let the registry trim the heap.
    decltype(s.pending)().swap(s.pending);
    self->send(s.registry, heap_settle_atom::value);
  }
  if (f->hdr.id != static_cast<uint16_t>(pc.shape.id))
    return protocol_error(self, protocol_error_reason::reply_mismatch,
                          "reply id does not match its command");
  auto r = kvmi::decode_reply(*f, pc.shape, s.order);
  if (!r)
    return protocol_error(self, protocol_error_reason::bad_reply,
                          std::string("bad reply: ") + std::string(r.err().reason));
  s.c->internals().m.command(pc.shape.id, r->err == 0 ? "ok" : kvmi::kvm_error_name(r->err)).inc();
  cmd_result cr;
  cr.reply = std::move(*r);
  pc.done(std::move(cr));
}

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

void history_ready(vm_actor* self) {
  auto& s = self->state;
  s.hist_ready = true;
  if (!s.closed && !s.closing && s.unhook == unhook_phase::none && !s.setup_waiters.empty()
      && !s.setup_running)
    run_setup(self, s.setup_vcpu);
  start_unhook(self); // if one waited for the history
}

void bootstrap(vm_actor* self) {
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
  // The set-up starts when the setup gate lets it: at once, or when
  // another VM's ends (setup_go_atom).
  auto start = [=](setup_gate::place_ptr place) {
    auto& s2 = self->state;
    s2.gate = gate_phase::holding;
    s2.place = std::move(place);
    // Bounded: a VM whose vCPUs never stop (or a slow host) does not keep
    // the others waiting.
    self->delayed_send(self, 2 * s2.c->options().command_timeout, setup_bound_atom::value);
    bootstrap(self);
  };
  if (auto place = c->internals().setups->enter(caf::actor_cast<caf::actor>(self)))
    start(std::move(place));
  return {
    [=](setup_go_atom, setup_gate::place_ptr& place) {
      auto& s2 = self->state;
      // Gone meanwhile or being unhooked: nothing to set up, and the place
      // goes back with this message.
      if (s2.gate == gate_phase::waiting && !s2.closed && !s2.closing
          && s2.unhook == unhook_phase::none)
        start(std::move(place));
      else if (s2.gate == gate_phase::waiting)
        leave_gate(self);
    },
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
        if (s2.configured_once.size() <= vcpu)
          s2.configured_once.resize(size_t(vcpu) + 1);
        s2.configured_once[vcpu] = true;
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

caf::actor spawn_vm(core& c, session_params p) {
  auto link = p.link;
  auto a = c.system().spawn(vm_behavior, &c, std::move(p));
  link->set_vm(a);
  return a;
}

} // namespace kvmid
