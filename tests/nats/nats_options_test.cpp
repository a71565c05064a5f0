// The "nats" section: defaults, and each bad field named with its reason.
#include "actors/event_bus.hpp"
#include "server/config.hpp"
#include "server/nats/nats_options.hpp"
#include "server/nats/record_subject.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

using namespace kvmid;
using nlohmann::json;

namespace {
// The field and reason of the config_error the section gets.
std::pair<std::string, std::string> refusal(const json& section) {
  try {
    parse_nats_options(section, "k.json");
  } catch (const config_error& e) {
    CHECK(e.file == "k.json");
    return {e.field, e.reason};
  }
  return {"", "accepted"};
}
} // namespace

TEST_CASE("the nats section is off by default and fills every default") {
  auto o = parse_nats_options(json::object(), "k.json");
  CHECK(!o.enabled);
  CHECK(o.urls == std::vector<std::string>{"nats://127.0.0.1:4222"});
  CHECK(o.host == default_nats_host());
  CHECK(o.host.find('.') == std::string::npos);
  CHECK(o.api_subject() == "kvmi.api." + o.host);
  CHECK(o.api_all_subject() == "kvmi.api.all");
  CHECK(o.record_subject_root() == "kvmi.bus");
  CHECK(o.spool_records == 100000);
  CHECK(o.stream_replicas == 1);
  CHECK(o.api_role == "read");
  auto full = parse_nats_options(
    {{"enabled", true}, {"host", "n7"}, {"subject_prefix", "dc1.kvmi"}, {"creds_file", "/c"},
     {"tls", {{"ca_file", "/ca"}, {"cert_file", "/c.pem"}, {"key_file", "/k.pem"}}}},
    "k.json");
  CHECK(full.api_subject() == "dc1.kvmi.api.n7");
  CHECK(full.tls);
  CHECK(full.tls_files.key_file == "/k.pem");
}

TEST_CASE("a bad nats field stops start-up naming the field") {
  CHECK(refusal({{"urls", {"http://x"}}}).first == "/nats/urls/0");
  CHECK(refusal({{"urls", json::array()}}).first == "/nats/urls");
  CHECK(refusal({{"host", "a.b"}}).first == "/nats/host");
  CHECK(refusal({{"host", "all"}}).first == "/nats/host");
  CHECK(refusal({{"host", "h*"}}).first == "/nats/host");
  CHECK(refusal({{"subject_prefix", "kvmi.>"}}).first == "/nats/subject_prefix");
  CHECK(refusal({{"subject_prefix", "a..b"}}).first == "/nats/subject_prefix");
  CHECK(refusal({{"stream", "a.b"}}).first == "/nats/stream");
  CHECK(refusal({{"spool_records", 0}}).first == "/nats/spool_records");
  CHECK(refusal({{"spool_records", "10"}}).first == "/nats/spool_records");
  CHECK(refusal({{"ack_timeout_ms", -1}}).first == "/nats/ack_timeout_ms");
  CHECK(refusal({{"api_role", "admin"}}).first == "/nats/api_role");
  CHECK(refusal({{"user", "u"}}).first == "/nats/password_file");
  CHECK(refusal({{"user", "u"}, {"password_file", "/p"}, {"creds_file", "/c"}}).second
        == "give one of user/password_file, nkey_seed_file or creds_file");
  CHECK(refusal({{"tls", {{"cert_file", "/c"}}}}).first == "/nats/tls/key_file");
  CHECK(refusal({{"tls", {{"ca", "/c"}}}}).first == "/nats/tls/ca");
  CHECK(refusal({{"enabled", "yes"}}).first == "/nats/enabled");
  auto unknown = refusal({{"url", "nats://x:1"}});
  CHECK(unknown.first == "/nats/url");
  CHECK(unknown.second == "unknown field");
}

TEST_CASE("stream_replicas takes 1 to 5 and names the field and range otherwise") {
  CHECK(parse_nats_options({{"stream_replicas", 3u}}, "k.json").stream_replicas == 3);
  CHECK(parse_nats_options({{"stream_replicas", 5u}}, "k.json").stream_replicas == 5);
  for (json bad : {json(0u), json(6u), json(-1), json("3"), json(2.5)}) {
    CAPTURE(bad.dump());
    auto r = refusal({{"stream_replicas", bad}});
    CHECK(r.first == "/nats/stream_replicas");
    CHECK(r.second == "must be an integer 1..5");
  }
  json cfg = {{"cookie_file", "/c"},
              {"listeners", {{{"type", "unix"}, {"path", "/tmp/k.sock"}}}},
              {"nats", {{"stream_replicas", 9u}}}};
  CHECK_THROWS_WITH_AS(parse_config(cfg, "k.json"),
                       "k.json: /nats/stream_replicas: must be an integer 1..5", config_error);
}

TEST_CASE("the config file takes a nats section and names its errors by file") {
  json cfg = {{"cookie_file", "/c"},
              {"listeners", {{{"type", "unix"}, {"path", "/tmp/k.sock"}}}},
              {"nats", {{"enabled", true}, {"host", "h1"}}}};
  auto c = parse_config(cfg, "k.json");
  CHECK(c.nats.enabled);
  CHECK(c.nats.host == "h1");
  cfg["nats"]["stream"] = 7;
  CHECK_THROWS_WITH_AS(parse_config(cfg, "k.json"),
                       "k.json: /nats/stream: must be a non-empty string", config_error);
}

TEST_CASE("a record's subject keeps to its tokens and its id names host boot and seq") {
  bus_record r;
  r.kind = bus_kind::alert;
  r.name = "msr-protection";
  CHECK(record_subject("kvmi.bus", "n7", r) == "kvmi.bus.n7.alert.msr-protection");
  r.name = "odd.name *>";
  CHECK(record_subject("kvmi.bus", "n7", r) == "kvmi.bus.n7.alert.odd_name___");
  r.name.clear();
  CHECK(record_subject("kvmi.bus", "n7", r) == "kvmi.bus.n7.alert._");
  CHECK(record_msg_id("n7", "0123abcd", 42) == "n7.0123abcd.42");
}
