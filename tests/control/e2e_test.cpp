// kvmid + kvmi-sim + curl/kvmictl over real sockets.
#include "promtool.hpp"
#include "tests/support/exposition.hpp"
#include "tests/support/kvmid_process.hpp"

#include "actors/protocol_fault.hpp"
#include "server/control/encoding.hpp"
#include "server/dialect/handshake_failure.hpp"

#include <set>

using namespace kvmid;
using namespace kvmid::test;
using e2e = kvmid_process;
using kvmid::control::from_base64;
using kvmid::control::from_hex;

namespace {

void check_error(const http_reply& r, int status, const std::string& code) {
  CAPTURE(r.body);
  CHECK(r.status == status);
  auto j = r.j();
  REQUIRE(j.is_object());
  CHECK(j["error"]["code"] == code);
  CHECK_FALSE(j["error"]["message"].get<std::string>().empty());
}

// The SSE events named one of `names` that the file holds so far.
std::vector<json> events_in(const fs::path& file, const std::set<std::string>& names) {
  std::vector<json> got;
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  size_t pos = 0;
  while ((pos = text.find("event: ", pos)) != std::string::npos) {
    auto eol = text.find('\n', pos);
    auto data = text.find("data: ", eol);
    auto dend = data == std::string::npos ? data : text.find('\n', data);
    if (dend == std::string::npos)
      break;
    std::string ev = text.substr(pos + 7, eol - pos - 7);
    if (names.count(ev))
      got.push_back(json::parse(text.substr(data + 6, dend - data - 6)));
    pos = dend;
  }
  return got;
}

// Waits until the file holds `n` such events; returns what it holds then.
std::vector<json> wait_events(const fs::path& file, const std::set<std::string>& names, size_t n) {
  wait_until([&] { return events_in(file, names).size() >= n; },
             std::to_string(n) + " events in " + file.filename().string());
  return events_in(file, names);
}

bool file_has(const fs::path& file, const std::string& what) {
  return wait_until(
    [&] {
      std::ifstream in(file);
      std::string text((std::istreambuf_iterator<char>(in)), {});
      return text.find(what) != std::string::npos;
    },
    "\"" + what + "\" in " + file.filename().string());
}

} // namespace

TEST_SUITE("control-e2e") {

TEST_CASE("e2e: VMs / vCPUs / pause/resume / registers over curl") {
  e2e t;
  auto vms = t.curl("GET", "/v1/vms");
  REQUIRE(vms.status == 200);
  INFO(vms.body);
  std::set<std::string> names;
  json vlist = vms.j()["vms"];
  for (auto& v : vlist) {
    names.insert(v["name"]);
    CHECK(v["vcpus"] == 2);
    CHECK(v["connected"] == true);
    CHECK(v["state"] == "running");
  }
  CHECK(names == std::set<std::string>{"sim-vm-0", "sim-vm-1"});

  std::string vm0 = "/v1/vms/" + t.uuid(0);
  auto vm = t.curl("GET", vm0).j();
  CHECK(vm["name"] == "sim-vm-0");
  CHECK(vm["policy"] == "e2e");
  CHECK(vm["policy_rules"]["name"] == "e2e");
  // Unix seconds of this session's handshake: after the test started.
  CHECK(vm["connected_since"].get<int64_t>() >= t.started_unix);
  CHECK(vm["connected_since"].get<int64_t>() <= int64_t(std::time(nullptr)));
  std::set<std::string> types;
  for (auto& r : vm["memory_map"])
    types.insert(r["type"]);
  CHECK(types.count("ram"));
  if (test_dialect() == kvmid::test::dialect::v5) { // v7: E820 RAM only
    CHECK(types.count("mmio"));
    CHECK(types.count("nvlink2-gpu-ram"));
  }
  CHECK(vm["vcpu_list"].size() == 2);

  // A running vCPU serves a register read (the kernel kicks it out of the
  // guest for it) and runs on.
  auto running = t.curl("GET", vm0 + "/vcpus/0/registers");
  REQUIRE(running.status == 200);
  CHECK(running.j()["regs"]["rip"] == control::hex_u64(t.sim->vcpu(0, 0)->regs.rip));
  CHECK(t.sim->vcpu(0, 0)->state == kvmi::sim::vcpu_state::running);
  REQUIRE(t.curl("POST", vm0 + "/pause").status == 200);
  auto vcpus = t.curl("GET", vm0 + "/vcpus").j();
  for (auto& v : vcpus["vcpus"])
    CHECK(v["state"] == "paused");
  CHECK(t.sim->vcpu(0, 0)->state == kvmi::sim::vcpu_state::paused);
  auto regs = t.curl("GET", vm0 + "/vcpus/1/registers?msrs=0xc0000082");
  REQUIRE(regs.status == 200);
  auto rj = regs.j();
  auto sim_regs = t.sim->vcpu(0, 1)->regs;
  CHECK(rj["regs"]["rip"] == control::hex_u64(sim_regs.rip));
  CHECK(rj["regs"]["rsp"] == control::hex_u64(sim_regs.rsp));
  REQUIRE(rj["msrs"].size() == 1);
  CHECK(rj["msrs"][0]["value"] == control::hex_u64(*t.sim->msr(0, 1, msr_lstar)));
  check_error(t.curl("GET", vm0 + "/vcpus/9/registers"), 404, "not_found");
  REQUIRE(t.curl("POST", vm0 + "/resume").status == 200);
  CHECK(t.sim->wait_until([&] { return t.sim->vcpu(0, 0)->state == kvmi::sim::vcpu_state::running; },
                          kvmi::sim::ms(5000)));
  CHECK(t.curl("GET", vm0 + "/vcpus/0/registers").status == 200);
  check_error(t.curl("GET", "/v1/vms/no-such-vm"), 404, "not_found");
  check_error(t.curl("POST", "/v1/vms/no-such-vm/pause"), 404, "not_found");
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: guest memory / page access / breakpoints / events / unhook over curl") {
  e2e::options o;
  o.reconnect = false;
  e2e t(o);
  std::string vm0 = "/v1/vms/" + t.uuid(0);
  REQUIRE(t.curl("POST", vm0 + "/pause").status == 200);
  // Write then read back, in both encodings, and against the simulator.
  auto w = t.curl("PUT", vm0 + "/memory", R"({"gpa":"0x200ffe","data":"deadbeef"})");
  REQUIRE(w.status == 200); // crosses a page: split by the core
  CHECK(t.sim->memory(0, 0x200ffe, 4) == std::vector<uint8_t>{0xde, 0xad, 0xbe, 0xef});
  auto r = t.curl("GET", vm0 + "/memory?gpa=0x200ffe&len=4").j();
  CHECK(r["data"] == "deadbeef");
  auto b = t.curl("GET", vm0 + "/memory?gpa=0x200ffe&len=4&encoding=base64").j();
  CHECK(from_base64(b["data"].get<std::string>()) == from_hex("deadbeef"));
  // A larger body (curl sends Expect: 100-continue for it) across pages.
  std::vector<uint8_t> big(6000);
  for (size_t i = 0; i < big.size(); ++i)
    big[i] = uint8_t(i * 31 + 7);
  REQUIRE(t.curl("PUT", vm0 + "/memory",
                 R"({"gpa":"0x600800","data":")" + control::to_hex(big) + R"("})").status == 200);
  CHECK(t.sim->memory(0, 0x600800, big.size()) == big);
  auto back = t.curl("GET", vm0 + "/memory?gpa=0x600800&len=6000&encoding=base64").j();
  CHECK(from_base64(back["data"].get<std::string>()) == big);
  // Unsafe regions and invalid ranges are refused before the kernel is asked.
  json map = t.curl("GET", vm0).j()["memory_map"];
  for (auto& reg : map) {
    if (reg["type"] == "ram")
      continue;
    CAPTURE(reg.dump());
    check_error(t.curl("GET", vm0 + "/memory?gpa=" + reg["gpa"].get<std::string>() + "&len=8"),
                422, "unsafe_region");
    check_error(t.curl("PUT", vm0 + "/memory",
                       R"({"gpa":")" + reg["gpa"].get<std::string>() + R"(","data":"00"})"),
                422, "unsafe_region");
  }
  check_error(t.curl("GET", vm0 + "/memory?gpa=0x1000&len=0"), 422, "invalid_range");
  check_error(t.curl("GET", vm0 + "/memory?gpa=0x1000&len=70000"), 422, "invalid_range");
  check_error(t.curl("GET", vm0 + "/memory?gpa=0x1000"), 400, "bad_request");
  check_error(t.curl("PUT", vm0 + "/memory", "{broken"), 400, "bad_request");
  CHECK(t.sim->vm_counters(0).hmis == 0);

  // Page access: restrict a page, see it in kvmid's table and in the "kernel".
  REQUIRE(t.curl("PUT", vm0 + "/page-access", R"({"gpa":"0x300000","access":"r--"})").status
          == 200);
  CHECK(t.sim->page_access(0, 0x300000) == kvmi::page_access_r);
  auto pages = t.curl("GET", vm0 + "/page-access");
  INFO(pages.body);
  bool listed = false;
  json plist = pages.j()["ranges"];
  for (auto& p : plist)
    listed = listed || (p["gpa"] == "0x300000" && p["pages"] == 1 && p["access"] == "r--");
  CHECK(listed);
  check_error(t.curl("PUT", vm0 + "/page-access", R"({"gpa":"0x300001","access":"r--"})"), 422,
              "invalid_range");

  // Breakpoints: INT3 planted over the original byte, and restored on removal.
  uint8_t orig = t.sim->memory(0, 0x400010, 1)[0];
  auto add = t.curl("POST", vm0 + "/breakpoints", R"({"gpa":"0x400010"})");
  REQUIRE(add.status == 201);
  CHECK(add.j()["original"] == control::hex_u64(orig));
  CHECK(t.sim->memory(0, 0x400010, 1)[0] == 0xCC);
  auto bps = t.curl("GET", vm0 + "/breakpoints");
  INFO(bps.body);
  bool bp = false;
  json blist = bps.j()["breakpoints"];
  for (auto& x : blist)
    bp = bp || x["gpa"] == "0x400010";
  CHECK(bp);
  REQUIRE(t.curl("DELETE", vm0 + "/breakpoints/0x400010").status == 200);
  CHECK(t.sim->memory(0, 0x400010, 1)[0] == orig);
  check_error(t.curl("DELETE", vm0 + "/breakpoints/0x400010"), 404, "not_found");

  // Event enables per vCPU.
  auto ev = t.curl("PUT", vm0 + "/vcpus/1/events", R"({"enable":["descriptor"]})");
  REQUIRE(ev.status == 200);
  CHECK((t.sim->vcpu(0, 1)->enabled_events & (1u << 8)) != 0);
  REQUIRE(t.curl("PUT", vm0 + "/vcpus/1/events", R"({"disable":["descriptor"]})").status == 200);
  CHECK((t.sim->vcpu(0, 1)->enabled_events & (1u << 8)) == 0);
  check_error(t.curl("PUT", vm0 + "/vcpus/1/events", R"({"enable":["bogus"]})"), 400,
              "bad_request");
  REQUIRE(t.curl("POST", vm0 + "/resume").status == 200);

  REQUIRE(t.curl("POST", "/v1/policies/reload").status == 200);

  // Unhook: kvmid removes what it planted and closes; the VM (which does
  // not reconnect here) is then disconnected for every command.
  std::string vm1 = "/v1/vms/" + t.uuid(1);
  CHECK(t.sim->page_access(1, hot_gpa) == (kvmi::page_access_r | kvmi::page_access_x));
  REQUIRE(t.curl("POST", vm1 + "/unhook").status == 200);
  CHECK(t.sim->wait_until([&] { return !t.sim->vm(1).connected; }, kvmi::sim::ms(10000)));
  CHECK(t.sim->page_access(1, hot_gpa) == kvmi::page_access_rwx);
  CHECK(wait_until([&] { return t.curl("POST", vm1 + "/pause").status == 409; },
                   "kvmid to see the unhooked VM disconnected"));
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: the event stream carries each alert the simulator provokes") {
  e2e t;
  auto all = t.dir / "all.sse";
  auto only1 = t.dir / "vm1.sse";
  auto base = t.curl_base(t.token);
  auto a = base;
  a.insert(a.end(), {"-N", "http://localhost/v1/events?kind=alert"});
  pid_t all_pid = spawn(a, all.string(), (t.dir / "all.err").string());
  auto b = base;
  b.insert(b.end(), {"-N", "http://localhost/v1/events?vm=sim-vm-1&kind=alert"});
  pid_t vm1_pid = spawn(b, only1.string(), (t.dir / "vm1.err").string());
  auto watch_out = t.dir / "watch.out";
  pid_t watch_pid =
    spawn({KVMICTL_BIN, "--unix", t.api_sock, "--token", t.token, "--json", "watch", "--kind",
           "alert", "--count", "3"},
          watch_out.string(), (t.dir / "watch.err").string());
  // Streams are open once the first heartbeat line arrives.
  REQUIRE(file_has(all, ": keep-alive"));
  REQUIRE(file_has(only1, ": keep-alive"));
  // kvmictl has no heartbeat output: wait for its stream.
  REQUIRE(wait_until(
    [&] {
      return t.curl("GET", "/metrics").body.find("kvmid_event_streams 3\n") != std::string::npos;
    },
    "three open event streams"));

  auto m1 = get_within(t.sim->write_msr(0, 0, msr_lstar, 0xdead0000), "an LSTAR write on vm 0");
  CHECK(m1.event == kvmi::event_id::msr);
  CHECK(m1.value != 0xdead0000); // denied: the old value stays
  auto p1 = get_within(t.sim->access(0, 1, hot_gpa + 0x10, kvmi::page_access_w),
                       "a write to protected kernel text");
  CHECK(p1.event == kvmi::event_id::pf);
  auto m2 = get_within(t.sim->write_msr(1, 1, msr_lstar, 0xbeef0000), "an LSTAR write on vm 1");
  CHECK(m2.event == kvmi::event_id::msr);

  auto got = wait_events(all, {"msr-protection", "page-protection"}, 3);
  REQUIRE(got.size() == 3);
  std::multiset<std::string> seen;
  for (auto& e : got) {
    CHECK(e["kind"] == "alert");
    seen.insert(e["name"].get<std::string>() + "/" + e["vm_name"].get<std::string>() + "/"
                + std::to_string(e["vcpu"].get<int>()));
  }
  CHECK(seen == std::multiset<std::string>{"msr-protection/sim-vm-0/0",
                                           "page-protection/sim-vm-0/1",
                                           "msr-protection/sim-vm-1/1"});
  auto filtered = wait_events(only1, {"msr-protection", "page-protection"}, 1);
  REQUIRE(filtered.size() == 1);
  CHECK(filtered[0]["vm_name"] == "sim-vm-1");

  // kvmictl watch: one JSON line per event, and it exits after --count.
  int st = -2;
  wait_until([&] { return (st = try_reap(watch_pid)) != -2; }, "kvmictl watch --count 3 to exit");
  if (st == -2)
    stop(watch_pid);
  CHECK(st == 0);
  std::ifstream in(watch_out);
  std::string line;
  size_t lines = 0;
  while (std::getline(in, line)) {
    auto j = json::parse(line);
    CHECK(j["data"]["kind"] == "alert");
    ++lines;
  }
  CHECK(lines == 3);

  stop(all_pid);
  stop(vm1_pid);
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: a fresh kvmid exports every error reason at 0") {
  e2e t;
  auto m = t.curl("GET", "/metrics");
  REQUIRE(m.status == 200);
  auto samples = exposition_samples(m.body);
  auto at_zero = [&](const std::string& family, std::string_view reason) {
    auto series = family + "{reason=\"" + std::string(reason) + "\"}";
    CAPTURE(series);
    REQUIRE(samples.count(series) == 1);
    CHECK(samples[series] == 0);
  };
  for (auto r : all_protocol_error_reasons)
    at_zero("kvmid_protocol_errors_total", name(r));
  for (auto r : handshake_failure_reasons)
    at_zero("kvmid_handshake_failures_total", r);
}

TEST_CASE("e2e: /metrics has every family and passes promtool") {
  e2e t;
  get_within(t.sim->write_msr(0, 0, msr_lstar, 1), "an LSTAR write");
  t.curl("GET", "/v1/vms/nope");
  { // A device manager with a broken hello: a handshake failure.
    int s = connect_unix(t.kvmi_sock);
    send_all(s, std::string(48, 'Z'));
    read_all(s);
    ::close(s);
  }
  // A garbage frame from the "kernel": a protocol error (the VM reconnects).
  get_within(t.sim->inject_fault(0, "garbage"), "a garbage frame to be sent");
  http_reply m;
  wait_until(
    [&] {
      m = t.curl("GET", "/metrics");
      return exposition_sum(m.body, "kvmid_protocol_errors_total") >= 1
             && exposition_sum(m.body, "kvmid_handshake_failures_total") >= 1
             && m.body.find("kvmid_vms 2\n") != std::string::npos
             && m.body.find("kvmid_vcpus 4\n") != std::string::npos;
    },
    "the protocol error - the handshake failure and both VMs with their vCPUs back in /metrics");
  REQUIRE(m.status == 200);
  INFO(m.body);
  for (const char* fam :
       {"kvmid_vms", "kvmid_vcpus", "kvmid_events_total", "kvmid_alerts_total",
        "kvmid_commands_total", "kvmid_protocol_errors_total", "kvmid_handshake_failures_total",
        "kvmid_event_reply_seconds", "kvmid_send_queue_depth", "kvmid_bus_dropped_total",
        "kvmid_http_requests_total", "kvmid_build_info"}) {
    CAPTURE(fam);
    CHECK(m.body.find(std::string("# TYPE ") + fam + " ") != std::string::npos);
  }
  CHECK(m.body.find("kvmid_vms 2\n") != std::string::npos);
  CHECK(m.body.find("kvmid_vcpus 4\n") != std::string::npos);
  CHECK(m.body.find("kvmid_alerts_total{rule=\"msr-protection\"} 1\n") != std::string::npos);
  auto r = promtool_check(m.body);
  if (!r) {
    MESSAGE("skipped promtool: not installed (Debian package prometheus)");
    return;
  }
  INFO(r->output);
  CHECK(r->status == 0);
}

TEST_CASE("e2e: wrong tokens / malformed HTTP / huge bodies and slow clients") {
  e2e::options o;
  o.vms = 1;
  o.tcp = true;
  // Long enough that curl's own requests never hit them on a saturated
  // machine; the slow clients below wait them out.
  o.api_extra = {{"header_timeout_ms", 2000}, {"body_timeout_ms", 2000}, {"max_body_bytes", 65536}};
  e2e t(o);
  check_error(t.curl("GET", "/v1/vms", "", std::string()), 401, "unauthorized");
  check_error(t.curl("GET", "/v1/vms", "", std::string("wrong")), 401, "unauthorized");
  check_error(t.curl("GET", "/metrics", "", std::string("e2e-token-7f3")), 401, "unauthorized");
  check_error(t.curl("GET", "/v1/nothing"), 404, "no_route");
  check_error(t.curl("DELETE", "/v1/vms"), 405, "method_not_allowed");

  // Over TCP on loopback as well.
  auto tcp = run({CURL_BIN, "-sS", "--max-time", "10", "-H", "Authorization: Bearer " + t.token,
                  "-w", "\n%{http_code}",
                  "http://127.0.0.1:" + std::to_string(t.tcp_port) + "/v1/vms"});
  CHECK(tcp.out.ends_with("\n200"));

  { // Garbage: 400 and closed.
    int s = t.raw_connect();
    send_all(s, "\x16\x03\x01 this is not HTTP\r\n\r\n");
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    CHECK(out.starts_with("HTTP/1.1 400 "));
    CHECK(out.find("\"bad_request\"") != std::string::npos);
    CHECK(eof);
  }
  { // A huge body: refused from its Content-Length, connection closed.
    int s = t.raw_connect();
    send_all(s, "PUT /v1/vms/sim-vm-0/memory HTTP/1.1\r\nAuthorization: Bearer " + t.token
                       + "\r\nContent-Length: 100000000\r\n\r\n" + std::string(65536, 'x'));
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    CHECK(out.starts_with("HTTP/1.1 413 "));
    CHECK(eof);
    // And with curl, a body just over the limit.
    check_error(t.curl("PUT", "/v1/vms/sim-vm-0/memory", std::string(65537, ' ')), 413,
                "payload_too_large");
  }
  { // A slow client: half a request line, then nothing. Meanwhile others are served.
    int s = t.raw_connect();
    send_all(s, "GET /v1/vms HTTP/1.1\r\nAuthoriza");
    CHECK(t.curl("GET", "/v1/vms").status == 200);
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    CHECK(out.starts_with("HTTP/1.1 408 "));
    CHECK(out.find("\"request_timeout\"") != std::string::npos);
    CHECK(eof);
  }
  { // A body that never completes.
    int s = t.raw_connect();
    send_all(s, "PUT /v1/vms/sim-vm-0/memory HTTP/1.1\r\nAuthorization: Bearer " + t.token
                       + "\r\nContent-Length: 50\r\n\r\n{\"gpa\":");
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    CHECK(out.starts_with("HTTP/1.1 408 "));
    CHECK(eof);
  }
  { // Keep-alive: two requests on one connection, answered in order.
    int s = t.raw_connect();
    std::string auth = "Authorization: Bearer " + t.token + "\r\n";
    send_all(s, "GET /v1/vms HTTP/1.1\r\n" + auth + "\r\nGET /v1/nothing HTTP/1.1\r\n" + auth
                       + "Connection: close\r\n\r\n");
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    auto second = out.find("HTTP/1.1 404 ");
    CHECK(out.starts_with("HTTP/1.1 200 "));
    CHECK(second != std::string::npos);
    CHECK(eof);
  }
  // kvmid is still fine, and so are the VMs.
  CHECK(t.curl("GET", "/v1/vms").status == 200);
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: a request without the token is answered at its headers / its body never sent") {
  e2e::options o;
  o.vms = 1;
  e2e t(o);
  for (std::string auth : {"", "Authorization: Bearer wrong\r\n"}) {
    CAPTURE(auth);
    int s = t.raw_connect();
    // Only the headers of a 1 MiB write; the body is never sent.
    send_all(s, "PUT /v1/vms/sim-vm-0/memory HTTP/1.1\r\n" + auth
                       + "Content-Length: 1048576\r\n\r\n");
    bool eof = false;
    auto out = read_all(s, &eof);
    ::close(s);
    CHECK(out.starts_with("HTTP/1.1 401 "));
    CHECK(out.find("Connection: close\r\n") != std::string::npos);
    CHECK(out.find("\"unauthorized\"") != std::string::npos);
    CHECK(eof);
  }
  CHECK(t.curl("GET", "/v1/vms").status == 200);
}

TEST_CASE("e2e: the read token reads and streams but cannot change anything / calls are audited") {
  e2e::options o;
  o.vms = 1;
  o.read_token = "e2e-read-only-51c2";
  e2e t(o);
  std::string vm0 = "/v1/vms/" + t.uuid(0);
  auto stream = t.dir / "audit.sse";
  auto a = t.curl_base(o.read_token);
  a.insert(a.end(), {"-N", "http://localhost/v1/events?kind=lifecycle"});
  pid_t sse = spawn(a, stream.string(), (t.dir / "audit.err").string());
  REQUIRE(file_has(stream, ": keep-alive"));

  CHECK(t.curl("GET", "/v1/vms", "", o.read_token).status == 200);
  CHECK(t.curl("GET", vm0, "", o.read_token).status == 200);
  CHECK(t.curl("GET", "/metrics", "", o.read_token).status == 200);
  auto before = t.sim->memory(0, 0x200000, 2);
  check_error(t.curl("PUT", vm0 + "/memory", R"({"gpa":"0x200000","data":"cafe"})",
                     o.read_token),
              403, "forbidden");
  CHECK(t.sim->memory(0, 0x200000, 2) == before);
  check_error(t.curl("POST", vm0 + "/pause", "", o.read_token), 403, "forbidden");
  check_error(t.curl("POST", "/v1/policies/reload", "", o.read_token), 403, "forbidden");
  CHECK(t.curl("GET", vm0 + "/vcpus", "", o.read_token).j()["vcpus"][0]["state"] == "running");
  // The full token still may.
  REQUIRE(t.curl("POST", vm0 + "/pause").status == 200);
  REQUIRE(t.curl("POST", vm0 + "/resume").status == 200);

  auto got = wait_events(stream, {"api-call"}, 5);
  stop(sse);
  REQUIRE(got.size() == 5);
  std::multiset<std::string> seen;
  for (auto& e : got) {
    auto& f = e["fields"];
    CHECK(f["peer"].get<std::string>().starts_with("unix"));
    seen.insert(f["role"].get<std::string>() + " " + f["method"].get<std::string>() + " "
                + f["route"].get<std::string>() + " " + f["status"].get<std::string>());
  }
  CHECK(seen == std::multiset<std::string>{"read PUT /v1/vms/{vm}/memory 403",
                                           "read POST /v1/vms/{vm}/pause 403",
                                           "read POST /v1/policies/reload 403",
                                           "full POST /v1/vms/{vm}/pause 200",
                                           "full POST /v1/vms/{vm}/resume 200"});
  CHECK(t.log().find("api-call role=full") != std::string::npos);
}

TEST_CASE("e2e: an event a protection needs is not switched off without force / force alerts") {
  e2e::options o;
  o.vms = 1;
  e2e t(o);
  std::string vm0 = "/v1/vms/" + t.uuid(0);
  constexpr uint32_t msr_bit = 1u << 2;
  REQUIRE(t.curl("POST", vm0 + "/pause").status == 200);
  REQUIRE((t.sim->vcpu(0, 0)->enabled_events & msr_bit) != 0);
  auto refused = t.curl("PUT", vm0 + "/vcpus/0/events", R"({"disable":["msr"]})");
  check_error(refused, 409, "conflict");
  CHECK(refused.j()["error"]["message"].get<std::string>().find(
          "event 'msr' is needed by policy 'e2e' rule 'lstar'")
        != std::string::npos);
  CHECK((t.sim->vcpu(0, 0)->enabled_events & msr_bit) != 0);
  check_error(t.curl("PUT", vm0 + "/vcpus/0/events", R"({"events":["pf"]})"), 409, "conflict");

  auto forced = t.curl("PUT", vm0 + "/vcpus/0/events", R"({"disable":["msr"],"force":true})");
  REQUIRE(forced.status == 200);
  CHECK((t.sim->vcpu(0, 0)->enabled_events & msr_bit) == 0);
  auto m = t.curl("GET", "/metrics").body;
  CHECK(m.find("kvmid_alerts_total{rule=\"protection-override\"} 1\n") != std::string::npos);
  REQUIRE(t.curl("PUT", vm0 + "/vcpus/0/events", R"({"enable":["msr"]})").status == 200);
  REQUIRE(t.curl("POST", vm0 + "/resume").status == 200);
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: kvmictl warns that --token shows the secret / --token-file does not") {
  fs::path dir = fs::temp_directory_path() / ("kvmictl-token-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string missing = (dir / "missing.sock").string();
  auto with_token = run({KVMICTL_BIN, "--unix", missing, "--token", "s3cret", "vms"});
  CHECK(with_token.status == 3); // no server: only the warning matters here
  CHECK(with_token.err.find("warning: --token") != std::string::npos);
  CHECK(with_token.err.find("--token-file") != std::string::npos);
  CHECK(with_token.err.find("KVMID_TOKEN_FILE") != std::string::npos);
  auto tf = dir / "token";
  std::ofstream(tf) << "s3cret\n";
  ::chmod(tf.c_str(), 0600);
  auto from_file = run({KVMICTL_BIN, "--unix", missing, "--token-file", tf.string(), "vms"});
  CHECK(from_file.status == 3);
  CHECK(from_file.err.find("warning") == std::string::npos);
  auto from_env = run({"/usr/bin/env", "KVMID_TOKEN_FILE=" + tf.string(), KVMICTL_BIN, "--unix",
                       missing, "vms"});
  CHECK(from_env.status == 3);
  CHECK(from_env.err.find("warning") == std::string::npos);
  std::error_code ec;
  fs::remove_all(dir, ec);
}

TEST_CASE("e2e: a stream subscriber that never reads cannot hold up vCPU replies") {
  e2e::options o;
  o.vms = 1;
  o.vcpus = 1;
  o.api_extra = {{"stream_queue", 16}, {"stream_backlog", 4}};
  e2e t(o);
  int s = t.raw_connect();
  int small = 4096;
  ::setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  send_all(s, "GET /v1/events?kind=alert HTTP/1.1\r\nAuthorization: Bearer " + t.token
                     + "\r\n\r\n");
  char first[64];
  REQUIRE(::recv(s, first, sizeof first, 0) > 0); // the stream is open; never read again
  constexpr int writes = 3000;
  std::vector<std::future<kvmi::sim::outcome>> fs;
  for (int i = 0; i < writes; ++i)
    fs.push_back(t.sim->write_msr(0, 0, msr_lstar, 0x1000 + uint64_t(i)));
  int answered = 0;
  for (auto& f : fs)
    answered += get_within(std::move(f), "an LSTAR write's reply").event == kvmi::event_id::msr;
  CHECK(answered == writes); // every event got its reply
  auto m = t.curl("GET", "/metrics").body;
  auto pos = m.find("\nkvmid_bus_dropped_total ");
  REQUIRE(pos != std::string::npos);
  CHECK(std::stoull(m.substr(pos + 25)) > 0);
  ::close(s);
  CHECK(t.sim->make_report().ok());
}

TEST_CASE("e2e: kvmictl tables / --json and errors") {
  e2e t;
  auto vms = t.kvmictl({"vms"});
  REQUIRE(vms.status == 0);
  CHECK(vms.out.starts_with("UUID"));
  CHECK(vms.out.find("sim-vm-0") != std::string::npos);
  CHECK(vms.out.find("sim-vm-1") != std::string::npos);
  auto js = t.kvmictl({"--json", "vms"});
  REQUIRE(js.status == 0);
  CHECK(json::parse(js.out)["vms"].size() == 2);

  std::string u = t.uuid(0);
  auto vm = t.kvmictl({"vm", u});
  REQUIRE(vm.status == 0);
  bool v5 = test_dialect() == kvmid::test::dialect::v5; // v7: E820 RAM only
  CHECK(vm.out.find(v5 ? "nvlink2-gpu-ram" : "ram") != std::string::npos);
  CHECK(vm.out.find("name:          sim-vm-0") != std::string::npos);

  auto regs_running = t.kvmictl({"regs", u, "0"});
  CHECK(regs_running.status == 0);
  CHECK(regs_running.out.find("rip    " + control::hex_u64(t.sim->vcpu(0, 0)->regs.rip))
        != std::string::npos);
  REQUIRE(t.kvmictl({"pause", u}).status == 0);
  auto regs = t.kvmictl({"regs", u, "0"});
  REQUIRE(regs.status == 0);
  CHECK(regs.out.find("rip    " + control::hex_u64(t.sim->vcpu(0, 0)->regs.rip))
        != std::string::npos);
  t.sim->guest_write(0, 0x500000, {'k', 'v', 'm', 'i', 0, 1, 2, 3});
  auto rd = t.kvmictl({"read", u, "0x500000", "8"});
  REQUIRE(rd.status == 0);
  CHECK(rd.out == "0000000000500000  6b 76 6d 69 00 01 02 03                           |kvmi....|\n");
  auto rdj = t.kvmictl({"--json", "read", u, "0x500000", "8"});
  CHECK(json::parse(rdj.out)["data"] == "6b766d6900010203");
  REQUIRE(t.kvmictl({"resume", u}).status == 0);

  auto bad = t.kvmictl({"--unix", t.api_sock, "--token", "nope", "vms"}, false);
  CHECK(bad.status == 1);
  CHECK(bad.err.find("HTTP 401 unauthorized") != std::string::npos);
  auto env_only = run({"/usr/bin/env", "KVMID_API=unix:" + t.api_sock, "KVMID_TOKEN=" + t.token,
                       KVMICTL_BIN, "vms"});
  CHECK(env_only.status == 0);
  CHECK(env_only.out.find("sim-vm-1") != std::string::npos);
  auto via_server = t.kvmictl({"--server", "unix:" + t.api_sock, "--token", t.token, "vms"}, false);
  CHECK(via_server.status == 0);
  CHECK(via_server.out.find("sim-vm-0") != std::string::npos);
  auto down = t.kvmictl({"--unix", (t.dir / "missing.sock").string(), "vms"}, false);
  CHECK(down.status == 3);
  CHECK(t.kvmictl({"frobnicate"}).status == 2);
  CHECK(t.kvmictl({"regs", u}).status == 2);
}

}
