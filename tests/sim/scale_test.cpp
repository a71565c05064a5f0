// Many VMs x many vCPUs against a minimal poll()-based introspector that
// sets every vCPU up at CREATE_VCPU and answers every event: the invariant
// checker must see zero violations, and every event is answered once.
#include "kernel-patches/sim/sim.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/support/constants.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <thread>
#include <unordered_map>

using namespace kvmi;
using namespace kvmi::test;

namespace {

using kvmid::test::msr_lstar;

class fleet_tool {
public:
  explicit fleet_tool(listener& l) : l_(l) {
    th_ = std::thread([this] { run(); });
  }
  ~fleet_tool() { stop(); }
  void stop() {
    stop_ = true;
    if (th_.joinable())
      th_.join();
  }
  std::atomic<uint64_t> events{0}, cmd_errors{0}, stream_errors{0}, sessions{0}, unhooks{0};

private:
  struct session {
    int fd;
    hs::tool_side hs{test_cookie()};
    frame_splitter sp;
    std::vector<uint8_t> out, one;
    uint32_t seq = 0;
    std::unordered_map<uint32_t, reply_shape> shapes;
    bool hooked = false;
    bool close_after_send = false;
  };

  void send(session& s, command c) {
    command_msg m{++s.seq, std::move(c)};
    s.shapes[m.seq] = expected_reply(m.body);
    encode(s.one, m, s.hs.info().order);
    s.out.insert(s.out.end(), s.one.begin(), s.one.end());
  }

  void on_frame(session& s, const frame& f) {
    auto order = s.hs.info().order;
    if (f.hdr.id == uint16_t(msg_id::event)) {
      auto e = decode_event(f, order);
      if (!e || check(*e))
        return broken(s);
      ++events;
      auto kind = e->kind();
      if (kind == event_id::unhook) {
        // Hooks would be removed here; closing tells the device manager to go on.
        ++unhooks;
        s.close_after_send = true;
        return;
      }
      if (kind == event_id::create_vcpu) {
        uint16_t v = e->common.vcpu;
        uint32_t mask = flag(event_id::pf) | flag(event_id::msr) | flag(event_id::cr) |
                        flag(event_id::breakpoint) | flag(event_id::hypercall) |
                        flag(event_id::descriptor) | flag(event_id::xsetbv) | flag(event_id::trap);
        send(s, control_events{v, 0, mask});
        send(s, control_msr{v, 1, 0, msr_lstar});
        send(s, control_cr{v, 1, 0, 4});
        if (v == 0) {
          set_page_access_cmd sp{{0, 16, 0, 0}, {}};
          for (uint64_t p = 0; p < 16; ++p)
            sp.entries.push_back({0x100000 + p * 4096, page_access_r | page_access_x, {}});
          send(s, sp);
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
      encode(s.one, r, order);
      s.out.insert(s.out.end(), s.one.begin(), s.one.end());
      return;
    }
    auto it = s.shapes.find(f.hdr.seq);
    if (it == s.shapes.end())
      return broken(s); // a reply nobody asked for (or twice)
    auto r = decode_reply(f, it->second, order);
    s.shapes.erase(it);
    if (!r)
      return broken(s);
    if (r->err != 0)
      ++cmd_errors;
  }

  // What the protocol asks of a tool that sees a bad frame: close the socket.
  void broken(session& s) {
    ++stream_errors;
    s.close_after_send = true;
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
        if (fd >= 0) {
          ss.push_back(std::make_unique<session>());
          ss.back()->fd = fd;
        }
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
          s.hs.feed(in);
          s.out.insert(s.out.end(), s.hs.out().begin(), s.hs.out().end());
          s.hs.out().clear();
          if (s.hs.state() == hs::status::done) {
            s.hooked = true;
            ++sessions;
            s.sp.set_order(s.hs.info().order);
            send(s, control_vm_events{flag(event_id::create_vcpu) | flag(event_id::unhook), 0});
          } else if (s.hs.state() == hs::status::failed) {
            ::close(s.fd);
            s.fd = -1;
            continue;
          }
        }
        if (s.hooked && !in.empty())
          if (s.sp.feed(in, [&](const frame& f) {
                if (!s.close_after_send)
                  on_frame(s, f);
              }))
            broken(s);
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

  listener& l_;
  std::atomic<bool> stop_{false};
  std::thread th_;
};

uint64_t total(const std::array<uint64_t, num_events>& a) {
  uint64_t n = 0;
  for (auto x : a)
    n += x;
  return n;
}

} // namespace

TEST_CASE("sim: 2,000 vCPUs over 40 VMs against a minimal introspector: zero violations") {
  listener l;
  fleet_tool tool(l);
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
  o.vms = 40;
  o.vcpus_per_vm = 50;
  o.seed = 7;
  o.workload.rate_per_vcpu = 20;
  sim::host h(o);
  h.start();
  bool reached = h.wait_until(
    [&] {
      auto r = h.make_report();
      return r.total.events[size_t(event_id::create_vcpu)] == 2000 && total(r.total.events) >= 20000;
    },
    sim::ms{90000});
  h.stop();
  tool.stop();
  auto r = h.make_report();
  INFO(to_json(r).dump(2));
  CHECK(reached);
  CHECK(r.ok());
  CHECK(r.vcpus == 2000);
  CHECK(r.total.sessions == 40);
  CHECK(r.total.events[size_t(event_id::create_vcpu)] == 2000);
  CHECK(r.total.events[size_t(event_id::pf)] > 0);
  CHECK(r.total.events[size_t(event_id::msr)] > 0);
  CHECK(r.total.events[size_t(event_id::cr)] > 0);
  // Every event was answered exactly once, or was still waiting when the host stopped.
  uint64_t replies = r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
  CHECK(replies + r.total.unanswered_at_close == total(r.total.events));
  CHECK(r.event_latency.count == replies);
  CHECK(tool.cmd_errors == 0);
  CHECK(tool.stream_errors == 0);
  CHECK(tool.events >= total(r.total.events) - r.total.unanswered_at_close);
}

TEST_CASE("sim: chaos: torn frames, slow replies, hot-plug and reconnect storms stay violation-free") {
  listener l;
  fleet_tool tool(l);
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
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
  sim::host h(o);
  h.start();
  bool reached = h.wait_until(
    [&] {
      auto r = h.make_report();
      return r.total.reconnects >= 12 && total(r.total.events) >= 4000 && r.vcpus == 6 * 12;
    },
    sim::ms{60000});
  h.stop();
  tool.stop();
  auto r = h.make_report();
  INFO(to_json(r).dump(2));
  CHECK(reached);
  CHECK(r.ok());
  CHECK(r.total.faults_injected > 0);
  uint64_t replies = r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
  CHECK(replies + r.total.unanswered_at_close == total(r.total.events));
  CHECK(tool.stream_errors == 0);
  CHECK(tool.cmd_errors == 0);
  auto j = to_json(r);
  CHECK(j["violations_total"] == 0);
  CHECK(j["reconnects"].get<uint64_t>() >= 12);
}

TEST_CASE("sim: UNHOOK in the middle of an event storm: every VM ends cleanly, none reconnects") {
  listener l;
  fleet_tool tool(l);
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
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
  uint64_t replies = r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
  CHECK(replies + r.total.unanswered_at_close + 8 == total(r.total.events));
}

TEST_CASE("sim: chaos: frames cut mid-way, garbage, duplicated and unknown-seq replies - the tool closes, the host reconnects") {
  listener l;
  fleet_tool tool(l);
  sim::options o;
  o.unix_path = l.path();
  o.cookie = test_cookie();
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
  sim::host h(o);
  h.start();
  bool reached = h.wait_until(
    [&] {
      auto r = h.make_report();
      return r.total.reconnects >= 20 && r.total.handshake_failures >= 1 &&
             total(r.total.events) >= 3000;
    },
    sim::ms{60000});
  h.stop();
  tool.stop();
  auto r = h.make_report();
  INFO(to_json(r).dump(2));
  CHECK(reached);
  CHECK(r.ok()); // faults are the host's doing, not the tool's
  CHECK(r.total.faults_injected >= 20);
  CHECK(tool.stream_errors > 0);
  CHECK(tool.cmd_errors == 0);
  uint64_t replies = r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
  CHECK(replies + r.total.unanswered_at_close == total(r.total.events));
}
