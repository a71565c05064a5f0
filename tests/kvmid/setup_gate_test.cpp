// The setup gate: at most `max` VMs set up at once, the rest in connection
// order; a place comes back however its holder ends, also when the VM it
// was sent to is gone before it could read it.
#include "actors/core.hpp"
#include "actors/messages.hpp"
#include "actors/metrics.hpp"
#include "actors/setup_gate.hpp"

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <memory>

using namespace kvmid;
using namespace std::chrono_literals;

namespace {

struct gate_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  gauge running, waiting;
  std::shared_ptr<setup_gate> gate;
  explicit gate_fixture(size_t max) {
    configure_scheduler(cfg, 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    gate = std::make_shared<setup_gate>(max, &running, &waiting);
  }
};

// The place a scoped actor was sent, or null when none came within 2 s.
setup_gate::place_ptr place_for(caf::scoped_actor& self) {
  setup_gate::place_ptr got;
  self->receive([&](setup_go_atom, setup_gate::place_ptr& p) { got = std::move(p); },
                caf::after(std::chrono::seconds(2)) >> [] {});
  return got;
}

// True when nothing came within a short while.
bool nothing_for(caf::scoped_actor& self) {
  bool quiet = false;
  self->receive([&](setup_go_atom, setup_gate::place_ptr&) {},
                caf::after(std::chrono::milliseconds(100)) >> [&] { quiet = true; });
  return quiet;
}

caf::actor handle(caf::scoped_actor& self) { return caf::actor_cast<caf::actor>(self); }

} // namespace

TEST_CASE("setup gate: max places at once, the next in order as each ends") {
  gate_fixture f(2);
  caf::scoped_actor a{*f.sys}, b{*f.sys}, c{*f.sys}, d{*f.sys};
  auto pa = f.gate->enter(handle(a));
  auto pb = f.gate->enter(handle(b));
  REQUIRE(pa);
  REQUIRE(pb);
  CHECK_FALSE(f.gate->enter(handle(c)));
  CHECK_FALSE(f.gate->enter(handle(d)));
  CHECK(f.running.value() == 2);
  CHECK(f.waiting.value() == 2);
  CHECK(nothing_for(c));

  pa.reset(); // a's set-up ended: c (first to wait) gets its place
  auto pc = place_for(c);
  REQUIRE(pc);
  CHECK(nothing_for(d));
  CHECK(f.running.value() == 2);
  CHECK(f.waiting.value() == 1);

  pb.reset();
  auto pd = place_for(d);
  REQUIRE(pd);
  CHECK(f.waiting.value() == 0);
  pc.reset();
  pd.reset();
  CHECK(f.running.value() == 0);
  CHECK(f.gate->running() == 0);
}

TEST_CASE("setup gate: a VM that stops waiting is skipped") {
  gate_fixture f(1);
  caf::scoped_actor a{*f.sys}, b{*f.sys}, c{*f.sys};
  auto pa = f.gate->enter(handle(a));
  REQUIRE(pa);
  CHECK_FALSE(f.gate->enter(handle(b)));
  CHECK_FALSE(f.gate->enter(handle(c)));
  f.gate->withdraw(b->address()); // b disconnected while waiting
  CHECK(f.waiting.value() == 1);
  pa.reset();
  CHECK(nothing_for(b));
  REQUIRE(place_for(c));
}

TEST_CASE("setup gate: a place sent to a VM already gone comes back to the gate") {
  gate_fixture f(1);
  caf::scoped_actor a{*f.sys}, c{*f.sys};
  // (An argument: CAF 0.17 binds a null tuple for a function spawned
  // without any, which UBSan reports.)
  auto gone = f.sys->spawn(
    [](caf::event_based_actor*, int) -> caf::behavior {
      return {[](setup_go_atom, setup_gate::place_ptr&) {}};
    },
    0);
  auto pa = f.gate->enter(handle(a));
  REQUIRE(pa);
  CHECK_FALSE(f.gate->enter(gone));
  CHECK_FALSE(f.gate->enter(handle(c)));
  {
    caf::scoped_actor w{*f.sys};
    w->monitor(gone);
    caf::anon_send_exit(gone, caf::exit_reason::user_shutdown);
    w->receive([](caf::down_msg&) {});
  }
  pa.reset(); // its place goes to `gone`, whose mailbox is closed: c gets it
  auto pc = place_for(c);
  REQUIRE(pc);
  CHECK(f.running.value() == 1);
  CHECK(f.waiting.value() == 0);
  pc.reset();
  CHECK(f.running.value() == 0);
}

TEST_CASE("setup gate: a VM that takes its place and drops it unread lets the next in") {
  gate_fixture f(1);
  caf::scoped_actor a{*f.sys}, b{*f.sys}, c{*f.sys};
  auto pa = f.gate->enter(handle(a));
  CHECK_FALSE(f.gate->enter(handle(b)));
  CHECK_FALSE(f.gate->enter(handle(c)));
  pa.reset();
  // b reads the message but keeps nothing (it went meanwhile).
  b->receive([](setup_go_atom, setup_gate::place_ptr&) {},
             caf::after(std::chrono::seconds(2)) >> [] { FAIL("b got no place"); });
  REQUIRE(place_for(c));
}
