// The event bus (bounded per subscriber, drops counted) and the metrics
// registry (labelled series, histogram buckets, Prometheus text).
#include "actors/core_impl.hpp"
#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>

using namespace kvmid;

namespace {
bus_record rec(bus_kind k, std::string name, std::string vm) {
  bus_record r;
  r.kind = k;
  r.name = std::move(name);
  r.vm = std::move(vm);
  return r;
}
} // namespace

TEST_CASE("a slow subscriber loses records with a counter and the publisher never waits") {
  metrics_registry m;
  auto& drops = m.get_counter("kvmid_bus_dropped_total", "dropped");
  event_bus bus(&drops);
  auto slow = bus.subscribe(bus_filter{}, 2);
  auto fast = bus.subscribe(bus_filter{}, 100);
  std::atomic<int> notified{0};
  slow->set_notify([&] { ++notified; });
  for (int i = 0; i < 5; ++i)
    bus.publish(rec(bus_kind::alert, "msr-protection", "vm-a"));
  CHECK(slow->dropped() == 3);
  CHECK(fast->dropped() == 0);
  CHECK(drops.value() == 3);
  CHECK(notified.load() == 1); // once, when the queue became non-empty
  std::vector<bus_record> got;
  CHECK(slow->poll(got) == 2);
  CHECK(got[0].seq < got[1].seq);
  CHECK(got[0].time_ns > 0);
  got.clear();
  CHECK(fast->poll(got, 3) == 3);
  CHECK(fast->poll(got) == 2);
}

TEST_CASE("a resumed subscriber gets the records after its cursor from the replay ring") {
  event_bus bus(nullptr, 4);
  for (int i = 0; i < 3; ++i) {
    bus.publish(rec(bus_kind::alert, "cr-pin", "vm-a"));
    bus.publish(rec(bus_kind::event, "pf", "vm-a")); // raw events are not kept
  }
  // Seqs 1..6: alerts are 1, 3, 5. A client that saw 3 gets 5, no gap.
  auto s = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), 3});
  std::vector<bus_record> got;
  REQUIRE(s->poll(got) == 1);
  CHECK(got[0].seq == 5);
  CHECK_FALSE(s->replay_gap());
  // Live records follow the replayed ones, none twice.
  bus.publish(rec(bus_kind::lifecycle, "vm-connected", "vm-a"));
  got.clear();
  REQUIRE(s->poll(got) == 1);
  CHECK(got[0].seq == 7);

  // The ring holds 4: 1 and 3 have left it. A cursor at 1 misses 3: a gap.
  bus.publish(rec(bus_kind::alert, "cr-pin", "vm-b"));
  bus.publish(rec(bus_kind::alert, "cr-pin", "vm-b"));
  auto old = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), 1});
  CHECK(old->replay_gap());
  got.clear();
  CHECK(old->poll(got) == 4);
  CHECK(got.front().seq == 5);
  // A cursor at the newest record: nothing to replay, no gap.
  auto now = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), bus.published()});
  CHECK_FALSE(now->replay_gap());
  got.clear();
  CHECK(now->poll(got) == 0);
  // Another kvmid run's cursor: the whole ring, and a gap.
  bus_filter only_b;
  only_b.vms = {"vm-b"};
  auto other = bus.subscribe(only_b, 100, bus_cursor{"0123abcd", 9});
  CHECK(other->replay_gap());
  got.clear();
  CHECK(other->poll(got) == 2); // the filter applies to the replay
  // Without a cursor: live records only.
  got.clear();
  CHECK(bus.subscribe(bus_filter{}, 100)->poll(got) == 0);
}

TEST_CASE("a full replay ring keeps the newest records whole and in order as it wraps") {
  event_bus bus(nullptr, 3);
  // Records of different sizes, so an overwritten slot must take the new
  // record's fields, not keep a longer one's tail.
  for (int i = 1; i <= 10; ++i) {
    auto r = rec(bus_kind::alert, "alert-" + std::to_string(i), std::string(size_t(i) * 7, 'v'));
    for (int f = 0; f < (i % 4); ++f)
      r.fields.emplace_back("f" + std::to_string(f), std::string(size_t(i) * 5, 'x'));
    bus.publish(std::move(r));
  }
  auto s = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), 0});
  CHECK(s->replay_gap());
  std::vector<bus_record> got;
  REQUIRE(s->poll(got) == 3);
  for (int k = 0; k < 3; ++k) {
    int i = 8 + k;
    CHECK(got[size_t(k)].seq == uint64_t(i));
    CHECK(got[size_t(k)].name == "alert-" + std::to_string(i));
    CHECK(got[size_t(k)].vm == std::string(size_t(i) * 7, 'v'));
    REQUIRE(got[size_t(k)].fields.size() == size_t(i % 4));
    for (auto& [key, value] : got[size_t(k)].fields)
      CHECK(value == std::string(size_t(i) * 5, 'x'));
  }
  // A cursor inside the ring: only what follows it.
  auto mid = bus.subscribe(bus_filter{}, 100, bus_cursor{bus.boot(), 8});
  CHECK_FALSE(mid->replay_gap());
  got.clear();
  REQUIRE(mid->poll(got) == 2);
  CHECK(got[0].seq == 9);
  CHECK(got[1].seq == 10);
}

TEST_CASE("filters by VM - kind and name with raw events only when asked for") {
  event_bus bus;
  auto def = bus.subscribe(bus_filter{}, 16);
  auto vm = bus.subscribe(bus_filter{{"vm-b"}, {}, {}}, 16);
  auto ev = bus.subscribe(bus_filter{{}, {bus_kind::event}, {"pf"}}, 16);
  CHECK(bus.wants_events());
  bus.publish(rec(bus_kind::event, "pf", "vm-a"));
  bus.publish(rec(bus_kind::event, "msr", "vm-a"));
  bus.publish(rec(bus_kind::alert, "cr-pin", "vm-b"));
  bus.publish(rec(bus_kind::lifecycle, "vm-connected", "vm-a"));
  std::vector<bus_record> a, b, c;
  def->poll(a);
  vm->poll(b);
  ev->poll(c);
  REQUIRE(a.size() == 2); // alert + lifecycle, no raw events
  CHECK(a[0].name == "cr-pin");
  REQUIRE(b.size() == 1);
  CHECK(b[0].vm == "vm-b");
  REQUIRE(c.size() == 1);
  CHECK(c[0].name == "pf");
  ev.reset();
  CHECK_FALSE(bus.wants_events());
  CHECK(bus.subscribers() == 2);
}

TEST_CASE("publishing from many threads while subscribers come and go") {
  event_bus bus;
  // Subscribed throughout and large enough for everything: it must see
  // every record once, each publisher's in its order, each with its own seq.
  auto steady = bus.subscribe(bus_filter{}, 8192);
  std::atomic<bool> stop{false};
  std::atomic<size_t> churn_bad{0};
  std::thread churn([&] {
    while (!stop) {
      auto s = bus.subscribe(bus_filter{{}, {bus_kind::alert}, {}}, 4);
      std::vector<bus_record> v;
      s->poll(v);
      for (auto& r : v)
        churn_bad += r.kind != bus_kind::alert || r.vm.empty();
    }
  });
  std::vector<std::thread> pubs;
  for (int t = 0; t < 3; ++t)
    pubs.emplace_back([&bus, t] {
      for (int i = 0; i < 2000; ++i)
        bus.publish(rec(bus_kind::alert, std::to_string(i), "vm-" + std::to_string(t)));
    });
  for (auto& p : pubs)
    p.join();
  stop = true;
  churn.join();
  CHECK(churn_bad.load() == 0);
  CHECK(bus.subscribers() == 1); // every churned subscription unsubscribed
  std::vector<bus_record> got;
  steady->poll(got);
  CHECK(steady->dropped() == 0);
  REQUIRE(got.size() == 6000);
  std::map<std::string, int> next;
  std::set<uint64_t> seqs;
  for (auto& r : got) {
    CAPTURE(r.vm);
    CHECK(r.name == std::to_string(next[r.vm]++));
    seqs.insert(r.seq);
  }
  CHECK(seqs.size() == 6000); // one seq per record
  CHECK(*seqs.rbegin() == bus.published());
  CHECK(next == std::map<std::string, int>{{"vm-0", 2000}, {"vm-1", 2000}, {"vm-2", 2000}});
}

TEST_CASE("metrics: labelled counters - gauges - histograms and their Prometheus text") {
  metrics_registry m;
  auto& a = m.get_counter("kvmid_events_total", "events", {{"kind", "pf"}});
  auto& b = m.get_counter("kvmid_events_total", "events", {{"kind", "msr"}});
  CHECK(&a == &m.get_counter("kvmid_events_total", "events", {{"kind", "pf"}}));
  a.inc(3);
  b.inc();
  m.get_gauge("kvmid_vms", "vms").set(4);
  auto& h = m.get_histogram("kvmid_event_reply_seconds", "lat", {0.001, 0.01});
  h.observe(0.0005);
  h.observe(0.005);
  h.observe(1.0);
  CHECK(h.cumulative() == std::vector<uint64_t>{1, 2, 3});
  CHECK(h.count() == 3);
  CHECK(h.sum() == doctest::Approx(1.0055).epsilon(1e-6));
  CHECK_THROWS(m.get_gauge("kvmid_events_total", "oops"));
  auto text = m.render_prometheus();
  CHECK(text.find("# TYPE kvmid_events_total counter") != std::string::npos);
  CHECK(text.find("kvmid_events_total{kind=\"pf\"} 3") != std::string::npos);
  CHECK(text.find("kvmid_vms 4") != std::string::npos);
  CHECK(text.find("kvmid_event_reply_seconds_bucket{le=\"+Inf\"} 3") != std::string::npos);
  CHECK(text.find("kvmid_event_reply_seconds_count 3") != std::string::npos);
  auto snap = m.snapshot();
  REQUIRE(snap.size() == 3);
  CHECK(snap[0].name == "kvmid_event_reply_seconds"); // sorted by name
}

TEST_CASE("a command's counters are the registry's, by command and result, cached or not") {
  metrics_registry reg;
  core_metrics m;
  m.reg = &reg;
  m.command(kvmi::msg_id::control_events, "ok").inc();
  m.command(kvmi::msg_id::control_events, "ok").inc(); // from the cache
  m.command(kvmi::msg_id::control_events, "EINVAL").inc();
  m.command(kvmi::msg_id::control_cr, "ok").inc();
  auto count = [&](const char* cmd, const char* result) {
    return reg
      .get_counter("kvmid_commands_total", "KVMI commands sent, by command and result",
                   {{"command", cmd}, {"result", result}})
      .value();
  };
  CHECK(count(std::string(kvmi::name(kvmi::msg_id::control_events)).c_str(), "ok") == 2);
  CHECK(count(std::string(kvmi::name(kvmi::msg_id::control_events)).c_str(), "EINVAL") == 1);
  CHECK(count(std::string(kvmi::name(kvmi::msg_id::control_cr)).c_str(), "ok") == 1);
  CHECK(&m.command(kvmi::msg_id::control_cr, "ok") == &m.command(kvmi::msg_id::control_cr, "ok"));
}
