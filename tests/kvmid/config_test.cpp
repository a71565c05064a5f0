// Config validation: every bad field is named with its JSON pointer.
#include "server/config.hpp"
#include "server/kvmi_rings.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>

using namespace kvmid;
using nlohmann::json;

namespace {

json good() {
  return json::parse(R"({
    "log_level": "info",
    "cookie_file": "/etc/kvmid/cookie",
    "listeners": [
      {"type": "unix", "path": "/run/kvmid/kvmi.sock", "mode": "0660"},
      {"type": "tcp", "host": "127.0.0.1", "port": 0},
      {"type": "vsock", "cid": -1, "port": 9999, "cookie_file": "/etc/kvmid/vsock.cookie"}
    ],
    "policies": [{
      "name": "linux", "match": ["*"],
      "page_protection": [{"name": "text", "gpa": "0x100000", "size": "0x200000",
                           "access": "r-x", "on_violation": "allow-and-unprotect"}],
      "msr_protection": [{"name": "lstar", "msr": "0xc0000082"}],
      "cr_pins": ["cr0.wp", "cr4.smep"],
      "breakpoints": [{"name": "probe", "gpa": 4096}],
      "hypercalls": false
    }]
  })");
}

std::string field_of(const json& j) {
  try {
    parse_config(j, "test.json");
  } catch (const config_error& e) {
    CHECK(e.file == "test.json");
    CHECK_FALSE(e.reason.empty());
    return e.field;
  }
  return "(accepted)";
}

} // namespace

TEST_CASE("a good config parses into listeners and policies") {
  auto c = parse_config(good(), "test.json");
  REQUIRE(c.listeners.size() == 3);
  CHECK(c.listeners[0].spec.mode == 0660);
  CHECK(c.listeners[2].spec.cid == 0xFFFFFFFFu);
  CHECK(c.listeners[2].cookie_file == "/etc/kvmid/vsock.cookie");
  REQUIRE(c.policies.policies.size() == 1);
  auto& p = c.policies.policies[0];
  CHECK(p.pages[0].gpa == 0x100000);
  CHECK(p.pages[0].access == (kvmi::page_access_r | kvmi::page_access_x));
  CHECK(p.pages[0].on_violation == pf_action::allow_and_unprotect);
  CHECK(p.msrs[0].msr == 0xc0000082);
  CHECK(p.crs.size() == 2);
  CHECK(p.breakpoints[0].gpa == 4096);
  CHECK_FALSE(p.hypercalls);
}

TEST_CASE("bad fields are named") {
  auto j = good();
  j["listeners"][0]["mode"] = "rw-rw----";
  CHECK(field_of(j) == "/listeners/0/mode");
  j = good();
  j["policies"][0]["msr_protection"][0]["msr"] = "0x40000000";
  CHECK(field_of(j) == "/policies/0/msr_protection/0/msr");
  j = good();
  j["policies"][0]["page_protection"][0]["gpa"] = "0x100001";
  CHECK(field_of(j) == "/policies/0/page_protection/0/gpa");
  j = good();
  j["policies"][0]["page_protection"][0]["on_violation"] = "ignore";
  CHECK(field_of(j) == "/policies/0/page_protection/0/on_violation");
  j = good();
  j["policies"][0]["cr_pins"][1] = "cr4.pae";
  CHECK(field_of(j) == "/policies/0/cr_pins/1");
  j = good();
  auto& rule = j["policies"][0]["page_protection"][0];
  rule["deny_range"] = {{"gpa", "0x100010"}, {"size", 65}};
  CHECK(field_of(j) == "/policies/0/page_protection/0/deny_range"); // not a deny rule
  rule["on_violation"] = "deny";
  rule["deny_range"] = {{"gpa", "0x2ffff0"}, {"size", 65}}; // runs past the rule's end
  CHECK(field_of(j) == "/policies/0/page_protection/0/deny_range");
  rule["deny_range"] = {{"gpa", "0x100010"}, {"size", 0}};
  CHECK(field_of(j) == "/policies/0/page_protection/0/deny_range/size");
  rule["deny_range"] = {{"gpa", "0x100010"}};
  CHECK(field_of(j) == "/policies/0/page_protection/0/deny_range");
  rule["deny_range"] = {{"gpa", "0x100010"}, {"size", 65}, {"offset", 1}};
  CHECK(field_of(j) == "/policies/0/page_protection/0/deny_range/offset");
  rule["deny_range"] = {{"gpa", "0x100010"}, {"size", 65}};
  REQUIRE(field_of(j) == "(accepted)");
  auto denied = parse_config(j, "test.json").policies.policies[0].pages[0];
  CHECK(denied.on_violation == pf_action::deny);
  CHECK(denied.deny_gpa == 0x100010);
  CHECK(denied.deny_size == 65);
  j = good();
  j["listeners"][1]["type"] = "udp";
  CHECK(field_of(j) == "/listeners/1/type");
  j = good();
  j["bogus"] = 1;
  CHECK(field_of(j) == "/bogus");
  j = good();
  j.erase("cookie_file");
  CHECK(field_of(j) == "/listeners/0/cookie_file");
  j = good();
  j["listeners"] = json::array();
  CHECK(field_of(j) == "/listeners");
  j = good();
  j["handshake"] = "v4";
  CHECK(field_of(j) == "/handshake");
  j = good();
  j["workers"] = -3;
  CHECK(field_of(j) == "/workers");
  j = good();
  j["poll_us"] = 5000;
  CHECK(field_of(j) == "/poll_us");
  j = good();
  j["poll_us"] = "fast";
  CHECK(field_of(j) == "/poll_us");
  j = good();
  j["state_dir"] = "";
  CHECK(field_of(j) == "/state_dir");
  j = good();
  j["state_dir"] = 7;
  CHECK(field_of(j) == "/state_dir");
}

TEST_CASE("poll_us defaults to 0 (no polling) and is taken in microseconds") {
  auto j = good();
  j.erase("poll_us");
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(0));
  j["poll_us"] = 50;
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(50));
  j["poll_us"] = 1000;
  CHECK(parse_config(j, "t.json").poll == std::chrono::microseconds(1000));
}

TEST_CASE("state_dir is optional and taken as given") {
  auto j = good();
  CHECK(parse_config(j, "t.json").state_dir.empty());
  j["state_dir"] = "/var/lib/kvmid-test";
  CHECK(parse_config(j, "t.json").state_dir == "/var/lib/kvmid-test");
}

TEST_CASE("rings: 0 (one per two cores) by default, at most 64 - the default picks 1..8") {
  auto j = good();
  CHECK(parse_config(j, "t.json").rings == 0);
  j["rings"] = 3;
  CHECK(parse_config(j, "t.json").rings == 3);
  for (json bad : {json(65), json(-1), json("two")}) {
    j["rings"] = bad;
    CHECK(field_of(j) == "/rings");
  }
  CHECK(default_kvmi_rings(1) == 1);
  CHECK(default_kvmi_rings(2) == 1);
  CHECK(default_kvmi_rings(4) == 2);
  CHECK(default_kvmi_rings(7) == 3);
  CHECK(default_kvmi_rings(64) == 8);
}

TEST_CASE("max_handshakes (64) and max_setups (8): their defaults, and each must be 1..100000") {
  struct cap {
    const char* field;
    size_t config::*member;
    size_t fallback;
  };
  for (auto c : {cap{"max_handshakes", &config::max_handshakes, 64},
                 cap{"max_setups", &config::max_setups, 8}}) {
    INFO(c.field);
    auto j = good();
    CHECK(parse_config(j, "t.json").*c.member == c.fallback);
    j[c.field] = 5;
    CHECK(parse_config(j, "t.json").*c.member == 5);
    for (int bad : {0, 100001}) {
      j[c.field] = bad;
      CHECK(field_of(j) == std::string("/") + c.field);
    }
  }
}

TEST_CASE("the shipped example config is valid") {
  auto path = std::filesystem::path(KVMID_SOURCE_DIR) / "config" / "kvmid.json";
  auto c = load_config(path.string());
  CHECK_FALSE(c.listeners.empty());
  CHECK_FALSE(c.policies.policies.empty());
}

TEST_CASE("files: unreadable config and short cookies are reported with their file") {
  CHECK_THROWS_AS(load_config("/nonexistent/kvmid.json"), config_error);
  auto dir = std::filesystem::temp_directory_path() / ("kvmid-cfg-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream(dir / "bad.json") << "{ not json";
    std::ofstream(dir / "short") << "abc\n";
  }
  std::filesystem::permissions(dir / "short", std::filesystem::perms::owner_read);
  try {
    load_config((dir / "bad.json").string());
    FAIL("accepted broken JSON");
  } catch (const config_error& e) {
    CHECK(e.file == (dir / "bad.json").string());
  }
  try {
    read_cookie((dir / "short").string(), "k.json", "/cookie_file");
    FAIL("accepted a 3-byte cookie");
  } catch (const config_error& e) {
    CHECK(e.field == "/cookie_file");
  }
  std::filesystem::remove_all(dir);
}

namespace {

struct scratch_dir {
  std::filesystem::path p;
  scratch_dir() {
    std::string t = (std::filesystem::temp_directory_path() / "kvmid-cfg-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()));
    p = t;
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(p, ec);
  }
  std::string write(const std::string& name, const std::string& bytes, mode_t mode) const {
    auto f = p / name;
    std::ofstream(f, std::ios::binary) << bytes;
    REQUIRE(::chmod(f.c_str(), mode) == 0);
    return f.string();
  }
};

config_error cookie_error(const std::string& path) {
  try {
    read_cookie(path, "k.json", "/listeners/1/cookie_file");
  } catch (const config_error& e) {
    return e;
  }
  return config_error("k.json", "", "(accepted)");
}

} // namespace

TEST_CASE("files: a cookie_file or config that is a directory is a config error") {
  scratch_dir d;
  auto e = cookie_error(d.p.string());
  CHECK(e.file == "k.json");
  CHECK(e.field == "/listeners/1/cookie_file");
  CHECK(e.reason.find(d.p.string() + ": not a regular file") != std::string::npos);
  try {
    load_config(d.p.string());
    FAIL("accepted a directory as the config file");
  } catch (const config_error& ce) {
    CHECK(ce.file == d.p.string());
    CHECK(ce.reason == "not a regular file");
  }
}

TEST_CASE("secrets: a cookie file group or others may access is refused with its mode and the fix") {
  scratch_dir d;
  std::string cookie(32, 'k');
  for (mode_t m : {0640, 0604, 0620, 0601, 0660}) {
    auto path = d.write("cookie", cookie, m);
    auto e = cookie_error(path);
    CAPTURE(m);
    CHECK(e.field == "/listeners/1/cookie_file");
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(m));
    CHECK(e.reason.find(std::string("mode ") + mode) != std::string::npos);
    CHECK(e.reason.find("chmod 600 " + path) != std::string::npos);
  }
  for (mode_t m : {0600, 0400}) {
    auto path = d.write("cookie", cookie, m);
    auto bytes = read_cookie(path, "k.json", "/cookie_file");
    CHECK(std::string(bytes.begin(), bytes.end()) == cookie);
  }
}

TEST_CASE("strict types: durations counts ports and limits must be integers") {
  struct bad_value {
    std::string pointer;
    json value;
  };
  for (auto& [ptr, value] : std::vector<bad_value>{
         {"/handshake_timeout_ms", "3000"},
         {"/command_timeout_ms", "3000"},
         {"/send_queue_limit", "4096"},
         {"/workers", "2"},
         {"/poll_us", "0"},
         {"/poll_us", 1.5},
         {"/workers", true},
         {"/listeners/1/port", "8080"},
         {"/listeners/2/port", "0x270f"},
         {"/listeners/2/cid", "3"},
       }) {
    CAPTURE(ptr);
    auto j = good();
    j[json::json_pointer(ptr)] = value;
    try {
      parse_config(j, "t.json");
      FAIL("accepted " << value.dump() << " at " << ptr);
    } catch (const config_error& e) {
      CHECK(e.field == ptr);
      CHECK(e.reason == "must be an integer");
    }
  }
  auto j = good();
  j["handshake_timeout_ms"] = 3000;
  j["listeners"][2]["cid"] = 3;
  auto c = parse_config(j, "t.json");
  CHECK(c.handshake_timeout == std::chrono::milliseconds(3000));
  CHECK(c.listeners[2].spec.cid == 3u);
}

TEST_CASE("strict types: GPAs sizes and MSR indices still take 0x strings and integers") {
  auto j = good();
  auto& p = j["policies"][0];
  p["page_protection"][0]["gpa"] = 1048576;
  p["page_protection"][0]["size"] = "2097152";
  p["msr_protection"][0]["msr"] = 3221225602u;
  p["breakpoints"][0]["gpa"] = "0x1000";
  auto c = parse_config(j, "t.json");
  auto& v = c.policies.policies[0];
  CHECK(v.pages[0].gpa == 0x100000);
  CHECK(v.pages[0].size == 0x200000);
  CHECK(v.msrs[0].msr == 0xc0000082);
  CHECK(v.breakpoints[0].gpa == 0x1000);
}

// The schema documents the parser's rules: every numeric field it calls an
// integer the parser refuses as a string, and "0x" strings only where the
// schema says "u64".
TEST_CASE("strict types: the schema and the parser agree on integers") {
  std::ifstream in(std::filesystem::path(KVMID_SOURCE_DIR) / "config" / "kvmid.schema.json");
  auto schema = json::parse(in);
  auto is_integer = [](const json& s) { return s.value("type", "") == "integer"; };
  size_t top = 0;
  for (auto& [k, s] : schema["properties"].items()) {
    if (!is_integer(s))
      continue;
    ++top;
    CAPTURE(k);
    auto j = good();
    j[k] = std::to_string(s["minimum"].get<int64_t>());
    try {
      parse_config(j, "t.json");
      FAIL("accepted a string for " << k);
    } catch (const config_error& e) {
      CHECK(e.field == "/" + k);
      CHECK(e.reason == "must be an integer");
    }
    j[k] = s["minimum"];
    CHECK_NOTHROW(parse_config(j, "t.json"));
  }
  CHECK(top >= 5); // handshake_timeout_ms command_timeout_ms send_queue_limit workers poll_us
  auto& listener = schema["$defs"]["listener"]["properties"];
  CHECK(is_integer(listener["port"]));
  CHECK(is_integer(listener["cid"]));
  auto& rule = schema["$defs"]["policy"]["properties"];
  const std::string u64 = "#/$defs/u64";
  CHECK(rule["page_protection"]["items"]["properties"]["gpa"]["$ref"] == u64);
  CHECK(rule["page_protection"]["items"]["properties"]["size"]["$ref"] == u64);
  CHECK(rule["msr_protection"]["items"]["properties"]["msr"]["$ref"] == u64);
  CHECK(rule["breakpoints"]["items"]["properties"]["gpa"]["$ref"] == u64);
  auto& deny = rule["page_protection"]["items"]["properties"]["deny_range"]["properties"];
  CHECK(deny["gpa"]["$ref"] == u64);
  CHECK(deny["size"]["$ref"] == u64);
  auto text = schema.dump();
  size_t refs = 0;
  for (size_t at = 0; (at = text.find(u64, at)) != std::string::npos; ++at)
    ++refs;
  CHECK(refs == 6); // no other field takes strings for numbers
}

TEST_CASE("shutdown_timeout_ms defaults to 5000 and must be 100..600000") {
  auto j = good();
  CHECK(parse_config(j, "t.json").shutdown_timeout == std::chrono::milliseconds(5000));
  j["shutdown_timeout_ms"] = 100;
  CHECK(parse_config(j, "t.json").shutdown_timeout == std::chrono::milliseconds(100));
  j["shutdown_timeout_ms"] = 600000;
  CHECK(parse_config(j, "t.json").shutdown_timeout == std::chrono::milliseconds(600000));
  for (auto bad : {json(99), json(600001), json(-1), json("soon"), json(true)}) {
    j["shutdown_timeout_ms"] = bad;
    CHECK(field_of(j) == "/shutdown_timeout_ms");
  }
}

TEST_CASE("protocol: listeners are v5 unless they say v7") {
  auto j = good();
  j["listeners"][0]["protocol"] = "v7";
  auto c = parse_config(j, "test.json");
  CHECK(c.listeners[0].proto == protocol::v7);
  CHECK(c.listeners[0].v7_layout == kvmi::v7::hs::layout::max_gpa);
  CHECK(c.listeners[1].proto == protocol::v5);
  j["listeners"][0]["qemu_layout"] = "e820";
  CHECK(parse_config(j, "test.json").listeners[0].v7_layout == kvmi::v7::hs::layout::e820);
  j["listeners"][0]["protocol"] = "v6";
  CHECK(field_of(j) == "/listeners/0/protocol");
  j["listeners"][0]["protocol"] = "v5";
  CHECK(field_of(j) == "/listeners/0/qemu_layout"); // a v7 setting on a v5 listener
}

TEST_CASE("protocol: a v7 listener on tcp or vsock needs allow_replayable_handshake") {
  for (int i : {1, 2}) {
    CAPTURE(i);
    auto j = good();
    j["listeners"][i]["protocol"] = "v7";
    auto at = "/listeners/" + std::to_string(i) + "/allow_replayable_handshake";
    CHECK(field_of(j) == at);
    try {
      parse_config(j, "test.json");
    } catch (const config_error& e) {
      CHECK(e.file == "test.json");
      CHECK(e.reason.find("replayed") != std::string::npos);
    }
    j["listeners"][i]["allow_replayable_handshake"] = false;
    CHECK(field_of(j) == at);
    j["listeners"][i]["allow_replayable_handshake"] = true;
    CHECK(parse_config(j, "test.json").listeners[size_t(i)].proto == protocol::v7);
  }
}
