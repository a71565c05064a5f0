#include "server/control/prometheus.hpp"

#include "promtool.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

using namespace kvmid;
using namespace kvmid::control;

namespace {
metric_sample value(double v, labels l = {}) {
  metric_sample s;
  s.lbls = std::move(l);
  s.value = v;
  return s;
}

// Every family the core promises (actors/metrics.hpp), with plausible values.
std::vector<metric_family> core_like() {
  std::vector<metric_family> f;
  f.push_back({"kvmid_alerts_total", "Policy alerts by rule.", metric_type::counter,
               {value(3, {{"rule", "page-protection"}}), value(1, {{"rule", "msr-protection"}})}});
  f.push_back({"kvmid_bus_dropped_total", "Event-bus records dropped.", metric_type::counter,
               {value(0)}});
  f.push_back({"kvmid_commands_total", "KVMI commands by command and result.",
               metric_type::counter,
               {value(10, {{"command", "read_physical"}, {"result", "ok"}}),
                value(2, {{"command", "get_registers"}, {"result", "EAGAIN"}}),
                value(1, {{"command", "read_physical"}, {"result", "timeout"}})}});
  metric_sample h;
  h.bounds = {1e-5, 1e-4, 0.001, 0.01, 0.1, 1};
  h.cumulative = {5, 40, 90, 99, 100, 100, 100};
  h.count = 100;
  h.sum = 0.0123;
  f.push_back({"kvmid_event_reply_seconds", "Event received to reply queued.",
               metric_type::histogram, {h}});
  f.push_back({"kvmid_events_total", "KVMI events by kind.", metric_type::counter,
               {value(1000, {{"kind", "pf"}}), value(7, {{"kind", "breakpoint"}})}});
  f.push_back({"kvmid_handshake_failures_total", "Failed handshakes by reason.",
               metric_type::counter, {value(2, {{"reason", "bad mac"}})}});
  f.push_back({"kvmid_protocol_errors_total", "Protocol errors by reason.", metric_type::counter,
               {value(1, {{"reason", "bad_size"}})}});
  f.push_back({"kvmid_send_queue_depth", "Messages queued on KVMI sockets.", metric_type::gauge,
               {value(0)}});
  f.push_back({"kvmid_vcpus", "vCPUs known.", metric_type::gauge, {value(8)}});
  f.push_back({"kvmid_vms", "VMs connected.", metric_type::gauge, {value(2)}});
  return f;
}
} // namespace

TEST_SUITE("control") {

TEST_CASE("prometheus: exact text of counters / gauges and a histogram") {
  std::vector<metric_family> f;
  f.push_back({"a_total", "Line one\nback\\slash", metric_type::counter,
               {value(1, {{"k", "q\"uo\\te\nnl"}}), value(2, {{"k", "plain"}, {"z", "2"}})}});
  f.push_back({"g", "", metric_type::gauge, {value(-3.5)}});
  metric_sample h;
  h.lbls = {{"vm", "x"}};
  h.bounds = {0.5, 1};
  h.cumulative = {1, 3, 4};
  h.count = 4;
  h.sum = 2.25;
  f.push_back({"h_seconds", "H.", metric_type::histogram, {h}});
  std::string expect =
    "# HELP a_total Line one\\nback\\\\slash\n"
    "# TYPE a_total counter\n"
    "a_total{k=\"q\\\"uo\\\\te\\nnl\"} 1\n"
    "a_total{k=\"plain\",z=\"2\"} 2\n"
    "# HELP g g\n"
    "# TYPE g gauge\n"
    "g -3.5\n"
    "# HELP h_seconds H.\n"
    "# TYPE h_seconds histogram\n"
    "h_seconds_bucket{vm=\"x\",le=\"0.5\"} 1\n"
    "h_seconds_bucket{vm=\"x\",le=\"1\"} 3\n"
    "h_seconds_bucket{vm=\"x\",le=\"+Inf\"} 4\n"
    "h_seconds_sum{vm=\"x\"} 2.25\n"
    "h_seconds_count{vm=\"x\"} 4\n";
  CHECK(render_prometheus(f) == expect);
}

TEST_CASE("prometheus: invalid names never reach the text") {
  std::vector<metric_family> f;
  f.push_back({"bad name", "x", metric_type::gauge, {value(1)}});
  f.push_back({"9starts_with_digit", "x", metric_type::gauge, {value(1)}});
  f.push_back({"ok", "x", metric_type::gauge,
               {value(1, {{"bad-label", "v"}}), value(2, {{"__reserved", "v"}}),
                value(3, {{"good", "v"}})}});
  std::string s = render_prometheus(f);
  CHECK(s.find("bad name") == std::string::npos);
  CHECK(s.find("9starts") == std::string::npos);
  CHECK(s.find("bad-label") == std::string::npos);
  CHECK(s.find("__reserved") == std::string::npos);
  CHECK(s.find("ok{good=\"v\"} 3\n") != std::string::npos);
  CHECK(valid_metric_name("kvmid:rate_5m"));
  CHECK_FALSE(valid_label_name("a:b"));
}

TEST_CASE("prometheus: special values") {
  CHECK(format_value(0) == "0");
  CHECK(format_value(12345678) == "12345678");
  CHECK(format_value(0.1) == "0.1");
  CHECK(format_value(1e-5) == "1e-05");
  CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
  CHECK(format_value(std::nan("")) == "NaN");
}

TEST_CASE("prometheus: promtool accepts the core's families") {
  auto text = render_prometheus(core_like());
  auto r = test::promtool_check(text);
  if (!r) {
    MESSAGE("skipped: promtool not installed (Debian package prometheus)");
    return;
  }
  INFO(r->output);
  CHECK(r->status == 0);
  // And promtool is not a rubber stamp: a broken exposition fails.
  auto bad = test::promtool_check("# TYPE x counter\nx{a=\"unterminated} 1\n");
  REQUIRE(bad);
  CHECK(bad->status != 0);
}

}
