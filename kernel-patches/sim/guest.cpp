#include "kernel-patches/sim/guest.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/shard.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

#include <utility>

namespace kvmi::sim::detail {

namespace {
void do_access(vm& v, guest_action& a) {
  a.out.allowed = true;
  if (a.k == guest_action::access && (a.a & page_access_w))
    page_for_write(v, a.x).bytes[a.x & 4095] = static_cast<uint8_t>(a.y);
}
} // namespace

guest::guest(shard& s) : s_(s) {}

void guest::add_vcpu(vm& v) {
  v.vcpus.emplace_back();
  auto& c = v.vcpus.back();
  c.index = static_cast<uint16_t>(v.vcpus.size() - 1);
  init_vcpu(v, c);
  if (s_.o.workload.rate_per_vcpu > 0)
    s_.work.schedule(v, c);
}

void guest::complete(vm& v, vcpu& c) {
  auto a = std::move(c.current);
  c.has_current = false;
  c.current = guest_action{};
  if (a.done)
    a.done->set_value(a.out);
  if (a.workload)
    s_.work.schedule(v, c);
}

bool guest::run(vm& v, vcpu& c) {
  auto& k = *s_.kern;
  auto& a = c.current;
  switch (a.k) {
    case guest_action::msr: {
      uint64_t old = get_msr(c, a.a);
      bool watched = std::find(c.msr_watch.begin(), c.msr_watch.end(), a.a) != c.msr_watch.end();
      if (old != a.x && watched && k.event_on(v, c, event_id::msr)) {
        c.ev_new = a.x;
        k.send_event(v, c, event_id::msr, event_msr{a.a, 0, old, a.x}, true);
        return true;
      }
      set_msr(c, a.a, a.x);
      a.out.value = a.x;
      return false;
    }
    case guest_action::cr: {
      uint64_t* p = cr_ref(c, a.a);
      if (!p) {
        a.out.ok = false;
        a.out.error = "cr must be 0, 3 or 4";
        return false;
      }
      if (*p != a.x && (c.cr_watch & cr_bit(a.a)) && k.event_on(v, c, event_id::cr)) {
        c.ev_new = a.x;
        k.send_event(v, c, event_id::cr, event_cr{uint16_t(a.a), {}, *p, a.x}, true);
        return true;
      }
      *p = a.x;
      a.out.value = a.x;
      return false;
    }
    case guest_action::access:
    case guest_action::execute: {
      uint8_t mode = a.k == guest_action::execute ? page_access_x : uint8_t(a.a);
      if (a.phase == 0 && !a.walked && s_.o.workload.page_walks) {
        // The MMU sets the accessed bit in the table at CR3: a write there.
        uint64_t table = c.sregs.cr3 & ~uint64_t{page_size - 1};
        if (v.hooked && !(access_of(v, table) & page_access_w)) {
          if (k.event_on(v, c, event_id::pf)) {
            a.in_walk = true;
            uint64_t gva = 0xffff888000000000ull + table;
            k.send_event(v, c, event_id::pf, event_pf{gva, table, page_access_w, 0}, true);
            return true;
          }
          ++v.c.pf_unreported;
        }
        a.walked = true;
      }
      if (a.phase == 0) {
        uint8_t allowed = access_of(v, a.x);
        if (v.hooked && (mode & ~allowed)) {
          if (k.event_on(v, c, event_id::pf)) {
            uint64_t gva = 0xffff888000000000ull + a.x;
            k.send_event(v, c, event_id::pf, event_pf{gva, a.x, mode, 0}, true);
            return true;
          }
          ++v.c.pf_unreported;
        }
        do_access(v, a);
        if (a.k == guest_action::access)
          return false;
        a.phase = 1;
      }
      // INT3 check at the fetched byte.
      if (read_byte(v, a.x) == 0xcc) {
        ++v.c.breakpoint_hits;
        if (k.event_on(v, c, event_id::breakpoint)) {
          k.send_event(v, c, event_id::breakpoint, event_breakpoint{a.x}, true);
          return true;
        }
        a.out.guest_exception = true; // #BP delivered to the guest
      }
      return false;
    }
    case guest_action::hypercall: {
      c.regs.rax = kvm_hc_xen_hvm_op;
      c.regs.rdi = xen_hvm_op_guest_request_vm_event;
      c.regs.rsi = 0;
      if (k.event_on(v, c, event_id::hypercall)) {
        k.send_event(v, c, event_id::hypercall, std::monostate{}, true);
        return true;
      }
      return false;
    }
    case guest_action::descriptor: {
      if (k.event_on(v, c, event_id::descriptor)) {
        event_descriptor d{};
        d.instr_info = 0x100 * a.a;
        d.exit_qualification = 0;
        d.descriptor = static_cast<uint8_t>(a.a);
        d.write = static_cast<uint8_t>(a.y);
        k.send_event(v, c, event_id::descriptor, d, true);
        return true;
      }
      return false;
    }
    case guest_action::xsetbv: {
      if (c.xcr0 != a.x && k.event_on(v, c, event_id::xsetbv)) {
        k.send_event(v, c, event_id::xsetbv, std::monostate{}, true);
        return true;
      }
      c.xcr0 = a.x;
      a.out.value = a.x;
      return false;
    }
  }
  return false;
}

void guest::step(vm& v, vcpu& c) {
  if (!c.initialised)
    return; // waits for the guest to start it
  while (!c.waiting && !v.crashed) {
    auto e = s_.kern->on_vcpu_entry(v, c);
    if (e == kernel::entry::stopped)
      return;
    if (e == kernel::entry::again)
      continue;
    if (c.has_current) {
      if (run(v, c))
        return;
      complete(v, c);
      continue;
    }
    if (!c.queue.empty()) {
      c.current = std::move(c.queue.front());
      c.queue.pop_front();
      c.has_current = true;
      continue;
    }
    if (c.workload_due && !v.draining) {
      c.workload_due = false;
      c.current = s_.work.draw(v, c);
      c.has_current = true;
      continue;
    }
    break;
  }
}

bool guest::run_one(vm& v, vcpu& c) {
  if (!c.has_current)
    return false;
  if (run(v, c))
    return true;
  complete(v, c);
  return false;
}

void guest::step_all(vm& v) {
  for (auto& c : v.vcpus)
    step(v, c);
}

void guest::resume(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val, bool aborted) {
  auto& a = c.current;
  ++a.out.events;
  a.out.event = c.ev;
  a.out.aborted = aborted;
  if (!aborted)
    a.out.reply = act;
  if (act == action::crash) {
    a.out.crashed = true;
    return complete(v, c);
  }
  switch (c.ev) {
    case event_id::msr:
      set_msr(c, a.a, new_val.value_or(c.ev_new));
      a.out.value = new_val.value_or(c.ev_new);
      complete(v, c);
      break;
    case event_id::cr:
      *cr_ref(c, a.a) = new_val.value_or(c.ev_new);
      a.out.value = new_val.value_or(c.ev_new);
      complete(v, c);
      break;
    case event_id::xsetbv:
      c.xcr0 = a.x;
      a.out.value = a.x;
      complete(v, c);
      break;
    case event_id::pf:
      if (std::exchange(a.in_walk, false)) {
        // RETRY walks again; otherwise the accessed bit is set (emulated)
        // and the access itself goes on.
        if (act == action::retry)
          ++v.c.pf_retried;
        else
          ++v.c.pf_allowed;
        a.walked = act != action::retry;
        break;
      }
      if (act == action::retry) {
        ++v.c.pf_retried;
        a.out.allowed = false;
        break; // re-executes: run() again from step()
      }
      ++v.c.pf_allowed;
      do_access(v, a); // emulated
      if (a.k == guest_action::execute)
        a.phase = 1;
      else
        complete(v, c);
      break;
    case event_id::breakpoint:
      if (act == action::retry)
        break; // the tool moved RIP or restored the byte: fetch again
      a.out.guest_exception = true; // CONTINUE re-injects #BP
      complete(v, c);
      break;
    default:
      complete(v, c);
      break;
  }
}

void guest::on_workload_due(vm& v, uint32_t vcpu) {
  if (vcpu < v.vcpus.size() && !v.crashed && !s_.quiesced()) {
    v.vcpus[vcpu].workload_due = true;
    step(v, v.vcpus[vcpu]);
  }
}

outcome guest::hotplug(vm& v) {
  outcome out;
  if (v.vcpus.size() >= 65535)
    return rejected("too many vCPUs");
  add_vcpu(v);
  auto& c = v.vcpus.back();
  out.vcpu = c.index;
  if (v.hooked)
    c.create_pending = true; // CREATE_VCPU before it runs, if enabled
  auto& start = s_.o.hotplug_start_after;
  if (!start || start->count() > 0) {
    c.initialised = false;
    if (start)
      s_.net.add_timer(clock::now() + *start, timer_kind::vcpu_start, v.local, c.index);
  }
  step(v, c);
  return out;
}

void guest::start_vcpu(vm& v, uint32_t vcpu) {
  if (vcpu >= v.vcpus.size() || v.crashed)
    return;
  v.vcpus[vcpu].initialised = true;
  step(v, v.vcpus[vcpu]);
}

void guest::crash(vm& v) {
  if (v.crashed)
    return;
  v.crashed = true;
  for (auto& c : v.vcpus) {
    if (c.waiting) {
      c.waiting = false; // the vCPU threads get SIGTERM: nothing resumes
      v.pending.erase(c.ev_seq);
      if (c.ev_for_action && c.has_current) {
        c.current.out.events++;
        c.current.out.event = c.ev;
        c.current.out.aborted = true;
      }
    }
    auto fail = [](guest_action& a) {
      if (a.done) {
        a.out.crashed = true;
        a.done->set_value(a.out);
      }
    };
    if (c.has_current) {
      fail(c.current);
      c.has_current = false;
      c.current = guest_action{};
    }
    for (auto& a : c.queue)
      fail(a);
    c.queue.clear();
  }
  s_.dm.end_session(v);
  v.unhook_requested = false;
  for (auto& w : v.unhook_waiters)
    w->set_value(rejected("vm crashed"));
  v.unhook_waiters.clear();
}

} // namespace kvmi::sim::detail
