// The internal event bus (the control plane's stream builds on it: change
// it additively). The core publishes lifecycle records (VM connected,
// disconnected, unhooked), alerts (every policy violation) and, when some
// subscriber asks for them, every KVMI event. publish() never blocks a vCPU:
// each subscription has a bounded queue; when it is full the record is
// dropped and the subscription's drop counter (and the global
// kvmid_bus_dropped_total) go up. The bus keeps the last records other than
// raw KVMI events in a bounded replay ring, so a subscriber that reconnects
// with the last id it saw (SSE Last-Event-ID) loses no alert.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kvmid {

class counter;

enum class bus_kind : uint8_t {
  lifecycle, // vm-connected, vm-disconnected, vm-unhooked, handshake-failed, protocol-error
  alert,     // a policy violation: page-protection, msr-protection, cr-pin, ...
  event,     // a KVMI event as it arrived (name = event kind: "pf", "msr", ...)
  report,    // a guest agent's hypercall report ("agent-report"), a breakpoint hit
};
std::string_view name(bus_kind k);

struct bus_record {
  uint64_t seq = 0;      // bus-wide, increasing
  int64_t time_ns = 0;   // CLOCK_REALTIME
  bus_kind kind = bus_kind::event;
  std::string name;      // "vm-connected", "msr-protection", "pf", ...
  std::string vm;        // uuid, "" when not about one VM
  std::string vm_name;
  int32_t vcpu = -1;
  std::string message;   // one human line
  std::vector<std::pair<std::string, std::string>> fields; // details (gpa, msr, action, ...)
};

struct bus_filter {
  std::vector<std::string> vms;     // uuids or VM names; empty = all
  std::vector<bus_kind> kinds;      // empty = lifecycle + alert + report (not raw events)
  std::vector<std::string> names;   // record names; empty = all
  bool matches(const bus_record& r) const;
  bool wants_events() const;
};

// Where a reconnecting subscriber left off: the bus it saw (each kvmid run
// has its own boot id) and the last seq it got.
struct bus_cursor {
  std::string boot;
  uint64_t seq = 0;
};

class event_bus;

class subscription {
public:
  // Moves up to `max` queued records into out (appends). Thread-safe.
  size_t poll(std::vector<bus_record>& out, size_t max = SIZE_MAX);
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  size_t capacity() const { return capacity_; }
  // A resumed subscription whose cursor is older than the replay ring
  // reaches back (or from another kvmid run): records may be missing
  // before the replayed ones.
  bool replay_gap() const { return replay_gap_; }
  // Called (from the publishing thread, outside the bus lock) when the queue
  // goes from empty to non-empty; keep it cheap (e.g. reactor::post).
  void set_notify(std::function<void()> fn);
  ~subscription(); // unsubscribes

private:
  friend class event_bus;
  subscription(event_bus* bus, bus_filter f, size_t capacity)
    : bus_(bus), filter_(std::move(f)), capacity_(capacity) {}
  bool offer(const bus_record& r, counter* global_drops); // true: notify needed

  event_bus* bus_;
  bus_filter filter_;
  size_t capacity_;
  std::mutex mu_;
  std::deque<bus_record> q_;
  std::function<void()> notify_;
  std::atomic<uint64_t> dropped_{0};
  bool replay_gap_ = false;
};

class event_bus {
public:
  static constexpr size_t default_replay = 1024;
  explicit event_bus(counter* dropped_total = nullptr, size_t replay = default_replay);
  // The bus must outlive its subscriptions. With a cursor, the queue starts
  // with the ring's matching records after it (a cursor from another boot:
  // the whole ring).
  std::shared_ptr<subscription> subscribe(bus_filter f, size_t capacity = 1024,
                                          std::optional<bus_cursor> from = std::nullopt);
  void publish(bus_record r); // fills seq and time_ns when 0
  // Publishes the record fill(r) writes. Raw events aside, r is the replay
  // ring's next slot, filled in place under the bus lock: a full ring then
  // publishes without allocating, its strings keeping their buffers. fill
  // sets every field but seq and time_ns, which the bus sets; keep it short.
  template <class Fill>
  void publish_filled(bus_kind k, Fill&& fill) {
    std::unique_lock lk(mu_);
    bus_record& r = claim(k);
    fill(r);
    r.seq = 0;
    r.time_ns = 0;
    offer(r, lk);
  }
  // Cheap check before building a raw-event record.
  bool wants_events() const { return event_subs_.load(std::memory_order_relaxed) > 0; }
  size_t subscribers() const;
  uint64_t published() const { return seq_.load(std::memory_order_relaxed); }
  const std::string& boot() const { return boot_; }

private:
  friend class subscription;
  void unsubscribe(subscription* s);
  // Under mu_: where the next record of kind k goes.
  bus_record& claim(bus_kind k);
  // Under lk: stamps r (seq, time when 0), hands it to the subscribers,
  // unlocks and calls the notifications that became due.
  void offer(bus_record& r, std::unique_lock<std::mutex>& lk);

  counter* dropped_total_;
  size_t replay_;
  std::string boot_;
  mutable std::mutex mu_;
  // The replay ring, guarded by mu_; no raw events. Once full, the oldest
  // slot is overwritten by copy: its strings keep their buffers, so a full
  // ring publishes without freeing a record's worth of cold memory.
  std::vector<bus_record> ring_;
  size_t oldest_ = 0;    // index of the oldest record once the ring is full
  uint64_t evicted_ = 0; // highest seq that left the ring
  bus_record scratch_;   // guarded by mu_: a raw event, or any record without a ring
  std::vector<subscription*> subs_;
  std::atomic<uint64_t> seq_{0};
  std::atomic<int> event_subs_{0};
};

} // namespace kvmid
