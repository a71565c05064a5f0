// GET /v1/vms/{vm} counts the hits of each rule of the VM's policy: every
// alert on its rule, every policy breakpoint hit on its breakpoint rule,
// over the whole VM record (reconnects and a disconnected VM included),
// and only for the rules of the policy in force.
#include "tests/support/kvmid_process.hpp"

using namespace kvmid::test;

namespace {

constexpr uint64_t probe = 0x300040; // a policy breakpoint in RAM, off the protected text

json policies(bool with_lstar) {
  auto p = default_policies();
  if (!with_lstar)
    p[0].erase("msr_protection");
  p[0]["cr_pins"] = json::array({"cr4.smep"});
  p[0]["breakpoints"] = json::array({{{"name", "probe"}, {"gpa", probe}}});
  return p;
}

// "kind/name" -> hits, as GET /v1/vms/{vm} lists them.
std::map<std::string, uint64_t> rule_hits(kvmid_process& t) {
  auto vm = t.curl("GET", "/v1/vms/sim-vm-0").j();
  std::map<std::string, uint64_t> hits;
  for (auto& r : vm["rule_hits"])
    hits[r["kind"].get<std::string>() + "/" + r["name"].get<std::string>()] = r["hits"];
  return hits;
}

// An LSTAR write the policy denies (an alert); writes made before the
// session intercepts LSTAR land and raise none.
void denied_lstar_write(kvmid_process& t) {
  CHECK(wait_until(
    [&] {
      auto before = *t.sim->msr(0, 0, msr_lstar);
      return get_within(t.sim->write_msr(0, 0, msr_lstar, before + 0x1000), "an LSTAR write")
               .value == before;
    },
    "an LSTAR write denied"));
}

} // namespace

TEST_CASE("rule hits: N alerts on a rule read back as N - breakpoint hits too - over reconnects and disconnects - for the rules in force") {
  auto o = one_vm();
  o.policies = policies(true);
  kvmid_process t(o);
  REQUIRE(wait_until([&] { return t.sim->memory(0, probe, 1)[0] == 0xcc; }, "the probe's INT3"));
  REQUIRE(wait_until([&] { return t.sim->page_access(0, hot_gpa) != kvmi::page_access_rwx; },
                     "the kernel text protected"));
  auto zero = rule_hits(t);
  CHECK(zero == std::map<std::string, uint64_t>{{"page-protection/kernel-text", 0},
                                                 {"msr-protection/lstar", 0},
                                                 {"cr-pin/cr4.smep", 0},
                                                 {"breakpoint/probe", 0}});

  for (uint64_t i = 0; i < 3; ++i)
    CHECK(get_within(t.sim->write_msr(0, 0, msr_lstar, 0xdead0000 + i), "an LSTAR write").event
          == kvmi::event_id::msr);
  for (uint64_t i = 0; i < 2; ++i)
    CHECK(get_within(t.sim->access(0, 0, hot_gpa + 0x10 * i, kvmi::page_access_w),
                     "a write to the kernel text")
            .event == kvmi::event_id::pf);
  auto cr4 = *t.sim->cr(0, 0, 4);
  REQUIRE((cr4 & cr4_smep) != 0);
  CHECK(get_within(t.sim->write_cr(0, 0, 4, cr4 & ~cr4_smep), "a CR4 write clearing SMEP")
          .event == kvmi::event_id::cr);
  CHECK(get_within(t.sim->execute(0, 0, probe), "the probe executed").event
        == kvmi::event_id::breakpoint);
  auto hits = rule_hits(t);
  CHECK(hits == std::map<std::string, uint64_t>{{"page-protection/kernel-text", 2},
                                                 {"msr-protection/lstar", 3},
                                                 {"cr-pin/cr4.smep", 1},
                                                 {"breakpoint/probe", 1}});
  CHECK(t.curl("GET", "/v1/vms/sim-vm-0").j()["counters"]["alerts"] == 6);

  // A new session of the same VM goes on counting.
  get_within(t.sim->inject_fault(0, "disconnect"), "the simulator's disconnect");
  REQUIRE(wait_until([&] { return t.sim->vm_counters(0).sessions >= 2 && t.sim->hooked(0); },
                     "the VM's second session"));
  denied_lstar_write(t);
  hits["msr-protection/lstar"] = 4;
  CHECK(rule_hits(t) == hits);

  // A reload that drops the LSTAR rule drops its count; the others stay.
  auto cfg = t.config;
  cfg["policies"] = policies(false);
  t.write_config(cfg);
  REQUIRE(t.curl("POST", "/v1/policies/reload").status == 200);
  hits.erase("msr-protection/lstar");
  CHECK(wait_until([&] { return rule_hits(t) == hits; }, "the counts of the reloaded policy"));
  // LSTAR is no longer intercepted: writes land and count nowhere.
  CHECK(wait_until(
    [&] {
      auto before = *t.sim->msr(0, 0, msr_lstar);
      return get_within(t.sim->write_msr(0, 0, msr_lstar, before + 0x10), "an LSTAR write").value
             == before + 0x10;
    },
    "LSTAR writes to land under the reloaded policy"));

  // With the host gone, the VM's record keeps them.
  t.sim->stop();
  REQUIRE(wait_until(
    [&] { return t.curl("GET", "/v1/vms/sim-vm-0").j()["connected"] == false; },
    "kvmid to see the VM disconnected"));
  CHECK(rule_hits(t) == hits);
}
