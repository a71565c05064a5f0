#include "api_fakes.hpp"
#include "promtool.hpp"

#include "server/control/encoding.hpp"

#include "kvmid_version.hpp"
#include "proto/ids.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <thread>

using namespace kvmid;
using namespace kvmid::control;
using nlohmann::json;

namespace {

constexpr const char* token = "t0ken-for-tests";
constexpr const char* read_token = "read-only-t0ken";
constexpr const char* vm1 = "2b7c4e1a-0000-4000-8000-000000000001";

struct parsed {
  int status = 0;
  std::map<std::string, std::string> headers; // lower-case names
  std::string body;
  json j() const { return json::parse(body); }
};

// Splits the bytes a connection sent into responses (Content-Length framed).
std::vector<parsed> responses(std::string s) {
  std::vector<parsed> out;
  while (!s.empty()) {
    auto end = s.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    parsed p;
    std::string head = s.substr(0, end);
    REQUIRE(head.starts_with("HTTP/1.1 "));
    p.status = std::stoi(head.substr(9, 3));
    size_t pos = head.find("\r\n");
    while (pos != std::string::npos) {
      size_t next = head.find("\r\n", pos + 2);
      std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos
                                                                        : next - pos - 2);
      auto colon = line.find(": ");
      std::string k = line.substr(0, colon);
      for (auto& c : k)
        c = static_cast<char>(std::tolower(c));
      p.headers[k] = line.substr(colon + 2);
      pos = next;
    }
    size_t len = std::stoul(p.headers.at("content-length"));
    REQUIRE(s.size() >= end + 4 + len);
    p.body = s.substr(end + 4, len);
    s.erase(0, end + 4 + len);
    out.push_back(std::move(p));
  }
  return out;
}

struct harness {
  test::fake_backend be;
  test::fake_ring ring;
  api_options opts;
  std::unique_ptr<http_api> api;
  std::unique_ptr<net::connection_handler> h;
  test::fake_ctx ctx;

  std::string bearer = token; // what one() sends

  explicit harness(api_options o = {}) : opts(std::move(o)) {
    api = std::make_unique<http_api>(be, api_access(token_auth(token), token_auth(read_token)),
                                     opts, ring.poster());
    h = api->factory()();
    h->on_open(ctx);
  }
  ~harness() { h->on_close(ctx, net::close_reason::local); }

  void feed(std::string_view raw) {
    h->on_data(ctx, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()),
                                             raw.size()));
    ring.run(ctx, *h);
  }
  std::vector<parsed> exchange(std::string_view raw) {
    feed(raw);
    return responses(ctx.take());
  }
  parsed one(const std::string& method, const std::string& target, const std::string& body = "",
             bool auth = true) {
    std::string raw = method + " " + target + " HTTP/1.1\r\nHost: x\r\n";
    if (auth)
      raw += "Authorization: Bearer " + bearer + "\r\n";
    if (!body.empty() || method != "GET")
      raw += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    raw += "\r\n" + body;
    auto r = exchange(raw);
    REQUIRE(r.size() == 1);
    return r[0];
  }
};

void check_error(const parsed& p, int status, const std::string& code) {
  CAPTURE(p.body);
  CHECK(p.status == status);
  CHECK(p.headers.at("content-type") == "application/json");
  json j = json::parse(p.body);
  CHECK(j["error"]["code"] == code);
  CHECK(j["error"]["message"].is_string());
  CHECK_FALSE(j["error"]["message"].get<std::string>().empty());
}

} // namespace

TEST_SUITE("control") {

TEST_CASE("api: no token or a wrong one is 401 and closes / and the backend is not asked") {
  auto refused = [](const std::string& raw) {
    harness t;
    auto r = t.exchange(raw);
    REQUIRE(r.size() == 1);
    check_error(r[0], 401, "unauthorized");
    CHECK(r[0].headers["www-authenticate"].starts_with("Bearer"));
    CHECK(r[0].headers["connection"] == "close");
    REQUIRE(t.ctx.timers.count(3)); // lingers, then closes
    t.h->on_timer(t.ctx, 3);
    CHECK(t.ctx.closed);
    CHECK(t.be.calls.empty());
  };
  refused("GET /v1/vms HTTP/1.1\r\n\r\n");
  refused("GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n");
  // Unknown paths are 401 too without a token: nothing is revealed.
  refused("GET /v1/secret HTTP/1.1\r\n\r\n");
  refused("GET /metrics HTTP/1.1\r\n\r\n");
}

TEST_CASE("api: a request without the token is refused at its headers / its body is never read") {
  for (const char* auth : {"", "Authorization: Bearer wrong\r\n"}) {
    CAPTURE(auth);
    harness t;
    // Only the headers of a 1 MiB write: the answer comes before any body byte.
    t.feed(std::string("PUT /v1/vms/web1/memory HTTP/1.1\r\n") + auth
           + "Expect: 100-continue\r\nContent-Length: 1048576\r\n\r\n");
    auto r = responses(t.ctx.take());
    REQUIRE(r.size() == 1); // no 100 Continue invites the body
    check_error(r[0], 401, "unauthorized");
    CHECK(r[0].headers["connection"] == "close");
    // Body bytes that still arrive are dropped, not kept, and end the linger early.
    t.feed(std::string(1 << 20, 'x'));
    CHECK(t.ctx.out.empty());
    CHECK_FALSE(t.ctx.closed);
    t.feed(std::string(4 << 20, 'x'));
    CHECK(t.ctx.closed);
    CHECK(t.be.calls.empty());
  }
}

TEST_CASE("api: unknown path 404 / wrong method 405 with Allow") {
  harness t;
  check_error(t.one("GET", "/v1/nothing"), 404, "no_route");
  auto p = t.one("DELETE", "/v1/vms/x/memory");
  check_error(p, 405, "method_not_allowed");
  CHECK(p.headers["allow"] == "GET, PUT");
}

TEST_CASE("api: list VMs and one VM with memory map and vCPUs") {
  harness t;
  auto p = t.one("GET", "/v1/vms");
  REQUIRE(p.status == 200);
  auto j = p.j();
  REQUIRE(j["vms"].size() == 1);
  CHECK(j["vms"][0]["uuid"] == vm1);
  CHECK(j["vms"][0]["name"] == "web1");
  CHECK(j["vms"][0]["vcpus"] == 2);
  CHECK(j["vms"][0]["state"] == "running");
  CHECK(j["vms"][0]["counters"].contains("events"));
  CHECK_FALSE(j["vms"][0].contains("memory_map"));
  CHECK(j["vms"][0]["connected_since"] == 1700000000);
  CHECK(j["vms"][0]["setup"] == "done");
  CHECK(j["vms"][0]["policy"] == "linux");
  CHECK_FALSE(j["vms"][0].contains("policy_rules")); // the list stays small

  auto v = t.one("GET", std::string("/v1/vms/") + vm1).j();
  REQUIRE(v["memory_map"].size() == 2);
  CHECK(v["memory_map"][1]["gpa"] == "0xfe000000");
  CHECK(v["memory_map"][1]["type"] == "mmio");
  CHECK(v["memory_map"][1]["online"] == false);
  REQUIRE(v["vcpu_list"].size() == 2);
  CHECK(v["vcpu_list"][0]["enabled_events"] == json::array({"pf"}));
  CHECK(v["connected_since"] == 1700000000);
  // One VM with its policy's rules, not only its name.
  auto& pr = v["policy_rules"];
  CHECK(pr["name"] == "linux");
  REQUIRE(pr["page_protection"].size() == 1);
  CHECK(pr["page_protection"][0]["name"] == "kernel-text");
  CHECK(pr["page_protection"][0]["gpa"] == "0x100000");
  CHECK(pr["page_protection"][0]["size"] == "0x2000");
  CHECK(pr["page_protection"][0]["access"] == "r-x");
  CHECK(pr["page_protection"][0]["on_violation"] == "allow-once");
  REQUIRE(pr["msr_protection"].size() == 1);
  CHECK(pr["msr_protection"][0]["msr"] == "0xc0000082");
  CHECK(pr["cr_pins"] == json::array({"cr0.wp"}));
  REQUIRE(pr["breakpoints"].size() == 1);
  CHECK(pr["breakpoints"][0]["gpa"] == "0x1000");

  // By name as well as uuid (the core resolves both).
  CHECK(t.one("GET", "/v1/vms/web1/vcpus").j()["vcpus"].size() == 2);
  check_error(t.one("GET", "/v1/vms/nope"), 404, "not_found");
}

TEST_CASE("api: core errors map to the issue's statuses") {
  struct row {
    api_errc e;
    int status;
    const char* code;
  } rows[] = {{api_errc::not_found, 404, "not_found"},
              {api_errc::conflict, 409, "conflict"},
              {api_errc::unsafe_region, 422, "unsafe_region"},
              {api_errc::invalid, 422, "invalid"},
              {api_errc::timeout, 503, "kernel_timeout"},
              {api_errc::kernel, 502, "kernel_error"},
              {api_errc::internal, 500, "internal"}};
  for (auto& r : rows) {
    CAPTURE(r.code);
    harness t;
    t.be.fail = api_error{r.e, "scripted"};
    auto p = t.one("GET", std::string("/v1/vms/") + vm1 + "/vcpus/0/registers");
    check_error(p, r.status, r.code);
    CHECK(p.j()["error"]["message"] == "scripted");
  }
}

TEST_CASE("api: registers / with MSRs") {
  harness t;
  auto j = t.one("GET", std::string("/v1/vms/") + vm1 + "/vcpus/1/registers?msrs=0xc0000080,0x174").j();
  CHECK(j["vcpu"] == 1);
  CHECK(j["mode"] == 8);
  CHECK(j["regs"]["rip"] == "0xffffffff81000000");
  CHECK(j["regs"]["rax"] == "0x1");
  CHECK(j["sregs"]["cr3"] == "0x1000");
  REQUIRE(j["msrs"].size() == 2);
  CHECK(j["msrs"][0]["index"] == "0xc0000080");
  CHECK(t.be.calls.back() == std::string("get_registers ") + vm1 + " 1 msrs=2");
  check_error(t.one("GET", std::string("/v1/vms/") + vm1 + "/vcpus/x/registers"), 400,
              "bad_request");
  check_error(t.one("GET", std::string("/v1/vms/") + vm1 + "/vcpus/65536/registers"), 400,
              "bad_request");
  check_error(t.one("GET", std::string("/v1/vms/") + vm1 + "/vcpus/0/registers?msrs=zz"), 400,
              "bad_request");
}

TEST_CASE("api: read memory / hex and base64 / with range validation") {
  harness t;
  std::string base = std::string("/v1/vms/") + vm1 + "/memory";
  auto j = t.one("GET", base + "?gpa=0x1000&len=4").j();
  CHECK(j["gpa"] == "0x1000");
  CHECK(j["len"] == 4);
  CHECK(j["encoding"] == "hex");
  CHECK(j["data"] == "00010203");
  auto b = t.one("GET", base + "?gpa=4096&len=3&encoding=base64").j();
  CHECK(b["data"] == to_base64(std::vector<uint8_t>{0, 1, 2}));
  check_error(t.one("GET", base + "?gpa=0x1000"), 400, "bad_request");
  check_error(t.one("GET", base + "?gpa=x&len=1"), 400, "bad_request");
  check_error(t.one("GET", base + "?gpa=0&len=1&encoding=rot13"), 400, "bad_request");
  check_error(t.one("GET", base + "?gpa=0x1000&len=0"), 422, "invalid_range");
  check_error(t.one("GET", base + "?gpa=0x1000&len=65537"), 422, "invalid_range");
  check_error(t.one("GET", base + "?gpa=0xffffffffffffffff&len=2"), 422, "invalid_range");
  // None of the refused reads reached the core.
  size_t reads = 0;
  for (auto& c : t.be.calls)
    reads += c.starts_with("read_physical");
  CHECK(reads == 2);
}

TEST_CASE("api: write memory") {
  harness t;
  std::string base = std::string("/v1/vms/") + vm1 + "/memory";
  auto p = t.one("PUT", base, R"({"gpa":"0x2000","data":"cafe"})");
  REQUIRE(p.status == 200);
  CHECK(p.j()["len"] == 2);
  CHECK(t.be.memory[0x2000] == 0xca);
  CHECK(t.be.memory[0x2001] == 0xfe);
  REQUIRE(t.one("PUT", base, R"({"gpa":8192,"data":"AQI=","encoding":"base64"})").status == 200);
  CHECK(t.be.memory[0x2000] == 1);
  CHECK(t.be.memory[0x2001] == 2);
  check_error(t.one("PUT", base, "{not json"), 400, "bad_request");
  check_error(t.one("PUT", base, "[1,2]"), 400, "bad_request");
  check_error(t.one("PUT", base, R"({"gpa":1,"data":"00","extra":1})"), 400, "bad_request");
  check_error(t.one("PUT", base, R"({"data":"00"})"), 400, "bad_request");
  check_error(t.one("PUT", base, R"({"gpa":-1,"data":"00"})"), 400, "bad_request");
  check_error(t.one("PUT", base, R"({"gpa":1,"data":"0g"})"), 400, "bad_request");
  check_error(t.one("PUT", base, R"({"gpa":1,"data":""})"), 422, "invalid_range");
  t.be.fail = api_error{api_errc::unsafe_region, "0xfe000000 is mmio"};
  check_error(t.one("PUT", base, R"({"gpa":"0xfe000000","data":"00"})"), 422, "unsafe_region");
}

TEST_CASE("api: page access / breakpoints / events / pause/resume / unhook / reload") {
  harness t;
  std::string vm = std::string("/v1/vms/") + vm1;
  auto pa = t.one("GET", vm + "/page-access").j();
  CHECK(pa["ranges"][0]["gpa"] == "0x2000");
  CHECK(pa["ranges"][0]["pages"] == 1);
  CHECK(pa["ranges"][0]["len"] == "0x1000");
  CHECK(pa["ranges"][0]["access"] == "r-x");
  CHECK_FALSE(pa.contains("next"));
  check_error(t.one("GET", vm + "/page-access?limit=0"), 400, "bad_request");
  check_error(t.one("GET", vm + "/page-access?from=x"), 400, "bad_request");
  check_error(t.one("GET", vm + "/page-access?form=0"), 400, "bad_request");
  REQUIRE(t.one("PUT", vm + "/page-access", R"({"gpa":"0x3000","access":"r--"})").status == 200);
  CHECK(t.be.calls.back() == std::string("set_page_access ") + vm1 + " 12288 1");
  check_error(t.one("PUT", vm + "/page-access", R"({"gpa":"0x3001","access":"r--"})"), 422,
              "invalid_range");
  check_error(t.one("PUT", vm + "/page-access", R"({"gpa":"0x3000","access":"rw"})"), 400,
              "bad_request");

  auto bl = t.one("GET", vm + "/breakpoints").j();
  CHECK(bl["breakpoints"][0]["gpa"] == "0x1234");
  CHECK(bl["breakpoints"][0]["hits"] == 2);
  auto added = t.one("POST", vm + "/breakpoints", R"({"gpa":"0x4000"})");
  CHECK(added.status == 201);
  CHECK(added.j()["gpa"] == "0x4000");
  CHECK(t.one("DELETE", vm + "/breakpoints/0x4000").status == 200);
  CHECK(t.be.calls.back() == std::string("remove_breakpoint ") + vm1 + " 16384");
  check_error(t.one("DELETE", vm + "/breakpoints/zz"), 400, "bad_request");

  auto ev = t.one("PUT", vm + "/vcpus/1/events", R"({"events":["breakpoint","msr","pf"]})");
  REQUIRE(ev.status == 200);
  CHECK(t.be.last_mask == ((1u << 4) | (1u << 2) | (1u << 6)));
  CHECK(ev.j()["enabled_events"] == json::array({"msr", "breakpoint", "pf"}));
  // enable/disable edit the mask the core reports (pf is on in the fake).
  REQUIRE(t.one("PUT", vm + "/vcpus/1/events", R"({"enable":["cr"],"disable":["descriptor"]})")
            .status
          == 200);
  CHECK(t.be.last_mask == ((1u << 1) | (1u << 6)));
  check_error(t.one("PUT", vm + "/vcpus/1/events", R"({"events":["nope"]})"), 400, "bad_request");
  check_error(t.one("PUT", vm + "/vcpus/1/events", R"({"enable":["cr"],"force":1})"), 400,
              "bad_request");
  check_error(t.one("PUT", vm + "/vcpus/1/events", R"({"events":["unhook"]})"), 422, "invalid");
  check_error(t.one("PUT", vm + "/vcpus/1/events", R"({"events":[],"enable":["pf"]})"), 400,
              "bad_request");
  check_error(t.one("PUT", vm + "/vcpus/7/events", R"({"enable":["pf"]})"), 404, "not_found");

  CHECK(t.one("POST", vm + "/pause").j()["result"] == "paused");
  CHECK(t.one("POST", vm + "/resume").j()["result"] == "resumed");
  CHECK(t.one("POST", vm + "/unhook").j()["result"] == "unhooked");
  CHECK(t.one("POST", "/v1/policies/reload").j()["result"] == "reloaded");
  t.be.fail = api_error{api_errc::conflict, "VM disconnected"};
  check_error(t.one("POST", vm + "/pause"), 409, "conflict");
}

TEST_CASE("api: Expect: 100-continue gets an interim response before the body") {
  harness t;
  t.feed(std::string("PUT /v1/vms/web1/memory HTTP/1.1\r\nAuthorization: Bearer ") + token
         + "\r\nExpect: 100-continue\r\nContent-Length: 26\r\n\r\n");
  CHECK(t.ctx.take() == "HTTP/1.1 100 Continue\r\n\r\n");
  auto r = t.exchange(R"({"gpa":"0x10","data":"ab"})");
  REQUIRE(r.size() == 1);
  CHECK(r[0].status == 200);
  CHECK(t.be.memory[0x10] == 0xab);
  // Without the header, no interim response.
  auto plain = t.exchange(std::string("PUT /v1/vms/web1/memory HTTP/1.1\r\nAuthorization: Bearer ")
                          + token + "\r\nContent-Length: 26\r\n\r\n"
                          + R"({"gpa":"0x10","data":"cd"})");
  REQUIRE(plain.size() == 1);
  CHECK(plain[0].status == 200);
}

TEST_CASE("api: keep-alive and pipelining answer in order / one request at a time") {
  harness t;
  t.be.hold = true; // the core has not answered yet
  std::string a = std::string("GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer ") + token + "\r\n\r\n";
  std::string b = std::string("GET /v1/vms/web1 HTTP/1.1\r\nAuthorization: Bearer ") + token
                  + "\r\n\r\n";
  std::string c = std::string("POST /v1/vms/web1/pause HTTP/1.1\r\nAuthorization: Bearer ") + token
                  + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  t.feed(a + b + c);
  CHECK(t.ctx.out.empty());
  CHECK(t.be.calls.size() == 1); // the second waits for the first
  for (int i = 0; i < 3; ++i) {
    REQUIRE(t.be.held.size() == 1);
    auto fn = std::move(t.be.held.front());
    t.be.held.clear();
    fn();
    t.ring.run(t.ctx, *t.h);
  }
  auto rs = responses(t.ctx.take());
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].j().contains("vms"));
  CHECK(rs[0].headers["connection"] == "keep-alive");
  CHECK(rs[1].j()["name"] == "web1");
  CHECK(rs[2].j()["result"] == "paused");
  CHECK(rs[2].headers["connection"] == "close");
  CHECK(t.ctx.closed);
  CHECK(t.be.calls == std::vector<std::string>{"list_vms", "get_vm web1", "pause_vm web1"});
}

TEST_CASE("api: an answer arriving after the client left goes nowhere") {
  harness t;
  t.be.hold = true;
  t.feed(std::string("GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer ") + token + "\r\n\r\n");
  REQUIRE(t.be.held.size() == 1);
  t.h->on_close(t.ctx, net::close_reason::peer_closed);
  t.h.reset(); // the reactor destroys the handler
  t.ctx.take();
  t.be.held[0](); // must not touch the destroyed handler (ASan sees it if it does)
  CHECK(t.ctx.out.empty());
  // The reactor reuses the slot for a new client with a new id: whatever
  // the late answer posted is addressed to the old one and never reaches it.
  t.ctx.cid = 2;
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
  CHECK(t.ring.run(t.ctx, *t.h) == 0);
  CHECK(t.ctx.out.empty());
  CHECK_FALSE(t.ctx.closed);
  {
    std::lock_guard lk(t.ring.mu);
    for (auto& job : t.ring.q)
      CHECK(job.first == 1);
  }
  // And the new client is served normally.
  t.be.hold = false;
  auto r = t.one("GET", "/v1/vms");
  CHECK(r.status == 200);
}

TEST_CASE("api: malformed HTTP / huge bodies and huge headers are answered and closed") {
  {
    harness t;
    auto r = t.exchange("NOT HTTP AT ALL\r\n\r\n");
    REQUIRE(r.size() == 1);
    check_error(r[0], 400, "bad_request");
    CHECK(r[0].headers["connection"] == "close");
    CHECK_FALSE(t.ctx.closed); // lingers to drain the request first
    REQUIRE(t.ctx.timers.count(3));
    t.h->on_timer(t.ctx, 3);
    CHECK(t.ctx.closed);
  }
  {
    harness t;
    t.exchange("BAD\r\n\r\n");
    t.feed(std::string("GET /v1/vms HTTP/1.1\r\nAuthorization: Bearer ") + token + "\r\n\r\n");
    CHECK(t.ctx.out.empty()); // nothing after the error is served
    CHECK(t.be.calls.empty());
    t.feed(std::string(5 << 20, 'x')); // a client that keeps sending is cut off
    CHECK(t.ctx.closed);
  }
  {
    api_options o;
    o.http.max_body_bytes = 4096;
    harness t(o);
    auto r = t.exchange(std::string("PUT /v1/vms/web1/memory HTTP/1.1\r\nAuthorization: Bearer ")
                        + token + "\r\nContent-Length: 100000\r\n\r\n");
    REQUIRE(r.size() == 1);
    check_error(r[0], 413, "payload_too_large");
    CHECK_FALSE(t.ctx.closed); // lingers to drain the request first
    REQUIRE(t.ctx.timers.count(3));
    t.h->on_timer(t.ctx, 3);
    CHECK(t.ctx.closed);
    CHECK(t.be.calls.empty());
  }
  {
    api_options o;
    o.http.max_header_bytes = 1024;
    harness t(o);
    auto r = t.exchange("GET /v1/vms HTTP/1.1\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n");
    REQUIRE(r.size() == 1);
    check_error(r[0], 431, "headers_too_large");
    CHECK_FALSE(t.ctx.closed); // lingers to drain the request first
    REQUIRE(t.ctx.timers.count(3));
    t.h->on_timer(t.ctx, 3);
    CHECK(t.ctx.closed);
  }
}

TEST_CASE("api: a slow client gets 408 and is closed / an idle one is just closed") {
  api_options o;
  o.http.header_timeout = std::chrono::milliseconds(1);
  o.http.idle_timeout = std::chrono::milliseconds(1);
  o.http.body_timeout = std::chrono::milliseconds(1);
  {
    harness t(o);
    CHECK(t.ctx.timers.count(1)); // armed from the start (idle)
    t.feed("GET /v1/vms HTTP/1.1\r\nAuthor");
    REQUIRE(t.ctx.timers.count(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t.h->on_timer(t.ctx, 1);
    auto r = responses(t.ctx.take());
    REQUIRE(r.size() == 1);
    check_error(r[0], 408, "request_timeout");
    CHECK_FALSE(t.ctx.closed); // lingers to drain the request first
    REQUIRE(t.ctx.timers.count(3));
    t.h->on_timer(t.ctx, 3);
    CHECK(t.ctx.closed);
  }
  {
    harness t(o);
    t.feed(std::string("PUT /v1/vms/web1/memory HTTP/1.1\r\nAuthorization: Bearer ") + token
           + "\r\nContent-Length: 10\r\n\r\n{\"gp");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t.h->on_timer(t.ctx, 1);
    auto r = responses(t.ctx.take());
    REQUIRE(r.size() == 1);
    check_error(r[0], 408, "request_timeout");
    CHECK(t.be.calls.empty());
  }
  {
    harness t(o);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t.h->on_timer(t.ctx, 1);
    CHECK(t.ctx.out.empty());
    CHECK(t.ctx.closed);
  }
  {
    // A timer that fires early (before the deadline) only re-arms.
    api_options slow;
    slow.http.idle_timeout = std::chrono::milliseconds(600'000);
    harness t(slow);
    t.h->on_timer(t.ctx, 1);
    CHECK_FALSE(t.ctx.closed);
    CHECK(t.ctx.timers.count(1));
  }
}

TEST_CASE("api: connection limit answers 503") {
  api_options o;
  o.max_connections = 1;
  harness t(o);
  test::fake_ctx second;
  second.cid = 2;
  auto h2 = t.api->factory()();
  h2->on_open(second);
  auto r = responses(second.take());
  REQUIRE(r.size() == 1);
  check_error(r[0], 503, "too_many_connections");
  CHECK_FALSE(second.closed); // lingers to drain the request first
  REQUIRE(second.timers.count(3));
  h2->on_timer(second, 3);
  CHECK(second.closed);
  h2->on_close(second, net::close_reason::local);
  // Refused connections do not hold a slot; once the first one is gone too,
  // a new connection is served again.
  t.h->on_close(t.ctx, net::close_reason::peer_closed);
  test::fake_ctx third;
  third.cid = 3;
  auto h3 = t.api->factory()();
  h3->on_open(third);
  CHECK(third.out.empty());
  CHECK_FALSE(third.closed);
  h3->on_close(third, net::close_reason::local);
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
  CHECK_FALSE(t.ctx.closed);
}

TEST_CASE("api: /metrics is Prometheus text that promtool accepts") {
  harness t;
  t.be.reg.get_counter("kvmid_events_total", "KVMI events by kind.", {{"kind", "pf"}}).inc(3);
  t.be.reg.get_histogram("kvmid_event_reply_seconds", "Reply latency.", reply_latency_bounds())
    .observe(0.0002);
  t.one("GET", "/v1/vms");
  t.one("GET", "/nope");
  auto p = t.one("GET", "/metrics");
  REQUIRE(p.status == 200);
  CHECK(p.headers["content-type"].starts_with("text/plain; version=0.0.4"));
  CHECK(p.body.find("kvmid_events_total{kind=\"pf\"} 3\n") != std::string::npos);
  CHECK(p.body.find("kvmid_http_requests_total{code=\"200\",route=\"/v1/vms\"} 1\n")
        != std::string::npos);
  CHECK(p.body.find("kvmid_http_requests_total{code=\"404\",route=\"-\"} 1\n")
        != std::string::npos);
  CHECK(p.body.find("kvmid_event_reply_seconds_count 1\n") != std::string::npos);
  auto r = test::promtool_check(p.body);
  if (!r) {
    MESSAGE("skipped promtool: not installed (Debian package prometheus)");
    return;
  }
  INFO(r->output);
  CHECK(r->status == 0);
}

TEST_CASE("api: the event stream delivers filtered records and reports drops") {
  api_options o;
  o.stream_queue = 4;
  o.stream_backlog = 2;
  harness t(o);
  t.feed(std::string("GET /v1/events?vm=web1&kind=alert HTTP/1.1\r\nAuthorization: Bearer ")
         + token + "\r\n\r\n");
  std::string head = t.ctx.take();
  CHECK(head.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(head.find("Content-Type: text/event-stream\r\n") != std::string::npos);
  CHECK(t.ctx.timers.count(2)); // heartbeat
  CHECK_FALSE(t.ctx.timers.count(1)); // no read deadline on a stream
  CHECK(t.be.bus.subscribers() == 1);

  auto rec = [](std::string name, std::string vm, bus_kind k) {
    bus_record r;
    r.kind = k;
    r.name = std::move(name);
    r.vm = vm == "web1" ? vm1 : "other-uuid";
    r.vm_name = std::move(vm);
    r.vcpu = 1;
    r.message = "line\nwith newline";
    r.fields = {{"gpa", "0x1000"}};
    return r;
  };
  t.be.bus.publish(rec("page-protection", "web1", bus_kind::alert));
  t.be.bus.publish(rec("page-protection", "db", bus_kind::alert));     // other VM
  t.be.bus.publish(rec("vm-connected", "web1", bus_kind::lifecycle)); // other kind
  t.be.bus.publish(rec("msr-protection", "web1", bus_kind::alert));
  t.ring.run(t.ctx, *t.h);
  std::string s = t.ctx.take();
  CHECK(s.find("event: page-protection\ndata: {") != std::string::npos);
  CHECK(s.find("event: msr-protection\n") != std::string::npos);
  CHECK(s.find("vm-connected") == std::string::npos);
  CHECK(s.find("\"vm_name\":\"db\"") == std::string::npos);
  CHECK(s.find("line\\nwith newline") != std::string::npos); // escaped, framing intact
  // Every data line is one JSON object.
  size_t events = 0;
  for (size_t pos = 0; (pos = s.find("data: ", pos)) != std::string::npos; ++events) {
    auto end = s.find('\n', pos);
    auto j = json::parse(s.substr(pos + 6, end - pos - 6));
    CHECK(j["vm"] == vm1);
    CHECK(j["kind"] == "alert");
    CHECK(j["fields"]["gpa"] == "0x1000");
    pos = end;
  }
  CHECK(events == 2);

  // The client stops reading: the socket backlog fills, records are dropped
  // (never queued without bound), and the drop is reported once it reads again.
  t.ctx.queued_msgs = 10;
  for (int i = 0; i < 10; ++i)
    t.be.bus.publish(rec("page-protection", "web1", bus_kind::alert));
  t.ring.run(t.ctx, *t.h);
  CHECK(t.ctx.out.empty());
  t.ctx.queued_msgs = 0;
  t.be.bus.publish(rec("cr-pin", "web1", bus_kind::alert));
  t.ring.run(t.ctx, *t.h);
  s = t.ctx.take();
  CHECK(s.starts_with("event: dropped\ndata: {\"dropped\":"));
  auto dj = json::parse(s.substr(s.find("data: ") + 6, s.find('\n', s.find("data: ")) - s.find("data: ") - 6));
  CHECK(dj["dropped"].get<uint64_t>() == 10);
  CHECK(s.find("event: cr-pin\n") != std::string::npos);
  auto m = t.api->render_metrics();
  CHECK(m.find("kvmid_event_streams 1\n") != std::string::npos);
  CHECK(m.find("kvmid_bus_dropped_total 10\n") != std::string::npos);

  // Quiet stream: the heartbeat is a comment line.
  t.h->on_timer(t.ctx, 2);
  CHECK(t.ctx.take() == ": keep-alive\n\n");
  t.h->on_close(t.ctx, net::close_reason::peer_closed);
  CHECK(t.be.bus.subscribers() == 0);
  CHECK(t.api->render_metrics().find("kvmid_event_streams 0\n") != std::string::npos);
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
}

TEST_CASE("api: a stream resumed with Last-Event-ID replays the alerts it missed") {
  harness t;
  auto alert = [&](std::string name) {
    bus_record r;
    r.kind = bus_kind::alert;
    r.name = std::move(name);
    r.vm = vm1;
    r.vm_name = "web1";
    t.be.bus.publish(std::move(r));
  };
  alert("cr-pin");
  alert("msr-protection");
  std::string boot = t.be.bus.boot();
  auto open = [&](std::string last) {
    t.feed(std::string("GET /v1/events HTTP/1.1\r\nAuthorization: Bearer ") + token
           + "\r\nLast-Event-ID: " + last + "\r\n\r\n");
    t.ring.run(t.ctx, *t.h);
    return t.ctx.take();
  };
  // The client saw record 1: it gets 2, with its id, and no gap notice.
  std::string s = open(boot + "-1");
  CHECK(s.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(s.find("id: " + boot + "-2\nevent: msr-protection\n") != std::string::npos);
  CHECK(s.find("cr-pin") == std::string::npos);
  CHECK(s.find("replay-gap") == std::string::npos);
  t.h->on_close(t.ctx, net::close_reason::peer_closed);
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
  // An id of an earlier kvmid run: everything kept, after a gap notice.
  s = open("00000000deadbeef-2");
  CHECK(s.find("event: replay-gap\n") != std::string::npos);
  CHECK(s.find("event: replay-gap\n") < s.find("event: cr-pin\n"));
  CHECK(s.find("event: msr-protection\n") != std::string::npos);
  t.h->on_close(t.ctx, net::close_reason::peer_closed);
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
  auto bad = t.exchange(std::string("GET /v1/events HTTP/1.1\r\nAuthorization: Bearer ") + token
                        + "\r\nLast-Event-ID: 17\r\n\r\n");
  REQUIRE(bad.size() == 1);
  check_error(bad[0], 400, "bad_request");
  CHECK(t.be.bus.subscribers() == 0);
}

TEST_CASE("api: bad stream filters are 400") {
  harness t;
  check_error(t.one("GET", "/v1/events?color=red"), 400, "bad_request");
  check_error(t.one("GET", "/v1/events?kind=a%0Ab"), 400, "bad_request");
  CHECK(t.be.bus.subscribers() == 0);
}

namespace {

// One call of each route, with arguments the fake backend accepts.
struct route_call {
  route_id id;
  std::string method, target, body;
};

std::vector<route_call> every_route() {
  std::vector<route_call> out;
  for (auto& e : routes()) {
    std::string path(e.pattern);
    auto put = [&](const std::string& k, const std::string& v) {
      auto at = path.find(k);
      // A new string, not replace(): GCC 12 at -O3 reports a false
      // -Wrestrict inside basic_string::replace here.
      if (at != std::string::npos)
        path = path.substr(0, at) + v + path.substr(at + k.size());
    };
    put("{vm}", "web1");
    put("{vcpu}", "1");
    put("{gpa}", "0x4000");
    put("{asset}", "app.js");
    route_call c{e.id, std::string(e.method), path, ""};
    switch (e.id) {
      case route_id::read_memory: c.target += "?gpa=0x1000&len=4"; break;
      case route_id::write_memory: c.body = R"({"gpa":"0x2000","data":"cafe"})"; break;
      case route_id::set_page_access: c.body = R"({"gpa":"0x3000","access":"r--"})"; break;
      case route_id::add_breakpoint: c.body = R"({"gpa":"0x4000"})"; break;
      case route_id::set_vcpu_events: c.body = R"({"enable":["descriptor"]})"; break;
      case route_id::get_breakpoint: c.target = "/v1/vms/web1/breakpoints/0x1234"; break;
      default: break;
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::string field(const bus_record& r, const std::string& k) {
  for (auto& [key, v] : r.fields)
    if (key == k)
      return v;
  return "(none)";
}

std::vector<bus_record> audit_records(subscription& sub) {
  std::vector<bus_record> recs, out;
  sub.poll(recs);
  for (auto& r : recs)
    if (r.name == "api-call")
      out.push_back(std::move(r));
  return out;
}

} // namespace

TEST_CASE("api: turning off an event a protection needs is 409 unless forced / forcing alerts") {
  harness t;
  auto sub = t.be.bus.subscribe({}, 64); // lifecycle and alerts
  std::string ev = std::string("/v1/vms/") + vm1 + "/vcpus/1/events";
  // pf is enabled in the fake and the policy's page rule needs it.
  auto p = t.one("PUT", ev, R"({"disable":["pf"]})");
  check_error(p, 409, "conflict");
  CHECK(p.j()["error"]["message"].get<std::string>().find(
          "event 'pf' is needed by policy 'linux' rule 'kernel-text'")
        != std::string::npos);
  check_error(t.one("PUT", ev, R"({"events":["msr"]})"), 409, "conflict");
  check_error(t.one("PUT", ev, R"({"disable":["pf"],"force":false})"), 409, "conflict");
  for (auto& c : t.be.calls)
    CHECK_FALSE(c.starts_with("set_vcpu_events"));
  // Events that are not on cannot be lost: disabling msr here is no change.
  REQUIRE(t.one("PUT", ev, R"({"disable":["msr"]})").status == 200);
  std::vector<bus_record> recs;
  sub->poll(recs);
  for (auto& r : recs)
    CHECK(r.kind == bus_kind::lifecycle); // no alert so far
  recs.clear();

  auto forced = t.one("PUT", ev, R"({"disable":["pf"],"force":true})");
  REQUIRE(forced.status == 200);
  CHECK(t.be.last_mask == 0);
  sub->poll(recs);
  const bus_record* alert = nullptr;
  const bus_record* audit = nullptr;
  for (auto& r : recs) {
    if (r.kind == bus_kind::alert)
      alert = &r;
    if (r.name == "api-call")
      audit = &r;
  }
  REQUIRE(alert);
  CHECK(alert->name == "protection-override");
  CHECK(alert->vm == vm1);
  CHECK(alert->vm_name == "web1");
  CHECK(alert->vcpu == 1);
  CHECK(field(*alert, "events") == "pf");
  CHECK(field(*alert, "needed_by") == "policy 'linux' rule 'kernel-text'");
  CHECK(field(*alert, "role") == "full");
  REQUIRE(audit);
  CHECK(field(*audit, "forced") == "pf");
  CHECK(field(*audit, "status") == "200");
  CHECK(t.api->render_metrics().find("kvmid_alerts_total{rule=\"protection-override\"} 1\n")
        != std::string::npos);
}

TEST_CASE("api: the read token may only read / every mutating route is 403 for it") {
  for (auto& c : every_route()) {
    CAPTURE(c.method);
    CAPTURE(c.target);
    harness t;
    t.bearer = read_token;
    auto sub = t.be.bus.subscribe({}, 64);
    if (c.id == route_id::events) {
      t.feed("GET /v1/events HTTP/1.1\r\nAuthorization: Bearer " + t.bearer + "\r\n\r\n");
      CHECK(t.ctx.take().starts_with("HTTP/1.1 200 OK\r\n"));
      continue;
    }
    auto p = t.one(c.method, c.target, c.body);
    if (!mutating(c.id)) {
      CHECK(p.status == 200);
      CHECK(audit_records(*sub).empty());
      continue;
    }
    check_error(p, 403, "forbidden");
    CHECK(t.be.calls.empty());
    CHECK(p.j()["error"]["message"].get<std::string>().find("read-only") != std::string::npos);
    // The refused attempt is on the record too.
    auto recs = audit_records(*sub);
    REQUIRE(recs.size() == 1);
    CHECK(field(recs[0], "role") == "read");
    CHECK(field(recs[0], "status") == "403");
    // A body was declared and not read: the connection is not reused.
    CHECK(p.headers["connection"] == (c.body.empty() ? "keep-alive" : "close"));
  }
}

TEST_CASE("api: the full token may call every route") {
  for (auto& c : every_route()) {
    if (c.id == route_id::events)
      continue; // a stream (covered by the event stream test)
    CAPTURE(c.method);
    CAPTURE(c.target);
    harness t;
    auto p = t.one(c.method, c.target, c.body);
    CHECK(p.status / 100 == 2);
    // What a route creates, it names: the URL answers GET.
    if (p.status == 201) {
      CAPTURE(p.headers["location"]);
      auto at = route("GET", p.headers["location"]);
      CHECK(at.match);
    }
  }
}

TEST_CASE("api: each mutating call leaves one audit record saying who did what / reads leave none") {
  harness t;
  t.h->on_close(t.ctx, net::close_reason::local);
  t.ctx.peer_name = "unix:/run/kvmid/api.sock"; // a new connection from there
  t.h = t.api->factory()();
  t.h->on_open(t.ctx);
  auto sub = t.be.bus.subscribe({}, 256);
  for (auto& c : every_route()) {
    if (c.id == route_id::events)
      continue;
    CAPTURE(c.method);
    CAPTURE(c.target);
    auto p = t.one(c.method, c.target, c.body);
    auto recs = audit_records(*sub);
    if (!mutating(c.id)) {
      CHECK(recs.empty());
      continue;
    }
    REQUIRE(recs.size() == 1);
    auto& r = recs[0];
    CHECK(r.kind == bus_kind::lifecycle);
    CHECK(field(r, "role") == "full");
    CHECK(field(r, "peer") == "unix:/run/kvmid/api.sock");
    CHECK(field(r, "method") == c.method);
    CHECK(field(r, "route") == std::string(name(c.id)));
    CHECK(field(r, "status") == std::to_string(p.status));
    if (c.id != route_id::reload_policies) {
      CHECK(field(r, "vm") == "web1");
      CHECK(r.vm_name == "web1");
    }
    switch (c.id) {
      case route_id::write_memory:
        CHECK(field(r, "gpa") == "0x2000");
        CHECK(field(r, "len") == "2");
        break;
      case route_id::set_page_access:
        CHECK(field(r, "gpa") == "0x3000");
        CHECK(field(r, "access") == "r--");
        break;
      case route_id::add_breakpoint:
      case route_id::remove_breakpoint: CHECK(field(r, "gpa") == "0x4000"); break;
      case route_id::set_vcpu_events:
        CHECK(r.vcpu == 1);
        CHECK(field(r, "vcpu") == "1");
        CHECK(field(r, "events") == "pf,descriptor");
        break;
      default: break;
    }
  }
  // A failed call is recorded with its status.
  t.be.fail = api_error{api_errc::conflict, "VM disconnected"};
  check_error(t.one("POST", "/v1/vms/web1/pause"), 409, "conflict");
  auto recs = audit_records(*sub);
  REQUIRE(recs.size() == 1);
  CHECK(field(recs[0], "status") == "409");
}

TEST_CASE("api: config section parsing and validation") {
  auto ok = parse_api_options(json::parse(R"({"listen":["tcp:127.0.0.1:8700","unix:/run/kvmid/api.sock","tcp:[::1]:0"],
    "token_file":"/etc/kvmid/token","max_body_bytes":2048,"header_timeout_ms":500})"));
  REQUIRE(std::holds_alternative<api_options>(ok));
  auto& o = std::get<api_options>(ok);
  REQUIRE(o.listen.size() == 3);
  CHECK(o.listen[0].type == net::listen_spec::kind::tcp);
  CHECK(o.listen[0].host == "127.0.0.1");
  CHECK(o.listen[0].port == 8700);
  CHECK(o.listen[1].type == net::listen_spec::kind::unix_socket);
  CHECK(o.listen[1].path == "/run/kvmid/api.sock");
  CHECK(o.listen[2].host == "::1");
  CHECK(o.http.max_body_bytes == 2048);
  CHECK(o.http.header_timeout == std::chrono::milliseconds(500));
  CHECK(o.token_file == "/etc/kvmid/token");
  CHECK(o.read_token_file.empty());
  auto ro = parse_api_options(json::parse(
    R"({"listen":["unix:/a"],"token_file":"/t","read_token_file":"/etc/kvmid/read.token"})"));
  REQUIRE(std::holds_alternative<api_options>(ro));
  CHECK(std::get<api_options>(ro).read_token_file == "/etc/kvmid/read.token");

  struct bad_case {
    const char* json;
    const char* mentions;
  } bad[] = {
    {R"({"listen":["tcp:127.0.0.1:8700"]})", "token_file"},
    {R"({"token_file":"/t"})", "listen"},
    {R"({"token_file":"/t","listen":[]})", "listen"},
    {R"({"token_file":"/t","listen":["tcp:0.0.0.0:8700"]})", "loopback"},
    {R"({"token_file":"/t","listen":["tcp:localhost:8700"]})", "numeric"},
    {R"({"token_file":"/t","listen":["tcp:127.0.0.1:70000"]})", "port"},
    {R"({"token_file":"/t","listen":["unix:relative.sock"]})", "absolute"},
    {R"({"token_file":"/t","listen":["http://x"]})", "expected"},
    {R"({"token_file":"/t","listen":["unix:/a"],"max_body_bytes":-1})", "max_body_bytes"},
    {R"({"token_file":"/t","listen":["unix:/a"],"idle_timeout_ms":0})", "idle_timeout_ms"},
    {R"({"token_file":"/t","listen":["unix:/a"],"colour":1})", "colour"},
    {R"({"token_file":"/t","listen":["unix:/a"],"read_token_file":""})", "read_token_file"},
    {R"({"token_file":"/t","listen":["unix:/a"],"read_token_file":7})", "read_token_file"},
    {R"([1])", "object"},
  };
  for (auto& b : bad) {
    CAPTURE(b.json);
    auto r = parse_api_options(json::parse(b.json));
    REQUIRE(std::holds_alternative<std::string>(r));
    CHECK(std::get<std::string>(r).find(b.mentions) != std::string::npos);
  }
  auto remote = parse_api_options(
    json::parse(R"({"token_file":"/t","listen":["tcp:0.0.0.0:8700"],"allow_remote":true,
                    "tls":{"cert_file":"/c","key_file":"/k"}})"));
  CHECK(std::holds_alternative<api_options>(remote));
}


TEST_CASE("api: POST breakpoints answers 201 with a Location that GET answers") {
  harness t;
  std::string vm = std::string("/v1/vms/") + vm1;
  auto added = t.one("POST", vm + "/breakpoints", R"({"gpa":"0x1234"})");
  REQUIRE(added.status == 201);
  CHECK(added.headers["location"] == vm + "/breakpoints/0x1234");
  auto got = t.one("GET", added.headers["location"]);
  REQUIRE(got.status == 200);
  CHECK(got.j()["gpa"] == "0x1234");
  CHECK(got.j()["hits"] == 2);
  check_error(t.one("GET", vm + "/breakpoints/0x5000"), 404, "not_found");
  check_error(t.one("GET", vm + "/breakpoints/zz"), 400, "bad_request");
  // A failed create carries no Location.
  t.be.fail = api_error{api_errc::conflict, "breakpoint exists"};
  auto p = t.one("POST", vm + "/breakpoints", R"({"gpa":"0x1234"})");
  check_error(p, 409, "conflict");
  CHECK_FALSE(p.headers.count("location"));
}

TEST_CASE("api: GET /healthz answers without a token while the core answers") {
  harness t;
  auto p = t.one("GET", "/healthz", "", false);
  CHECK(p.status == 200);
  CHECK(p.j() == json{{"status", "ok"}});
  CHECK(p.headers["connection"] == "keep-alive");
  CHECK(t.be.calls.size() == 1); // asked the core: a round trip, not a constant
  t.bearer = "wrong";
  CHECK(t.one("GET", "/healthz").status == 200);
  t.be.fail = api_error{api_errc::internal, "actor system gone"};
  check_error(t.one("GET", "/healthz", "", false), 503, "unavailable");
}

TEST_CASE("api: GET /healthz without a token reads no body") {
  harness t;
  auto r = t.exchange("GET /healthz HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n");
  REQUIRE(r.size() == 1);
  check_error(r[0], 400, "bad_request");
  CHECK(r[0].headers["connection"] == "close");
  CHECK(t.be.calls.empty());
}

TEST_CASE("api: GET /v1/version names the build and the protocol dialects") {
  harness t;
  check_error(t.one("GET", "/v1/version", "", false), 401, "unauthorized");
  harness r;
  r.bearer = read_token;
  auto p = r.one("GET", "/v1/version");
  REQUIRE(p.status == 200);
  auto j = p.j();
  CHECK(j["version"] == std::string(kvmid::build_version));
  CHECK(j["build_type"] == std::string(kvmid::build_type));
  CHECK(j["api"] == "v1");
  CHECK(j["protocol"]["kvmi_version"] == kvmi::version);
  CHECK(j["protocol"]["dialects"] == json::array({"kvmi", "qemu-v5"}));
  CHECK(j["protocol"]["versions"] == json::array({"v5", "v7"}));
}

TEST_CASE("api: an unknown query parameter is 400 naming it on every route") {
  for (auto& c : every_route()) {
    CAPTURE(c.method);
    CAPTURE(c.target);
    harness t;
    auto sub = t.be.bus.subscribe({}, 64);
    std::string target = c.target + (c.target.find('?') == std::string::npos ? "?" : "&")
                         + "lenght=4";
    auto p = c.id == route_id::healthz ? t.one(c.method, target, c.body, false)
                                       : t.one(c.method, target, c.body);
    check_error(p, 400, "bad_request");
    auto msg = p.j()["error"]["message"].get<std::string>();
    CHECK(msg.find("unknown query parameter 'lenght'") != std::string::npos);
    CHECK(msg.find(std::string(name(c.id))) != std::string::npos);
    CHECK(t.be.calls.empty()); // refused before the core is asked
    CHECK(t.be.bus.subscribers() == 1); // and no stream was opened
    // A refused mutating call is still on the audit record.
    CHECK(audit_records(*sub).size() == (mutating(c.id) ? 1u : 0u));
  }
}

TEST_CASE("api: the query parameters a route takes are not refused") {
  harness t;
  std::string vm = std::string("/v1/vms/") + vm1;
  CHECK(t.one("GET", vm + "/memory?gpa=0x1000&len=4&encoding=base64").status == 200);
  CHECK(t.one("GET", vm + "/vcpus/0/registers?msrs=0x174").status == 200);
  // An empty item or a bare '?' names no parameter.
  CHECK(t.one("GET", "/v1/vms?").status == 200);
  CHECK(t.one("GET", vm + "/memory?gpa=0x1000&&len=4").status == 200);
  // Names are compared decoded: %6Cen is len.
  CHECK(t.one("GET", vm + "/memory?gpa=0x1000&%6Cen=4").status == 200);
  auto p = t.one("GET", vm + "/memory?gpa=0x1000&len=4&x%3Dy=1");
  check_error(p, 400, "bad_request");
  CHECK(p.j()["error"]["message"].get<std::string>().find("'x=y'") != std::string::npos);
}

TEST_CASE("api: event stream kinds that match no record are 400") {
  for (const char* q : {"kind=alerts", "kind=alert,nosuch", "kind=page-protecton", "kind=vm-conected"}) {
    CAPTURE(q);
    harness t;
    auto p = t.one("GET", std::string("/v1/events?") + q);
    check_error(p, 400, "bad_request");
    CHECK(p.j()["error"]["message"].get<std::string>().starts_with("unknown kind '"));
    CHECK(t.be.bus.subscribers() == 0);
  }
  // Every kind and every published record name opens a stream.
  for (const char* q : {"kind=alert,lifecycle,event,report", "kind=pf,msr", "kind=vm-connected",
                        "kind=page-protection,cr-pin,protection-override", "kind=api-call",
                        "kind=hypercall,breakpoint-hit"}) {
    CAPTURE(q);
    harness t;
    t.feed(std::string("GET /v1/events?") + q + " HTTP/1.1\r\nAuthorization: Bearer " + token
           + "\r\n\r\n");
    CHECK(t.ctx.take().starts_with("HTTP/1.1 200 OK\r\n"));
  }
}

TEST_CASE("api: event stream vm values that name no VM kvmid knows are 400") {
  for (std::string q : {std::string("vm=web2"), std::string("vm=web1,nosuch"),
                        "vm=" + std::string(vm1) + "&vm=x"}) {
    CAPTURE(q);
    harness t;
    auto p = t.one("GET", "/v1/events?" + q);
    check_error(p, 400, "bad_request");
    CHECK(p.j()["error"]["message"].get<std::string>().starts_with("unknown vm '"));
    CHECK(p.headers["connection"] == "keep-alive");
    CHECK(t.be.bus.subscribers() == 0);
    CHECK(t.one("GET", "/v1/vms").status == 200); // the connection still serves
  }
  for (std::string q : {std::string("vm=web1"), "vm=" + std::string(vm1),
                        "vm=web1," + std::string(vm1)}) {
    CAPTURE(q);
    harness t;
    t.feed("GET /v1/events?" + q + " HTTP/1.1\r\nAuthorization: Bearer " + token + "\r\n\r\n");
    CHECK(t.ctx.take().starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(t.be.bus.subscribers() == 1);
  }
  harness t;
  t.be.fail = api_error{api_errc::internal, "registry gone"};
  check_error(t.one("GET", "/v1/events?vm=web1"), 500, "internal");
  CHECK(t.be.bus.subscribers() == 0);
}

TEST_CASE("api: a name-only kind filter also carries reports such as hypercall") {
  harness t;
  t.feed(std::string("GET /v1/events?kind=breakpoint-hit HTTP/1.1\r\nAuthorization: Bearer ")
         + token + "\r\n\r\n");
  REQUIRE(t.ctx.take().starts_with("HTTP/1.1 200 OK\r\n"));
  bus_record r;
  r.kind = bus_kind::report;
  r.name = "breakpoint-hit";
  r.vm = vm1;
  t.be.bus.publish(r);
  t.ring.run(t.ctx, *t.h);
  CHECK(t.ctx.take().find("event: breakpoint-hit\n") != std::string::npos);
}

}
