// Operator requests to one VM (the control API): info, pause and resume,
// registers, guest memory, page access, breakpoints, events, unhook.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

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

} // namespace kvmid::vm_impl
