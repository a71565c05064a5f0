// The configs the real-process tests run kvmid with are valid by the
// schema too, so the schema cannot fall behind what kvmid accepts.
#include "tests/support/kvmid_process.hpp"
#include "tests/support/schema_check.hpp"

using namespace kvmid::test;

TEST_CASE("the kvmid process tests' configs validate against the schema") {
  std::vector<kvmid_process::options> variants(3);
  variants[1].tcp = true;
  variants[1].log_level = "debug";
  variants[1].extra_listeners = json::array({{{"type", "tcp"}, {"port", 1234}}});
  variants[2].api_extra = {{"header_timeout_ms", 2000}, {"stream_queue", 16}};
  variants[2].policies[0]["breakpoints"] = json::array({{{"name", "bp"}, {"gpa", 4096}}});
  for (size_t i = 0; i < variants.size(); ++i) {
    CAPTURE(i);
    auto v = check_against_schema(kvmid_process::make_config(variants[i], "/tmp/kvmid-e2e", 8181));
    if (!v.available) {
      MESSAGE("skipped: " << v.output); // python3-jsonschema (scripts/deps.sh) is missing
      return;
    }
    INFO(v.output);
    CHECK(v.valid);
  }
}
