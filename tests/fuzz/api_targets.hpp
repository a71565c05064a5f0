// Fuzz targets for the control API, on the fakes of tests/control/
// (same harness in the libFuzzer binary and in fuzz_replay_test).
//
// Invariants beyond "no crash, no over-read, no unbounded recursion":
//  - what a connection sends is a well-formed sequence of responses;
//  - every status is one the API documents for client input (no 5xx);
//  - every error body is {"error": {"code", "message"}} and small: a
//    message quotes only a short excerpt of what was sent;
//  - every 2xx JSON body is valid JSON;
//  - a body route answers exactly once, and 400 to JSON nested deeper than
//    max_json_depth.
#pragma once

#include "tests/control/api_exchange.hpp"
#include "tests/fuzz/fuzz_assert.hpp"

#include "actors/bounded_json.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace kvmi::fuzz {

// Documented error bodies are a few hundred bytes; control bytes in a
// quoted path may cost 6 bytes each in JSON.
inline constexpr size_t max_error_body = 2048;

inline void check_answer(int status, std::string_view content_type, std::string_view body) {
  static const int allowed[] = {100, 200, 201, 400, 401, 404, 405, 409, 413, 422, 431};
  KVMI_FUZZ_ASSERT(std::find(std::begin(allowed), std::end(allowed), status) != std::end(allowed));
  if (status < 200 || content_type != "application/json")
    return;
  auto j = nlohmann::json::parse(body, nullptr, false);
  KVMI_FUZZ_ASSERT(j.is_object());
  if (status >= 400) {
    KVMI_FUZZ_ASSERT(body.size() <= max_error_body);
    KVMI_FUZZ_ASSERT(j.contains("error") && j["error"].is_object());
    KVMI_FUZZ_ASSERT(j["error"]["code"].is_string() && j["error"]["message"].is_string());
  }
}

// Input: byte 0 seeds the chunk sizes; the rest is what a client sent on
// one connection (authorised when it carries the fake's token).
inline int http_request(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  uint32_t state = data[0] * 2654435761u + 1;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  kvmid::test::api_conn c;
  while (!in.empty()) {
    state = state * 1103515245u + 12345u;
    size_t n = std::min<size_t>(in.size(), 1 + (state >> 16) % 512);
    c.feed(in.substr(0, n));
    in.remove_prefix(n);
  }
  auto answers = kvmid::test::split_answers(c.ctx.out);
  KVMI_FUZZ_ASSERT(answers.has_value());
  for (auto& a : *answers)
    check_answer(a.status, a.content_type, a.body);
  return 0;
}

struct body_route {
  const char* method;
  const char* path;
};
inline constexpr body_route body_routes[] = {
  {"PUT", "/v1/vms/web1/vcpus/0/events"},
  {"PUT", "/v1/vms/web1/memory"},
  {"PUT", "/v1/vms/web1/page-access"},
  {"POST", "/v1/vms/web1/breakpoints"},
};

// Input: byte 0 picks one of body_routes; the rest is its JSON body, given
// straight to http_api::dispatch.
inline int json_body(const uint8_t* data, size_t size) {
  if (size < 1)
    return 0;
  auto& rt = body_routes[data[0] % std::size(body_routes)];
  kvmid::control::request r;
  r.method = rt.method;
  r.target = r.path = rt.path;
  r.body.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  auto m = kvmid::control::route(r.method, r.path);
  KVMI_FUZZ_ASSERT(m.match.has_value());
  kvmid::test::fake_backend be;
  kvmid::test::fake_ring ring;
  kvmid::control::http_api api(be, kvmid::control::token_auth("t"), {}, ring.poster());
  int replies = 0;
  kvmid::control::response got;
  api.dispatch(*m.match, r, [&](kvmid::control::response x) {
    ++replies;
    got = std::move(x);
  });
  KVMI_FUZZ_ASSERT(replies == 1);
  check_answer(got.status, got.content_type, got.body);
  if (!kvmid::json_nesting_error(r.body).empty())
    KVMI_FUZZ_ASSERT(got.status == 400);
  return 0;
}

inline std::string seed_text(uint8_t head, const std::string& rest) {
  return std::string(1, char(head)) + rest;
}

// Seeds: one authorised request per route, bodies included, plus a
// pipelined pair and a nested body.
inline std::vector<std::vector<uint8_t>> http_seeds() {
  using kvmid::test::api_conn;
  const std::string vm = "/v1/vms/web1";
  std::vector<std::string> raw = {
    api_conn::request("GET", "/v1/vms"),
    api_conn::request("GET", vm),
    api_conn::request("GET", vm + "/vcpus"),
    api_conn::request("POST", vm + "/pause"),
    api_conn::request("POST", vm + "/resume"),
    api_conn::request("POST", vm + "/unhook"),
    api_conn::request("GET", vm + "/vcpus/0/registers?msrs=0xc0000082,0x10"),
    api_conn::request("PUT", vm + "/vcpus/1/events", R"({"events": ["pf", "breakpoint"]})"),
    api_conn::request("PUT", vm + "/vcpus/0/events", R"({"enable": ["cr"], "disable": ["pf"]})"),
    api_conn::request("GET", vm + "/memory?gpa=0x1000&len=16&encoding=base64"),
    api_conn::request("PUT", vm + "/memory", R"({"gpa": "0x1000", "data": "90cc"})"),
    api_conn::request("GET", vm + "/page-access"),
    api_conn::request("PUT", vm + "/page-access", R"({"gpa": 4096, "access": "r-x"})"),
    api_conn::request("GET", vm + "/breakpoints"),
    api_conn::request("POST", vm + "/breakpoints", R"({"gpa": "0x1234"})"),
    api_conn::request("DELETE", vm + "/breakpoints/0x1234"),
    api_conn::request("POST", "/v1/policies/reload"),
    api_conn::request("GET", "/v1/events?vm=web1&kind=alert"),
    api_conn::request("GET", "/metrics"),
    api_conn::request("GET", "/v1/vms") + api_conn::request("DELETE", "/v1/vms"),
    api_conn::request("PUT", vm + "/vcpus/0/events", R"({"events": [[[["pf"]]]]})"),
    "GET /v1/vms HTTP/1.1\r\nHost: x\r\n\r\n",
  };
  std::vector<std::vector<uint8_t>> seeds;
  uint8_t head = 0;
  for (auto& s : raw) {
    auto t = seed_text(head, s);
    head = static_cast<uint8_t>(head + 37);
    seeds.emplace_back(t.begin(), t.end());
  }
  return seeds;
}

inline std::vector<std::vector<uint8_t>> json_body_seeds() {
  const std::pair<uint8_t, std::string> bodies[] = {
    {0, R"({"events": ["pf", "breakpoint", "cr"]})"},
    {0, R"({"enable": ["msr"], "disable": ["pf"]})"},
    {0, R"({"events": [["pf"]], "x": 1})"},
    {1, R"({"gpa": "0x1000", "data": "kvmi", "encoding": "base64"})"},
    {1, R"({"gpa": 4096, "data": "90cc"})"},
    {2, R"({"gpa": "0x2000", "access": "---"})"},
    {3, R"({"gpa": 18446744073709551615})"},
    {3, R"({"gpa": {"a": [1, 2.5, null, true, "\u00e9"]}})"},
  };
  std::vector<std::vector<uint8_t>> seeds;
  for (auto& [route, body] : bodies) {
    auto t = seed_text(route, body);
    seeds.emplace_back(t.begin(), t.end());
  }
  return seeds;
}

} // namespace kvmi::fuzz
