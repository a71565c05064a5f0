// A real Prometheus server scrapes a live kvmid with the read token and
// evaluates the shipped rules (config/prometheus) against its metrics:
// every rule must evaluate without an error.
#include "actors/protocol_fault.hpp"
#include "server/dialect/handshake_failure.hpp"
#include "tests/support/kvmid_process.hpp"

#include <ctime>

using namespace kvmid;
using namespace kvmid::test;

namespace {

// A Prometheus server in its own directory, stopped by pid when the test
// ends (and killed with it if it aborts: PR_SET_PDEATHSIG).
struct prometheus_server {
  std::filesystem::path dir;
  uint16_t port = free_loopback_port();
  pid_t pid = -1;

  prometheus_server(std::filesystem::path d, const std::string& config) : dir(std::move(d)) {
    std::ofstream(dir / "prometheus.yml") << config;
    pid = spawn({PROMETHEUS_BIN, "--config.file=" + (dir / "prometheus.yml").string(),
                 "--storage.tsdb.path=" + (dir / "prometheus-data").string(),
                 "--web.listen-address=127.0.0.1:" + std::to_string(port), "--log.level=warn"},
                (dir / "prometheus.out").string(), (dir / "prometheus.err").string());
    REQUIRE(pid > 0);
  }
  ~prometheus_server() { stop(pid); }

  json get(const std::string& path, const std::string& query = {}) const {
    std::vector<std::string> args{CURL_BIN, "-sS", "--max-time", "5", "-G",
                                  "http://127.0.0.1:" + std::to_string(port) + path};
    if (!query.empty())
      args.insert(args.end(), {"--data-urlencode", "query=" + query});
    return json::parse(run(args).out, nullptr, false);
  }
  // The value of a query yielding one sample; -1 when there is none.
  double value_of(const std::string& query) const {
    auto j = get("/api/v1/query", query);
    if (!j.is_object() || j["data"]["result"].size() != 1)
      return -1;
    return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
  }
  std::string log() const {
    std::ifstream in(dir / "prometheus.err");
    return {std::istreambuf_iterator<char>(in), {}};
  }
};

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
