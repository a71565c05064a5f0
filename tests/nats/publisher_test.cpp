// The JetStream publisher and its spool against a real nats-server: each
// bus record reaches the stream once, an outage spools and drains, a
// restarted publisher sends what the last one spooled, a full spool counts
// what it drops, and a resend is dropped by the stream's de-duplication.
#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"
#include "server/control/sse.hpp"
#include "server/nats/jetstream_publisher.hpp"
#include "server/nats/nats_link.hpp"
#include "server/nats/record_subject.hpp"
#include "server/nats/spool.hpp"
#include "tests/support/jetstream_reader.hpp"
#include "tests/support/nats_server.hpp"

#include <doctest/doctest.h>

#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

using namespace kvmid;
using namespace kvmid::test;

// One nats-server for the whole binary. A case that stops it starts it
// again; one that failed in between leaves it to running_nats_server().
nats_server& shared_nats_server() {
  static nats_server s;
  return s;
}

nats_server& running_nats_server() {
  auto& s = shared_nats_server();
  if (!s.running())
    s.start();
  return s;
}

namespace {

nats_server& server() { return shared_nats_server(); }

// A publisher with its own subject prefix and stream, so cases do not see
// each other's records.
struct rig {
  std::string prefix;
  nats_options o;
  temp_dir state{"nats-state"};
  metrics_registry metrics;
  std::unique_ptr<event_bus> bus = std::make_unique<event_bus>();
  std::unique_ptr<nats_link> link;
  std::unique_ptr<jetstream_publisher> pub;
  jetstream_publisher::queues queues;

  explicit rig(const std::string& name, size_t spool_records = 1000) : prefix("t" + name) {
    o.enabled = true;
    o.urls = {running_nats_server().url()};
    o.host = "host-" + name;
    o.subject_prefix = prefix;
    o.stream = "S" + name;
    o.spool_records = spool_records;
    o.ack_timeout = std::chrono::milliseconds(500);
    start();
  }
  void start() {
    auto l = nats_link::connect(o);
    REQUIRE(std::holds_alternative<std::unique_ptr<nats_link>>(l));
    link = std::move(std::get<std::unique_ptr<nats_link>>(l));
    auto sp = spool::open(state.path() / "nats-spool", o.spool_records);
    REQUIRE(std::holds_alternative<spool>(sp));
    pub = std::make_unique<jetstream_publisher>(*link, *bus, metrics, o, std::move(std::get<spool>(sp)),
                                                 queues);
  }
  // A new kvmid run: new bus (new boot id), the same state directory.
  void restart() {
    pub.reset();
    link.reset();
    bus = std::make_unique<event_bus>();
    start();
  }
  void alerts(int n, bus_kind k = bus_kind::alert) {
    for (int i = 0; i < n; ++i) {
      bus_record r;
      r.kind = k;
      r.name = k == bus_kind::event ? "pf" : "msr-protection";
      r.vm = "vm-1";
      r.message = "record " + std::to_string(i);
      r.fields = {{"msr", "0xc0000082"}};
      bus->publish(std::move(r));
    }
  }
  int64_t metric(const std::string& name) {
    for (auto& f : metrics.snapshot())
      if (f.name == name && !f.samples.empty())
        return int64_t(f.samples[0].value);
    return -1;
  }
};

// Every message's id once, and as many as `n`.
void check_exactly_once(jetstream_reader& js, const std::string& stream, size_t n) {
  auto msgs = js.all(stream);
  std::set<std::string> ids;
  for (auto& m : msgs)
    ids.insert(m.msg_id);
  CHECK(msgs.size() == n);
  CHECK(ids.size() == msgs.size());
}

// This process's threads: id -> (name, nice).
std::map<int, std::pair<std::string, int>> threads_now() {
  std::map<int, std::pair<std::string, int>> out;
  for (auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(t.path() / "comm"), stat(t.path() / "stat");
    std::string name, st;
    std::getline(comm, name);
    std::getline(stat, st);
    // After the ")" that ends the name: state is field 3, nice field 19.
    std::istringstream rest(st.substr(st.rfind(')') + 2));
    std::string f;
    for (int i = 3; i < 19 && rest >> f; ++i) {
    }
    int nice = 0;
    rest >> nice;
    out[std::stoi(t.path().filename())] = {name, nice};
  }
  return out;
}

} // namespace

TEST_CASE("each bus record reaches the stream once with its subject id and SSE body") {
  rig r("once");
  jetstream_reader js(server().url());
  r.alerts(40);
  r.alerts(25, bus_kind::event); // raw events: not asked for
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 40; },
                     "40 records acked"));
  CHECK(js.count(r.o.stream) == 40);
  check_exactly_once(js, r.o.stream, 40);
  auto msgs = js.all(r.o.stream);
  REQUIRE(msgs.size() == 40);
  bus_record first;
  first.seq = 1;
  CHECK(msgs[0].subject == r.prefix + ".bus.host-once.alert.msr-protection");
  CHECK(msgs[0].msg_id == record_msg_id("host-once", r.bus->boot(), 1));
  auto body = nlohmann::json::parse(msgs[0].body);
  CHECK(body["seq"] == 1);
  CHECK(body["kind"] == "alert");
  CHECK(body["message"] == "record 0");
  CHECK(body["fields"]["msr"] == "0xc0000082");
  CHECK(r.metric("kvmid_nats_connected") == 1);
  CHECK(r.metric("kvmid_nats_spool_records") == 0);
  CHECK(r.metric("kvmid_nats_spool_capacity_records") == 1000);
  CHECK(r.metric("kvmid_nats_spool_full_total") == 0);
}

TEST_CASE("raw events go to the stream when the config asks for them") {
  rig r("raw");
  r.pub.reset();
  r.o.raw_events = true;
  r.restart();
  jetstream_reader js(server().url());
  r.alerts(5, bus_kind::event);
  REQUIRE(wait_until([&] { return js.count(r.o.stream) == 5; }, "5 raw events in the stream"));
  CHECK(js.all(r.o.stream)[0].subject == r.prefix + ".bus.host-raw.event.pf");
}

TEST_CASE("raw events that outrun the publisher are dropped and counted and no alert is") {
  rig r("flood");
  r.pub.reset();
  r.o.raw_events = true;
  r.queues = {1024, 8};
  r.restart();
  jetstream_reader js(server().url());
  r.alerts(1);
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 1; }, "the stream made"));
  // A server that takes the batch and acks nothing for a while: the
  // publisher waits out its ack timeout while the fleet floods the bus.
  REQUIRE(::kill(server().pid(), SIGSTOP) == 0);
  struct resume {
    ~resume() { ::kill(server().pid(), SIGCONT); }
  } resume_server;
  constexpr int events = 1000, every = 50;
  for (int i = 0; i < events; ++i) {
    r.alerts(1, bus_kind::event);
    if (i % every == 0)
      r.alerts(1);
  }
  ::kill(server().pid(), SIGCONT);
  auto in_stream = [&](const std::string& kind) {
    size_t n = 0;
    for (auto& m : js.all(r.o.stream))
      n += m.subject.find("." + kind + ".") != std::string::npos;
    return n;
  };
  REQUIRE(wait_until(
    [&] {
      return r.metric("kvmid_nats_spool_records") == 0 && in_stream("alert") == 1 + events / every
             && int64_t(in_stream("event")) + r.metric("kvmid_nats_events_dropped_total") == events;
    },
    "every alert in the stream and every raw event there or counted as dropped"));
  CHECK(r.metric("kvmid_nats_events_dropped_total") > events / 2);
  check_exactly_once(js, r.o.stream, 1 + events / every + in_stream("event"));
}

TEST_CASE("an outage spools records and the reconnect drains them exactly once") {
  rig r("outage");
  jetstream_reader js(server().url());
  r.alerts(10);
  REQUIRE(wait_until([&] { return js.count(r.o.stream) == 10; }, "10 records before the outage"));
  server().stop();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_connected") == 0; }, "disconnected"));
  r.alerts(30);
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_records") == 30; }, "30 spooled"));
  CHECK(r.metric("kvmid_nats_published_total") == 10);
  server().start();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_records") == 0; }, "spool drained"));
  CHECK(r.metric("kvmid_nats_connected") == 1);
  CHECK(r.metric("kvmid_nats_published_total") == 40);
  jetstream_reader js2(server().url());
  check_exactly_once(js2, r.o.stream, 40);
  r.alerts(3); // and on it goes, directly
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 43; }, "43 acked"));
  check_exactly_once(js2, r.o.stream, 43);
}

TEST_CASE("a restarted publisher drains the spool its last run left") {
  rig r("restart");
  r.alerts(1);
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 1; }, "the stream made"));
  server().stop();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_connected") == 0; }, "disconnected"));
  r.alerts(12);
  r.pub->stop(); // what the bus still queued goes to the spool too
  CHECK(r.metric("kvmid_nats_spool_records") == 12);
  r.restart();
  CHECK(r.metric("kvmid_nats_spool_records") == 12);
  server().start();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_records") == 0; }, "spool drained"));
  jetstream_reader js(server().url());
  check_exactly_once(js, r.o.stream, 13);
}

TEST_CASE("a full spool drops and counts what it cannot hold") {
  rig r("full", 5);
  r.alerts(1);
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 1; }, "the stream made"));
  server().stop();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_connected") == 0; }, "disconnected"));
  r.alerts(12);
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_full_total") == 7; }, "7 dropped"));
  CHECK(r.metric("kvmid_nats_spool_records") == 5);
  CHECK(r.metric("kvmid_nats_spool_capacity_records") == 5);
  server().start();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_records") == 0; }, "spool drained"));
  jetstream_reader js(server().url());
  check_exactly_once(js, r.o.stream, 6); // the oldest five of the outage
}

TEST_CASE("a resent record the stream holds is dropped by its Nats-Msg-Id") {
  rig r("dedup");
  jetstream_reader js(server().url());
  r.alerts(4);
  REQUIRE(wait_until([&] { return js.count(r.o.stream) == 4; }, "4 records"));
  auto held = js.all(r.o.stream);
  // As if the acks of two had been lost: they are in the spool again.
  r.pub.reset();
  {
    auto sp = spool::open(r.state.path() / "nats-spool", 100);
    auto& s = std::get<spool>(sp);
    for (int i : {1, 3})
      REQUIRE(s.append({held[size_t(i)].subject, held[size_t(i)].msg_id, held[size_t(i)].body})
              == spool::append_result::stored);
  }
  r.start();
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_spool_records") == 0; }, "spool drained"));
  check_exactly_once(js, r.o.stream, 4);
}

TEST_CASE("the spool keeps records across reopening and skips a damaged file") {
  temp_dir d("spool");
  {
    auto sp = spool::open(d.path(), 3);
    auto& s = std::get<spool>(sp);
    CHECK(s.append({"a.b", "id1", "{\"x\":1}\nline"}) == spool::append_result::stored);
    CHECK(s.append({"a.c", "id2", "{}"}) == spool::append_result::stored);
    CHECK(s.append({"a.d", "id3", "{}"}) == spool::append_result::stored);
    CHECK(s.append({"a.e", "id4", "{}"}) == spool::append_result::full);
  }
  d.write("00000000000000000002.rec", "not a spool record");
  d.write("00000000000000000009.tmp", "half written");
  auto sp = spool::open(d.path(), 3);
  auto& s = std::get<spool>(sp);
  CHECK(s.size() == 3);
  std::vector<std::string> lost;
  auto old = s.oldest(10, &lost);
  REQUIRE(old.size() == 2);
  CHECK(lost.size() == 1);
  CHECK(old[0].second.msg_id == "id1");
  CHECK(old[0].second.body == "{\"x\":1}\nline");
  CHECK(old[1].second.subject == "a.d");
  s.remove(old[0].first);
  CHECK(s.size() == 1);
  CHECK(!std::filesystem::exists(d.path() / "00000000000000000009.tmp"));
  CHECK(s.append({"a.f", "id5", "{}"}) == spool::append_result::stored);
  CHECK(s.oldest(10).back().second.msg_id == "id5");
}

TEST_CASE("NATS threads run below the event path and the caller keeps its priority") {
  running_nats_server();
  int base = getpriority(PRIO_PROCESS, 0);
  auto before = threads_now();
  rig r("nice");
  r.alerts(3); // the publisher's first publish starts the library's ack threads
  REQUIRE(wait_until([&] { return r.metric("kvmid_nats_published_total") == 3; }, "3 records acked"));
  auto after = threads_now();
  CHECK(getpriority(PRIO_PROCESS, 0) == base);
  int want = std::min(19, base + publishing_nice);
  bool publisher = false;
  size_t fresh = 0;
  for (auto& [tid, t] : after) {
    if (before.count(tid))
      continue;
    ++fresh;
    INFO("thread " << tid << " '" << t.first << "' nice " << t.second);
    CHECK(t.second == want);
    publisher = publisher || t.first == "kvmid-nats";
  }
  CHECK(publisher);
  CHECK(fresh >= 2); // the publisher and at least the library's reader
}
