// config/kvmid.schema.json says what the parser says: the example config
// validates, and a config the parser refuses for a wrong type or value is
// refused by the schema too.
#include "server/config.hpp"
#include "tests/support/schema_check.hpp"

#include <doctest/doctest.h>

#include <fstream>

using namespace kvmid;
using nlohmann::json;

namespace {

json example() {
  std::ifstream in(KVMID_SOURCE_DIR "/config/kvmid.json");
  return json::parse(in, nullptr, true, true);
}

// Where the parser stops, or "(accepted)".
std::string parser_field(const json& j) {
  try {
    parse_config(j, "test.json");
  } catch (const config_error& e) {
    return e.field;
  }
  return "(accepted)";
}

} // namespace

TEST_CASE("the example config validates against the schema") {
  auto v = test::check_against_schema(example());
  if (!v.available) {
    MESSAGE("skipped: " << v.output); // python3-jsonschema (scripts/deps.sh) is missing
    return;
  }
  INFO(v.output);
  CHECK(v.valid);
}

TEST_CASE("configs the parser refuses for their types are refused by the schema too") {
  struct bad_case {
    std::string pointer;
    json value;
  };
  const std::vector<bad_case> cases = {
    {"/log_level", 5},
    {"/log_level", "chatty"},
    {"/cookie_file", 7},
    {"/handshake", "v4"},
    {"/handshake_timeout_ms", "10s"},
    {"/command_timeout_ms", -1},
    {"/workers", "two"},
    {"/poll_us", "fast"},
    {"/state_dir", 7},
    {"/listeners", json::object()},
    {"/listeners/0/type", "udp"},
    {"/listeners/0/path", 1},
    {"/policies", "all"},
    {"/policies/0/name", 3},
    {"/policies/0/match", "*"},
    {"/policies/0/page_protection/0/access", 5},
    {"/policies/0/page_protection/0/on_violation", "ignore"},
    {"/policies/0/msr_protection/0/msr", true},
    {"/policies/0/cr_pins", "cr0.wp"},
    {"/policies/0/hypercalls", "yes"},
    {"/bogus", 1},
  };
  auto base = example();
  REQUIRE(parser_field(base) == "(accepted)");
  REQUIRE(test::check_against_schema(base).valid);
  for (auto& c : cases) {
    CAPTURE(c.pointer);
    CAPTURE(c.value.dump());
    auto j = base;
    json::json_pointer p(c.pointer);
    REQUIRE((j.contains(p.parent_pointer()) || p.parent_pointer().empty()));
    j[p] = c.value;
    CHECK(parser_field(j) != "(accepted)");
    auto v = test::check_against_schema(j);
    if (!v.available)
      return;
    INFO(v.output);
    CHECK_FALSE(v.valid);
  }
}
