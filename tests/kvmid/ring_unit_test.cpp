// The ring unit: VM and vCPU actors woken from the ring thread run on it,
// at its turn's end; every other actor, and whatever is left when the ring
// stops, goes to CAF's scheduler.
#include "actors/core.hpp"
#include "actors/ring_unit.hpp"

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

using namespace kvmid;
using namespace std::chrono_literals;

namespace {

using ran_on = std::shared_ptr<std::promise<std::thread::id>>;

struct probe_st {
  static inline const char* name = "kvmid.test.probe";
};

caf::behavior ring_probe(caf::stateful_actor<probe_st, ring_actor>*, ran_on p) {
  return {[p](int) { p->set_value(std::this_thread::get_id()); }};
}

caf::behavior plain_probe(caf::event_based_actor*, ran_on p) {
  return {[p](int) { p->set_value(std::this_thread::get_id()); }};
}

struct fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::thread::id ring = std::this_thread::get_id(); // the test's thread plays the ring
  fixture() {
    configure_scheduler(cfg, 2);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  std::function<bool()> on_ring() {
    return [id = ring] { return std::this_thread::get_id() == id; };
  }
};

// An actor that tells on which thread it took its first message; lazy_init:
// it starts with that message, on whoever takes it.
struct probe {
  caf::actor a;
  std::future<std::thread::id> ran;
  template <class F>
  probe(caf::actor_system& sys, F behavior) {
    auto p = std::make_shared<std::promise<std::thread::id>>();
    ran = p->get_future();
    a = sys.spawn<caf::lazy_init>(behavior, p);
  }
  ~probe() { caf::anon_send_exit(a, caf::exit_reason::user_shutdown); }
  bool ran_by(std::chrono::milliseconds within) {
    return ran.wait_for(within) == std::future_status::ready;
  }
};

} // namespace

TEST_CASE("a vCPU actor woken through the ring unit runs on the ring thread, at run()") {
  fixture f;
  ring_unit unit(*f.sys, f.on_ring());
  probe x(*f.sys, ring_probe);
  unit.send(x.a, 1);
  CHECK(unit.queued() == 1);
  CHECK_FALSE(x.ran_by(50ms)); // no other thread took it
  CHECK_FALSE(unit.run(16));
  REQUIRE(x.ran_by(0ms));
  CHECK(x.ran.get() == std::this_thread::get_id());
  CHECK(unit.queued() == 0);
}

TEST_CASE("any other actor sent to through the ring unit runs on CAF's workers") {
  fixture f;
  ring_unit unit(*f.sys, f.on_ring());
  probe x(*f.sys, plain_probe);
  unit.send(x.a, 1);
  CHECK(unit.queued() == 0);
  REQUIRE(x.ran_by(10000ms));
  CHECK(x.ran.get() != std::this_thread::get_id());
}

TEST_CASE("a stopping ring hands the actors it had queued, and later ones, to CAF's workers") {
  fixture f;
  ring_unit unit(*f.sys, f.on_ring());
  probe queued(*f.sys, ring_probe), later(*f.sys, ring_probe);
  unit.send(queued.a, 1);
  REQUIRE(unit.queued() == 1);
  unit.detach();
  CHECK(unit.queued() == 0);
  unit.send(later.a, 1);
  CHECK(unit.queued() == 0);
  for (auto* x : {&queued, &later}) {
    REQUIRE(x->ran_by(10000ms));
    CHECK(x->ran.get() != std::this_thread::get_id());
  }
}

TEST_CASE("a vCPU actor scheduled through the ring unit from another thread runs on CAF's workers") {
  // As a response promise delivered with the context its actor last ran in.
  fixture f;
  ring_unit unit(*f.sys, f.on_ring());
  probe x(*f.sys, ring_probe);
  std::thread([&] { unit.send(x.a, 1); }).join();
  CHECK(unit.queued() == 0);
  REQUIRE(x.ran_by(10000ms));
  CHECK(x.ran.get() != std::this_thread::get_id());
}
