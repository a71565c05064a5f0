// What kvmid changes in the guest: page restrictions (SET_PAGE_ACCESS) and
// its INT3s, planted, adopted from an earlier session, and put back.
#include "actors/vm/vm_state.hpp"

namespace kvmid::vm_impl {

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
                      std::optional<uint8_t> recorded) {
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
                        bool keep_record) {
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

} // namespace kvmid::vm_impl
