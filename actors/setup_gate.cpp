#include "actors/setup_gate.hpp"

#include "actors/messages.hpp"
#include "actors/metrics.hpp"

#include <caf/send.hpp>

namespace kvmid {

setup_gate::setup_gate(size_t max, gauge* running, gauge* waiting)
  : max_(max < 1 ? 1 : max), running_gauge_(running), waiting_gauge_(waiting) {}

setup_gate::place_ptr setup_gate::enter(const caf::actor& vm) {
  {
    std::lock_guard lk(mu_);
    if (running_ >= max_) {
      waiting_.push_back(vm);
      show();
      return nullptr;
    }
    ++running_;
    show();
  }
  return std::make_shared<place>(shared_from_this());
}

void setup_gate::withdraw(const caf::actor_addr& vm) {
  std::lock_guard lk(mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if (it->address() == vm) {
      waiting_.erase(it);
      show();
      return;
    }
}

void setup_gate::leave() {
  caf::actor next;
  {
    std::lock_guard lk(mu_);
    if (waiting_.empty()) {
      --running_;
    } else { // the place passes on: running_ stays
      next = std::move(waiting_.front());
      waiting_.pop_front();
    }
    show();
  }
  // Outside the lock: a VM gone meanwhile drops the message, and with it
  // the place, which lets the next one in.
  if (next)
    caf::anon_send(next, setup_go_atom::value, std::make_shared<place>(shared_from_this()));
}

size_t setup_gate::running() const {
  std::lock_guard lk(mu_);
  return running_;
}

size_t setup_gate::waiting() const {
  std::lock_guard lk(mu_);
  return waiting_.size();
}

void setup_gate::show() {
  if (running_gauge_)
    running_gauge_->set(int64_t(running_));
  if (waiting_gauge_)
    waiting_gauge_->set(int64_t(waiting_.size()));
}

} // namespace kvmid
