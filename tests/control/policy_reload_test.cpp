// POST /v1/policies/reload re-reads the config file: rules the file gained
// are applied and rules it lost are removed on a connected VM, and a file
// that no longer parses leaves the running policy as it was.
#include "tests/support/kvmid_process.hpp"

using namespace kvmid::test;

namespace {

constexpr uint32_t msr_sysenter_eip = 0x176;
constexpr uint64_t moved_text = hot_gpa + 0x4000; // still among the sim's hot pages
constexpr uint8_t r_x = kvmi::page_access_r | kvmi::page_access_x;

json policy(uint64_t page, uint32_t msr) {
  return json::array({{{"name", "e2e"},
                       {"match", json::array({"*"})},
                       {"page_protection", json::array({{{"name", "text"},
                                                         {"gpa", page},
                                                         {"size", 4096},
                                                         {"access", "r-x"}}})},
                       {"msr_protection", json::array({{{"name", "msr"}, {"msr", msr}}})}}});
}

// Whether a guest write to `msr` on vm 0 vCPU 0 goes through.
bool msr_write_lands(kvmid_process& t, uint32_t msr) {
  auto before = *t.sim->msr(0, 0, msr);
  auto o = get_within(t.sim->write_msr(0, 0, msr, before + 0x1000), "an MSR write");
  return o.value == before + 0x1000;
}

// Whether a guest write to `msr` on vm 0 vCPU 0 raises an MSR event (the
// kernel raises one only for a write that changes the value).
bool msr_write_intercepted(kvmid_process& t, uint32_t msr) {
  auto before = *t.sim->msr(0, 0, msr);
  auto o = get_within(t.sim->write_msr(0, 0, msr, before + 0x10), "an MSR write");
  return o.event == kvmi::event_id::msr;
}

} // namespace

TEST_CASE("policy reload adds and removes rules from the file - a broken file keeps the old policy") {
  kvmid_process::options o;
  o.vms = 1;
  o.policies = policy(hot_gpa, msr_lstar);
  kvmid_process t(o);
  REQUIRE(wait_until([&] { return t.sim->page_access(0, hot_gpa) == r_x; },
                     "the first policy's page rule in the guest"));
  CHECK_FALSE(msr_write_lands(t, msr_lstar));
  CHECK(msr_write_lands(t, msr_sysenter_eip));
  CHECK(t.sim->page_access(0, moved_text) == kvmi::page_access_rwx);

  // The file now protects another page and another MSR: the old rules go.
  auto cfg = t.config;
  cfg["policies"] = policy(moved_text, msr_sysenter_eip);
  t.write_config(cfg);
  auto r = t.curl("POST", "/v1/policies/reload");
  REQUIRE(r.status == 200);
  REQUIRE(wait_until([&] { return t.sim->page_access(0, moved_text) == r_x; },
                     "the added page rule in the guest"));
  CHECK(wait_until([&] { return t.sim->page_access(0, hot_gpa) == kvmi::page_access_rwx; },
                   "the removed page rule to be lifted in the guest"));
  CHECK(wait_until([&] { return msr_write_lands(t, msr_lstar); },
                   "LSTAR writes to go through once its rule is removed"));
  CHECK(wait_until([&] { return !msr_write_intercepted(t, msr_lstar); },
                   "LSTAR's interception to be turned off with its rule"));
  CHECK(msr_write_intercepted(t, msr_sysenter_eip));
  CHECK_FALSE(msr_write_lands(t, msr_sysenter_eip));

  // A file that does not parse: an error naming it, and nothing changes.
  t.write_file("kvmid.json", "{\"policies\": [");
  auto bad = t.curl("POST", "/v1/policies/reload");
  INFO(bad.body);
  CHECK(bad.status == 422);
  CHECK(bad.j()["error"]["code"] == "invalid");
  CHECK(bad.j()["error"]["message"].get<std::string>().find("kvmid.json") != std::string::npos);
  auto vm = t.curl("GET", "/v1/vms/" + t.uuid(0)).j();
  CHECK(vm["policy_rules"]["msr_protection"].size() == 1);
  CHECK(msr_write_lands(t, msr_lstar));
  CHECK_FALSE(msr_write_lands(t, msr_sysenter_eip));
  CHECK(t.sim->page_access(0, moved_text) == r_x);
  CHECK(t.sim->page_access(0, hot_gpa) == kvmi::page_access_rwx);
  CHECK(t.sim->make_report().ok());
}
