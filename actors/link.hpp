// How a VM actor reaches its KVMI socket without knowing io_uring: the
// server implements kvmi_link for one connection. The routing table lets the
// ring thread hand an event straight to its vCPU actor (one hop).
#pragma once

#include "proto/codec.hpp"

#include <caf/actor.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid {

// Why a KVMI socket closed: the label of kvmid_vm_disconnects_total and the
// reason in its one log line.
enum class disconnect_reason : uint8_t {
  peer_closed,       // the device manager closed its end
  protocol_error,    // a frame kvmid cannot trust
  io_error,          // recv/send failed
  send_queue_full,   // the peer stopped reading
  unhook,            // UNHOOK event or an operator unhook
  shutdown,          // kvmid stopping
  actor_error,       // a VM or vCPU actor failed
  handshake_failed,  // the peer failed authentication or sent a bad message
  handshake_timeout, // a handshake step missed its deadline
  handshake_limit,   // max_handshakes were pending already
  not_admitted,      // an operator unhooked this VM and has not admitted it again
};

inline std::string_view name(disconnect_reason r) {
  switch (r) {
    case disconnect_reason::peer_closed: return "peer_closed";
    case disconnect_reason::protocol_error: return "protocol_error";
    case disconnect_reason::io_error: return "io_error";
    case disconnect_reason::send_queue_full: return "send_queue_full";
    case disconnect_reason::unhook: return "unhook";
    case disconnect_reason::shutdown: return "shutdown";
    case disconnect_reason::actor_error: return "actor_error";
    case disconnect_reason::handshake_failed: return "handshake_failed";
    case disconnect_reason::handshake_timeout: return "handshake_timeout";
    case disconnect_reason::handshake_limit: return "handshake_limit";
    case disconnect_reason::not_admitted: return "not_admitted";
  }
  return "?";
}

class kvmi_link {
public:
  virtual ~kvmi_link() = default;
  // Thread-safe, never blocks: one command or event reply per call, put in
  // the session's dialect below the actors (server/dialect).
  virtual void send(const kvmi::command_msg& m) = 0;
  virtual void send(const kvmi::event_reply_msg& m) = 0;
  // The dialect's single-stepping (dialect::encode_singlestep): whether the
  // host can single-step a vCPU, and turning it on or off, unanswered.
  virtual bool can_singlestep() const { return false; }
  virtual void singlestep(uint16_t /*vcpu*/, bool /*enable*/) {}
  // Thread-safe: closes the socket after what is queued. The first reason
  // given is the one logged and counted.
  virtual void close(disconnect_reason why, std::string detail = {}) = 0;
  virtual std::string peer() const = 0;
  void set_vm(caf::actor a) {
    std::lock_guard lk(mu_);
    vm_ = std::move(a);
  }
  caf::actor vm() const {
    std::lock_guard lk(mu_);
    return vm_;
  }
  void set_vcpu(uint16_t i, caf::actor a) {
    std::lock_guard lk(mu_);
    if (vcpus_.size() <= i)
      vcpus_.resize(size_t(i) + 1);
    vcpus_[i] = std::move(a);
    changed();
  }
  // The routes to the vCPU actors, leaving none.
  std::vector<caf::actor> take_vcpus() {
    std::lock_guard lk(mu_);
    changed();
    return std::move(vcpus_);
  }
  void clear_routes() {
    std::lock_guard lk(mu_);
    vcpus_.clear();
    vm_ = caf::actor{};
    changed();
  }

  // The socket's own copy of the routes, for its one reading thread: an
  // event finds its vCPU actor without the lock or a reference count, and
  // the copy is refreshed only after the routes changed (attach, hot-plug,
  // unhook), entry by entry.
  struct route_cache {
    std::vector<caf::actor> vcpus;
    uint64_t gen = 0;
  };
  // The route to vCPU i, or nullptr (none: the VM actor takes the event).
  const caf::actor* vcpu(route_cache& c, uint16_t i) const {
    if (gen_.load(std::memory_order_acquire) != c.gen)
      refresh(c);
    return i < c.vcpus.size() && c.vcpus[i] ? &c.vcpus[i] : nullptr;
  }

private:
  void changed() { gen_.store(gen_.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
  void refresh(route_cache& c) const {
    std::lock_guard lk(mu_);
    c.gen = gen_.load(std::memory_order_relaxed);
    c.vcpus.resize(vcpus_.size());
    for (size_t i = 0; i < vcpus_.size(); ++i)
      if (c.vcpus[i] != vcpus_[i])
        c.vcpus[i] = vcpus_[i];
  }

  mutable std::mutex mu_;
  caf::actor vm_;
  std::vector<caf::actor> vcpus_;
  std::atomic<uint64_t> gen_{1}; // changed under mu_; a new cache (gen 0) refreshes
};

} // namespace kvmid
