#include "actors/policy.hpp"

#include "actors/alert_kinds.hpp"

#include <algorithm>

namespace kvmid {

using kvmi::event_id;

std::string_view name(pf_action a) {
  switch (a) {
    case pf_action::allow_once: return "allow-once";
    case pf_action::allow_and_unprotect: return "allow-and-unprotect";
    case pf_action::crash: return "crash";
    case pf_action::deny: return "deny";
  }
  return "unknown";
}

std::optional<pf_action> parse_pf_action(std::string_view s) {
  for (auto a : {pf_action::allow_once, pf_action::allow_and_unprotect, pf_action::crash,
                 pf_action::deny})
    if (s == name(a))
      return a;
  return std::nullopt;
}

std::optional<cr_pin> parse_cr_pin(std::string_view s) {
  if (s == "cr0.wp")
    return cr_pin{"cr0.wp", 0, 1ull << 16};
  if (s == "cr4.smep")
    return cr_pin{"cr4.smep", 4, 1ull << 20};
  if (s == "cr4.smap")
    return cr_pin{"cr4.smap", 4, 1ull << 21};
  return std::nullopt;
}

uint32_t vm_policy::vcpu_events() const {
  // PAUSE_VCPU always: operator pause and the bootstrap rely on it.
  // BREAKPOINT always: a guest's own INT3 must be re-injected (CONTINUE)
  // and kvmid may plant breakpoints at run time.
  uint32_t m = kvmi::flag(event_id::pause_vcpu) | kvmi::flag(event_id::breakpoint);
  if (!pages.empty())
    m |= kvmi::flag(event_id::pf);
  if (!msrs.empty())
    m |= kvmi::flag(event_id::msr);
  if (!crs.empty())
    m |= kvmi::flag(event_id::cr);
  if (hypercalls)
    m |= kvmi::flag(event_id::hypercall);
  return m;
}

bool glob_match(std::string_view p, std::string_view s) {
  // Iterative '*' backtracking: linear in practice, no recursion on input.
  size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi, ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*')
    ++pi;
  return pi == p.size();
}

const vm_policy& policy_set::select(std::string_view uuid, std::string_view name) const {
  for (auto& p : policies)
    for (auto& m : p.match)
      if (glob_match(m, uuid) || glob_match(m, name))
        return p;
  return fallback;
}

decision decide(const kvmi::event_msg& ev, const vm_policy& p, const vm_state& st) {
  decision d;
  switch (ev.kind()) {
    case event_id::cr: {
      auto& e = std::get<kvmi::event_cr>(ev.data);
      d.has_new_val = true;
      d.new_val = e.new_value;
      for (auto& pin : p.crs) {
        if (pin.cr != e.cr)
          continue;
        // Pinned bits may be set but never cleared once set.
        uint64_t cleared = e.old_value & pin.bits & ~d.new_val;
        if (cleared) {
          d.new_val |= cleared;
          d.alert = true;
          d.rule = alert_kind::cr_pin;
          d.rule_name = pin.name;
        }
      }
      break;
    }
    case event_id::msr: {
      auto& e = std::get<kvmi::event_msr>(ev.data);
      d.has_new_val = true;
      d.new_val = e.new_value;
      for (auto& r : p.msrs)
        if (r.msr == e.msr && e.new_value != e.old_value) {
          d.new_val = e.old_value; // deny: the MSR keeps its value
          d.alert = true;
          d.rule = alert_kind::msr_protection;
          d.rule_name = r.name;
        }
      break;
    }
    case event_id::pf: {
      auto& e = std::get<kvmi::event_pf>(ev.data);
      uint64_t page = e.gpa & ~uint64_t(kvmi::page_size - 1);
      auto it = st.pages.find(page);
      if (it == st.pages.end() || (e.mode & ~it->second.access) == 0)
        break; // not ours, or allowed: the kernel emulates it
      auto& pg = it->second;
      if (pg.on_violation == pf_action::deny && pg.deny_size
          && (e.gpa < pg.deny_gpa || e.gpa - pg.deny_gpa >= pg.deny_size))
        break; // the rest of a page a deny range is scoped to: let through
      d.alert = true;
      d.rule = alert_kind::page_protection;
      d.rule_name = it->second.rule_name;
      d.gpa = page;
      switch (it->second.on_violation) {
        case pf_action::allow_once: d.act = kvmi::action::continue_; break;
        case pf_action::allow_and_unprotect:
          d.act = kvmi::action::retry;
          d.then = follow_up::unprotect_page;
          break;
        case pf_action::crash: d.act = kvmi::action::crash; break;
        case pf_action::deny:
          d.act = kvmi::action::retry;
          d.then = follow_up::skip_instruction;
          break;
      }
      break;
    }
    case event_id::breakpoint: {
      auto& e = std::get<kvmi::event_breakpoint>(ev.data);
      auto it = st.breakpoints.find(e.gpa);
      if (it == st.breakpoints.end())
        break; // the guest's own INT3: CONTINUE re-injects #BP
      d.breakpoint_hit = true;
      d.rule_name = it->second.name;
      d.gpa = e.gpa;
      d.act = kvmi::action::retry;
      // Even when another vCPU's hit already restored it, the VM actor
      // counts the hit; the original byte is back, so RETRY runs it.
      d.then = follow_up::restore_breakpoint;
      break;
    }
    case event_id::singlestep:
      // Only kvmid turns single-stepping on, to put a breakpoint back.
      d.then = follow_up::rearm_breakpoint;
      break;
    case event_id::hypercall: d.report = true; break;
    case event_id::pause_vcpu:
    case event_id::create_vcpu:
      // A vCPU hot-plugged during an operator pause is held in its
      // CREATE_VCPU event like the others in PAUSE_VCPU (docs/protocol.md).
      if (st.paused)
        d.then = follow_up::hold;
      break;
    default: break;
  }
  return d;
}

kvmi::event_reply_msg make_reply(const kvmi::event_msg& ev, const decision& d) {
  return make_reply(ev.seq, ev.common.event, d);
}

kvmi::event_reply_msg make_reply(uint32_t seq, uint32_t event, const decision& d) {
  kvmi::event_reply_msg r;
  r.seq = seq;
  r.common.action = static_cast<uint32_t>(d.act);
  r.common.event = event;
  switch (static_cast<event_id>(event)) {
    case event_id::cr: r.extra = kvmi::event_cr_reply{d.new_val}; break;
    case event_id::msr: r.extra = kvmi::event_msr_reply{d.new_val}; break;
    case event_id::pf: r.extra = kvmi::event_pf_reply{}; break;
    default: break;
  }
  return r;
}

std::string unsafe_reason(const std::vector<kvmi::hs::region>& map, uint64_t gpa, uint64_t size,
                          bool allow_unmapped) {
  if (size == 0)
    return "empty range";
  if (gpa + size < gpa)
    return "range wraps around";
  if (map.empty())
    return allow_unmapped ? std::string() : "no memory map for this VM (qemu-v5 handshake)";
  // Walk the range: every byte must lie in a safe region.
  uint64_t at = gpa, end = gpa + size;
  while (at < end) {
    const kvmi::hs::region* hit = nullptr;
    for (auto& r : map)
      if (at >= r.gpa && at - r.gpa < r.size) {
        hit = &r;
        break;
      }
    if (!hit)
      return "gpa outside the VM's memory map";
    auto t = static_cast<kvmi::hs::region_type>(hit->type);
    if (t == kvmi::hs::region_type::mmio)
      return "gpa in an MMIO region";
    if (t == kvmi::hs::region_type::nvlink2_atsd)
      return "gpa in an NVLink2 ATSD register region";
    if (t == kvmi::hs::region_type::nvlink2_gpu_ram && !(hit->flags & kvmi::hs::region_online))
      return "gpa in NVLink2 GPU RAM that is not online (host machine check risk)";
    if (t != kvmi::hs::region_type::ram && t != kvmi::hs::region_type::nvlink2_gpu_ram)
      return "gpa in a region of unknown type";
    at = hit->gpa + hit->size;
  }
  return {};
}

} // namespace kvmid
