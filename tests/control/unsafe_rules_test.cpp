// Config policy rules over unsafe regions of a VM's memory map (MMIO, the
// NVLink2 ATSD registers, GPU RAM whose links are not trained) are skipped
// with a log line naming the rule; the VM's other rules still apply and
// the guest sees no HMI.
#include "tests/support/kvmid_process.hpp"

using namespace kvmid::test;
namespace hs = kvmi::hs;

TEST_CASE("config rules over unsafe regions are skipped with a log line") {
  std::map<hs::region_type, uint64_t> at;
  for (auto& r : kvmi::sim::memory_map(kvmid_process::sim_memory()))
    at.emplace(static_cast<hs::region_type>(r.type), r.gpa);
  const std::map<std::string, hs::region_type> unsafe = {
    {"over-mmio", hs::region_type::mmio},
    {"over-atsd", hs::region_type::nvlink2_atsd},
    {"over-gpu-ram", hs::region_type::nvlink2_gpu_ram}};
  json pages = json::array({{{"name", "kernel-text"}, {"gpa", hot_gpa}, {"size", 4096}}});
  json bps = json::array();
  for (auto& [name, type] : unsafe) {
    CAPTURE(name);
    REQUIRE(at.count(type)); // the simulated VM has every kind of region
    pages.push_back({{"name", name}, {"gpa", at[type]}, {"size", 4096}});
    bps.push_back({{"name", name + "-bp"}, {"gpa", at[type] + 0x10}});
  }
  kvmid_process::options o;
  o.vms = 1;
  o.policies = json::array({{{"name", "unsafe"},
                             {"match", json::array({"*"})},
                             {"page_protection", pages},
                             {"breakpoints", bps}}});
  kvmid_process t(o);
  REQUIRE(wait_until(
    [&] { return t.sim->page_access(0, hot_gpa) == (kvmi::page_access_r | kvmi::page_access_x); },
    "the safe page rule in the guest"));
  for (auto& [name, type] : unsafe) {
    CAPTURE(name);
    auto page_line = "page rule " + name + ": skipping gpa " + std::to_string(at[type]) + ": ";
    auto bp_line = "breakpoint: breakpoint at " + std::to_string(at[type] + 0x10) + ": ";
    CHECK(wait_until([&] { return t.log().find(page_line) != std::string::npos; },
                     "\"" + page_line + "\" in kvmid's log"));
    CHECK(wait_until([&] { return t.log().find(bp_line) != std::string::npos; },
                     "\"" + bp_line + "\" in kvmid's log"));
  }
  auto rep = t.sim->make_report();
  CHECK(rep.total.hmis == 0);
  CHECK(rep.ok());
}
