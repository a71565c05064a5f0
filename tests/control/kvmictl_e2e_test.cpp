// kvmictl against a real kvmid and kvmi-sim: every command the API has a
// route for, with what the simulated guest shows afterwards, and `watch`
// surviving a lost stream (Last-Event-ID) and giving up when kvmid is gone.
#include "tests/support/kvmid_process.hpp"

#include <doctest/doctest.h>

using namespace kvmid;
using namespace kvmid::test;
using e2e = kvmid_process;
using nlohmann::json;

namespace {

json json_of(const run_result& r) {
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  return json::parse(r.out);
}

} // namespace

TEST_CASE("e2e: kvmictl sets and lists page access - breakpoints - memory - events - msrs") {
  e2e::options o;
  o.reconnect = false;
  e2e t(o);
  std::string vm = t.uuid(0);
  REQUIRE(t.kvmictl({"pause", vm}).status == 0);

  // Page access: two adjacent pages with one access list as one range.
  REQUIRE(t.kvmictl({"set-page-access", vm, "0x300000", "r--"}).status == 0);
  REQUIRE(t.kvmictl({"set-page-access", vm, "0x301000", "r--"}).status == 0);
  CHECK(t.sim->page_access(0, 0x300000) == kvmi::page_access_r);
  CHECK(t.sim->page_access(0, 0x301000) == kvmi::page_access_r);
  auto pa = json_of(t.kvmictl({"--json", "page-access", vm}));
  bool range = false;
  for (auto& r : pa["ranges"])
    range = range || (r["gpa"] == "0x300000" && r["pages"] == 2 && r["len"] == "0x2000"
                      && r["access"] == "r--");
  CHECK(range);
  auto table = t.kvmictl({"page-access", vm});
  CHECK(table.out.starts_with("GPA"));
  CHECK(table.out.find("0x300000  0x2000") != std::string::npos);

  // Breakpoints: add, list, remove, with the guest's byte each time.
  uint8_t orig = t.sim->memory(0, 0x400010, 1)[0];
  REQUIRE(t.kvmictl({"add-breakpoint", vm, "0x400010"}).status == 0);
  CHECK(t.sim->memory(0, 0x400010, 1)[0] == 0xCC);
  auto bps = json_of(t.kvmictl({"--json", "breakpoints", vm}));
  REQUIRE(bps["breakpoints"].size() >= 1);
  bool listed = false;
  for (auto& b : bps["breakpoints"])
    listed = listed || (b["gpa"] == "0x400010" && b["planted"] == true);
  CHECK(listed);
  REQUIRE(t.kvmictl({"remove-breakpoint", vm, "0x400010"}).status == 0);
  CHECK(t.sim->memory(0, 0x400010, 1)[0] == orig);
  auto again = t.kvmictl({"remove-breakpoint", vm, "0x400010"});
  CHECK(again.status == 1); // the API's 404
  CHECK(again.err.find("not_found") != std::string::npos);

  // Memory writes land in the guest; an unsafe region is the API's 422.
  REQUIRE(t.kvmictl({"write", vm, "0x200ffe", "cafef00d"}).status == 0);
  CHECK(t.sim->memory(0, 0x200ffe, 4) == std::vector<uint8_t>{0xca, 0xfe, 0xf0, 0x0d});

  // Event enables: on, shown, off.
  REQUIRE(t.kvmictl({"events", vm, "1", "--enable", "descriptor"}).status == 0);
  CHECK((t.sim->vcpu(0, 1)->enabled_events & (1u << 8)) != 0);
  auto shown = json_of(t.kvmictl({"--json", "events", vm, "1"}));
  CHECK(std::find(shown["enabled_events"].begin(), shown["enabled_events"].end(),
                  json("descriptor"))
        != shown["enabled_events"].end());
  REQUIRE(t.kvmictl({"events", vm, "1", "--disable", "descriptor"}).status == 0);
  CHECK((t.sim->vcpu(0, 1)->enabled_events & (1u << 8)) == 0);

  // Registers with MSRs, in hex.
  auto regs = json_of(t.kvmictl({"--json", "regs", vm, "0", "--msrs", "0xc0000082"}));
  REQUIRE(regs["msrs"].size() == 1);
  CHECK(regs["msrs"][0]["index"] == "0xc0000082");
  CHECK(regs["msrs"][0]["value"].get<std::string>().starts_with("0x"));

  // Metrics: Prometheus text as kvmid serves it.
  auto m = t.kvmictl({"metrics"});
  CHECK(m.status == 0);
  CHECK(m.out.find("kvmid_build_info{") != std::string::npos);

  // Usage errors never reach the server.
  auto wrong = t.kvmictl({"events", vm, "0", "--msrs", "1"});
  CHECK(wrong.status == 2);
  CHECK(wrong.err.starts_with("kvmictl: events: option --msrs does not apply"));
  CHECK(t.kvmictl({"set-page-access", vm, "0x1000", "rw"}).status == 2);
  CHECK(t.kvmictl({"write", vm, "0x1000", "abc"}).status == 2);
  REQUIRE(t.kvmictl({"resume", vm}).status == 0);
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: a stream resumed with Last-Event-ID gets the alerts raised while it was away") {
  e2e t;
  auto stream = [&](const std::string& last) {
    auto a = t.curl_base(t.token);
    REQUIRE(a[2] == "--max-time");
    a[3] = "2"; // the stream never ends by itself
    a.insert(a.end(), {"-N", "-H", std::string("Last-Event-ID: ").append(last),
                       "http://localhost/v1/events?kind=alert"});
    return run(a).out;
  };
  auto lstar = [&](uint32_t vm, uint64_t value) {
    auto r = get_within(t.sim->write_msr(vm, 0, msr_lstar, value), "an LSTAR write");
    CHECK(r.event == kvmi::event_id::msr);
  };
  lstar(0, 0xdead0000); // before any subscriber: only the ring has it
  // An id of no kvmid run: the whole ring, after a gap notice.
  std::string all = stream("00000000-0");
  REQUIRE(all.find("event: replay-gap") != std::string::npos);
  auto at = all.find("event: msr-protection");
  REQUIRE(at != std::string::npos);
  auto id_at = all.rfind("id: ", at);
  REQUIRE(id_at != std::string::npos);
  std::string id = all.substr(id_at + 4, all.find('\n', id_at) - id_at - 4);
  // Away, then back with the id it saw: the next alert, and only it.
  lstar(1, 0xbeef0000);
  std::string resumed = stream(id);
  CHECK(resumed.find("replay-gap") == std::string::npos);
  CHECK(resumed.find("id: " + id + "\n") == std::string::npos);
  auto n = 0;
  for (size_t p = 0; (p = resumed.find("event: msr-protection", p)) != std::string::npos; ++p)
    ++n;
  CHECK(n == 1);
  CHECK(resumed.find(t.uuid(1)) != std::string::npos);
}

TEST_CASE("e2e: kvmictl watch prints ISO times and exits 3 once kvmid is gone") {
  e2e t;
  child watch({KVMICTL_BIN, "--unix", t.api_sock, "--token-file", (t.dir / "token").string(),
               "watch", "--kind", "alert"});
  REQUIRE(wait_until(
    [&] {
      return t.curl("GET", "/metrics").body.find("kvmid_event_streams 1\n") != std::string::npos;
    },
    "kvmictl's stream to open"));
  get_within(t.sim->write_msr(0, 0, msr_lstar, 0xdead0000), "an LSTAR write");
  REQUIRE(t.stop_kvmid() == 0);
  auto r = watch.finish(std::chrono::seconds(60));
  INFO(r.out << r.err);
  CHECK(r.status == 3);
  // "2026-11-29T10:15:02.123Z msr-protection vm=..."
  REQUIRE(r.out.size() > 25);
  CHECK(r.out[4] == '-');
  CHECK(r.out[10] == 'T');
  CHECK(r.out.substr(23, 2) == "Z ");
  CHECK(r.out.find(" msr-protection vm=") != std::string::npos);
  CHECK(r.err.find("reconnecting") != std::string::npos);
}

TEST_CASE("e2e: a guest agent's report and its raw hypercall event have their own stream names") {
  e2e t;
  auto a = t.curl_base(t.token);
  REQUIRE(a[2] == "--max-time");
  a[3] = "3";
  a.insert(a.end(), {"-N", "http://localhost/v1/events?kind=agent-report,hypercall"});
  child stream(a);
  REQUIRE(wait_until(
    [&] {
      return t.curl("GET", "/metrics").body.find("kvmid_event_streams 1\n") != std::string::npos;
    },
    "the stream to open"));
  auto r = get_within(t.sim->hypercall(0, 1), "a guest agent hypercall");
  CHECK(r.event == kvmi::event_id::hypercall);
  auto out = stream.finish(std::chrono::seconds(30)).out;
  INFO(out);
  CHECK(out.find("event: agent-report\n") != std::string::npos);
  CHECK(out.find("event: hypercall\n") != std::string::npos);
  // Register values and RIP in hex, as everywhere in the API.
  CHECK(out.find("\"rdi\":\"0x") != std::string::npos);
  CHECK(out.find("\"rip\":\"0x") != std::string::npos);
}

TEST_CASE("e2e: a disconnected VM shows its vCPUs disconnected and can be forgotten") {
  e2e::options o;
  o.reconnect = false;
  e2e t(o);
  std::string gone = t.uuid(1), live = t.uuid(0);
  auto busy = t.kvmictl({"forget", live});
  CHECK(busy.status == 1);
  CHECK(busy.err.find("connected") != std::string::npos);
  REQUIRE(t.kvmictl({"unhook", gone}).status == 0);
  REQUIRE(wait_until([&] { return !t.sim->vm(1).connected; }, "the unhooked VM to disconnect"));
  json vcpus;
  REQUIRE(wait_until(
    [&] {
      vcpus = t.curl("GET", "/v1/vms/" + gone + "/vcpus").j()["vcpus"];
      return !vcpus.empty() && vcpus[0]["state"] == "disconnected";
    },
    "kvmid to show the VM's vCPUs disconnected"));
  for (auto& v : vcpus) {
    CHECK(v["state"] == "disconnected");
    CHECK(v["event"] == "");
  }
  auto f = t.kvmictl({"forget", gone});
  INFO(f.err);
  CHECK(f.status == 0);
  CHECK(t.curl("GET", "/v1/vms/" + gone).status == 404);
  auto vms = t.curl("GET", "/v1/vms").j()["vms"];
  CHECK(vms.size() == 1);
  CHECK(t.kvmictl({"forget", gone}).status == 1); // 404 now
}
