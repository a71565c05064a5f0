#include "server/kvmi_rings.hpp"

#include <algorithm>
#include <string>

namespace kvmid {

namespace {
int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}
} // namespace

size_t default_kvmi_rings(unsigned cores) { return std::clamp<size_t>(cores / 2, 1, 8); }

kvmi_rings::kvmi_rings(net::reactor& main, size_t count, net::reactor_options extra)
  : beats_(extra.heartbeat.count() > 0) {
  auto first = std::make_unique<ring>();
  first->r = &main;
  rings_.push_back(std::move(first));
  for (size_t i = 1; i < std::max<size_t>(count, 1); ++i) {
    auto x = std::make_unique<ring>();
    auto o = extra;
    o.thread_name = "kvmid-ring" + std::to_string(i);
    o.on_heartbeat = [b = &x->beat_ns] { b->store(steady_ns(), std::memory_order_relaxed); };
    x->own = std::make_unique<net::reactor>(std::move(o));
    x->r = x->own.get();
    rings_.push_back(std::move(x));
  }
}

kvmi_rings::~kvmi_rings() { stop(); }

int kvmi_rings::add_listener(const net::listen_spec& spec, core& c, kvmi_listener_options o) {
  // One cap on pending handshakes for the listener, whichever ring serves.
  if (!o.gate)
    o.gate = std::make_shared<handshake_gate>(o.max_handshakes);
  size_t li = rings_[0]->make.size();
  for (auto& x : rings_)
    x->make.push_back(kvmi_handler_factory(*x->r, c, o));
  net::handoff_fn handoff;
  if (rings_.size() > 1)
    handoff = [this, li](int fd, const std::string& peer) { return place(fd, peer, li); };
  return rings_[0]->r->add_listener(spec, rings_[0]->make[li], std::move(handoff));
}

// The main ring's thread, for each accepted socket.
bool kvmi_rings::place(int fd, const std::string& peer, size_t listener) {
  size_t best = 0;
  for (size_t i = 1; i < rings_.size(); ++i)
    if (rings_[i]->r->connections() < rings_[best]->r->connections())
      best = i;
  if (best == 0)
    return false; // served where it was accepted
  auto& x = *rings_[best];
  x.r->adopt(fd, peer, x.make[listener]);
  return true;
}

void kvmi_rings::start() {
  auto now = steady_ns();
  for (size_t i = 1; i < rings_.size(); ++i) {
    rings_[i]->beat_ns.store(now, std::memory_order_relaxed);
    rings_[i]->r->start();
  }
}

void kvmi_rings::stop() {
  for (size_t i = 1; i < rings_.size(); ++i)
    rings_[i]->r->stop();
}

size_t kvmi_rings::connections(size_t i) const {
  return i < rings_.size() ? rings_[i]->r->connections() : 0;
}

size_t kvmi_rings::queued_total() const {
  size_t n = 0;
  for (auto& x : rings_)
    n += x->r->queued_total();
  return n;
}

bool kvmi_rings::alive(std::chrono::milliseconds within) const {
  if (!beats_)
    return true; // no heartbeat asked of the rings: nothing to judge by
  auto now = steady_ns();
  for (size_t i = 1; i < rings_.size(); ++i)
    if (now - rings_[i]->beat_ns.load(std::memory_order_relaxed)
        > std::chrono::duration_cast<std::chrono::nanoseconds>(within).count())
      return false;
  return true;
}

} // namespace kvmid
