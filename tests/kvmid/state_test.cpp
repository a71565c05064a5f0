// kvmid's durable record of planted INT3s (actors/bp_store.hpp): round trip,
// atomic replacement, and bad files named with their field.
#include "actors/bp_store.hpp"
#include "actors/core.hpp"
#include "tests/support/temp_dir.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace kvmid;
namespace fs = std::filesystem;

namespace {

using kvmid::test::temp_dir;

const std::string u1 = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const std::string u2 = "00000000-0000-0000-0000-000000000002";

std::string load_error(const temp_dir& d) {
  try {
    load_planted(d.path().string());
  } catch (const state_error& e) {
    return e.what();
  }
  return {};
}

} // namespace

TEST_CASE("state: planted bytes round-trip per uuid and an empty set removes the file") {
  temp_dir d("state");
  std::string err;
  REQUIRE(save_planted(d.path().string(), u1, {{0x1000, 0x55}, {0x2000, 0x00}}, err));
  REQUIRE(save_planted(d.path().string(), u2, {{0xfffff000, 0xff}}, err));
  auto m = load_planted(d.path().string());
  REQUIRE(m.size() == 2);
  CHECK(m[u1] == std::map<uint64_t, uint8_t>{{0x1000, 0x55}, {0x2000, 0x00}});
  CHECK(m[u2] == std::map<uint64_t, uint8_t>{{0xfffff000, 0xff}});
  // Replaced atomically: no temp file stays behind.
  REQUIRE(save_planted(d.path().string(), u1, {{0x3000, 0x90}}, err));
  size_t files = 0;
  for (auto& e : fs::directory_iterator(d.path())) {
    CHECK(e.path().extension() == ".json");
    ++files;
  }
  CHECK(files == 2);
  CHECK(load_planted(d.path().string())[u1] == std::map<uint64_t, uint8_t>{{0x3000, 0x90}});
  REQUIRE(save_planted(d.path().string(), u1, {}, err));
  m = load_planted(d.path().string());
  CHECK(m.count(u1) == 0);
  CHECK(m.size() == 1);
  // Forgetting what was never recorded is fine.
  CHECK(save_planted(d.path().string(), u1, {}, err));
}

TEST_CASE("state: a missing directory is created and a uuid must be file-name safe") {
  temp_dir d("state");
  auto sub = (d.path() / "a" / "b").string();
  CHECK(load_planted(sub).empty());
  CHECK(fs::is_directory(sub));
  std::string err;
  CHECK_FALSE(save_planted(sub, "../../etc/passwd", {{1, 2}}, err));
  CHECK(err.find("uuid") != std::string::npos);
}

TEST_CASE("state: bad files are refused naming the file and the field") {
  struct bad_case {
    std::string text, field;
  };
  std::vector<bad_case> cases = {
    {"{", ": not valid JSON"},
    {"[]", ": must be an object"},
    {R"({"breakpoints": []})", "/uuid"},
    {R"({"uuid": "00000000-0000-0000-0000-000000000009", "breakpoints": []})", "/uuid"},
    {R"({"uuid": ")" + u1 + R"(", "breakpoints": {}})", "/breakpoints"},
    {R"({"uuid": ")" + u1 + R"(", "breakpoints": [{"gpa": -1, "original": 1}]})",
     "/breakpoints/0/gpa"},
    {R"({"uuid": ")" + u1 + R"(", "breakpoints": [{"gpa": 1, "original": 1}, {"gpa": 2, "original": 256}]})",
     "/breakpoints/1/original"},
    {R"({"uuid": ")" + u1 + R"(", "breakpoints": [{"gpa": 1, "original": 204}]})",
     "/breakpoints/0/original"},
  };
  for (auto& c : cases) {
    temp_dir d("state");
    d.write("breakpoints-" + u1 + ".json", c.text);
    auto e = load_error(d);
    INFO(c.text << " -> " << e);
    CHECK(e.find("breakpoints-" + u1 + ".json") != std::string::npos);
    CHECK(e.find(c.field) != std::string::npos);
  }
  // Other files (and a temp file of an interrupted write) are not records.
  temp_dir d("state");
  d.write("breakpoints-" + u1 + ".json.tmp", "{");
  d.write("notes.txt", "x");
  CHECK(load_planted(d.path().string()).empty());
}

TEST_CASE("state: a directory where a record belongs is a state error naming it") {
  temp_dir d;
  auto record = d.path() / ("breakpoints-" + u1 + ".json");
  fs::create_directory(record);
  auto e = load_error(d);
  CHECK(e == record.string() + ": not a regular file");
}

TEST_CASE("metrics: protocol error and handshake failure families are exposed from the start") {
  core c(core_options{});
  bool pe = false, hf = false;
  for (auto& f : c.metrics().snapshot()) {
    pe = pe || (f.name == "kvmid_protocol_errors_total" && f.type == metric_type::counter);
    hf = hf || (f.name == "kvmid_handshake_failures_total" && f.type == metric_type::counter);
  }
  CHECK(pe);
  CHECK(hf);
  auto text = c.metrics().render_prometheus();
  CHECK(text.find("# TYPE kvmid_protocol_errors_total counter") != std::string::npos);
  CHECK(text.find("# TYPE kvmid_handshake_failures_total counter") != std::string::npos);
}
