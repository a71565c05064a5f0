// How often each rule of a VM's policy fired: the alerts of each page,
// MSR and CR rule and the hits of each policy breakpoint, for
// GET /v1/vms/{vm}. A count is keyed by the alert's family and the rule's
// name and is bounded by the policy: a reload keeps only the rules still
// in it, and the registry keeps the totals of the VM's record.
#pragma once

#include "actors/control_api.hpp"
#include "actors/policy.hpp"

#include <compare>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid {

struct rule_key {
  std::string kind; // the alert's family: "page-protection", "msr-protection", "cr-pin"
  std::string name; // the rule's name in the policy
  auto operator<=>(const rule_key&) const = default;
};
// A key to look one up by, without building its strings (one per alert).
struct rule_key_view {
  std::string_view kind, name;
};
inline std::strong_ordering operator<=>(const rule_key& a, const rule_key_view& b) {
  if (auto c = std::string_view(a.kind) <=> b.kind; c != 0)
    return c;
  return std::string_view(a.name) <=> b.name;
}
using rule_counts = std::map<rule_key, uint64_t, std::less<>>;

// One session's counts, bumped by the vCPU actors as they raise alerts and
// read by the VM actor.
class rule_hit_counter {
public:
  void count(std::string_view kind, std::string_view name);
  rule_counts snapshot() const;
  void keep_only(const vm_policy& p);

private:
  mutable std::mutex mu_;
  rule_counts counts_;
};

void add(rule_counts& into, const rule_counts& from);
// Drops the counts of rules that are not in `p`.
void keep_only(rule_counts& c, const vm_policy& p);
// One entry per rule of `p`, in the policy's order: alerting rules from
// `alerts`, breakpoint rules from their breakpoint's hits.
std::vector<rule_hit_info> rule_hits_of(const vm_policy& p, const rule_counts& alerts,
                                        const std::map<uint64_t, breakpoint_state>& bps);

} // namespace kvmid
