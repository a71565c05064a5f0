#include "kernel-patches/sim/kernel_v5.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

#include <cstring>
#include <utility>

namespace kvmi::sim::detail {

void fill_event_common(vcpu& c, event& e) {
  e.vcpu = c.index;
  e.mode = 8;
  e.regs = c.regs;
  e.sregs = c.sregs;
  e.msrs = event_msrs{get_msr(c, msr::sysenter_cs), get_msr(c, msr::sysenter_esp),
                      get_msr(c, msr::sysenter_eip), get_msr(c, msr::efer),
                      get_msr(c, msr::star), get_msr(c, msr::lstar), get_msr(c, msr::cstar),
                      get_msr(c, msr::pat), get_msr(c, msr::kernel_gs_base)};
}

std::unique_ptr<kernel> make_kernel_v5(shard& s) { return std::make_unique<kernel_v5>(s); }

kernel_v5::kernel_v5(shard& s) : s_(s), commands_(s, *this) {}

void kernel_v5::violate(vm& v, violation k) { ++v.c.violations[static_cast<size_t>(k)]; }

// ---- session -------------------------------------------------------------------

void kernel_v5::hook(vm& v) {
  v.hooked = true;
  v.ever_hooked = true;
  ++v.c.sessions;
  v.splitter = std::make_unique<frame_splitter>(s_.o.order);
  for (auto& c : v.vcpus)
    c.create_pending = true; // sent once the tool enables CREATE_VCPU
}

void kernel_v5::end_introspection(vm& v, bool by_tool) {
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
  }
  // What the tool left behind, seen before the kernel undoes its part.
  v.c.restricted_at_close += v.access.size();
  std::erase_if(v.tool_int3, [&](uint64_t gpa) { return read_byte(v, gpa) != 0xcc; });
  v.c.int3_at_close += v.tool_int3.size();
  v.access.clear(); // full rwx on every tracked page
  v.vm_events = 0;
  v.tokens = 0;
  v.pending.clear();
  v.unhook_sent = false;
  // The splitter stays: this may run inside its feed(); hook() replaces it.
}

bool kernel_v5::unhook(vm& v) {
  if (!(v.vm_events & flag(event_id::unhook)) ||
      !allowed_vm_event(event_id::unhook, s_.o.allowed_events))
    return false;
  // Sent without waiting; the tool removes its hooks and closes.
  event_msg m;
  m.seq = ++v.ev_seq;
  m.common.event = static_cast<uint32_t>(event_id::unhook);
  encode(v.scratch, m, s_.o.order);
  ++v.c.events[static_cast<size_t>(event_id::unhook)];
  v.unhook_sent = true;
  s_.faults.send_frame(v, v.scratch);
  s_.net.add_timer(clock::now() + s_.o.unhook_timeout, timer_kind::unhook_timeout, v.local, 0,
                   ++v.unhook_gen);
  return true;
}

void kernel_v5::on_unhook_timeout(vm& v, uint32_t gen) {
  if (gen == v.unhook_gen && v.unhook_requested && v.fd >= 0) {
    violate(v, violation::unhook_timeout);
    s_.dm.end_session(v);
  }
}

// ---- events --------------------------------------------------------------------

kernel::entry kernel_v5::on_vcpu_entry(vm& v, vcpu& c) {
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

bool kernel_v5::event_on(vm& v, vcpu& c, event_id e) {
  return v.hooked && (c.events & flag(e)) && allowed_vcpu_event(e, s_.o.allowed_events);
}

void kernel_v5::send_event(vm& v, vcpu& c, event_id kind, const event_data& data,
                           bool for_action) {
  event_msg m;
  m.seq = ++v.ev_seq;
  m.common.event = static_cast<uint32_t>(kind);
  fill_event_common(c, m.common);
  m.data = data;
  encode(v.scratch, m, s_.o.order);
  c.waiting = true;
  c.ev = kind;
  c.ev_seq = m.seq;
  c.ev_sent = clock::now();
  c.ev_for_action = for_action;
  v.pending[m.seq] = c.index;
  ++v.c.events[static_cast<size_t>(kind)];
  s_.faults.send_frame(v, v.scratch);
}

void kernel_v5::finish_event(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val,
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

void kernel_v5::on_bytes(vm& v, std::span<const uint8_t> in) {
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

void kernel_v5::on_frame(vm& v, const frame& f) {
  uint16_t id = f.hdr.id;
  auto close = [&](violation k) {
    violate(v, k);
    s_.dm.end_session(v);
  };
  if (id >= num_v5_messages)
    return close(violation::unknown_id); // v5 closes on id >= 29
  auto m = decode_from_tool(f, s_.o.order);
  if (!m) {
    auto e = m.err().code;
    if (id == uint16_t(msg_id::event))
      return close(violation::reply_with_event_id);
    if (e == errc::unknown_id) {
      if (f.payload.empty())
        return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_enosys, false);
      return close(violation::unknown_id);
    }
    if (id == uint16_t(msg_id::event_reply))
      return close(e == errc::bad_padding ? violation::bad_padding : violation::reply_bad_size);
    if (e == errc::bad_padding) {
      violate(v, violation::bad_padding);
      return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_einval, false);
    }
    if (e == errc::oversize)
      return close(violation::physical_range);
    return close(violation::bad_size);
  }
  if (auto* r = std::get_if<event_reply_msg>(&*m))
    return on_event_reply(v, *r);
  auto& cm = std::get<command_msg>(*m);
  commands_.on_command(v, cm, static_cast<msg_id>(id));
}

void kernel_v5::on_event_reply(vm& v, const event_reply_msg& r) {
  auto it = v.pending.find(r.seq);
  if (it == v.pending.end()) {
    violate(v, violation::reply_unknown_seq);
    return s_.dm.end_session(v);
  }
  auto& c = v.vcpus[it->second];
  s_.lat.add(static_cast<uint64_t>(
    std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - c.ev_sent).count()));
  if (auto* pf = std::get_if<event_pf_reply>(&r.extra); pf && pf->ctx_size > pf_ctx_max) {
    violate(v, violation::pf_ctx_oversize);
    return s_.dm.end_session(v);
  }
  if (r.common.event != static_cast<uint32_t>(c.ev)) {
    violate(v, violation::reply_event_mismatch); // not applied: the vCPU continues
    finish_event(v, c, action::continue_, std::nullopt, false);
    return s_.guest.step(v, c);
  }
  auto act = static_cast<action>(r.common.action);
  if (auto e = check(r)) {
    violate(v, e.code == errc::bad_padding ? violation::bad_padding : violation::reply_bad_action);
    act = action::continue_;
  } else {
    ++v.c.replies[r.common.action];
  }
  if (act == action::crash) {
    if (c.ev == event_id::pf)
      ++v.c.pf_crashed;
    finish_event(v, c, act, std::nullopt, false);
    return s_.guest.crash(v);
  }
  std::optional<uint64_t> nv;
  if (auto* x = std::get_if<event_cr_reply>(&r.extra))
    nv = x->new_val;
  if (auto* x = std::get_if<event_msr_reply>(&r.extra))
    nv = x->new_val;
  finish_event(v, c, act, nv, false);
  s_.guest.step(v, c);
}

// ---- replies -------------------------------------------------------------------

void kernel_v5::reply(vm& v, const reply_msg& r, bool from_vcpu) {
  if (r.err < 0)
    ++v.c.errors[vm_counts::error_slot(r.err)];
  encode(v.scratch, r, s_.o.order);
  s_.faults.send_reply(v, v.scratch, from_vcpu);
}

void kernel_v5::reply_err(vm& v, msg_id id, uint32_t seq, int32_t kvm_e, bool from_vcpu) {
  reply_msg r;
  r.id = id;
  r.seq = seq;
  r.err = -kvm_e;
  reply(v, r, from_vcpu);
}

void kernel_v5::ok(vm& v, msg_id id, uint32_t seq, reply_data d, bool from_vcpu) {
  reply_msg r;
  r.id = id;
  r.seq = seq;
  r.data = std::move(d);
  reply(v, r, from_vcpu);
}

void kernel_v5::end_of_batch(vm& v) {
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
