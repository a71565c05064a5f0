// KVMI commands of one session: sent with a fresh seq, matched with their
// replies (which arrive in any order), timed out by one sweep per VM.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

// PAUSE_ALL_VCPUS, with what each vCPU now owes counted (and forgiven if
// the kernel refused it).
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

} // namespace kvmid::vm_impl
