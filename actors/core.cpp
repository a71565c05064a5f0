#include "actors/core_impl.hpp"

#include <chrono>

namespace kvmid {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

void configure_scheduler(caf::actor_system_config& cfg, size_t workers) {
  cfg.set("scheduler.max-threads", workers);
  cfg.set("logger.verbosity", caf::atom("quiet"));
  // CAF's idle workers poll their queue and steal (aggressively, then with
  // 50 us sleeps between 500 polls) before they wait on a condition variable
  // that an enqueue signals. The polling takes the cores the io_uring thread
  // and the peers need: attaching 100,000 vCPUs on 2 cores took 3 s in some
  // runs and 8 to 63 s in others. No polling at all: an idle worker waits on
  // its condition variable at once, woken by the enqueue, and looks for work
  // to steal every 10 ms (CAF's default). Every KVMI event is decided on the
  // ring thread (ring_unit.hpp), so no event waits for a worker; a 1 ms
  // interval cost an idle kvmid about 2,000 wake-ups a second.
  cfg.set("work-stealing.aggressive-poll-attempts", size_t{0});
  cfg.set("work-stealing.moderate-poll-attempts", size_t{0});
  cfg.set("work-stealing.relaxed-sleep-duration", caf::timespan{std::chrono::milliseconds(10)});
}

core::core(core_options opts)
  : opts_(std::move(opts)), metrics_(std::make_unique<metrics_registry>()),
    impl_(std::make_unique<impl>()), api_(*this) {
  auto& m = impl_->m;
  m.reg = metrics_.get();
  m.vms = &metrics_->get_gauge("kvmid_vms", "Connected VMs (KVMI sessions)");
  m.vcpus = &metrics_->get_gauge("kvmid_vcpus", "vCPUs of connected VMs");
  for (uint32_t e = 0; e < kvmi::num_events; ++e)
    m.events[e] = &metrics_->get_counter(
      "kvmid_events_total", "KVMI events received, by kind",
      {{"kind", std::string(kvmi::name(static_cast<kvmi::event_id>(e)))}});
  m.reply_latency = &metrics_->get_histogram(
    "kvmid_event_reply_seconds", "Time from an event's arrival to its reply being queued",
    reply_latency_bounds());
  // Apart, so a latency alert does not fire whenever an operator pauses a VM.
  m.hold = &metrics_->get_histogram(
    "kvmid_vcpu_hold_seconds", "Time an operator pause held a vCPU in its event, until resume",
    hold_bounds());
  m.send_queue = &metrics_->get_gauge("kvmid_send_queue_depth",
                                      "Messages queued for sending on all KVMI sockets");
  m.bus_dropped = &metrics_->get_counter(
    "kvmid_bus_dropped_total", "Event-bus records dropped because a subscriber was slow");
  bus_ = std::make_unique<event_bus>(m.bus_dropped);
  // Always exposed, so dashboards and alerts see them before the first one.
  for (auto r : all_protocol_error_reasons)
    m.protocol_error(r);
  metrics_->declare("kvmid_handshake_failures_total", "Failed or timed-out handshakes, by reason",
                    metric_type::counter);
  metrics_->declare("kvmid_vm_disconnects_total",
                    "KVMI sockets closed, by reason (handshakes included)", metric_type::counter);
  impl_->setups = std::make_shared<setup_gate>(
    opts_.max_setups,
    &metrics_->get_gauge("kvmid_vm_setups", "VMs setting up (running) or waiting to (waiting)",
                         {{"state", "running"}}),
    &metrics_->get_gauge("kvmid_vm_setups", "VMs setting up (running) or waiting to (waiting)",
                         {{"state", "waiting"}}));
  impl_->self = this;
  impl_->policies = std::make_shared<const policy_set>(opts_.policies);
  configure_scheduler(impl_->cfg, opts_.worker_threads);
  impl_->sys = std::make_unique<caf::actor_system>(impl_->cfg);
  impl_->registry = spawn_registry(*this);
}

void core::hold_off(const std::string& vm) {
  std::lock_guard lk(held_off_mu_);
  held_off_.insert(vm);
}
bool core::admit(const std::string& vm) {
  std::lock_guard lk(held_off_mu_);
  return held_off_.erase(vm) > 0;
}
bool core::admitted(const std::string& vm) const {
  std::lock_guard lk(held_off_mu_);
  return held_off_.count(vm) == 0;
}

core::~core() {
  if (impl_->sys) {
    caf::anon_send_exit(impl_->registry, caf::exit_reason::user_shutdown);
    impl_->registry = caf::actor{};
    impl_->sys.reset(); // waits for every actor
  }
}

std::vector<unhook_result> core::unhook_all(std::chrono::steady_clock::time_point deadline) {
  using namespace std::chrono;
  int64_t at = duration_cast<nanoseconds>(deadline.time_since_epoch()).count();
  auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
  std::vector<unhook_result> out;
  caf::scoped_actor self{system()};
  // The registry answers by the deadline; the second is for its answer's way back.
  auto timeout = std::max(left, milliseconds(0)) + seconds(1);
  self->request(impl_->registry, timeout, unhook_all_atom::value, at)
    .receive([&](std::vector<unhook_result>& r) { out = std::move(r); },
             [&](caf::error& e) {
               unhook_result r;
               r.problems.push_back("the registry did not answer: " + system().render(e));
               out.push_back(std::move(r));
             });
  return out;
}

caf::actor_system& core::system() { return *impl_->sys; }
const caf::actor& core::registry() const { return impl_->registry; }

} // namespace kvmid
