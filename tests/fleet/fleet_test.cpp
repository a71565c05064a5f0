// The fleet: three hosts, each a network namespace with its own kvmid (and
// the simulated KVMI host its VMs run on), publishing to a three-node NATS
// JetStream cluster with stream_replicas 3; Prometheus scrapes the three
// kvmids over HTTPS with the shipped rules and sends to Alertmanager, whose
// webhook receiver is this test. Chaos: one kvmid SIGKILLed and restarted,
// one NATS node stopped, one host's link cut and restored. Every alert the
// workloads caused is in the stream once, as each kvmid counted it.
#include "tests/fleet/alert_webhook.hpp"
#include "tests/fleet/fleet_network.hpp"
#include "tests/fleet/nats_cluster.hpp"
#include "tests/support/exposition.hpp"
#include "tests/support/jetstream_reader.hpp"
#include "tests/support/kvmid_process.hpp"
#include "tests/support/prometheus_server.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <thread>

using namespace kvmid;
using namespace kvmid::test;

namespace {

constexpr size_t host_count = 3;
constexpr const char* prefix = "fleet";
constexpr const char* stream = "FLEET";
constexpr const char* read_token = "fleet-read-token-91c2";
constexpr uint16_t api_port = 9100, alertmanager_port = 9093, webhook_port = 9095;

std::string host_name(size_t n) { return "h" + std::to_string(n); }
std::string instance(size_t n) { return fleet_network::host_ip(n) + ":" + std::to_string(api_port); }

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

// The shipped rules in `dir`, with one change: KvmidDown's "for: 1m"
// becomes 5s, or the test would wait a minute for a down host's alert.
// 5 s is two failed scrapes and more: a healthy host slowed by a loaded
// machine (a sanitizer build) must not look down.
// Every expression, label and other duration is the shipped one.
void copy_rules(const std::filesystem::path& dir) {
  std::string src = std::string(KVMID_SOURCE_DIR) + "/config/prometheus/";
  std::filesystem::copy_file(src + "kvmid-recording.rules.yml", dir / "kvmid-recording.rules.yml");
  std::string alerts = read_text(src + "kvmid-alerts.rules.yml");
  auto rule = alerts.find("alert: KvmidDown");
  auto next = alerts.find("- alert:", rule);
  auto dur = alerts.find("for: 1m", rule);
  REQUIRE_MESSAGE((rule != std::string::npos && dur < next),
                  "the shipped KvmidDown rule no longer has \"for: 1m\"");
  alerts.replace(dur, 7, "for: 5s");
  std::ofstream(dir / "kvmid-alerts.rules.yml") << alerts;
}

// One certificate for the three hosts' API addresses, self-signed: the
// scrape config trusts it as its CA.
void make_api_cert(const temp_dir& dir) {
  std::string san = "subjectAltName=";
  for (size_t n = 1; n <= host_count; ++n)
    san += (n > 1 ? ",IP:" : "IP:") + fleet_network::host_ip(n);
  auto r = run({OPENSSL_BIN, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", (dir / "api.key").string(),
                "-out", (dir / "api.pem").string(), "-days", "2", "-subj", "/CN=kvmid fleet test",
                "-addext", san});
  INFO("openssl: " << r.err);
  REQUIRE(r.status == 0);
  ::chmod((dir / "api.key").c_str(), 0600);
}

std::string prometheus_config(const temp_dir& dir) {
  std::string targets;
  for (size_t n = 1; n <= host_count; ++n)
    targets += (n > 1 ? ", '" : "'") + instance(n) + "'";
  return "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 1s}\n"
         "rule_files: [kvmid-recording.rules.yml, kvmid-alerts.rules.yml]\n"
         "alerting:\n"
         "  alertmanagers: [{static_configs: [{targets: ['127.0.0.1:"
         + std::to_string(alertmanager_port) + "']}]}]\n"
         "scrape_configs:\n"
         "  - job_name: kvmid\n"
         "    scheme: https\n"
         "    authorization: {credentials_file: " + (dir / "read.token").string() + "}\n"
         "    tls_config: {ca_file: " + (dir / "api.pem").string() + "}\n"
         "    static_configs: [{targets: [" + targets + "]}]\n";
}

// Alertmanager with second-long waits (the shipped example waits 10 s and
// more) and this test as its only receiver.
struct alertmanager {
  pid_t pid = -1;
  std::filesystem::path dir;

  alertmanager(std::filesystem::path d, const std::string& webhook) : dir(std::move(d)) {
    std::ofstream(dir / "alertmanager.yml")
      << "route: {receiver: fleet-test, group_by: [alertname, instance], group_wait: 1s,"
         " group_interval: 1s, repeat_interval: 1h}\n"
         "receivers:\n"
         "  - name: fleet-test\n"
         "    webhook_configs: [{url: '" << webhook << "', send_resolved: true}]\n";
    pid = spawn({ALERTMANAGER_BIN, "--config.file=" + (dir / "alertmanager.yml").string(),
                 "--storage.path=" + (dir / "alertmanager-data").string(),
                 "--web.listen-address=127.0.0.1:" + std::to_string(alertmanager_port),
                 "--cluster.listen-address=", "--log.level=warn"},
                (dir / "alertmanager.out").string(), (dir / "alertmanager.err").string());
    REQUIRE(pid > 0);
  }
  ~alertmanager() { stop(); }
  void stop() {
    kvmid::test::stop(pid);
    pid = -1;
  }
  std::string log() const { return read_text(dir / "alertmanager.err"); }
};

// Host n's kvmid in its namespace: the API on its address over HTTPS (for
// Prometheus) and on a UNIX socket (for the test, whatever the network
// does), publishing to every node of the cluster.
kvmid_process_options host_options(const fleet_network& net, const temp_dir& pki, size_t n) {
  kvmid_process_options o;
  o.vms = 1;
  o.vcpus = 1;
  o.tcp = true;
  o.tcp_address = instance(n);
  o.launcher = net.in_host(n);
  o.read_token = read_token;
  o.api_extra = {{"allow_remote", true},
                 {"tls", {{"cert_file", (pki / "api.pem").string()},
                          {"key_file", (pki / "api.key").string()}}}};
  json urls = json::array();
  for (size_t i = 0; i < nats_cluster::nodes; ++i)
    urls.push_back(nats_cluster::url(fleet_network::hub_ip(n), i));
  o.extra = {{"nats",
              {{"enabled", true},
               {"urls", urls},
               {"host", host_name(n)},
               {"subject_prefix", prefix},
               {"stream", stream},
               {"stream_replicas", 3},
               {"ack_timeout_ms", 500},
               {"api_role", "full"}}}};
  return o;
}

double metric(kvmid_daemon& k, const std::string& family) {
  return exposition_sum(k.http("GET", "/metrics").body, family);
}

// One guest write to the pinned LSTAR: one alert.
void make_alerts(kvmid_process& k, int count) {
  for (int i = 0; i < count; ++i) {
    auto out = get_within(k.sim->write_msr(0, 0, msr_lstar, 0xdead0000 + uint64_t(i)),
                          "an LSTAR write");
    REQUIRE(out.event == kvmi::event_id::msr);
  }
}

struct stream_alerts {
  size_t messages = 0;
  std::set<std::string> ids;
};

// The alerts in the stream by host.
std::map<std::string, stream_alerts> alerts_by_host(jetstream_reader& js) {
  std::map<std::string, stream_alerts> out;
  std::string root = std::string(prefix) + ".bus.";
  for (auto& m : js.all(stream)) {
    if (m.subject.rfind(root, 0) != 0)
      continue;
    auto host_end = m.subject.find('.', root.size());
    if (host_end == std::string::npos)
      continue;
    std::string host = m.subject.substr(root.size(), host_end - root.size());
    if (m.subject.compare(host_end, 7, ".alert.") != 0)
      continue;
    ++out[host].messages;
    out[host].ids.insert(m.msg_id);
  }
  return out;
}

// A request over NATS to one host's API; its JSON reply, or null if no
// answer came within `timeout_ms`.
json nats_request(natsConnection* nc, const std::string& host, const json& req, int timeout_ms) {
  natsMsg* m = nullptr;
  std::string subject = std::string(prefix) + ".api." + host;
  std::string text = req.dump();
  if (natsConnection_Request(&m, nc, subject.c_str(), text.data(), int(text.size()), timeout_ms)
      != NATS_OK)
    return nullptr;
  auto j = json::parse(std::string(natsMsg_GetData(m), size_t(natsMsg_GetDataLength(m))));
  natsMsg_Destroy(m);
  return j;
}

} // namespace

TEST_CASE("a fleet of three hosts on a NATS cluster with Prometheus and Alertmanager survives chaos") {
  if (auto why = fleet_network::unusable(); !why.empty()) {
    std::printf("skipped: %s\n", why.c_str());
    std::fflush(stdout);
    std::_Exit(77); // ctest SKIP_RETURN_CODE: reported as skipped, never as passed
  }
  fleet_network net(host_count);
  net.enter_hub();
  temp_dir pki("fleet");
  make_api_cert(pki);
  pki.write("read.token", std::string(read_token) + "\n");
  copy_rules(pki.path());

  nats_cluster nats;
  alert_webhook webhook(webhook_port);
  alertmanager am(pki.path(), webhook.url("/fleet"));
  INFO("alertmanager log: " << am.log());
  prometheus_server prom(pki.path(), prometheus_config(pki));
  INFO("prometheus log: " << prom.log());

  std::vector<std::unique_ptr<kvmid_process>> hosts(host_count + 1); // 1-based
  for (size_t n = 1; n <= host_count; ++n)
    hosts[n] = std::make_unique<kvmid_process>(host_options(net, pki, n));
  auto& killed = *hosts[1];
  auto& cut = *hosts[3];
  // Alerts each host counted in runs that have ended.
  std::map<std::string, double> counted_before;
  auto counted = [&](size_t n) { return counted_before[host_name(n)] + metric(*hosts[n], "kvmid_alerts_total"); };

  jetstream_reader js(nats_cluster::url("127.0.0.1", 0) + "," + nats_cluster::url("127.0.0.1", 1));
  // Each kvmid's records are in the stream once its VM's connect record is.
  REQUIRE(wait_until([&] {
    for (size_t n = 1; n <= host_count; ++n)
      if (metric(*hosts[n], "kvmid_nats_published_total") < 1)
        return false;
    return true;
  }, "every kvmid to publish its first record to the cluster's stream", 60s));
  {
    jsStreamInfo* si = nullptr;
    jsCtx* ctx = nullptr;
    REQUIRE(natsConnection_JetStream(&ctx, js.connection(), nullptr) == NATS_OK);
    REQUIRE(js_GetStreamInfo(&si, ctx, stream, nullptr, nullptr) == NATS_OK);
    CHECK(si->Config->Replicas == 3);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(ctx);
  }
  // The stream holds exactly what every host counted.
  auto stream_matches_counters = [&](const std::string& when) {
    std::map<std::string, stream_alerts> got;
    bool ok = wait_until([&] {
      got = alerts_by_host(js);
      for (size_t n = 1; n <= host_count; ++n)
        if (got[host_name(n)].messages != size_t(counted(n)))
          return false;
      return true;
    }, "each host's alerts in the stream as it counted them " + when, 60s);
    for (size_t n = 1; n <= host_count; ++n) {
      CAPTURE(n);
      CHECK(got[host_name(n)].ids.size() == got[host_name(n)].messages);
    }
    return ok;
  };

  for (size_t n = 1; n <= host_count; ++n)
    make_alerts(*hosts[n], 3);
  REQUIRE(stream_matches_counters("before the chaos"));
  REQUIRE(wait_until([&] {
    for (size_t n = 1; n <= host_count; ++n)
      if (prom.value_of("up{instance=\"" + instance(n) + "\"}") != 1)
        return false;
    return true;
  }, "Prometheus to scrape every host over HTTPS with the read token", 60s));

  // SIGKILL: Prometheus sees the host down and Alertmanager tells the
  // webhook; the restarted kvmid carries on publishing.
  counted_before[host_name(1)] += metric(killed, "kvmid_alerts_total");
  REQUIRE(killed.kill_now());
  REQUIRE(wait_until([&] { return prom.value_of("up{instance=\"" + instance(1) + "\"}") == 0; },
                     "Prometheus's up to be 0 for the killed host"));
  REQUIRE(wait_until([&] { return webhook.received("KvmidDown", instance(1)); },
                     "KvmidDown for the killed host at the webhook", 60s));
  for (size_t n = 2; n <= host_count; ++n)
    CHECK(!webhook.received("KvmidDown", instance(n)));
  killed.start();
  REQUIRE(wait_until([&] {
    return killed.sim->hooked(0) && killed.http("GET", "/v1/vms").j()["vms"].size() == 1;
  }, "the restarted kvmid to have its VM again"));
  make_alerts(killed, 2);

  // One NATS node stopped: the stream keeps a majority of its replicas.
  nats.stop(2);
  for (size_t n = 1; n <= host_count; ++n)
    make_alerts(*hosts[n], 2);
  REQUIRE(stream_matches_counters("with a NATS node stopped"));

  // Host 3 cut off: its alerts wait in its spool, the other hosts answer
  // over NATS as before, and it sends the alerts once it is back.
  net.set_link(3, false);
  auto cut_at = std::chrono::steady_clock::now();
  make_alerts(cut, 3);
  REQUIRE(wait_until([&] { return metric(cut, "kvmid_nats_spool_records") >= 3; },
                     "the cut host's alerts in its spool"));
  for (size_t n = 1; n <= 2; ++n) {
    auto r = nats_request(js.connection(), host_name(n), {{"method", "GET"}, {"path", "/v1/vms"}}, 10000);
    CAPTURE(n);
    REQUIRE(r.is_object());
    CHECK(r["status"] == 200);
    CHECK(r["body"]["vms"].size() == 1);
  }
  CHECK(nats_request(js.connection(), host_name(3), {{"method", "GET"}, {"path", "/v1/vms"}}, 500)
          .is_null());
  auto vms = killed.kvmictl({"--nats", nats_cluster::url("127.0.0.1", 0), "--nats-prefix", prefix,
                             "--gather-ms", "1000", "vms"}, false);
  INFO("kvmictl: " << vms.err);
  CHECK(vms.status == 0);
  CHECK(vms.out.find("host h1:") != std::string::npos);
  CHECK(vms.out.find("host h2:") != std::string::npos);
  CHECK(vms.out.find("host h3:") == std::string::npos);
  auto paused = nats_request(js.connection(), host_name(2),
                             {{"method", "POST"}, {"path", "/v1/vms/" + hosts[2]->uuid(0) + "/pause"}}, 10000);
  REQUIRE(paused.is_object());
  CHECK(paused["status"] == 200);
  CHECK(nats_request(js.connection(), host_name(2),
                     {{"method", "POST"}, {"path", "/v1/vms/" + hosts[2]->uuid(0) + "/resume"}}, 10000)["status"] == 200);
  // An outage of 10 s, not just as long as the checks above take: the cut
  // host's NATS client sees its pings go unanswered meanwhile.
  std::this_thread::sleep_until(cut_at + 10s);
  net.set_link(3, true);
  REQUIRE(wait_until([&] { return metric(cut, "kvmid_nats_spool_records") == 0; },
                     "the cut host's spool to drain once its link is back", 60s));
  REQUIRE(stream_matches_counters("after the chaos"));
  for (size_t n = 1; n <= host_count; ++n)
    CHECK(metric(*hosts[n], "kvmid_nats_spool_full_total") == 0);

  // Nothing leaks: every process stopped, every namespace gone.
  for (size_t n = 1; n <= host_count; ++n) {
    CAPTURE(n);
    CHECK(hosts[n]->stop_kvmid() == 0);
  }
  hosts.clear();
  prom.stop();
  am.stop();
  for (size_t i = 0; i < nats_cluster::nodes; ++i)
    nats.stop(i);
  net.leave();
  CHECK(net.pids_inside().empty());
  net.remove();
  CHECK(net.listed().empty());
}
