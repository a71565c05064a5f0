// Many VMs x many vCPUs against a minimal poll()-based introspector that
// sets every vCPU up at CREATE_VCPU and answers every event: the invariant
// checker must see zero violations, and every event is answered once. Each
// case runs in the run's dialect (tests/support/test_dialect.hpp; v7: the
// tool batches as libkvmi does).
#include "kernel-patches/sim/latency.hpp"
#include "kernel-patches/sim/sim.hpp"
#include "proto/v7/codec.hpp"
#include "proto/v7/handshake.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/support/constants.hpp"
#include "tests/support/test_dialect.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <filesystem>
#include <thread>
#include <unordered_map>

using namespace kvmi;
using namespace kvmi::test;

namespace {

using kvmid::test::msr_lstar;

// What the fleet tool counts, over every session.
struct fleet_counts {
  std::atomic<uint64_t> events{0}, cmd_errors{0}, stream_errors{0}, sessions{0}, unhooks{0};
};

// One tool session in one dialect: its handshake, the set-up it sends once
// hooked and at CREATE_VCPU, its answers to events, its checks of replies.
class session {
public:
  session(int fd, fleet_counts& n, uint32_t max_payload) : fd(fd), sp(byte_order::native, max_payload), n_(n) {}
  virtual ~session() = default;
  // Consumes handshake bytes (the rest of `in` is the KVMI stream).
  virtual hs::status handshake(std::span<const uint8_t>& in) = 0;
  virtual void on_hooked() = 0;
  virtual void on_frame(const frame& f) = 0;

  int fd;
  frame_splitter sp;
  std::vector<uint8_t> out;
  bool hooked = false;
  bool close_after_send = false;

protected:
  // What the protocol asks of a tool that sees a bad frame: close the socket.
  void broken() {
    ++n_.stream_errors;
    close_after_send = true;
  }
  void unhooked() {
    // Hooks would be removed here; closing tells the device manager to go on.
    ++n_.unhooks;
    close_after_send = true;
  }
  void append(const std::vector<uint8_t>& frame) { out.insert(out.end(), frame.begin(), frame.end()); }

  fleet_counts& n_;
  std::vector<uint8_t> one_;
  uint32_t seq_ = 0;
};

// The events a fleet tool enables on every vCPU.
constexpr event_id vcpu_events[] = {event_id::pf,        event_id::msr,       event_id::cr,
                                    event_id::breakpoint, event_id::hypercall, event_id::descriptor,
                                    event_id::xsetbv,    event_id::trap};

class session_v5 final : public session {
public:
  session_v5(int fd, fleet_counts& n) : session(fd, n, kvmi::max_payload), hs_(test_cookie()) {}

  hs::status handshake(std::span<const uint8_t>& in) override {
    hs_.feed(in);
    append(hs_.out());
    hs_.out().clear();
    if (hs_.state() == hs::status::done)
      sp.set_order(hs_.info().order);
    return hs_.state();
  }
  void on_hooked() override {
    send(control_vm_events{flag(event_id::create_vcpu) | flag(event_id::unhook), 0});
  }
  void on_frame(const frame& f) override {
    auto order = hs_.info().order;
    if (f.hdr.id == uint16_t(msg_id::event)) {
      auto e = decode_event(f, order);
      if (!e || check(*e))
        return broken();
      ++n_.events;
      auto kind = e->kind();
      if (kind == event_id::unhook)
        return unhooked();
      if (kind == event_id::create_vcpu) {
        uint16_t v = e->common.vcpu;
        uint32_t mask = 0;
        for (auto id : vcpu_events)
          mask |= flag(id);
        send(control_events{v, 0, mask});
        send(control_msr{v, 1, 0, msr_lstar});
        send(control_cr{v, 1, 0, 4});
        if (v == 0) {
          set_page_access_cmd sp{{0, 16, 0, 0}, {}};
          for (uint64_t p = 0; p < 16; ++p)
            sp.entries.push_back({0x100000 + p * 4096, page_access_r | page_access_x, {}});
          send(sp);
        }
      }
      event_reply_msg r;
      r.seq = e->seq;
      r.common = event_reply{0, e->common.event};
      if (auto* c = std::get_if<event_cr>(&e->data))
        r.extra = event_cr_reply{c->new_value};
      else if (auto* m = std::get_if<event_msr>(&e->data))
        r.extra = event_msr_reply{m->new_value};
      else if (kind == event_id::pf)
        r.extra = event_pf_reply{};
      encode(one_, r, order);
      return append(one_);
    }
    auto it = shapes_.find(f.hdr.seq);
    if (it == shapes_.end())
      return broken(); // a reply nobody asked for (or twice)
    auto r = decode_reply(f, it->second, order);
    shapes_.erase(it);
    if (!r)
      return broken();
    if (r->err != 0)
      ++n_.cmd_errors;
  }

private:
  void send(command c) {
    command_msg m{++seq_, std::move(c)};
    shapes_[m.seq] = expected_reply(m.body);
    encode(one_, m, hs_.info().order);
    append(one_);
  }

  hs::tool_side hs_;
  std::unordered_map<uint32_t, reply_shape> shapes_;
};

// libkvmi's way: enables one id per command, sent as a batch in which only
// the last CONTROL_CMD_RESPONSE is answered.
class session_v7 final : public session {
public:
  session_v7(int fd, fleet_counts& n) : session(fd, n, v7::max_payload) {}

  hs::status handshake(std::span<const uint8_t>& in) override {
    size_t want = sizeof(uint32_t);
    while (!in.empty()) {
      if (hello_.size() >= sizeof(uint32_t)) {
        auto size = v7::hs::qemu_hello_size(hello_);
        if (!size)
          return hs::status::failed;
        want = *size;
      }
      size_t k = std::min(want - hello_.size(), in.size());
      hello_.insert(hello_.end(), in.begin(), in.begin() + static_cast<ptrdiff_t>(k));
      in = in.subspan(k);
      if (hello_.size() > sizeof(uint32_t) && hello_.size() == want) {
        if (!v7::hs::decode_qemu_hello(hello_, v7::hs::layout::max_gpa))
          return hs::status::failed;
        std::vector<uint8_t> answer;
        v7::hs::encode(answer, v7::hs::make_answer(test_cookie()));
        append(answer);
        return hs::status::done;
      }
    }
    return hs::status::in_progress;
  }
  void on_hooked() override {
    batch({{v7::control_vm_events{uint16_t(event_id::create_vcpu), 1, 0, 0}, 0},
           {v7::control_vm_events{uint16_t(event_id::unhook), 1, 0, 0}, 0}});
  }
  void on_frame(const frame& f) override {
    if (f.hdr.id == uint16_t(v7::msg_id::event)) {
      auto e = v7::decode_event(f);
      if (!e || v7::check(*e))
        return broken();
      ++n_.events;
      auto kind = e->kind();
      if (kind == v7::event_id::unhook)
        return unhooked();
      uint16_t v = e->common.vcpu;
      if (kind == v7::event_id::create_vcpu) {
        std::vector<std::pair<v7::command, uint16_t>> cs;
        for (auto id : vcpu_events)
          cs.emplace_back(v7::control_events{uint16_t(id), 1, 0, 0}, v);
        cs.emplace_back(v7::control_msr{1, 0, 0, msr_lstar}, v);
        cs.emplace_back(v7::control_cr{1, 0, 0, 4}, v);
        if (v == 0) {
          v7::set_page_access_cmd sp{{0, 16, 0}, {}};
          for (uint64_t p = 0; p < 16; ++p)
            sp.entries.push_back({0x100000 + p * 4096, page_access_r | page_access_x, 0, 0, 0});
          cs.emplace_back(std::move(sp), 0);
        }
        batch(std::move(cs));
      }
      v7::event_reply_msg r;
      r.seq = e->seq;
      r.vcpu = v;
      r.common = v7::event_reply{0, e->common.event, 0, 0};
      if (auto* c = std::get_if<v7::event_cr>(&e->data))
        r.extra = v7::event_cr_reply{c->new_value};
      else if (auto* m = std::get_if<v7::event_msr>(&e->data))
        r.extra = v7::event_msr_reply{m->new_value};
      else if (kind == v7::event_id::pf)
        r.extra = v7::event_pf_reply{};
      v7::encode(one_, r);
      return append(one_);
    }
    auto it = shapes_.find(f.hdr.seq);
    if (it == shapes_.end())
      return broken();
    auto r = v7::decode_reply(f, it->second);
    shapes_.erase(it);
    if (!r)
      return broken();
    if (r->err != 0)
      ++n_.cmd_errors;
  }

private:
  void put(v7::command c, uint16_t vcpu, bool answered) {
    v7::command_msg m{++seq_, vcpu, std::move(c)};
    if (answered)
      shapes_[m.seq] = v7::expected_reply(m.body);
    v7::encode(one_, m);
    append(one_);
  }
  void batch(std::vector<std::pair<v7::command, uint16_t>> cs) {
    put(v7::control_cmd_response{0, 1, 0, 0}, 0, false);
    for (auto& [c, vcpu] : cs)
      put(std::move(c), vcpu, false);
    put(v7::control_cmd_response{1, 1, 0, 0}, 0, true);
  }

  std::vector<uint8_t> hello_;
  std::unordered_map<uint32_t, v7::reply_shape> shapes_;
};

class fleet_tool : public fleet_counts {
public:
  fleet_tool() { th_ = std::thread([this] { run(); }); }
  ~fleet_tool() { stop(); }
  void stop() {
    stop_ = true;
    if (th_.joinable())
      th_.join();
  }
  // A host aimed at this tool, in its dialect.
  sim::options host_options() const {
    sim::options o;
    o.unix_path = l_.path();
    o.cookie = test_cookie();
    o.dialect = dialect_;
    return o;
  }

private:
  std::unique_ptr<session> accept(int fd) {
    if (dialect_ == sim::protocol::v7)
      return std::make_unique<session_v7>(fd, *this);
    return std::make_unique<session_v5>(fd, *this);
  }

  void run() {
    std::vector<std::unique_ptr<session>> ss;
    std::vector<uint8_t> buf(1 << 16);
    while (!stop_) {
      std::vector<pollfd> p{{l_.fd(), POLLIN, 0}};
      for (auto& s : ss)
        p.push_back({s->fd, POLLIN, 0});
      if (::poll(p.data(), p.size(), 10) <= 0)
        continue;
      if (p[0].revents & POLLIN) {
        int fd = ::accept4(l_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0)
          ss.push_back(accept(fd));
      }
      for (size_t i = 1; i < p.size(); ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
          continue;
        auto& s = *ss[i - 1];
        auto n = ::recv(s.fd, buf.data(), buf.size(), 0);
        if (n <= 0) {
          ::close(s.fd);
          s.fd = -1;
          continue;
        }
        std::span<const uint8_t> in(buf.data(), static_cast<size_t>(n));
        if (!s.hooked) {
          auto st = s.handshake(in);
          if (st == hs::status::done) {
            s.hooked = true;
            ++sessions;
            s.on_hooked();
          } else if (st == hs::status::failed) {
            ::close(s.fd);
            s.fd = -1;
            continue;
          }
        }
        if (s.hooked && !in.empty())
          if (s.sp.feed(in, [&](const frame& f) {
                if (!s.close_after_send)
                  s.on_frame(f);
              })) {
            ++stream_errors;
            s.close_after_send = true;
          }
        std::span<const uint8_t> o(s.out);
        while (!o.empty()) {
          auto k = ::send(s.fd, o.data(), o.size(), MSG_NOSIGNAL);
          if (k <= 0)
            break;
          o = o.subspan(static_cast<size_t>(k));
        }
        s.out.clear();
        if (s.close_after_send) {
          ::close(s.fd);
          s.fd = -1;
        }
      }
      std::erase_if(ss, [](auto& s) { return s->fd < 0; });
    }
    for (auto& s : ss)
      ::close(s->fd);
  }

  listener l_;
  sim::protocol dialect_ = kvmid::test::test_dialect();
  std::atomic<bool> stop_{false};
  std::thread th_;
};

// Event replies received, whatever their action.
uint64_t replies(const sim::report& r) {
  return r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
}

uint64_t total(const std::array<uint64_t, num_events>& a) {
  uint64_t n = 0;
  for (auto x : a)
    n += x;
  return n;
}

struct host_run {
  sim::report report; // at the end
  bool reached = false;
};

// Runs a host with `o` against the tool until `done` holds for the host's
// report or the deadline passes, then stops both.
template <class Done>
host_run run_until(fleet_tool& tool, const sim::options& o, sim::ms deadline, Done done) {
  sim::host h(o);
  h.start();
  bool reached = h.wait_until([&] { return done(h.make_report()); }, deadline);
  h.stop();
  tool.stop();
  return {h.make_report(), reached};
}

// How often the simulator's event-loop thread has slept so far: the
// voluntary context switches of the one thread named kvmi-sim.
uint64_t sim_thread_sleeps() {
  for (auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(t.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name != "kvmi-sim")
      continue;
    std::ifstream st(t.path() / "status");
    for (std::string line; std::getline(st, line);)
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0)
        return std::stoull(line.substr(line.find(':') + 1));
  }
  return 0;
}

} // namespace

TEST_CASE("sim: runs pooled give the percentiles of all their events together") {
  using sim::detail::histogram;
  auto run = [](uint64_t ns, uint64_t n) {
    sim::latency l;
    l.count = n;
    l.buckets = {{uint32_t(histogram::bucket(ns)), n}};
    l.max_ns = ns;
    return l;
  };
  // 98 fast events in one run, 2 slow ones in another: the slow ones are
  // the pool's top 2 %, above its p99 and below its p50 of neither alone.
  auto p = sim::pooled({run(10'000, 98), run(1'000'000, 2)});
  CHECK(p.count == 100);
  CHECK(p.p50_us >= 10.0);
  CHECK(p.p50_us < 10.5); // a bucket's bound: within 1/64 of the value
  CHECK(p.p99_us == 1000.0);
  CHECK(p.max_us == 1000.0);
  REQUIRE(p.cdf.size() == 2);
  CHECK(p.cdf[0].second == doctest::Approx(0.98));
  CHECK(p.cdf[1] == std::pair<double, double>{1000.0, 1.0});
  auto q = sim::pooled({run(10'000, 100), run(1'000'000, 1)});
  CHECK(q.p99_us < 10.5); // one slow event in 101 is past the p99
  CHECK(sim::pooled({}).count == 0);
}

TEST_CASE("sim: 2,000 vCPUs over 40 VMs against a minimal introspector: zero violations") {
  fleet_tool tool;
  auto o = tool.host_options();
  o.vms = 40;
  o.vcpus_per_vm = 50;
  o.seed = 7;
  o.workload.rate_per_vcpu = 20;
  auto run = run_until(tool, o, sim::ms{90000}, [](const sim::report& r) {
    return r.total.events[size_t(event_id::create_vcpu)] == 2000 && total(r.total.events) >= 20000;
  });
  auto& r = run.report;
  INFO(to_json(r).dump(2));
  CHECK(run.reached);
  CHECK(r.ok());
  CHECK(r.vcpus == 2000);
  CHECK(r.total.sessions == 40);
  CHECK(r.total.events[size_t(event_id::create_vcpu)] == 2000);
  CHECK(r.total.events[size_t(event_id::pf)] > 0);
  CHECK(r.total.events[size_t(event_id::msr)] > 0);
  CHECK(r.total.events[size_t(event_id::cr)] > 0);
  // Every event was answered exactly once, or was still waiting when the host stopped.
  CHECK(replies(r) + r.total.unanswered_at_close == total(r.total.events));
  CHECK(r.event_latency.count == replies(r));
  // Pooled with itself: twice the events, the same distribution (the
  // percentiles may still move by a bucket: the rank of a quantile in 2n
  // events is not twice its rank in n).
  auto twice = sim::pooled({r.event_latency, r.event_latency});
  CHECK(twice.count == 2 * r.event_latency.count);
  CHECK(twice.max_us == r.event_latency.max_us);
  CHECK(twice.cdf == r.event_latency.cdf);
  CHECK(tool.cmd_errors == 0);
  CHECK(tool.stream_errors == 0);
  CHECK(tool.events >= total(r.total.events) - r.total.unanswered_at_close);
}

TEST_CASE("sim: vCPUs that spin between exits run the same workload and the host still stops") {
  // One workload twice, the second time with every wait for the next guest
  // action spun through: both answer every event, only the first sleeps on
  // its event loop for each action.
  auto run = [](sim::us spin, uint64_t& sleeps) {
    fleet_tool tool;
    auto o = tool.host_options();
    o.vms = 1;
    o.vcpus_per_vm = 16; // a guest action is due within the spin unless all wait on replies
    o.seed = 13;
    o.workload.rate_per_vcpu = 500;
    o.workload.spin_below = spin;
    return run_until(tool, o, sim::ms{60000}, [&](const sim::report& r) {
      sleeps = sim_thread_sleeps(); // read while the thread lives: stop() ends it
      return total(r.total.events) >= 4000;
    });
  };
  uint64_t slept = 0, spun = 0;
  auto a = run(sim::us{0}, slept);
  auto b = run(sim::us{1'000'000}, spun);
  for (auto* r : {&a, &b}) {
    INFO(to_json(r->report).dump(2));
    CHECK(r->reached);
    CHECK(r->report.ok());
    CHECK(replies(r->report) + r->report.total.unanswered_at_close == total(r->report.total.events));
  }
  INFO("slept " << slept << " times, spun " << spun << " times");
  CHECK(slept >= total(a.report.total.events) / 2);
  // What is left: waits for the shard lock, which the test's reports take.
  CHECK(spun < total(b.report.total.events) / 4);
}

TEST_CASE("sim: chaos: torn frames, slow replies, hot-plug and reconnect storms stay violation-free") {
  fleet_tool tool;
  auto o = tool.host_options();
  o.vms = 6;
  o.vcpus_per_vm = 8;
  o.seed = 11;
  o.workload.rate_per_vcpu = 50;
  o.faults.torn_frames = 0.05;
  o.faults.torn_pause = sim::ms{1};
  o.faults.slow_reply_fraction = 0.05;
  o.faults.slow_reply_delay = sim::ms{3};
  o.faults.hotplug_storm_every = sim::ms{40};
  o.faults.hotplug_max_vcpus = 12;
  o.faults.reconnect_storm_every = sim::ms{150};
  o.reconnect_delay = sim::ms{5};
  auto run = run_until(tool, o, sim::ms{60000}, [](const sim::report& r) {
    return r.total.reconnects >= 12 && total(r.total.events) >= 4000 && r.vcpus == 6 * 12;
  });
  auto& r = run.report;
  INFO(to_json(r).dump(2));
  CHECK(run.reached);
  CHECK(r.ok());
  CHECK(r.total.faults_injected > 0);
  CHECK(replies(r) + r.total.unanswered_at_close == total(r.total.events));
  CHECK(tool.stream_errors == 0);
  CHECK(tool.cmd_errors == 0);
  auto j = to_json(r);
  CHECK(j["violations_total"] == 0);
  CHECK(j["reconnects"].get<uint64_t>() >= 12);
}

TEST_CASE("sim: UNHOOK in the middle of an event storm: every VM ends cleanly, none reconnects") {
  fleet_tool tool;
  auto o = tool.host_options();
  o.vms = 8;
  o.vcpus_per_vm = 16;
  o.seed = 5;
  o.threads = 2;
  o.workload.rate_per_vcpu = 200;
  o.reconnect_delay = sim::ms{5};
  sim::host h(o);
  h.start();
  REQUIRE(h.wait_until(
    [&] {
      auto r = h.make_report();
      return r.total.events[size_t(event_id::create_vcpu)] == 128 && total(r.total.events) >= 3000;
    },
    sim::ms{60000}));
  std::vector<std::future<sim::outcome>> fs;
  for (uint32_t v = 0; v < o.vms; ++v)
    fs.push_back(h.request_unhook(v));
  for (auto& f : fs) {
    REQUIRE(f.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
    CHECK(f.get().ok);
  }
  for (uint32_t v = 0; v < o.vms; ++v) {
    auto view = h.vm(v);
    CHECK(view.unhooked);
    CHECK_FALSE(view.hooked);
    CHECK_FALSE(view.connected);
  }
  // The guests keep running without introspection: no events, no reconnects.
  auto before = h.make_report();
  auto w = h.write_msr(3, 2, msr_lstar, 0x4242000);
  REQUIRE(w.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  CHECK(w.get().events == 0);
  h.stop();
  tool.stop();
  auto r = h.make_report();
  INFO(to_json(r).dump(2));
  CHECK(r.ok());
  CHECK(r.total.events[size_t(event_id::unhook)] == 8);
  CHECK(tool.unhooks == 8);
  CHECK(r.total.sessions == 8);
  CHECK(r.total.reconnects == 0);
  CHECK(total(r.total.events) == total(before.total.events));
  CHECK(replies(r) + r.total.unanswered_at_close + 8 == total(r.total.events));
}

TEST_CASE("sim: chaos: frames cut mid-way, garbage, duplicated and unknown-seq replies - the tool closes, the host reconnects") {
  fleet_tool tool;
  auto o = tool.host_options();
  o.vms = 6;
  o.vcpus_per_vm = 6;
  o.seed = 13;
  o.workload.rate_per_vcpu = 100;
  o.faults.drop_mid_frame = 0.002;
  o.faults.garbage = 0.002;
  o.faults.duplicate_reply = 0.01;
  o.faults.unknown_seq_reply = 0.01;
  o.faults.bad_mac = 0.1;
  o.reconnect_delay = sim::ms{5};
  auto run = run_until(tool, o, sim::ms{60000}, [](const sim::report& r) {
    return r.total.reconnects >= 20 && r.total.handshake_failures >= 1 &&
           total(r.total.events) >= 3000;
  });
  auto& r = run.report;
  INFO(to_json(r).dump(2));
  CHECK(run.reached);
  CHECK(r.ok()); // faults are the host's doing, not the tool's
  CHECK(r.total.faults_injected >= 20);
  CHECK(tool.stream_errors > 0);
  CHECK(tool.cmd_errors == 0);
  CHECK(replies(r) + r.total.unanswered_at_close == total(r.total.events));
}
