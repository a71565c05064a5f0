#include "server/control/encoding.hpp"
#include "server/control/errors.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

using namespace kvmid::control;

TEST_SUITE("control") {

TEST_CASE("encoding: unsigned numbers / decimal or 0x hex") {
  CHECK(parse_u64("0") == 0u);
  CHECK(parse_u64("4096") == 4096u);
  CHECK(parse_u64("0x1000") == 0x1000u);
  CHECK(parse_u64("0XfFfF") == 0xFFFFu);
  CHECK(parse_u64("18446744073709551615") == UINT64_MAX);
  CHECK(parse_u64("0xffffffffffffffff") == UINT64_MAX);
  for (const char* bad : {"", "0x", "-1", "+1", " 1", "1 ", "18446744073709551616",
                          "0x10000000000000000", "12a", "0x1g", "1e3"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_u64(bad));
  }
  CHECK(hex_u64(0) == "0x0");
  CHECK(hex_u64(0xfee00000) == "0xfee00000");
  CHECK(hex_u64(UINT64_MAX) == "0xffffffffffffffff");
}

TEST_CASE("encoding: hex round trip and strictness") {
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i)
    all[i] = static_cast<uint8_t>(i);
  auto h = to_hex(all);
  CHECK(h.size() == 512);
  CHECK(h.substr(0, 8) == "00010203");
  CHECK(h.substr(504) == "fcfdfeff");
  CHECK(from_hex(h) == all);
  CHECK(from_hex("CAFEbabe") == std::vector<uint8_t>{0xca, 0xfe, 0xba, 0xbe});
  CHECK(from_hex("")->empty());
  CHECK_FALSE(from_hex("abc"));
  CHECK_FALSE(from_hex("zz"));
  CHECK_FALSE(from_hex("0x00"));
}

TEST_CASE("encoding: base64 (RFC 4648 vectors) and strictness") {
  auto b = [](std::string_view s) { return std::vector<uint8_t>(s.begin(), s.end()); };
  const std::pair<const char*, const char*> vec[] = {
    {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (auto& [plain, enc] : vec) {
    CAPTURE(plain);
    CHECK(to_base64(b(plain)) == enc);
    CHECK(from_base64(enc) == b(plain));
  }
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i)
    all[i] = static_cast<uint8_t>(255 - i);
  CHECK(from_base64(to_base64(all)) == all);
  for (const char* bad : {"Zg", "Zg=", "Z===", "Zh==", "Zm9=", "Zm9v!A==", "=Zg=", "Zg==Zg=="}) {
    CAPTURE(bad);
    CHECK_FALSE(from_base64(bad));
  }
}

TEST_CASE("encoding: page access strings") {
  CHECK(parse_access("rwx") == 7);
  CHECK(parse_access("r-x") == 5);
  CHECK(parse_access("---") == 0);
  CHECK(parse_access("-w-") == 2);
  for (const char* bad : {"", "rw", "xwr", "rwxx", "RWX", "r x"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_access(bad));
  }
  for (uint8_t a = 0; a < 8; ++a)
    CHECK(parse_access(access_string(a)) == a);
}

TEST_CASE("encoding: event kinds by name") {
  CHECK(parse_event_kind("pf") == 6u);
  CHECK(parse_event_kind("breakpoint") == 4u);
  CHECK(parse_event_kind("pause_vcpu") == 10u);
  CHECK_FALSE(parse_event_kind("PF"));
  CHECK_FALSE(parse_event_kind("nope"));
  for (uint32_t e = 0; e < 11; ++e)
    CHECK(parse_event_kind(event_kind_name(e)) == e);
  CHECK(event_kind_name(99) == "unknown");
}

TEST_CASE("errors: the JSON error body") {
  auto j = nlohmann::json::parse(error_body("not_found", "no VM \"x\""));
  CHECK(j["error"]["code"] == "not_found");
  CHECK(j["error"]["message"] == "no VM \"x\"");
  CHECK(j.size() == 1);
  // Invalid UTF-8 from a client never makes the error itself fail.
  auto k = nlohmann::json::parse(error_body("bad_request", std::string("bad \xff\xfe byte")));
  CHECK(k["error"]["code"] == "bad_request");
  auto r = error_response(unauthorized("no token"));
  CHECK(r.status == 401);
  CHECK(r.content_type == "application/json");
  bool www = false;
  for (auto& [h, v] : r.headers)
    www = www || (h == "WWW-Authenticate" && v.starts_with("Bearer"));
  CHECK(www);
}

}

TEST_CASE("encoding: a Location path segment escapes every reserved byte") {
  using kvmid::control::percent_encode_segment;
  CHECK(percent_encode_segment("web-1_a.b~c") == "web-1_a.b~c");
  CHECK(percent_encode_segment("a b/c?d#e%") == "a%20b%2Fc%3Fd%23e%25");
  CHECK(percent_encode_segment("\xc3\xa9") == "%C3%A9");
  CHECK(percent_encode_segment("") == "");
}
