#include "kernel-patches/sim/report.hpp"

#include "kernel-patches/sim/host_impl.hpp"
#include "proto/v7/ids.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace kvmi::sim {

namespace detail {

latency summarize(const histogram& lat) {
  latency l;
  l.count = lat.n;
  l.p50_us = double(lat.quantile(0.5)) / 1e3;
  l.p99_us = double(lat.quantile(0.99)) / 1e3;
  l.p999_us = double(lat.quantile(0.999)) / 1e3;
  l.max_us = double(lat.max) / 1e3;
  l.max_ns = lat.max;
  uint64_t seen = 0;
  for (size_t i = 0; i < lat.b.size() && lat.n; ++i)
    if (lat.b[i]) {
      seen += lat.b[i];
      double upper = double(std::min(lat.max, histogram::lower(i + 1))) / 1e3;
      l.cdf.emplace_back(upper, double(seen) / double(lat.n));
      l.buckets.emplace_back(uint32_t(i), lat.b[i]);
    }
  return l;
}

counters to_counters(const vm_counts& c, protocol dialect) {
  counters r;
  std::copy_n(c.events.begin(), num_events, r.events.begin());
  for (size_t i = num_events; i < c.events.size(); ++i)
    if (c.events[i])
      r.v7_events[std::string(v7::name(static_cast<v7::event_id>(i)))] = c.events[i];
  r.replies = c.replies;
  for (size_t i = 0; i < c.commands.size(); ++i)
    if (c.commands[i])
      r.commands[std::string(dialect == protocol::v7 ? v7::name(static_cast<v7::msg_id>(i))
                                                     : name(static_cast<msg_id>(i)))] +=
        c.commands[i];
  for (size_t i = 0; i < c.errors.size(); ++i)
    if (c.errors[i])
      r.errors[std::string(kvm_error_name(i == 63 ? -kvm_enosys : -static_cast<int32_t>(i)))] +=
        c.errors[i];
  for (size_t i = 0; i < c.violations.size(); ++i)
    if (c.violations[i])
      r.violations[std::string(name(static_cast<violation>(i)))] += c.violations[i];
  r.breakpoint_hits = c.breakpoint_hits;
  r.pf_allowed = c.pf_allowed;
  r.pf_retried = c.pf_retried;
  r.pf_crashed = c.pf_crashed;
  r.pf_unreported = c.pf_unreported;
  r.hmis = c.hmis;
  r.commands_on_running_vcpus = c.commands_on_running_vcpus;
  r.sessions = c.sessions;
  r.reconnects = c.reconnects;
  r.handshake_failures = c.handshake_failures;
  r.connect_failures = c.connect_failures;
  r.unanswered_at_close = c.unanswered_at_close;
  r.restricted_at_close = c.restricted_at_close;
  r.int3_at_close = c.int3_at_close;
  r.aborted_by_tool = c.aborted_by_tool;
  r.faults_injected = c.faults_injected;
  return r;
}

namespace {
bool held_kind(event_id e) { return e == event_id::pause_vcpu || e == event_id::create_vcpu; }

} // namespace

vcpu_view view_of(const vcpu& c, time_point now) {
  vcpu_view w;
  if (c.waiting)
    w.wait_ms = std::chrono::duration<double, std::milli>(now - c.ev_sent).count();
  w.state = !c.waiting ? vcpu_state::running
            : c.ev == event_id::pause_vcpu ? vcpu_state::paused
                                           : vcpu_state::in_event;
  if (c.waiting)
    w.event = c.ev;
  w.pending_pauses = c.pauses;
  w.enabled_events = c.events;
  w.regs = c.regs;
  w.sregs = c.sregs;
  w.xcr0 = c.xcr0;
  w.initialised = c.initialised;
  return w;
}

std::string progress_line(const report& r) {
  uint64_t ev = 0;
  for (auto x : r.total.events)
    ev += x;
  for (auto& [k, n] : r.total.v7_events)
    ev += n;
  char line[512];
  std::snprintf(line, sizeof line,
                "kvmi-sim: %.1fs sessions=%llu events=%llu replies=%llu p99=%.1fus "
                "violations=%llu hmis=%llu reconnects=%llu handshake_failures=%llu "
                "connect_failures=%llu\n",
                r.seconds, (unsigned long long)r.total.sessions, (unsigned long long)ev,
                (unsigned long long)(r.total.replies[0] + r.total.replies[1] + r.total.replies[2]),
                r.event_latency.p99_us, (unsigned long long)r.total.violation_count(),
                (unsigned long long)r.total.hmis, (unsigned long long)r.total.reconnects,
                (unsigned long long)r.total.handshake_failures,
                (unsigned long long)r.total.connect_failures);
  return line;
}

} // namespace detail

using namespace detail;

report host::make_report() const {
  report r;
  r.vms = p_->o.vms;
  r.seconds = p_->started
                ? std::chrono::duration<double>(clock::now() - p_->t0).count()
                : 0;
  histogram lat;
  vm_counts sum;
  for (auto& s : p_->shards) {
    std::lock_guard<std::mutex> l(s->mu);
    lat.merge(s->lat);
    auto now = clock::now();
    for (auto& v : s->vms) {
      r.vcpus += static_cast<uint32_t>(v->vcpus.size());
      if (v->connect_errno && r.connect_error.empty())
        r.connect_error = std::strerror(v->connect_errno);
      sum += v->c;
      for (auto& c : v->vcpus) {
        if (!c.waiting)
          continue;
        ++r.waiting;
        if (held_kind(c.ev))
          ++r.waiting_held;
        else
          r.oldest_pending_ms = std::max(
            r.oldest_pending_ms, std::chrono::duration<double, std::milli>(now - c.ev_sent).count());
      }
    }
  }
  r.total = to_counters(sum, p_->o.dialect);
  r.event_latency = summarize(lat);
  return r;
}

latency pooled(const std::vector<latency>& runs) {
  detail::histogram all;
  for (auto& r : runs) {
    for (auto [i, n] : r.buckets)
      if (i < all.b.size()) {
        all.b[i] += n;
        all.n += n;
      }
    all.max = std::max(all.max, r.max_ns);
  }
  return summarize(all);
}

nlohmann::json to_json(const report& r) {
  using nlohmann::json;
  json ev = json::object(), rep = json::object();
  uint64_t ev_total = 0;
  for (size_t i = 0; i < r.total.events.size(); ++i) {
    ev[std::string(name(static_cast<event_id>(i)))] = r.total.events[i];
    ev_total += r.total.events[i];
  }
  for (auto& [k, n] : r.total.v7_events) { // v7's own, once sent
    ev[k] = n;
    ev_total += n;
  }
  for (size_t i = 0; i < r.total.replies.size(); ++i)
    rep[std::string(name(static_cast<action>(i)))] = r.total.replies[i];
  auto& t = r.total;
  return json{
    {"ok", r.ok()},
    {"vms", r.vms},
    {"vcpus", r.vcpus},
    {"seconds", r.seconds},
    {"events", ev},
    {"events_total", ev_total},
    {"replies", rep},
    {"replies_total", t.replies[0] + t.replies[1] + t.replies[2]},
    {"commands", t.commands},
    {"commands_on_running_vcpus", t.commands_on_running_vcpus},
    {"errors", t.errors},
    {"latency_us",
     {{"count", r.event_latency.count},
      {"p50", r.event_latency.p50_us},
      {"p99", r.event_latency.p99_us},
      {"p999", r.event_latency.p999_us},
      {"max", r.event_latency.max_us}}},
    {"violations", t.violations},
    {"violations_total", t.violation_count()},
    {"hmis", t.hmis},
    {"breakpoint_hits", t.breakpoint_hits},
    {"pf", {{"allowed", t.pf_allowed}, {"retried", t.pf_retried}, {"crashed", t.pf_crashed},
            {"unreported", t.pf_unreported}}},
    {"sessions", t.sessions},
    {"reconnects", t.reconnects},
    {"handshake_failures", t.handshake_failures},
    {"connect_failures", t.connect_failures},
    {"connect_error", r.connect_error},
    {"unanswered_at_close", t.unanswered_at_close},
    {"restricted_at_close", t.restricted_at_close},
    {"int3_at_close", t.int3_at_close},
    {"aborted_by_tool", t.aborted_by_tool},
    {"waiting", {{"vcpus", r.waiting}, {"held", r.waiting_held},
                 {"oldest_pending_ms", r.oldest_pending_ms}}},
    {"faults_injected", t.faults_injected},
  };
}

} // namespace kvmi::sim
