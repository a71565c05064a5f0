// kvmid (core + reactor + KVMI listener) and an embedded kvmi-sim host in one
// process, connected over a UNIX socket in a fresh temp dir. The kvmid fleet
// tests and the chaos suite both build on it, so set-up, the API helpers and
// the teardown order live in one place.
#pragma once

#include "actors/core.hpp"
#include "kernel-patches/sim/sim.hpp"
#include "server/kvmi_rings.hpp"
#include "server/kvmi_session.hpp"
#include "tests/support/metric_sum.hpp"
#include "tests/support/test_dialect.hpp"
#include "server/reactor.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

namespace kvmid::testing {

// KVMID_TEST_RINGS=n: kvmid's KVMI sockets over n rings (1 when unset), so
// a suite can run again with its VMs spread over several ring threads. A
// misspelt value stops the binary rather than quietly running one ring.
inline size_t test_rings() {
  static const size_t n = [] {
    const char* s = std::getenv("KVMID_TEST_RINGS");
    if (!s || !*s)
      return size_t(1);
    char* end = nullptr;
    unsigned long v = std::strtoul(s, &end, 10);
    if (*end || v < 1 || v > 64) {
      std::fprintf(stderr, "KVMID_TEST_RINGS=%s: expected 1..64\n", s);
      std::exit(2);
    }
    return size_t(v);
  }();
  return n;
}

struct inproc_options {
  // Both ends speak it: the listener's protocol and the simulator's dialect.
  protocol dialect = test::test_dialect() == test::dialect::v7 ? protocol::v7 : protocol::v5;
  core_options core;
  // Every simulated VM connects at start-up at once: no cap on pending
  // handshakes unless a test sets one (kvmid's default is 64).
  kvmi_listener_options listener = [] {
    kvmi_listener_options l;
    l.max_handshakes = SIZE_MAX;
    return l;
  }();
  kvmi::sim::options sim; // unix_path is filled in with the fleet's socket
  net::reactor_options reactor;
  size_t rings = test_rings(); // io_uring rings serving the KVMI socket (kvmi_rings.hpp)
  // When set, the simulator dials this path (a test's relay) instead of
  // kvmid's socket.
  std::string sim_unix_path;
  // Guest state that must exist before the first hook.
  std::function<void(kvmi::sim::host&)> before_start;
  std::string name = "fleet"; // temp dir /tmp/kvmid-<name>-XXXXXX, timeout messages
  std::chrono::milliseconds call_timeout{20000}; // call(): an API answer
  std::chrono::milliseconds get_timeout{15000};  // get(): a guest action's outcome
};

struct inproc_fleet {
  std::filesystem::path dir;
  std::unique_ptr<core> c;
  std::unique_ptr<net::reactor> r;
  std::unique_ptr<kvmi_rings> rings; // r and its extra rings
  std::unique_ptr<kvmi::sim::host> h;
  kvmi::sim::options so; // as the host runs
  std::chrono::milliseconds call_timeout, get_timeout;
  std::string no_answer; // call()'s timeout error

  explicit inproc_fleet(inproc_options o)
      : call_timeout(o.call_timeout), get_timeout(o.get_timeout),
        no_answer(o.name + " test: no answer within " + std::to_string(o.call_timeout.count())
                  + " ms") {
    std::string t = "/tmp/kvmid-" + o.name + "-XXXXXX";
    REQUIRE(mkdtemp(t.data()));
    dir = t;
    c = std::make_unique<core>(o.core);
    r = std::make_unique<net::reactor>(o.reactor);
    net::listen_spec s;
    s.path = (dir / "kvmi.sock").string();
    o.listener.proto = o.dialect;
    o.sim.dialect = o.dialect == protocol::v7 ? kvmi::sim::protocol::v7 : kvmi::sim::protocol::v5;
    rings = std::make_unique<kvmi_rings>(*r, o.rings, o.reactor);
    rings->add_listener(s, *c, o.listener);
    r->start();
    rings->start();
    so = std::move(o.sim);
    so.unix_path = o.sim_unix_path.empty() ? s.path : o.sim_unix_path;
    h = std::make_unique<kvmi::sim::host>(so);
    if (o.before_start)
      o.before_start(*h);
    h->start();
  }
  // The simulator first, so no VM talks to a stopping reactor; the core
  // last, once nothing can post to its actors.
  ~inproc_fleet() {
    h->stop();
    r->stop();
    rings->stop();
    c.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  inproc_fleet(const inproc_fleet&) = delete;
  inproc_fleet& operator=(const inproc_fleet&) = delete;

  // One control-API call, answered through a promise; a timeout is an error.
  template <class T, class F>
  api_result<T> call(F&& f) {
    auto p = std::make_shared<std::promise<api_result<T>>>();
    auto fut = p->get_future();
    f(c->api(), [p](api_result<T> r) { p->set_value(std::move(r)); });
    if (fut.wait_for(call_timeout) != std::future_status::ready)
      return api_error{api_errc::timeout, no_answer};
    return fut.get();
  }

  // Hooked, and every vCPU configured by kvmid and back in the guest.
  bool ready(uint32_t vm, uint32_t mask = kvmi::flag(kvmi::event_id::pause_vcpu)) {
    return h->wait_until(
      [&] {
        auto v = h->vm(vm);
        if (!v.hooked || v.vcpus.empty())
          return false;
        for (auto& x : v.vcpus)
          if ((x.enabled_events & mask) != mask || x.state != kvmi::sim::vcpu_state::running
              || x.pending_pauses)
            return false;
        return true;
      },
      std::chrono::milliseconds(30000));
  }

  std::string uuid(uint32_t vm) { return kvmi::hs::to_string(h->vm(vm).uuid); }

  // Sum of a metric's samples, or of those with label=value.
  double metric(const std::string& name, const std::string& label = {},
                const std::string& value = {}) {
    return test::metric_sum(c->metrics(), name, label, value);
  }

  kvmi::sim::outcome get(std::future<kvmi::sim::outcome> f) {
    REQUIRE(f.wait_for(get_timeout) == std::future_status::ready);
    return f.get();
  }
};

} // namespace kvmid::testing
