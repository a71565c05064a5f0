// The running core, as main() builds it and hands it to the control plane
// (which builds on it: change it additively).
//   core c(opts);                        // actor system, registry, bus, metrics
//   c.api().list_vms(cb);                // operator requests (control_api.hpp)
//   auto sub = c.bus().subscribe(f, n);  // event stream (event_bus.hpp)
//   c.metrics().snapshot();              // Prometheus (metrics.hpp)
#pragma once

#include "actors/bp_store.hpp"
#include "actors/control_api.hpp"
#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"
#include "actors/policy.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <optional>
#include <string>
#include <vector>

namespace caf {
class actor_system;
class actor_system_config;
class actor;
} // namespace caf

namespace kvmid {

struct core_options {
  size_t worker_threads = 2;
  policy_set policies;                  // initial policies
  // reload_policies() calls this; nullopt + err fills api_errc::invalid.
  std::function<std::optional<policy_set>(std::string& err)> reload;
  std::chrono::milliseconds command_timeout{5000}; // per KVMI command
  size_t max_setups = 8; // VMs setting up at once (setup_gate.hpp)
  // Where planted INT3s are recorded (bp_store.hpp); empty: memory only.
  std::string state_dir;
  planted_map planted; // as loaded from state_dir at start-up
};

// What unhook_all() did for one VM.
struct unhook_result {
  std::string uuid, name;
  bool finished = false;             // the socket closed before the deadline
  std::vector<std::string> problems; // what was left in the guest, and why
  bool ok() const { return finished && problems.empty(); }
};

// The actor scheduler as kvmid runs it (also used by bench/ to measure the
// cost of one hop to an actor and back with the same settings).
void configure_scheduler(caf::actor_system_config& cfg, size_t workers);

class core {
public:
  explicit core(core_options opts);
  ~core(); // shuts the actor system down (after every VM actor is gone)

  caf::actor_system& system();
  const caf::actor& registry() const;
  metrics_registry& metrics() { return *metrics_; }
  event_bus& bus() { return *bus_; }
  control_api& api() { return api_; }
  const core_options& options() const { return opts_; }

  // Unhooks every connected VM (and any that connects meanwhile): restores
  // the bytes under kvmid's INT3s, gives every page kvmid restricted rwx
  // back, answers every vCPU waiting in an event, closes the socket. Blocks
  // until each VM finished or the deadline passed; one result per VM. Not
  // from an actor's thread.
  std::vector<unhook_result> unhook_all(std::chrono::steady_clock::time_point deadline);

  // A VM an operator unhooked stays unhooked: its device manager's next
  // handshakes are refused until admit(). Thread-safe (the ring thread asks).
  void hold_off(const std::string& vm);
  bool admit(const std::string& vm); // false: it was not held off
  bool admitted(const std::string& vm) const;

  struct impl;
  impl& internals() { return *impl_; }

private:
  core_options opts_;
  std::unique_ptr<metrics_registry> metrics_;
  std::unique_ptr<event_bus> bus_;
  std::unique_ptr<impl> impl_;
  control_api api_;
  mutable std::mutex held_off_mu_;
  std::set<std::string> held_off_;
};

} // namespace kvmid
