// The metrics registry (the control plane's exporter builds on it: change
// it additively). The core registers and updates these; the exporter renders a
// snapshot() as Prometheus text. Lookup (counter()/gauge()/histogram())
// takes a mutex and is meant for set-up: hot paths keep the returned
// reference (stable for the registry's lifetime) and only do relaxed atomic
// increments.
//
// Families the core maintains (names final; labels as listed):
//   kvmid_vms                       gauge
//   kvmid_vcpus                     gauge
//   kvmid_events_total              counter {kind}
//   kvmid_alerts_total              counter {rule}
//   kvmid_commands_total            counter {command, result}   result: ok | E<code> | timeout
//   kvmid_protocol_errors_total     counter {reason}   (protocol_fault.hpp, all at 0 from start)
//   kvmid_handshake_failures_total  counter {reason}   (server/dialect/handshake_failure.hpp)
//   kvmid_vm_disconnects_total      counter {reason}   (link.hpp disconnect_reason)
//   kvmid_handshakes_pending        gauge (KVMI connections still in their handshake)
//   kvmid_vm_setups                 gauge {state}   running | waiting (setup_gate.hpp)
//   kvmid_accept_errors_total       counter {errno}    (kvmid's main: failed accepts)
//   kvmid_event_reply_seconds       histogram (event received -> reply queued, an
//                                   operator's hold left out)
//   kvmid_vcpu_hold_seconds         histogram (an operator pause held a vCPU in its event)
//   kvmid_send_queue_depth          gauge (messages queued on all KVMI sockets)
//   kvmid_bus_dropped_total         counter (event-bus messages dropped by slow subscribers)
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace kvmid {

using labels = std::vector<std::pair<std::string, std::string>>; // sorted by key on registration

class counter {
public:
  void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> v_{0};
};

class gauge {
public:
  void set(int64_t x) { v_.store(x, std::memory_order_relaxed); }
  void add(int64_t d) { v_.fetch_add(d, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

private:
  std::atomic<int64_t> v_{0};
};

// Fixed upper bounds (seconds); observe() is lock-free.
class histogram {
public:
  explicit histogram(std::vector<double> bounds);
  void observe(double seconds);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative counts per bound, then the +Inf count; and the sum.
  std::vector<uint64_t> cumulative() const;
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_; // bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0}; // sum in nanoseconds
};

enum class metric_type : uint8_t { counter, gauge, histogram };

struct metric_sample {
  labels lbls;
  double value = 0;                // counter / gauge
  std::vector<double> bounds;      // histogram
  std::vector<uint64_t> cumulative; // histogram, bounds.size()+1 entries (last = +Inf)
  uint64_t count = 0;              // histogram
  double sum = 0;                  // histogram
};

struct metric_family {
  std::string name, help;
  metric_type type = metric_type::counter;
  std::vector<metric_sample> samples;
};

class metrics_registry {
public:
  counter& get_counter(const std::string& name, const std::string& help, labels l = {});
  gauge& get_gauge(const std::string& name, const std::string& help, labels l = {});
  histogram& get_histogram(const std::string& name, const std::string& help,
                           std::vector<double> bounds, labels l = {});
  // A family exposed (HELP/TYPE) before its first labelled series exists.
  void declare(const std::string& name, const std::string& help, metric_type t);
  // A consistent-enough copy for rendering, families sorted by name.
  std::vector<metric_family> snapshot() const;
  // Prometheus text exposition format 0.0.4 of snapshot() (D may use its own).
  std::string render_prometheus() const;

private:
  struct series {
    labels lbls;
    std::unique_ptr<counter> c;
    std::unique_ptr<gauge> g;
    std::unique_ptr<histogram> h;
  };
  struct family {
    std::string help;
    metric_type type;
    std::map<labels, series> by_labels;
  };
  series& get(const std::string& name, const std::string& help, metric_type t, labels l);

  mutable std::mutex mu_;
  std::map<std::string, family> families_;
};

// Latency buckets for event replies: 10 us .. 1 s.
std::vector<double> reply_latency_bounds();
// Buckets for operator holds: 1 ms .. 1 h.
std::vector<double> hold_bounds();

} // namespace kvmid
