#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

namespace kvmid {

std::string_view name(bus_kind k) {
  switch (k) {
    case bus_kind::lifecycle: return "lifecycle";
    case bus_kind::alert: return "alert";
    case bus_kind::event: return "event";
    case bus_kind::report: return "report";
  }
  return "unknown";
}

bool bus_filter::wants_events() const {
  return std::find(kinds.begin(), kinds.end(), bus_kind::event) != kinds.end();
}

bool bus_filter::matches(const bus_record& r) const {
  if (kinds.empty()) {
    if (r.kind == bus_kind::event)
      return false;
  } else if (std::find(kinds.begin(), kinds.end(), r.kind) == kinds.end()) {
    return false;
  }
  if (!vms.empty()
      && std::none_of(vms.begin(), vms.end(),
                      [&](const std::string& v) { return v == r.vm || v == r.vm_name; }))
    return false;
  if (!names.empty() && std::find(names.begin(), names.end(), r.name) == names.end())
    return false;
  return true;
}

size_t subscription::poll(std::vector<bus_record>& out, size_t max) {
  std::lock_guard lk(mu_);
  size_t n = 0;
  while (!q_.empty() && n < max) {
    out.push_back(std::move(q_.front()));
    q_.pop_front();
    ++n;
  }
  return n;
}

void subscription::set_notify(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  notify_ = std::move(fn);
}

bool subscription::offer(const bus_record& r, counter* global_drops) {
  if (!filter_.matches(r))
    return false;
  std::lock_guard lk(mu_);
  if (q_.size() >= capacity_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    if (global_drops)
      global_drops->inc();
    return false;
  }
  q_.push_back(r);
  return q_.size() == 1 && notify_;
}

subscription::~subscription() {
  if (bus_)
    bus_->unsubscribe(this);
}

event_bus::event_bus(counter* dropped_total, size_t replay)
  : dropped_total_(dropped_total), replay_(replay) {
  std::random_device rd;
  char b[20];
  std::snprintf(b, sizeof b, "%08x%08x", rd(), rd());
  boot_ = b;
}

std::shared_ptr<subscription> event_bus::subscribe(bus_filter f, size_t capacity,
                                                   std::optional<bus_cursor> from) {
  bool ev = f.wants_events();
  std::shared_ptr<subscription> s(new subscription(this, std::move(f), std::max<size_t>(1, capacity)));
  std::lock_guard lk(mu_);
  if (from) {
    // Under the bus lock: no record is published between the replay and
    // the subscription, so none is seen twice or missed.
    uint64_t after = from->boot == boot_ ? from->seq : 0;
    s->replay_gap_ = from->boot != boot_ || evicted_ > after;
    for (size_t i = 0; i < ring_.size(); ++i) {
      auto& r = ring_[(oldest_ + i) % ring_.size()];
      if (r.seq > after)
        s->offer(r, dropped_total_);
    }
  }
  subs_.push_back(s.get());
  if (ev)
    event_subs_.fetch_add(1, std::memory_order_relaxed);
  return s;
}

void event_bus::unsubscribe(subscription* s) {
  std::lock_guard lk(mu_);
  auto it = std::find(subs_.begin(), subs_.end(), s);
  if (it != subs_.end()) {
    subs_.erase(it);
    if (s->filter_.wants_events())
      event_subs_.fetch_sub(1, std::memory_order_relaxed);
  }
}

size_t event_bus::subscribers() const {
  std::lock_guard lk(mu_);
  return subs_.size();
}

bus_record& event_bus::claim(bus_kind k) {
  if (k == bus_kind::event || replay_ == 0)
    return scratch_;
  if (ring_.size() < replay_)
    return ring_.emplace_back();
  auto& slot = ring_[oldest_];
  evicted_ = std::max(evicted_, slot.seq);
  oldest_ = (oldest_ + 1) % ring_.size();
  return slot;
}

void event_bus::offer(bus_record& r, std::unique_lock<std::mutex>& lk) {
  if (r.seq == 0)
    r.seq = seq_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (r.time_ns == 0)
    r.time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  // Notify callbacks run outside the bus lock but while the subscription
  // cannot go away (its destructor takes the bus lock first).
  std::vector<std::function<void()>> to_notify;
  for (auto* s : subs_)
    if (s->offer(r, dropped_total_)) {
      std::lock_guard lk2(s->mu_);
      to_notify.push_back(s->notify_);
    }
  lk.unlock();
  for (auto& fn : to_notify)
    fn();
}

void event_bus::publish(bus_record r) {
  std::unique_lock lk(mu_);
  if (r.kind == bus_kind::event || replay_ == 0)
    return offer(r, lk); // nothing is kept: the subscribers copy r itself
  bus_record& slot = claim(r.kind);
  slot = r; // a copy into the slot's buffers; r is freed while still hot
  offer(slot, lk);
}

} // namespace kvmid
