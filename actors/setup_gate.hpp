// The cap on VMs setting themselves up at once: from GET_VERSION until
// every vCPU was configured in its first event. When a whole host attaches
// together (kvmid restarted under a thousand VMs), each set-up holds its
// vCPUs' events, their commands and the messages between them; a few VMs
// at a time keep that bounded, and the memory it used is reused by the
// next VMs instead of being spread between the actors that stay (which
// left about 0.3 KiB of every idle vCPU in heap holes). The rest wait
// silent: kvmid has sent them nothing, so they raise no events.
#pragma once

#include <caf/actor.hpp>

#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>

namespace kvmid {

class gauge;

class setup_gate : public std::enable_shared_from_this<setup_gate> {
public:
  // A VM's right to set up. Its end, however it comes (dropped by the VM,
  // with the VM, or in a message the VM never read), lets the next in.
  class place {
  public:
    explicit place(std::shared_ptr<setup_gate> g) : gate_(std::move(g)) {}
    place(const place&) = delete;
    place& operator=(const place&) = delete;
    ~place() { gate_->leave(); }

  private:
    std::shared_ptr<setup_gate> gate_;
  };
  using place_ptr = std::shared_ptr<place>;

  // max: set-ups at once. The gauges (may be null) show how many run and
  // how many wait.
  setup_gate(size_t max, gauge* running, gauge* waiting);
  setup_gate(const setup_gate&) = delete;
  setup_gate& operator=(const setup_gate&) = delete;

  // A place for the VM actor `vm` now, or null: the gate sends it
  // (setup_go_atom, place_ptr) when a set-up ends. Thread-safe, as is all.
  place_ptr enter(const caf::actor& vm);
  // A waiting VM went. (One let in meanwhile has its place in a message,
  // which gives it back when dropped.)
  void withdraw(const caf::actor_addr& vm);

  size_t running() const;
  size_t waiting() const;
  size_t max() const { return max_; }

private:
  void leave();
  void show();

  const size_t max_;
  gauge* running_gauge_;
  gauge* waiting_gauge_;
  mutable std::mutex mu_;
  size_t running_ = 0;
  std::deque<caf::actor> waiting_;
};

} // namespace kvmid
