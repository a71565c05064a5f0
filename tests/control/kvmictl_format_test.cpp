#include "server/kvmictl/format.hpp"

#include <doctest/doctest.h>

using namespace kvmictl;
using nlohmann::json;

TEST_SUITE("control") {

TEST_CASE("kvmictl: vms table lines up and shows every VM") {
  json body = json::parse(R"({"vms":[
    {"uuid":"2b7c4e1a-0000-4000-8000-000000000001","name":"web1","vcpus":4,"state":"running",
     "connected_since":1700000000,"counters":{"events":12,"alerts":1,"protocol_errors":0}},
    {"uuid":"2b7c4e1a-0000-4000-8000-000000000002","name":"db","vcpus":16,"state":"paused",
     "counters":{"events":0,"alerts":0,"protocol_errors":3}}]})");
  std::string t = format_vms(body);
  CHECK(t == "UUID                                  NAME  VCPUS  STATE    CONNECTED             EVENTS  ALERTS  PROTO_ERRS\n"
             "2b7c4e1a-0000-4000-8000-000000000001  web1  4      running  2023-11-14T22:13:20Z  12      1       0\n"
             "2b7c4e1a-0000-4000-8000-000000000002  db    16     paused   -                     0       0       3\n");
  CHECK(format_vms(json::parse(R"({"vms":[]})")) ==
        "UUID  NAME  VCPUS  STATE  CONNECTED  EVENTS  ALERTS  PROTO_ERRS\n");
}

TEST_CASE("kvmictl: vm detail shows the memory map and vCPUs") {
  json vm = json::parse(R"({"uuid":"u1","name":"web1","state":"running","vcpus":2,
    "counters":{"events":5,"alerts":0,"protocol_errors":0},
    "memory_map":[{"gpa":"0x0","size":"0x80000000","type":"ram","online":true},
                  {"gpa":"0xfe000000","size":"0x1000","type":"mmio","online":false}],
    "vcpu_list":[{"index":0,"state":"paused","event":"pause_vcpu","enabled_events":["pf","breakpoint"],
                  "counters":{"events":3,"alerts":0}}]})");
  std::string t = format_vm(vm);
  CHECK(t.find("uuid:          u1\n") != std::string::npos);
  CHECK(t.find("0xfe000000  0x1000      mmio  no") != std::string::npos);
  CHECK(t.find("0     paused  pause_vcpu  pf,breakpoint  3       0") != std::string::npos);
}

TEST_CASE("kvmictl: registers / four a line") {
  json r = json::parse(R"({"vcpu":1,"mode":8,"regs":{"rax":"0x1","rbx":"0x2","rcx":"0x3",
    "rdx":"0x4","rip":"0xffffffff81000000"},"sregs":{"cr0":"0x80050033","cr3":"0x1000"},
    "msrs":[{"index":"0xc0000080","value":"0xd01"}]})");
  std::string t = format_regs(r);
  CHECK(t.starts_with("vcpu 1  mode 8\n"));
  CHECK(t.find("rax    0x1") != std::string::npos);
  CHECK(t.find("rip    0xffffffff81000000") != std::string::npos);
  CHECK(t.find("cr0 0x80050033") != std::string::npos);
  CHECK(t.find("msr 0xc0000080 = 0xd01\n") != std::string::npos);
}

TEST_CASE("kvmictl: hexdump") {
  std::vector<uint8_t> b = {'H', 'i', 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 'z'};
  std::string t = hexdump(0x1000, b);
  CHECK(t == "0000000000001000  48 69 00 ff 01 02 03 04  05 06 07 08 09 0a 0b 0c  |Hi..............|\n"
             "0000000000001010  7a                                                |z|\n");
  CHECK(hexdump(0, {}).empty());
}

TEST_CASE("kvmictl: error lines") {
  CHECK(format_error(404, R"({"error":{"code":"not_found","message":"no VM x"}})") ==
        "HTTP 404 not_found: no VM x");
  CHECK(format_error(502, "Bad Gateway") == "HTTP 502: Bad Gateway");
}

TEST_CASE("kvmictl: SSE parser across arbitrary chunk boundaries") {
  std::string stream = ": keep-alive\n\nid: 1\nevent: msr-protection\ndata: {\"vm\":\"u1\"}\n\n"
                       "event: dropped\r\ndata: {\"dropped\":3}\r\n\r\n"
                       "data: line1\ndata: line2\n\n"
                       "event: half";
  for (size_t chunk : {1u, 2u, 7u, 1000u}) {
    CAPTURE(chunk);
    std::vector<std::pair<std::string, std::string>> got;
    sse_parser p([&](const std::string& e, const std::string& d) { got.emplace_back(e, d); });
    for (size_t i = 0; i < stream.size(); i += chunk)
      p.feed(std::string_view(stream).substr(i, chunk));
    REQUIRE(got.size() == 3);
    CHECK(got[0] == std::pair<std::string, std::string>{"msr-protection", "{\"vm\":\"u1\"}"});
    CHECK(got[1] == std::pair<std::string, std::string>{"dropped", "{\"dropped\":3}"});
    CHECK(got[2] == std::pair<std::string, std::string>{"message", "line1\nline2"});
  }
}

TEST_CASE("kvmictl: one line per event") {
  json d = json::parse(R"({"kind":"alert","name":"page-protection","vm":"u1","vm_name":"web1",
    "vcpu":2,"message":"write to r-x page","fields":{"gpa":"0x1000","action":"allow-once"}})");
  std::string l = format_event("page-protection", d);
  CHECK(l == "page-protection vm=web1 vcpu=2 action=allow-once gpa=0x1000 : write to r-x page");
  CHECK(l.find('\n') == std::string::npos);
  CHECK(format_event("dropped", json::parse(R"({"dropped":4})")) == "dropped 4 records lost");
}

TEST_CASE("kvmictl: event lines lead with their time in ISO 8601 UTC") {
  CHECK(iso8601(0) == "1970-01-01T00:00:00.000Z");
  CHECK(iso8601(1796041502123456789) == "2026-11-30T12:25:02.123Z");
  json d = json::parse(R"({"time_ns":1796041502123456789,"kind":"alert","name":"cr-pin",
    "vm":"u1","vm_name":"web1","message":"m"})");
  CHECK(format_event("cr-pin", d) == "2026-11-30T12:25:02.123Z cr-pin vm=web1 : m");
}

TEST_CASE("kvmictl: page ranges and breakpoints as tables") {
  auto pr = format_page_ranges(json::parse(
    R"({"ranges":[{"gpa":"0x1000000","pages":5120,"len":"0x1400000","access":"r-x"}]})"));
  CHECK(pr == "GPA        LEN        PAGES  ACCESS\n0x1000000  0x1400000  5120   r-x\n");
  auto bp = format_breakpoints(json::parse(
    R"({"breakpoints":[{"gpa":"0x1234","original":"0x55","planted":true,"hits":3}]})"));
  CHECK(bp == "GPA     ORIGINAL  PLANTED  HITS\n0x1234  0x55      yes      3\n");
}

TEST_CASE("kvmictl: the SSE parser keeps the last id for a resume") {
  std::vector<std::string> got;
  sse_parser p([&](const std::string& e, const std::string&) { got.push_back(e); });
  p.feed("id: ab-1\nevent: x\ndata: {}\n\n: keep-alive\n\nid: ab-2\nevent: y\ndata: {}\n\n");
  CHECK(got == std::vector<std::string>{"x", "y"});
  CHECK(p.last_id() == "ab-2");
}

}
