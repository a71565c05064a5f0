// A kvmid process on NATS: its alerts in the stream exactly once across a
// nats-server outage and a kvmid restart, its API over request-reply
// answering as HTTP does, and kvmictl --nats finding VMs across the fleet.
#include "tests/support/jetstream_reader.hpp"
#include "tests/support/kvmid_process.hpp"
#include "tests/support/nats_server.hpp"

#include <doctest/doctest.h>

#include <set>
#include <sstream>

using namespace kvmid;
using namespace kvmid::test;

nats_server& shared_nats_server(); // publisher_test.cpp: one per binary
nats_server& running_nats_server();

namespace {

json nats_section(const std::string& host, const std::string& prefix, const std::string& role = "full") {
  return {{"enabled", true},
          {"urls", json::array({running_nats_server().url()})},
          {"host", host},
          {"subject_prefix", prefix},
          {"stream", "E2E_" + prefix},
          {"ack_timeout_ms", 500},
          {"api_role", role}};
}

// A kvmid of `vms` x `vcpus` on the shared server, as `host` under `prefix`.
kvmid_process_options on_nats(uint32_t vms, uint32_t vcpus, const std::string& host,
                              const std::string& prefix, const std::string& role = "full") {
  kvmid_process_options o;
  o.vms = vms;
  o.vcpus = vcpus;
  o.extra = {{"nats", nats_section(host, prefix, role)}};
  return o;
}

// The sum of a family's samples in kvmid's /metrics text.
double scrape(kvmid_daemon& k, const std::string& family) {
  auto r = k.http("GET", "/metrics");
  std::istringstream in(r.body);
  double total = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(family, 0) != 0 || line.size() <= family.size())
      continue;
    char next = line[family.size()];
    if (next != ' ' && next != '{')
      continue;
    total += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

// A NATS request as kvmictl --nats sends it; the reply's JSON.
json nats_request(natsConnection* nc, const std::string& subject, const json& req) {
  natsMsg* m = nullptr;
  std::string text = req.dump();
  REQUIRE(natsConnection_Request(&m, nc, subject.c_str(), text.data(), int(text.size()), 10000)
          == NATS_OK);
  auto j = json::parse(std::string(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m))));
  natsMsg_Destroy(m);
  return j;
}

size_t alerts_in_stream(jetstream_reader& js, const std::string& stream, std::set<std::string>& ids) {
  size_t n = 0;
  for (auto& m : js.all(stream))
    if (m.subject.find(".alert.") != std::string::npos) {
      ++n;
      ids.insert(m.msg_id);
    }
  return n;
}

} // namespace

// n guest writes to the pinned LSTAR, one alert each, spread over the VMs
// and vCPUs.
void make_alerts(kvmid_process& k, int n) {
  for (int i = 0; i < n; ++i) {
    uint32_t vm = uint32_t(i % 2), vcpu = uint32_t((i / 2) % 2);
    auto out = get_within(k.sim->write_msr(vm, vcpu, msr_lstar, 0xdead0000 + uint64_t(i)),
                          "an LSTAR write");
    REQUIRE(out.event == kvmi::event_id::msr);
  }
}

TEST_CASE("kvmid's alerts reach the stream once each across a NATS outage and a kvmid restart") {
  kvmid_process k(on_nats(2, 2, "outage-host", "eo"));
  INFO("kvmid stderr: " << k.log());
  make_alerts(k, 4);
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_published_total") >= 6; },
                     "two vm-connected records and four alerts acked"));
  CHECK(scrape(k, "kvmid_nats_connected") == 1);
  shared_nats_server().stop();
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_connected") == 0; }, "kvmid to see NATS gone"));
  make_alerts(k, 6); // the vCPUs are answered while NATS is down
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_spool_records") == 6; },
                     "the six alerts in the spool"));
  shared_nats_server().start();
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_spool_records") == 0; }, "spool drained"));
  CHECK(scrape(k, "kvmid_nats_connected") == 1);
  // Another outage, and kvmid stopped in it: the next run sends the rest.
  shared_nats_server().stop();
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_connected") == 0; }, "NATS gone again"));
  make_alerts(k, 5);
  k.sim->stop();
  double alerts = scrape(k, "kvmid_alerts_total");
  CHECK(alerts == 15);
  REQUIRE(k.stop() == 0);
  auto spooled = std::filesystem::directory_iterator(k.dir / "state" / "nats-spool");
  CHECK(std::distance(spooled, std::filesystem::directory_iterator{}) >= 5);
  shared_nats_server().start();
  k.start();
  REQUIRE(wait_until([&] { return scrape(k, "kvmid_nats_spool_records") == 0; },
                     "the restarted kvmid to drain the last run's spool"));
  jetstream_reader js(shared_nats_server().url());
  std::set<std::string> ids;
  size_t n = alerts_in_stream(js, "E2E_eo", ids);
  CHECK(n == size_t(alerts));
  CHECK(ids.size() == n);
  CHECK(scrape(k, "kvmid_nats_spool_full_total") == 0);
}

TEST_CASE("the API over NATS answers as the HTTP API does") {
  kvmid_process k(on_nats(2, 1, "rr-host", "rr"));
  jetstream_reader js(shared_nats_server().url());
  auto* nc = js.connection();
  std::string uuid = k.uuid(0);
  struct call {
    std::string method, path;
    json body;
  };
  std::vector<call> calls = {
    {"GET", "/v1/vms/" + uuid + "/vcpus", nullptr},
    {"GET", "/v1/vms/no-such-vm", nullptr},
    {"GET", "/v1/no-such-route", nullptr},
    {"DELETE", "/v1/vms", nullptr},
    {"GET", "/v1/vms/" + uuid + "/memory?gpa=0x1000&len=16&lenght=3", nullptr},
    {"PUT", "/v1/vms/" + uuid + "/page-access", json{{"gpa", "0x1000"}, {"bogus", 1}}},
    {"GET", "/v1/version", nullptr},
  };
  for (auto& c : calls) {
    INFO(c.method << " " << c.path);
    auto http = k.http(c.method, c.path, c.body.is_null() ? "" : c.body.dump());
    json req = {{"method", c.method}, {"path", c.path}};
    if (!c.body.is_null())
      req["body"] = c.body;
    auto nats = nats_request(nc, "rr.api.rr-host", req);
    CHECK(nats["host"] == "rr-host");
    CHECK(nats["status"] == http.status);
    CHECK(nats["body"] == http.j());
  }
  // The same list of VMs, by uuid.
  auto vms = nats_request(nc, "rr.api.rr-host", {{"method", "GET"}, {"path", "/v1/vms"}});
  REQUIRE(vms["status"] == 200);
  std::set<std::string> got;
  for (auto& v : vms["body"]["vms"])
    got.insert(v["uuid"].get<std::string>());
  CHECK(got == std::set<std::string>{k.uuid(0), k.uuid(1)});
  // A full-role request changes the VM; a malformed one gets a 400.
  auto paused = nats_request(nc, "rr.api.rr-host",
                             {{"method", "POST"}, {"path", "/v1/vms/" + uuid + "/pause"}, {"body", json::object()}});
  CHECK(paused["status"] == 200);
  CHECK(paused["body"]["result"] == "paused");
  CHECK(k.http("GET", "/v1/vms/" + uuid).j()["paused"] == true);
  auto resumed = nats_request(nc, "rr.api.all",
                              {{"method", "POST"}, {"path", "/v1/vms/" + uuid + "/resume"}});
  CHECK(resumed["status"] == 200);
  auto bad = nats_request(nc, "rr.api.rr-host", {{"method", "GET"}});
  CHECK(bad["status"] == 400);
  CHECK(bad["body"]["error"]["code"] == "bad_request");
  auto stream = nats_request(nc, "rr.api.rr-host", {{"method", "GET"}, {"path", "/v1/events"}});
  CHECK(stream["status"] == 400);
  // An answer NATS could not carry is refused by name, not lost.
  std::string big = "/v1/vms/" + uuid + "/memory?gpa=0x0&len=65536&encoding=hex";
  CHECK(k.http("GET", big).status == 200);
  auto too_large = nats_request(nc, "rr.api.rr-host", {{"method", "GET"}, {"path", big}});
  CHECK(too_large["status"] == 413);
  CHECK(too_large["body"]["error"]["code"] == "too_large");
}

TEST_CASE("a read-role NATS request is refused a change as the read token is") {
  auto o = on_nats(1, 1, "ro-host", "ro", "read");
  o.read_token = "e2e-read-token-5c1e";
  kvmid_process k(o);
  jetstream_reader js(shared_nats_server().url());
  std::string path = "/v1/vms/" + k.uuid(0) + "/pause";
  auto http = k.curl("POST", path, "{}", o.read_token);
  auto nats = nats_request(js.connection(), "ro.api.ro-host",
                           {{"method", "POST"}, {"path", path}, {"body", json::object()}});
  CHECK(http.status == 403);
  CHECK(nats["status"] == 403);
  CHECK(nats["body"] == http.j());
  CHECK(nats_request(js.connection(), "ro.api.ro-host", {{"method", "GET"}, {"path", "/v1/vms"}})["status"] == 200);
}

TEST_CASE("kvmictl --nats lists the fleet's VMs and pauses and resumes one by uuid") {
  kvmid_process k(on_nats(2, 1, "ctl-host", "ctl"));
  auto ctl = [&](std::vector<std::string> args) {
    std::vector<std::string> a = {"--nats", shared_nats_server().url(), "--nats-prefix", "ctl",
                                  "--gather-ms", "1500"};
    a.insert(a.end(), args.begin(), args.end());
    return k.kvmictl(a, false);
  };
  auto vms = ctl({"vms"});
  INFO(vms.err);
  REQUIRE(vms.status == 0);
  CHECK(vms.out.find("host ctl-host:") != std::string::npos);
  CHECK(vms.out.find(k.uuid(0)) != std::string::npos);
  CHECK(vms.out.find(k.uuid(1)) != std::string::npos);
  auto pause = ctl({"pause", k.uuid(1)});
  INFO(pause.err);
  CHECK(pause.status == 0);
  CHECK(pause.out == "ctl-host: " + k.uuid(1) + ": paused\n");
  CHECK(k.http("GET", "/v1/vms/" + k.uuid(1)).j()["paused"] == true);
  CHECK(ctl({"resume", k.uuid(1)}).status == 0);
  CHECK(k.http("GET", "/v1/vms/" + k.uuid(1)).j()["paused"] == false);
  auto unknown = ctl({"pause", "00000000-0000-0000-0000-000000000000"});
  CHECK(unknown.status == 1);
  CHECK(unknown.err.find("no host of the fleet knows") != std::string::npos);
  auto js = ctl({"--json", "vms"});
  REQUIRE(js.status == 0);
  auto j = json::parse(js.out);
  CHECK(j["hosts"][0]["host"] == "ctl-host");
  CHECK(j["hosts"][0]["vms"].size() == 2);
}

TEST_CASE("kvmictl --nats watch follows the fleet's alerts through a JetStream consumer") {
  kvmid_process k(on_nats(2, 2, "watch-host", "wt"));
  jetstream_reader js(shared_nats_server().url());
  REQUIRE(wait_until([&] { return js.count("E2E_wt") >= 2; }, "the stream with kvmid's first records"));
  child watch({KVMICTL_BIN, "--nats", shared_nats_server().url(), "--nats-prefix", "wt", "watch",
               "--count", "3"});
  // It follows from now on: the alerts come once its consumer is there.
  REQUIRE(wait_until([&] { return js.consumers("E2E_wt") == 1; }, "kvmictl's consumer"));
  make_alerts(k, 3);
  auto r = watch.finish(std::chrono::seconds(30));
  INFO(r.err);
  CHECK(r.status == 0);
  std::istringstream lines(r.out);
  int n = 0;
  for (std::string l; std::getline(lines, l);) {
    CHECK(l.rfind("watch-host ", 0) == 0);
    CHECK(l.find("msr-protection") != std::string::npos);
    ++n;
  }
  CHECK(n == 3);
}
