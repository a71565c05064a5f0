#include "kernel-patches/sim/device_manager.hpp"

#include "kernel-patches/sim/host_impl.hpp"

#include <algorithm>

namespace kvmi::sim::detail {

namespace {
// Each handshake step must arrive within 10 s (docs/architecture.md).
constexpr ms handshake_step_timeout{10000};
} // namespace

device_manager::device_manager(shard& s) : s_(s) {}

hs::guest_info device_manager::guest_info(const vm& v) const {
  hs::guest_info g;
  g.id = v.uuid;
  g.vcpu_count = static_cast<uint32_t>(v.vcpus.size());
  g.start_time = 1700000000 + v.index;
  g.name = v.name;
  g.regions = v.regions;
  size_t gi = 0;
  for (auto& r : g.regions)
    if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram)) {
      if (gi < v.gpu_online.size() && v.gpu_online[gi])
        r.flags |= hs::region_online;
      ++gi;
    }
  g.order = s_.o.order;
  return g;
}

v7::hs::qemu_hello device_manager::qemu_hello(const vm& v) const {
  auto g = guest_info(v);
  v7::hs::qemu_hello h;
  std::copy(g.id.begin(), g.id.end(), h.uuid.begin());
  h.start_time = g.start_time;
  h.name = g.name;
  h.cpu_type = v7::hs::cpu_type_x86_64;
  uint64_t top = 0;
  for (auto& r : g.regions) {
    top = std::max(top, r.gpa + r.size);
    // E820: RAM is usable (1), the rest reserved (2), as QEMU reports them.
    uint32_t type = r.type == uint32_t(hs::region_type::ram) ? 1 : 2;
    h.e820.push_back(v7::hs::e820_entry{r.gpa, r.size, type, 0});
  }
  h.max_gpa = top ? top - 1 : 0;
  return h;
}

std::unique_ptr<dm_handshake> device_manager::start_handshake(vm& v) {
  auto cookie = s_.o.cookie;
  if (s_.faults.strikes(v, v.faults->bad_mac)) {
    ++v.c.faults_injected;
    cookie.push_back(0x5a); // a device manager with the wrong secret
  }
  if (s_.o.dialect == protocol::v7)
    return make_dm_handshake_v7(std::move(cookie), qemu_hello(v), s_.o.v7_hello);
  return make_dm_handshake_v5(std::move(cookie), guest_info(v), s_.o.handshake);
}

void device_manager::on_connected(vm& v) {
  v.connecting = false;
  v.connected = true;
  if (v.ever_hooked || v.c.handshake_failures)
    ++v.c.reconnects;
  v.dm = start_handshake(v);
  put_bytes(v.out, std::span<const uint8_t>(v.dm->out()));
  v.dm->out().clear();
  s_.net.mark_dirty(v);
  s_.net.receive(v);
  s_.net.add_timer(clock::now() + handshake_step_timeout, timer_kind::handshake_timeout, v.local,
                   0, v.gen);
}

void device_manager::on_bytes(vm& v, std::span<const uint8_t> in) {
  if (v.dm && v.dm->state() == hs::status::in_progress) {
    auto st = v.dm->feed(in);
    if (!v.dm->out().empty()) {
      put_bytes(v.out, std::span<const uint8_t>(v.dm->out()));
      v.dm->out().clear();
      s_.net.mark_dirty(v);
    }
    if (st == hs::status::failed) {
      end_session(v); // counts the failure
      return;
    }
    if (st != hs::status::done)
      return;
    v.failures_in_row = 0;
    s_.kern->hook(v);
  }
  if (!v.hooked)
    return;
  s_.kern->on_bytes(v, in);
}

void device_manager::on_handshake_timeout(vm& v, uint32_t gen) {
  if (gen == v.gen && v.fd >= 0 && !v.hooked)
    end_session(v); // the introspector never finished its part: a failure
}

void device_manager::end_session(vm& v, bool by_tool) {
  if (v.fd < 0)
    return;
  s_.faults.reject_waiters(v);
  s_.net.close(v);
  bool was_hooked = v.hooked;
  // A connection that ends before the handshake completed (the
  // introspector refused the MAC and closed, or a step timed out) is a
  // failed handshake; the host stopping is not.
  bool failed = v.dm && !was_hooked && !s_.stopping();
  if (failed)
    ++v.c.handshake_failures;
  v.connected = v.connecting = v.hooked = false;
  v.out.clear();
  v.deferred.clear();
  v.split_at = 0;
  v.held = false;
  v.draining = false;
  v.close_after_send = false;
  v.dm.reset();
  if (was_hooked)
    s_.kern->end_introspection(v, by_tool);
  if (v.unhook_requested) {
    v.unhook_requested = false;
    v.unhooked = true;
    for (auto& w : v.unhook_waiters)
      w->set_value(outcome{});
    v.unhook_waiters.clear();
  }
  if (!v.crashed && !v.unhooked && s_.o.reconnect && !s_.stopping())
    reconnect_later(v, failed);
  if (!v.crashed)
    s_.guest.step_all(v); // vCPUs resume, now without introspection
}

void device_manager::reconnect_later(vm& v, bool failed) {
  auto delay = s_.o.reconnect_delay;
  if (failed) {
    // Doubling per failure in a row, capped: a missing socket or a wrong
    // cookie is not hammered.
    auto cap = std::max(s_.o.reconnect_delay_max, delay);
    for (uint32_t i = 0; i < v.failures_in_row && delay < cap; ++i)
      delay *= 2;
    delay = std::min(delay, cap);
    ++v.failures_in_row;
  }
  s_.net.add_timer(clock::now() + delay, timer_kind::connect, v.local);
}

void device_manager::request_unhook(vm& v, vm::waiter p) {
  if (v.crashed)
    return p->set_value(rejected("vm crashed"));
  if (!v.hooked) {
    // Nothing to unhook: QEMU proceeds at once and stops reconnecting.
    v.unhooked = true;
    if (v.fd >= 0)
      end_session(v);
    return p->set_value(outcome{});
  }
  v.unhook_waiters.push_back(std::move(p));
  if (v.unhook_requested)
    return;
  v.unhook_requested = true;
  if (!s_.kern->unhook(v))
    end_session(v); // no UNHOOK event: QEMU just closes
}

} // namespace kvmi::sim::detail
