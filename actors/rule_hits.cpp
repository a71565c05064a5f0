#include "actors/rule_hits.hpp"

#include "actors/alert_kinds.hpp"

namespace kvmid {

namespace {

// Breakpoints count their hits too, beside the alert families.
constexpr std::string_view breakpoint_kind = "breakpoint";

// Every alerting rule of `p` as its key, in the policy's order.
template <class F>
void for_each_alert_rule(const vm_policy& p, F&& f) {
  for (auto& r : p.pages)
    f(rule_key{std::string(alert_kind::page_protection), r.name});
  for (auto& r : p.msrs)
    f(rule_key{std::string(alert_kind::msr_protection), r.name});
  for (auto& r : p.crs)
    f(rule_key{std::string(alert_kind::cr_pin), r.name});
}

} // namespace

void rule_hit_counter::count(std::string_view kind, std::string_view name) {
  std::lock_guard lk(mu_);
  auto it = counts_.find(rule_key_view{kind, name});
  if (it == counts_.end())
    it = counts_.emplace(rule_key{std::string(kind), std::string(name)}, 0).first;
  ++it->second;
}

rule_counts rule_hit_counter::snapshot() const {
  std::lock_guard lk(mu_);
  return counts_;
}

void rule_hit_counter::keep_only(const vm_policy& p) {
  std::lock_guard lk(mu_);
  kvmid::keep_only(counts_, p);
}

void add(rule_counts& into, const rule_counts& from) {
  for (auto& [k, n] : from)
    into[k] += n;
}

void keep_only(rule_counts& c, const vm_policy& p) {
  rule_counts kept;
  for_each_alert_rule(p, [&](rule_key k) {
    if (auto it = c.find(k); it != c.end())
      kept.emplace(std::move(k), it->second);
  });
  c = std::move(kept);
}

std::vector<rule_hit_info> rule_hits_of(const vm_policy& p, const rule_counts& alerts,
                                        const std::map<uint64_t, breakpoint_state>& bps) {
  std::vector<rule_hit_info> out;
  for_each_alert_rule(p, [&](rule_key k) {
    auto it = alerts.find(k);
    out.push_back({std::move(k.kind), std::move(k.name), it == alerts.end() ? 0 : it->second});
  });
  for (auto& b : p.breakpoints) {
    auto it = bps.find(b.gpa);
    out.push_back({std::string(breakpoint_kind), b.name, it == bps.end() ? 0 : it->second.hits});
  }
  return out;
}

} // namespace kvmid
