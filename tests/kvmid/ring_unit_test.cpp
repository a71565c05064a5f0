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
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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

namespace {

// Two actors sharing one captureless behavior: each handler call must see
// its own actor as the running one, wherever it runs.
using seen = std::shared_ptr<std::promise<caf::actor_addr>>;
struct shared_st {
  static inline const char* name = "kvmid.test.shared";
  seen out;
};
using shared_actor = caf::stateful_actor<shared_st, ring_actor>;

caf::behavior shared_probe(shared_actor* self, seen out) {
  self->state.out = std::move(out);
  static const caf::behavior shared = caf::behavior{[](int) {
    auto* self = static_cast<shared_actor*>(ring_actor::running());
    self->state.out->set_value(self->address());
  }};
  return shared;
}

} // namespace

TEST_CASE("a behavior shared by ring actors finds the one running, on the ring and on workers") {
  fixture f;
  ring_unit unit(*f.sys, f.on_ring());
  CHECK(ring_actor::running() == nullptr);
  auto p1 = std::make_shared<std::promise<caf::actor_addr>>();
  auto p2 = std::make_shared<std::promise<caf::actor_addr>>();
  auto r1 = p1->get_future(), r2 = p2->get_future();
  auto a1 = f.sys->spawn<caf::lazy_init>(shared_probe, p1);
  auto a2 = f.sys->spawn<caf::lazy_init>(shared_probe, p2);
  unit.send(a1, 1);         // runs here, at run()
  caf::anon_send(a2, 1);    // runs on a CAF worker
  unit.run(16);
  REQUIRE(r1.wait_for(5s) == std::future_status::ready);
  REQUIRE(r2.wait_for(5s) == std::future_status::ready);
  CHECK(r1.get() == a1.address());
  CHECK(r2.get() == a2.address());
  CHECK(ring_actor::running() == nullptr); // restored after the turn
  caf::anon_send_exit(a1, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(a2, caf::exit_reason::user_shutdown);
}

namespace {

// A ring actor that logs the ints it takes; a handler run in place logs
// through the same state.
struct inplace_st {
  static inline const char* name = "kvmid.test.inplace";
  std::vector<int>* log = nullptr;
};
using inplace_actor = caf::stateful_actor<inplace_st, ring_actor>;

caf::behavior inplace_probe(inplace_actor* self, std::vector<int>* log) {
  self->state.log = log;
  return {[self](int x) { self->state.log->push_back(x); }};
}

// One in-place probe on a ring unit; started() gives it its first resume.
struct inplace_fixture : fixture {
  ring_unit unit{*sys, on_ring()};
  std::vector<int> log;
  caf::actor a = sys->spawn<caf::lazy_init>(inplace_probe, &log);
  inplace_actor* self = static_cast<inplace_actor*>(caf::actor_cast<caf::abstract_actor*>(a));
  ~inplace_fixture() { caf::anon_send_exit(a, caf::exit_reason::user_shutdown); }
  void started() {
    unit.send(a, 1);
    unit.run(16); // initialized, then idle
    REQUIRE(log == std::vector<int>{1});
  }
};

} // namespace

TEST_CASE("an idle ring actor runs a handler in place - a message sent meanwhile runs after it") {
  inplace_fixture f;
  f.started();
  bool ran = f.self->run_in_place(&f.unit, [&] {
    CHECK(ring_actor::running() == f.self);
    f.self->state.log->push_back(2);
    f.unit.send(f.a, 3); // waits in the mailbox: the actor is taken
    CHECK(f.log == std::vector<int>{1, 2});
  });
  CHECK(ran);
  CHECK(ring_actor::running() == nullptr);
  CHECK(f.unit.queued() == 1); // scheduled for the message that came meanwhile
  f.unit.run(16);
  CHECK(f.log == std::vector<int>{1, 2, 3});
  // Idle again: in place again, and nothing left to schedule.
  CHECK(f.self->run_in_place(&f.unit, [&] { f.self->state.log->push_back(4); }));
  CHECK(f.unit.queued() == 0);
  CHECK(f.log == std::vector<int>{1, 2, 3, 4});
}

TEST_CASE("a ring actor with a message waiting or that never ran is not run in place") {
  inplace_fixture f;
  // Lazy and never resumed: its state is not set up yet.
  CHECK_FALSE(f.self->run_in_place(&f.unit, [&] { FAIL("ran before its first resume"); }));
  CHECK(f.unit.queued() == 0);
  f.unit.send(f.a, 1);
  REQUIRE(f.unit.queued() == 1);
  // Its message must come first: not in place while it waits.
  CHECK_FALSE(f.self->run_in_place(&f.unit, [&] { FAIL("ran ahead of its mailbox"); }));
  f.unit.run(16);
  CHECK(f.log == std::vector<int>{1});
  CHECK(f.self->run_in_place(&f.unit, [&] { f.self->state.log->push_back(2); }));
  CHECK(f.log == std::vector<int>{1, 2});
}

TEST_CASE("a handler run in place that throws goes to the actor's exception handler and ends it") {
  inplace_fixture f;
  f.started();
  std::string seen;
  f.self->set_exception_handler([&](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      seen = x.what();
    }
    return caf::sec::runtime_error;
  });
  caf::scoped_actor watcher{*f.sys};
  watcher->monitor(f.a);
  CHECK(f.self->run_in_place(&f.unit, [] { throw std::runtime_error("bad event"); }));
  CHECK(seen == "bad event");
  CHECK(ring_actor::running() == nullptr);
  f.unit.run(16); // the actor's own resume ends it
  caf::error why;
  watcher->receive([&](caf::down_msg& d) { why = d.reason; },
                   caf::after(std::chrono::seconds(10)) >> [] {});
  CHECK(why == caf::sec::runtime_error);
  f.unit.send(f.a, 5); // gone: nothing runs
  f.unit.run(16);
  CHECK(f.log == std::vector<int>{1});
}
