#include "kernel-patches/sim/shard.hpp"

#include "kernel-patches/sim/host_impl.hpp"

#include <unistd.h>

namespace kvmi::sim::detail {

shard::shard(host::impl* hi, unsigned i)
    : h(hi), o(hi->o), id(i), net(*this), faults(*this), work(*this), guest(*this), dm(*this),
      kern(hi->o.dialect == protocol::v7 ? make_kernel_v7(*this) : make_kernel_v5(*this)) {}

shard::~shard() {
  for (auto& v : vms)
    if (v->fd >= 0)
      ::close(v->fd);
}

bool shard::stopping() const { return h->stopping; }
bool shard::quiesced() const { return h->quiesced; }

void shard::on_timer(const timer& t) {
  auto now = clock::now();
  switch (t.kind) {
    case timer_kind::reconnect_storm:
      if (quiesced())
        return;
      faults.reconnect_storm();
      net.add_timer(now + o.faults.reconnect_storm_every, t.kind, 0);
      return;
    case timer_kind::hotplug_storm:
      if (quiesced())
        return;
      faults.hotplug_storm();
      net.add_timer(now + o.faults.hotplug_storm_every, t.kind, 0);
      return;
    default: break;
  }
  if (t.vm >= vms.size())
    return;
  auto& v = *vms[t.vm];
  switch (t.kind) {
    case timer_kind::connect: return net.connect(v);
    case timer_kind::workload: return guest.on_workload_due(v, t.vcpu);
    case timer_kind::unhook_timeout: return kern->on_unhook_timeout(v, t.gen);
    case timer_kind::torn_resume:
      if (t.gen == v.gen)
        net.resume_torn(v);
      return;
    case timer_kind::slow_send:
      if (t.gen == v.gen)
        faults.send_slow_reply(v);
      return;
    case timer_kind::handshake_timeout: return dm.on_handshake_timeout(v, t.gen);
    case timer_kind::vcpu_start: return guest.start_vcpu(v, t.vcpu);
    case timer_kind::drain_check:
      if (t.gen == v.gen)
        faults.drain_check(v);
      return;
    case timer_kind::gpu_online:
      if (t.vcpu < v.gpu_online.size())
        v.gpu_online[t.vcpu] = true;
      return;
    default: return;
  }
}

void shard::shut_down() {
  // Every session closes; waiters learn the VM is gone.
  for (auto& v : vms) {
    for (auto& c : v->vcpus) {
      auto fail = [](guest_action& a) {
        if (a.done) {
          a.out.aborted = true;
          a.done->set_value(a.out);
        }
      };
      if (c.has_current)
        fail(c.current);
      c.has_current = false;
      for (auto& a : c.queue)
        fail(a);
      c.queue.clear();
    }
    dm.end_session(*v);
    for (auto& w : v->unhook_waiters)
      w->set_value(rejected("host stopped"));
    v->unhook_waiters.clear();
  }
}

} // namespace kvmi::sim::detail
