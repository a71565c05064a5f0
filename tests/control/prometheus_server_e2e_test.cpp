// A real Prometheus server scrapes a live kvmid with the read token and
// evaluates the shipped rules (config/prometheus) against its metrics:
// every rule must evaluate without an error.
#include "actors/protocol_fault.hpp"
#include "server/dialect/handshake_failure.hpp"
#include "tests/support/kvmid_process.hpp"
#include "tests/support/prometheus_server.hpp"

#include <ctime>

using namespace kvmid;
using namespace kvmid::test;

namespace {

// Whole seconds of an RFC 3339 UTC time as Prometheus's API writes it; 0
// if it is not one.
double unix_seconds(const std::string& rfc3339) {
  std::tm tm{};
  if (!::strptime(rfc3339.c_str(), "%Y-%m-%dT%H:%M:%S", &tm))
    return 0;
  return double(::timegm(&tm));
}

} // namespace

TEST_SUITE("prometheus") {

TEST_CASE("e2e: Prometheus scrapes kvmid and the shipped rules evaluate without errors") {
  auto o = one_vm();
  o.tcp = true;
  o.read_token = "prometheus-read-token";
  kvmid_process t(o);
  std::string rules = std::string(KVMID_SOURCE_DIR) + "/config/prometheus/";
  prometheus_server p(t.dir, "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                             "rule_files:\n"
                             "  - " + rules + "kvmid-recording.rules.yml\n"
                             "  - " + rules + "kvmid-alerts.rules.yml\n"
                             "scrape_configs:\n"
                             "  - job_name: kvmid\n"
                             "    authorization: {credentials_file: " + (t.dir / "read.token").string() + "}\n"
                             "    static_configs: [{targets: ['127.0.0.1:" + std::to_string(t.tcp_port) + "']}]\n");
  INFO("prometheus log: " << p.log());
  REQUIRE(wait_until([&] { return p.value_of("up{job=\"kvmid\"}") == 1; },
                     "Prometheus to scrape kvmid with the read token", 60s));

  // Every group evaluated on scraped data (an evaluation at least 2 s after
  // the first scrape was seen), then each rule without an error.
  double scraped_at = p.value_of("vector(time())");
  REQUIRE(scraped_at > 0);
  json rules_seen;
  REQUIRE(wait_until(
    [&] {
      auto j = p.get("/api/v1/rules");
      if (!j.is_object() || !j.contains("data"))
        return false;
      rules_seen = j["data"]["groups"];
      for (auto& g : rules_seen)
        if (unix_seconds(g.value("lastEvaluation", "")) < scraped_at + 2)
          return false;
      return !rules_seen.empty();
    },
    "every shipped rule group to be evaluated on scraped data", 60s));
  // The reasons exported at 0 are series Prometheus has from the first scrape.
  CHECK(p.value_of("count(kvmid_protocol_errors_total == 0)")
        == double(all_protocol_error_reasons.size()));
  CHECK(p.value_of("count(kvmid_handshake_failures_total == 0)")
        == double(handshake_failure_reasons.size()));
  CHECK(p.value_of("count(process_start_time_seconds)") == 1);
  CAPTURE(rules_seen.dump());
  CHECK(rules_seen.size() == 2);
  for (auto& g : rules_seen)
    for (auto& r : g["rules"]) {
      CAPTURE(r.value("name", ""));
      CHECK(r["health"] == "ok");
      CHECK(r.value("lastError", "") == "");
    }
}

} // TEST_SUITE
