#include "kernel-patches/sim/kernel_base.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/host_impl.hpp"

#include <cstring>
#include <utility>

namespace kvmi::sim::detail {

kernel_base::kernel_base(shard& s) : s_(s) {}

void kernel_base::violate(vm& v, violation k) { ++v.c.violations[static_cast<size_t>(k)]; }

// ---- session -------------------------------------------------------------------

void kernel_base::hook(vm& v) {
  v.hooked = true;
  v.ever_hooked = true;
  ++v.c.sessions;
  v.splitter = std::make_unique<frame_splitter>(s_.o.order, max_payload());
  for (auto& c : v.vcpus)
    c.create_pending = true; // sent once the tool enables CREATE_VCPU
}

void kernel_base::end_introspection(vm& v, bool by_tool) {
  for (auto& c : v.vcpus) {
    if (c.waiting) {
      ++v.c.unanswered_at_close;
      if (by_tool)
        ++v.c.aborted_by_tool;
      finish_event(v, c, action::continue_, std::nullopt, true); // waits aborted
    }
    c.events = 0;
    c.cr_watch = 0;
    c.msr_watch.clear();
    c.pauses = 0;
    c.create_pending = false;
    c.set_regs.reset();
    c.inject.reset();
    c.kicked = false;
    c.singlestep = false;
  }
  // What the tool left behind, seen before the kernel undoes its part.
  v.c.restricted_at_close += v.access.size();
  std::erase_if(v.tool_int3, [&](uint64_t gpa) { return read_byte(v, gpa) != 0xcc; });
  v.c.int3_at_close += v.tool_int3.size();
  v.access.clear(); // full rwx on every tracked page
  v.vm_events = 0;
  v.cmd_replies = true;
  v.tokens = 0;
  v.pending.clear();
  v.unhook_sent = false;
  // The splitter stays: this may run inside its feed(); hook() replaces it.
}

bool kernel_base::unhook(vm& v) {
  if (!(v.vm_events & flag(event_id::unhook)) ||
      !allowed_vm_event(event_id::unhook, s_.o.allowed_events))
    return false;
  // Sent without waiting; the tool removes its hooks and closes.
  encode_event(v, nullptr, event_id::unhook, std::monostate{}, ++v.ev_seq, v.scratch);
  ++v.c.events[static_cast<size_t>(event_id::unhook)];
  v.unhook_sent = true;
  s_.faults.send_frame(v, v.scratch);
  s_.net.add_timer(clock::now() + s_.o.unhook_timeout, timer_kind::unhook_timeout, v.local, 0,
                   ++v.unhook_gen);
  return true;
}

void kernel_base::on_unhook_timeout(vm& v, uint32_t gen) {
  if (gen == v.unhook_gen && v.unhook_requested && v.fd >= 0) {
    violate(v, violation::unhook_timeout);
    s_.dm.end_session(v);
  }
}

// ---- events --------------------------------------------------------------------

kernel::entry kernel_base::on_vcpu_entry(vm& v, vcpu& c) {
  if (c.inject) {
    auto in = *c.inject;
    c.inject.reset();
    // The injected exception may collide with one the guest raises.
    if (chance(v, s_.o.workload.mix.trap) && event_on(v, c, event_id::trap)) {
      event_trap t{in.nr, 3, in.has_error ? in.error_code : 0u, 0, in.address};
      send_event(v, c, event_id::trap, t, false);
      return entry::stopped;
    }
    return entry::again;
  }
  if (c.create_pending && v.hooked && (v.vm_events & flag(event_id::create_vcpu)) &&
      allowed_vm_event(event_id::create_vcpu, s_.o.allowed_events)) {
    c.create_pending = false;
    send_event(v, c, event_id::create_vcpu, std::monostate{}, false);
    return entry::stopped;
  }
  if (c.pauses && v.hooked) {
    --c.pauses;
    send_event(v, c, event_id::pause_vcpu, std::monostate{}, false);
    return entry::stopped;
  }
  return entry::enter;
}

bool kernel_base::event_on(vm& v, vcpu& c, event_id e) {
  return v.hooked && (c.events & flag(e)) && (s_.o.allowed_events & flag(e));
}

bool kernel_base::enabled(const vm& v, vcpu* c, event_id kind) const {
  if (kind == event_id::pause_vcpu)
    return true;
  if (kind == event_id::unhook || kind == event_id::create_vcpu)
    return (v.vm_events & flag(kind)) != 0;
  return c && (c->events & flag(kind));
}

void kernel_base::send_event(vm& v, vcpu& c, event_id kind, const event_data& data,
                             bool for_action) {
  if (!enabled(v, &c, kind))
    violate(v, violation::event_not_enabled);
  uint32_t seq = ++v.ev_seq;
  encode_event(v, &c, kind, data, seq, v.scratch);
  c.waiting = true;
  c.ev = kind;
  c.ev_seq = seq;
  c.ev_sent = clock::now();
  c.ev_for_action = for_action;
  v.pending[seq] = c.index;
  ++v.c.events[static_cast<size_t>(kind)];
  s_.faults.send_frame(v, v.scratch);
}

void kernel_base::finish_event(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val,
                               bool aborted) {
  c.waiting = false;
  v.pending.erase(c.ev_seq);
  if (c.set_regs && !aborted)
    c.regs = *c.set_regs;
  c.set_regs.reset();
  if (c.ev_for_action)
    s_.guest.resume(v, c, act, new_val, aborted);
}

// ---- receiving -----------------------------------------------------------------

void kernel_base::on_bytes(vm& v, std::span<const uint8_t> in) {
  if (!v.splitter)
    return;
  uint32_t gen = v.gen;
  auto err = v.splitter->feed(in, [&](const frame& f) {
    if (v.gen == gen && v.hooked)
      on_frame(v, f);
  });
  if (v.gen != gen)
    return;
  if (err) {
    violate(v, violation::bad_size);
    s_.dm.end_session(v);
    return;
  }
  end_of_batch(v);
  // Kicked vCPUs re-enter the guest once their replies are out (an
  // injected exception goes in then).
  for (auto& c : v.vcpus)
    if (std::exchange(c.kicked, false))
      s_.guest.step(v, c);
}

void kernel_base::on_event_reply(vm& v, const reply_view& r) {
  auto it = v.pending.find(r.seq);
  // v7: the vCPU the reply names must be the one waiting on that seq.
  if (it == v.pending.end() || (r.vcpu && *r.vcpu != it->second)) {
    violate(v, violation::reply_unknown_seq);
    return s_.dm.end_session(v);
  }
  auto& c = v.vcpus[it->second];
  s_.lat.add(static_cast<uint64_t>(
    std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - c.ev_sent).count()));
  if (r.pf_ctx_size > pf_ctx_max) {
    violate(v, violation::pf_ctx_oversize);
    return s_.dm.end_session(v);
  }
  if (r.event != static_cast<uint32_t>(c.ev)) {
    violate(v, violation::reply_event_mismatch); // not applied: the vCPU continues
    finish_event(v, c, action::continue_, std::nullopt, false);
    return s_.guest.step(v, c);
  }
  auto act = static_cast<action>(r.action);
  if (r.verdict) {
    violate(v, r.verdict.code == errc::bad_padding ? violation::bad_padding
                                                   : violation::reply_bad_action);
    act = action::continue_;
  } else {
    ++v.c.replies[r.action];
  }
  if (act == action::crash) {
    if (c.ev == event_id::pf)
      ++v.c.pf_crashed;
    finish_event(v, c, act, std::nullopt, false);
    return s_.guest.crash(v);
  }
  finish_event(v, c, act, r.new_val, false);
  s_.guest.step(v, c);
}

// ---- replies -------------------------------------------------------------------

void kernel_base::send_reply(vm& v, int32_t err, std::vector<uint8_t>& frame, bool from_vcpu) {
  if (err < 0)
    ++v.c.errors[vm_counts::error_slot(err)];
  s_.faults.send_reply(v, frame, from_vcpu);
}

void kernel_base::end_of_batch(vm& v) {
  if (v.deferred.empty())
    return;
  // Deferred replies are already whole frames; send them as such.
  std::span<const uint8_t> rest(v.deferred);
  while (rest.size() >= sizeof(msg_hdr)) {
    msg_hdr hd;
    std::memcpy(&hd, rest.data(), sizeof hd);
    to_order(hd, s_.o.order);
    size_t n = std::min(rest.size(), sizeof(msg_hdr) + hd.size);
    s_.faults.send_frame(v, rest.subspan(0, n));
    rest = rest.subspan(n);
  }
  v.deferred.clear();
  for (auto& w : v.deferred_waiters)
    s_.faults.await_sent(v, std::move(w));
  v.deferred_waiters.clear();
}

} // namespace kvmi::sim::detail
