// Internals shared by the core's actors (not part of the contract).
#pragma once

#include "actors/alert_kinds.hpp"
#include "actors/core.hpp"
#include "actors/link.hpp"
#include "actors/messages.hpp"
#include "actors/protocol_fault.hpp"
#include "actors/setup_gate.hpp"

#include <caf/all.hpp>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>

namespace kvmid {

// Hot-path metrics resolved once: atomic increments only.
struct core_metrics {
  gauge* vms = nullptr;
  gauge* vcpus = nullptr;
  std::array<counter*, kvmi::num_events> events{};
  histogram* reply_latency = nullptr;
  histogram* hold = nullptr;
  gauge* send_queue = nullptr;
  counter* bus_dropped = nullptr;
  metrics_registry* reg = nullptr;
  // The alert families' counters, each looked up at its first alert: the
  // registry's lookup (strings, a lock, a map) is not paid per alert.
  struct alert_family {
    std::string_view rule;
    std::atomic<counter*> c{nullptr};
  };
  std::array<alert_family, alert_kind::all.size()> alert_families{
    {{alert_kind::all[0]}, {alert_kind::all[1]}, {alert_kind::all[2]}}};
  counter& alert(std::string_view rule) {
    for (auto& f : alert_families)
      if (f.rule == rule) {
        auto* c = f.c.load(std::memory_order_acquire);
        if (!c) {
          c = &alert_counter(rule);
          f.c.store(c, std::memory_order_release);
        }
        return *c;
      }
    return alert_counter(rule);
  }
  counter& alert_counter(std::string_view rule) {
    return reg->get_counter("kvmid_alerts_total", "Policy violations (alerts) by rule",
                            {{"rule", std::string(rule)}});
  }
  // Each command's "ok" counter, looked up at its first success: every
  // vCPU of an attaching VM takes several commands, and the registry's
  // lookup builds its label strings each time.
  std::array<std::atomic<counter*>, kvmi::num_messages> command_ok{};
  counter& command(kvmi::msg_id id, std::string_view result) {
    auto i = static_cast<size_t>(id);
    bool ok = result == "ok" && i < command_ok.size();
    if (ok)
      if (auto* c = command_ok[i].load(std::memory_order_acquire))
        return *c;
    auto& c = reg->get_counter("kvmid_commands_total", "KVMI commands sent, by command and result",
                               {{"command", std::string(kvmi::name(id))},
                                {"result", std::string(result)}});
    if (ok)
      command_ok[i].store(&c, std::memory_order_release);
    return c;
  }
  counter& protocol_error(protocol_error_reason reason) {
    return reg->get_counter("kvmid_protocol_errors_total",
                            "KVMI sessions closed for a protocol error, by reason",
                            {{"reason", std::string(name(reason))}});
  }
  counter& disconnect(disconnect_reason why) {
    return reg->get_counter("kvmid_vm_disconnects_total",
                            "KVMI sockets closed, by reason (handshakes included)",
                            {{"reason", std::string(name(why))}});
  }
  counter& handshake_failure(std::string_view reason) {
    return reg->get_counter("kvmid_handshake_failures_total",
                            "Failed or timed-out handshakes, by reason",
                            {{"reason", std::string(reason)}});
  }
};

struct core::impl {
  core* self = nullptr;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor registry;
  core_metrics m;
  std::shared_ptr<setup_gate> setups; // its places may outlive the core's end
  std::mutex policy_mu;
  std::shared_ptr<const policy_set> policies;

  std::shared_ptr<const policy_set> current_policies() {
    std::lock_guard lk(policy_mu);
    return policies;
  }
};

// What the server hands over when a handshake succeeded.
struct session_params {
  kvmi::hs::guest_info guest;
  link_ptr link;
  std::string peer;
  std::string protocol = "v5"; // the listener's KVMI dialect, for the API
};

// Spawns the VM actor for one KVMI session and installs it in the link's
// routing table before returning, so the ring can route at once.
caf::actor spawn_vm(core& c, session_params p);

caf::actor spawn_registry(core& c);

int64_t now_ns(); // steady clock

} // namespace kvmid
