// Checks JSON documents against config/kvmid.schema.json with the
// JSON Schema validator python3-jsonschema (tests/support/json_schema_check.py).
// Needs KVMID_SOURCE_DIR and PYTHON3_BIN from the build.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/temp_dir.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace kvmid::test {

struct schema_verdict {
  bool available = true; // false: python3-jsonschema is missing
  bool valid = false;
  std::string output;    // one line per document, errors with their pointer
};

inline schema_verdict check_against_schema(const nlohmann::json& doc) {
  temp_dir d("schema");
  auto file = d.write("config.json", doc.dump(2));
  auto r = run({PYTHON3_BIN, KVMID_SOURCE_DIR "/tests/support/json_schema_check.py",
                KVMID_SOURCE_DIR "/config/kvmid.schema.json", file.string()});
  return {r.status != 3, r.status == 0, r.out + r.err};
}

} // namespace kvmid::test
