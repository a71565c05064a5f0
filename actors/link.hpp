// How a VM actor reaches its KVMI socket without knowing io_uring: the
// server implements kvmi_link for one connection. The routing table lets the
// ring thread hand an event straight to its vCPU actor (one hop).
#pragma once

#include <caf/actor.hpp>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace kvmid {

class kvmi_link {
public:
  virtual ~kvmi_link() = default;
  // Thread-safe, never blocks: one message (header+payload) per call.
  virtual void send(std::vector<uint8_t>&& bytes) = 0;
  // Thread-safe: closes the socket after what is queued.
  virtual void close() = 0;
  virtual std::string peer() const = 0;
  // A recycled send buffer (capacity kept) so event replies allocate
  // nothing; hand it back through send().
  virtual std::vector<uint8_t> take_buffer() { return {}; }

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
  }
  caf::actor vcpu(uint16_t i) const {
    std::lock_guard lk(mu_);
    return i < vcpus_.size() ? vcpus_[i] : caf::actor{};
  }
  // The routes to the vCPU actors, leaving none.
  std::vector<caf::actor> take_vcpus() {
    std::lock_guard lk(mu_);
    return std::move(vcpus_);
  }
  void clear_routes() {
    std::lock_guard lk(mu_);
    vcpus_.clear();
    vm_ = caf::actor{};
  }

private:
  mutable std::mutex mu_;
  caf::actor vm_;
  std::vector<caf::actor> vcpus_;
};

} // namespace kvmid
