// No JSON kvmid reads from outside can make it recurse without bound, and
// no error message grows with what was sent: the API bodies, the config
// file and the state files.
#include "tests/control/api_exchange.hpp"

#include "actors/bounded_json.hpp"
#include "actors/bp_store.hpp"
#include "actors/excerpt.hpp"
#include "server/config.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace kvmid;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* vm1 = "2b7c4e1a-0000-4000-8000-000000000001";
constexpr size_t small_body = 512; // an error body never quotes more than a few dozen bytes

std::string nested(size_t depth, std::string_view inner = "") {
  return std::string(depth, '[') + std::string(inner) + std::string(depth, ']');
}

test::http_answer one(test::api_conn& c, const std::string& raw) {
  c.feed(raw);
  auto a = test::split_answers(c.ctx.take());
  REQUIRE(a);
  REQUIRE(a->size() == 1);
  return (*a)[0];
}

// A 400 whose JSON error body is small and says `what`.
void check_short_400(const test::http_answer& a, std::string_view what) {
  CAPTURE(a.body.substr(0, 300));
  CHECK(a.status == 400);
  CHECK(a.body.size() < small_body);
  auto j = json::parse(a.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["error"]["code"] == "bad_request");
  CHECK(j["error"]["message"].get<std::string>().find(what) != std::string::npos);
}

struct temp_dir {
  fs::path p = fs::temp_directory_path() / ("kvmid-json-limits-" + std::to_string(::getpid()));
  temp_dir() { fs::create_directories(p); }
  ~temp_dir() { fs::remove_all(p); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(p / name, std::ios::binary) << text;
    return (p / name).string();
  }
};

} // namespace

TEST_SUITE("control") {

TEST_CASE("json limits: nesting is counted outside strings and comments") {
  CHECK(json_nesting_error(nested(64)).empty());
  CHECK(json_nesting_error(nested(65)) == "JSON nested deeper than 64 levels");
  CHECK(json_nesting_error(R"({"a": "[[[[[[[[[[", "b": "\"{{{{{{{{"})", 2).empty());
  CHECK(json_nesting_error("// [[[[[[\n/* {{{{{{ */ [1]", 1).empty());
  CHECK_FALSE(json_nesting_error(R"([{"x": [1]}])", 2).empty());
  std::string err;
  CHECK(parse_bounded_json(nested(64), err).is_array());
  CHECK(err.empty());
  CHECK(parse_bounded_json(nested(100000), err).is_discarded());
  CHECK(err == "JSON nested deeper than 64 levels");
  // nlohmann's message without its "last read" quote of the input.
  CHECK(parse_bounded_json("[\"" + std::string(100000, 'a') + "\x01\"]", err).is_discarded());
  CHECK(err.size() < 200);
  CHECK(err.find("aaaa") == std::string::npos);
  // Beyond double: nlohmann throws out_of_range quoting the whole number.
  CHECK(parse_bounded_json("[1" + std::string(5000, '0') + "]", err).is_discarded());
  CHECK(err == "number out of range");
}

TEST_CASE("json limits: an excerpt is short and escaped") {
  CHECK(excerpt("pf") == "pf");
  CHECK(excerpt(std::string(1000, 'x')) == std::string(40, 'x') + "...");
  CHECK(excerpt("a\"b\\c\n\xff") == "a\\\"b\\\\c\\x0a\\xff");
}

TEST_CASE("json limits: a 100000-deep events array is a short 400 and the API keeps serving") {
  test::api_conn c;
  std::string path = std::string("/v1/vms/") + vm1 + "/vcpus/0/events";
  for (auto* field : {"events", "enable", "disable"}) {
    CAPTURE(field);
    auto a = one(c, c.request("PUT", path, std::string(R"({")") + field + "\": "
                                                + nested(100000, "\"pf\"") + "}"));
    check_short_400(a, "nested deeper than 64");
  }
  // Shallow but not names: no dump of the element.
  std::string wide = "1";
  for (int i = 0; i < 50000; ++i)
    wide += ",1";
  auto a = one(c, c.request("PUT", path, R"({"events": [)" + nested(60, wide) + "]}"));
  check_short_400(a, "must hold event names");
  CHECK(c.be.last_mask == 0);
  auto ok = one(c, c.request("GET", "/v1/vms"));
  CHECK(ok.status == 200);
  CHECK_FALSE(c.ctx.closed);
}

TEST_CASE("json limits: long names and values in a body are quoted as short excerpts") {
  test::api_conn c;
  std::string longname(100000, 'k');
  check_short_400(one(c, c.request("POST", std::string("/v1/vms/") + vm1 + "/breakpoints",
                                   "{\"" + longname + "\": 1}")),
                  "unknown field 'kkkk");
  check_short_400(one(c, c.request("PUT", std::string("/v1/vms/") + vm1 + "/vcpus/0/events",
                                   "{\"events\": [\"" + longname + "\"]}")),
                  "unknown event 'kkkk");
  check_short_400(one(c, c.request("PUT", std::string("/v1/vms/") + vm1 + "/memory",
                                   "{\"gpa\": 1, \"data\": \"" + longname + "\x01")),
                  "not valid JSON");
  // A long VM id in the path: the core's "no VM <id>" is cut too.
  auto a = one(c, c.request("GET", "/v1/vms/" + std::string(8000, 'v')));
  CHECK(a.status == 404);
  CHECK(a.body.size() < small_body);
  auto b = one(c, c.request("GET", "/v1/nope/" + std::string(8000, 'p')));
  CHECK(b.status == 404);
  CHECK(b.body.size() < small_body);
  auto s = one(c, c.request("GET", "/v1/events?" + std::string(8000, 'q') + "=1"));
  check_short_400(s, "unknown query parameter");
}

TEST_CASE("json limits: a deeply nested config file is refused naming the file") {
  temp_dir d;
  auto path = d.write("kvmid.json", R"({"policies": )" + nested(100000) + "}");
  try {
    load_config(path);
    FAIL("accepted a config nested 100000 deep");
  } catch (const config_error& e) {
    CHECK(e.file == path);
    CHECK(e.reason == "not valid JSON: JSON nested deeper than 64 levels");
  }
  // Unknown fields: the pointer quotes a short excerpt of the name.
  auto p2 = d.write("long.json", "{\"" + std::string(100000, 'f') + "/x\": 1}");
  try {
    load_config(p2);
    FAIL("accepted an unknown field");
  } catch (const config_error& e) {
    CHECK(e.field == "/" + std::string(40, 'f') + "...");
    CHECK(std::string(e.what()).size() < 300 + p2.size());
  }
}

TEST_CASE("json limits: a deeply nested state file is refused naming the file") {
  temp_dir d;
  auto path = d.write(std::string("breakpoints-") + vm1 + ".json",
                      R"({"uuid": ")" + std::string(vm1) + R"(", "breakpoints": )"
                        + nested(100000) + "}");
  try {
    load_planted(d.p.string());
    FAIL("accepted a state file nested 100000 deep");
  } catch (const state_error& e) {
    std::string what = e.what();
    CHECK(what.find(path) != std::string::npos);
    CHECK(what.find("nested deeper than 64") != std::string::npos);
  }
}

} // TEST_SUITE
