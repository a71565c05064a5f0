// Chaos scenarios against kvmid in this process (core + reactor + KVMI
// listener) with an embedded kvmi-sim fleet. Each ends with
// check_invariants(): no event unanswered or answered twice, no HMI, kvmid
// alive, every expected alert recorded. Sizes: see fleet.hpp (full in
// release, scaled down under ASan).
#include "tests/chaos/fleet.hpp"

#include <atomic>

using namespace kvmid;
using namespace kvmid::chaos;

namespace {

// Lets the workload run for `d`, then checks it produced events at all.
void storm_for(fleet& f, std::chrono::milliseconds d) {
  auto before = sum(f.h->make_report().total.events);
  std::this_thread::sleep_for(d);
  auto after = f.h->make_report().total;
  MESSAGE("events during the storm: " << sum(after.events) - before);
  CHECK(sum(after.events) > before);
}

} // namespace

TEST_CASE("chaos: event storm over 128 VMs x 32 vCPUs at full rate") {
  fleet f([](sim::options& o) {
    o.vms = scaled(128, 16);
    o.vcpus_per_vm = scaled(32, 8);
    o.workload.rate_per_vcpu = 5000; // far beyond what 2 cores serve: saturation
    o.threads = 2;
  });
  REQUIRE(f.configured(60s));
  CHECK(f.metric("kvmid_vcpus") == f.vcpus_total());
  storm_for(f, scaled(3000, 1000) * 1ms);
  // Nobody was disconnected during the storm (stopping the fleet ends the
  // sessions later, in freeze()).
  auto pre = f.h->make_report().total;
  CHECK(pre.unanswered_at_close == 0);
  CHECK(pre.sessions == f.so.vms);
  CHECK(f.metric("kvmid_vms") == f.so.vms);
  auto t = check_invariants(f);
  CHECK(t.rep.total.events[size_t(event_id::msr)] > 0);
  CHECK(t.rep.total.events[size_t(event_id::pf)] > 0);
  CHECK(f.metric("kvmid_protocol_errors_total") == 0);
}

TEST_CASE("chaos: 10000 vCPUs attach and are configured" * doctest::test_suite("no-sanitize")) {
  fleet f([](sim::options& o) {
    o.vms = 100;
    o.vcpus_per_vm = 100;
    o.threads = 2;
  });
  REQUIRE(f.configured(120s));
  REQUIRE(f.eventually([&] { return f.metric("kvmid_vcpus") == 10000; }));
  // Every breakpoint planted, every protected page restricted.
  // Planting follows configuration; wait for it, do not assume.
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    CHECK(f.h->wait_until([&] { return f.planted(v); }, 20000ms));
    CHECK(f.h->page_access(v, hot) == (kvmi::page_access_r | kvmi::page_access_x));
  }
  check_invariants(f);
}

TEST_CASE("chaos: 1000 vCPUs attach and are configured (ASan-sized)") {
  fleet f([](sim::options& o) {
    o.vms = 10;
    o.vcpus_per_vm = 100;
  });
  REQUIRE(f.configured(120s));
  REQUIRE(f.eventually([&] { return f.metric("kvmid_vcpus") == 1000; }));
  for (uint32_t v = 0; v < f.so.vms; ++v)
    CHECK(f.h->wait_until([&] { return f.planted(v); }, 20000ms));
  check_invariants(f);
}

namespace {

// Runs a reconnect storm until every VM has had three sessions; returns
// each VM's session count as the device manager saw it.
std::vector<uint64_t> reconnect_storm(fleet& f) {
  REQUIRE(f.configured(60s));
  REQUIRE(f.h->wait_until(
    [&] {
      for (uint32_t v = 0; v < f.so.vms; ++v)
        if (f.h->vm_counters(v).sessions < 3)
          return false;
      return true;
    },
    60000ms));
  auto t = check_invariants(f);
  CHECK(t.rep.total.reconnects > 0);
  std::vector<uint64_t> sessions;
  for (uint32_t v = 0; v < f.so.vms; ++v)
    sessions.push_back(f.h->vm_counters(v).sessions);
  return sessions;
}

void storm_options(sim::options& o) {
  o.vms = scaled(32, 8);
  o.vcpus_per_vm = 8;
  o.workload.rate_per_vcpu = 500;
  o.faults.reconnect_storm_every = 300ms;
  o.reconnect_delay = 10ms;
}

} // namespace

TEST_CASE("chaos: reconnect storm under load keeps one history per uuid") {
  fleet f(storm_options);
  reconnect_storm(f);
  // kvmid knows each VM once, by uuid, connected or not.
  // (kvmid learns of the last closes through its ring: wait for it to settle.)
  size_t listed = 0;
  bool all = f.eventually([&] {
    auto vms = f.call<std::vector<vm_info>>([](control_api& a, auto cb) { a.list_vms(cb); });
    listed = vms.ok() ? vms.value().size() : 0;
    return listed == f.so.vms;
  });
  INFO("kvmid lists " << listed << " of " << f.so.vms << " VMs");
  CHECK(all);
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
    CHECK(i.ok());
  }
}

// A session that closes before the registry's answer to its register
// request arrives must not reset the count (the registry owns it).
TEST_CASE("chaos: after a reconnect storm kvmid's session count per uuid matches the device manager's") {
  fleet f(storm_options);
  auto sim_sessions = reconnect_storm(f);
  bool agree = f.eventually([&] {
    for (uint32_t v = 0; v < f.so.vms; ++v) {
      auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
      if (!i.ok() || i.value().sessions != sim_sessions[v])
        return false;
    }
    return true;
  });
  for (uint32_t v = 0; v < f.so.vms && !agree; ++v) {
    auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
    if (!i.ok() || i.value().sessions != sim_sessions[v])
      MESSAGE("vm " << v << ": device manager saw " << sim_sessions[v] << " sessions, kvmid "
                    << (i.ok() ? std::to_string(i.value().sessions) : i.error().message));
  }
  CHECK(agree);
}

TEST_CASE("chaos: garbage and torn frames on some sockets - only the bad VMs are closed") {
  fleet f([](sim::options& o) {
    o.vms = scaled(16, 8);
    o.vcpus_per_vm = 4;
    o.workload.rate_per_vcpu = 300;
    o.faults.torn_pause = 5ms;
  });
  REQUIRE(f.configured(60s));
  const std::vector<uint32_t> garbage = {1, 5}, dropped = {3}, torn = {2, 6};
  const uint32_t rounds = 3;
  for (uint32_t round = 0; round < rounds; ++round) {
    std::vector<std::future<sim::outcome>> fs;
    for (auto v : garbage)
      fs.push_back(f.h->inject_fault(v, "garbage"));
    for (auto v : dropped)
      fs.push_back(f.h->inject_fault(v, "drop_mid_frame"));
    for (int k = 0; k < 10; ++k)
      for (auto v : torn)
        fs.push_back(f.h->inject_fault(v, "torn"));
    for (auto& x : fs)
      f.get(std::move(x));
    // The bad ones come back (the device manager reconnects) before the next round.
    REQUIRE(f.h->wait_until(
      [&] {
        for (auto v : garbage)
          if (f.h->vm_counters(v).sessions < round + 2 || !f.h->hooked(v))
            return false;
        for (auto v : dropped)
          if (f.h->vm_counters(v).sessions < round + 2 || !f.h->hooked(v))
            return false;
        return true;
      },
      20000ms));
  }
  // kvmid counted a protocol error for each garbage frame and a torn-off
  // frame for each drop (both close the session, nothing else).
  REQUIRE(f.eventually(
    [&] { return f.metric("kvmid_protocol_errors_total") >= double(garbage.size() * rounds); }));
  auto t = check_invariants(f);
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    bool bad = std::find(garbage.begin(), garbage.end(), v) != garbage.end()
               || std::find(dropped.begin(), dropped.end(), v) != dropped.end();
    INFO("vm " << v << " bad " << bad << " sessions " << f.h->vm_counters(v).sessions
                << " aborted " << f.h->vm_counters(v).unanswered_at_close);
    if (bad)
      CHECK(f.h->vm_counters(v).sessions == rounds + 1);
    else
      CHECK(f.h->vm_counters(v).sessions == 1); // clean and torn: never closed
  }
  // kvmid's per-VM protocol error count survives the reconnects (the
  // registry owns the totals).
  for (auto v : garbage) {
    auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
    REQUIRE(i.ok());
    CHECK(i.value().protocol_errors >= rounds);
  }
  CHECK(t.rep.total.faults_injected >= rounds * (garbage.size() + dropped.size() + 10 * torn.size()));
}

TEST_CASE("chaos: UNHOOK during a storm removes what kvmid planted - the rest run on") {
  fleet f([](sim::options& o) {
    o.vms = scaled(16, 6);
    o.vcpus_per_vm = scaled(16, 4);
    o.workload.rate_per_vcpu = 1000;
    o.threads = 2;
  });
  REQUIRE(f.configured(60s));
  for (uint32_t v = 0; v < f.so.vms; ++v)
    REQUIRE(f.h->wait_until([&] { return f.planted(v); }, 10000ms));
  std::vector<std::future<sim::outcome>> un;
  uint32_t half = f.so.vms / 2;
  for (uint32_t v = 0; v < half; ++v)
    un.push_back(f.h->request_unhook(v));
  for (auto& x : un)
    CHECK(f.get(std::move(x)).ok);
  for (uint32_t v = 0; v < half; ++v) {
    REQUIRE(f.h->wait_until([&] { return f.h->vm(v).unhooked; }, 20000ms));
    CHECK(f.h->memory(v, bp_gpa, 1)[0] == bp_original); // INT3 removed, byte restored
    CHECK(f.h->page_access(v, hot) == kvmi::page_access_rwx);
  }
  storm_for(f, 500ms);
  for (uint32_t v = half; v < f.so.vms; ++v) {
    CHECK(f.h->hooked(v));
    CHECK(f.planted(v));
    CHECK(f.h->vm_counters(v).sessions == 1);
  }
  REQUIRE(f.eventually([&] { return f.metric("kvmid_vms") == f.so.vms - half; }));
  auto t = check_invariants(f);
  CHECK(t.rep.total.violations.count("unhook_timeout") == 0);
  CHECK(f.metric("kvmid_protocol_errors_total") == 0);
}

namespace {

const uint32_t plugged = 2;

void hotplug_options(sim::options& o) {
  o.vms = scaled(8, 4);
  o.vcpus_per_vm = 4;
  o.workload.rate_per_vcpu = 300;
}

// Pauses every VM through the API, then hot-plugs `plugged` vCPUs into each.
std::vector<std::future<sim::outcome>> pause_and_plug(fleet& f) {
  REQUIRE(f.configured(60s));
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    auto pr = f.call<done>([&](control_api& a, auto cb) { a.pause_vm(f.uuid(v), cb); });
    REQUIRE(pr.ok());
  }
  std::vector<std::future<sim::outcome>> plugs;
  for (uint32_t v = 0; v < f.so.vms; ++v)
    for (uint32_t k = 0; k < plugged; ++k)
      plugs.push_back(f.h->hotplug(v));
  REQUIRE(f.h->wait_until(
    [&] {
      for (uint32_t v = 0; v < f.so.vms; ++v)
        if (f.h->vm(v).vcpus.size() != f.so.vcpus_per_vm + plugged)
          return false;
      return true;
    },
    20000ms));
  return plugs;
}

} // namespace

TEST_CASE("chaos: vCPU hot-plug during pause - then resume: every vCPU configured - invariants hold") {
  fleet f(hotplug_options);
  auto plugs = pause_and_plug(f);
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    // The vCPUs that were there stay held while the VM is paused.
    auto vm = f.h->vm(v);
    for (uint32_t c = 0; c < f.so.vcpus_per_vm; ++c)
      CHECK(vm.vcpus[c].state == sim::vcpu_state::paused);
    REQUIRE(f.eventually([&] {
      auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(v), cb); });
      return i.ok() && i.value().paused && i.value().vcpus.size() == f.so.vcpus_per_vm + plugged;
    }));
    REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(v), cb); }).ok());
  }
  for (auto& p : plugs)
    CHECK(f.get(std::move(p)).ok);
  REQUIRE(f.configured(30s)); // the plugged vCPUs are configured like the rest
  storm_for(f, 300ms);
  check_invariants(f);
}

// DESIGN.md: CREATE_VCPU must be handled so that new vCPUs are paused too
// while an operator pause is in force: kvmid holds the new vCPU in its
// CREATE_VCPU event (the old ones wait in PAUSE_VCPU) until resume.
TEST_CASE("chaos: vCPUs hot-plugged during a pause are held too") {
  fleet f(hotplug_options);
  auto plugs = pause_and_plug(f);
  bool held = f.h->wait_until(
    [&] {
      for (uint32_t v = 0; v < f.so.vms; ++v) {
        auto vm = f.h->vm(v);
        for (size_t c = 0; c < vm.vcpus.size(); ++c) {
          auto& x = vm.vcpus[c];
          bool ok = c < f.so.vcpus_per_vm
                      ? x.state == sim::vcpu_state::paused
                      : x.state == sim::vcpu_state::paused
                          || (x.state == sim::vcpu_state::in_event
                              && x.event == kvmi::event_id::create_vcpu);
          if (!ok)
            return false;
        }
      }
      return true;
    },
    10000ms);
  CHECK(held);
  for (uint32_t v = 0; v < f.so.vms; ++v)
    REQUIRE(f.call<done>([&](control_api& a, auto cb) { a.resume_vm(f.uuid(v), cb); }).ok());
  for (auto& p : plugs)
    CHECK(f.get(std::move(p)).ok);
  check_invariants(f);
}

TEST_CASE("chaos: API clients and slow event-stream subscribers hammer kvmid during a storm") {
  fleet f([](sim::options& o) {
    o.vms = scaled(32, 8);
    o.vcpus_per_vm = 8;
    o.workload.rate_per_vcpu = 1000;
    o.threads = 2;
  });
  REQUIRE(f.configured(60s));
  // Subscribers that never read: small queues, raw events included.
  std::vector<std::shared_ptr<subscription>> slow;
  for (int i = 0; i < 8; ++i)
    slow.push_back(f.c->bus().subscribe(bus_filter{{}, {bus_kind::event, bus_kind::alert}, {}}, 16));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> calls{0}, answers{0}, untyped{0};
  std::vector<std::thread> clients;
  for (int k = 0; k < 4; ++k)
    clients.emplace_back([&, k] {
      uint32_t i = 0;
      while (!stop) {
        uint32_t v = (i++ * 7 + uint32_t(k)) % f.so.vms;
        auto id = f.uuid(v);
        calls += 4;
        auto note = [&](const api_error* e) {
          ++answers;
          // A running vCPU's registers are a conflict; nothing else may fail.
          if (e && e->code != api_errc::conflict)
            ++untyped;
        };
        auto l = f.call<std::vector<vm_info>>([](control_api& a, auto cb) { a.list_vms(cb); });
        note(l.ok() ? nullptr : &l.error());
        auto g = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(id, cb); });
        note(g.ok() ? nullptr : &g.error());
        auto rd = f.call<std::vector<uint8_t>>(
          [&](control_api& a, auto cb) { a.read_physical(id, bp_gpa, 1, cb); });
        note(rd.ok() ? nullptr : &rd.error());
        if (rd.ok() && rd.value().size() != 1)
          ++untyped;
        auto rg = f.call<registers_info>(
          [&](control_api& a, auto cb) { a.get_registers(id, uint16_t(i % 8), {}, cb); });
        note(rg.ok() ? nullptr : &rg.error());
      }
    });
  storm_for(f, scaled(3000, 1000) * 1ms);
  stop = true;
  for (auto& t : clients)
    t.join();
  CHECK(calls.load() > 0);
  CHECK(answers.load() == calls.load()); // every API call answered exactly once
  CHECK(untyped.load() == 0);
  uint64_t dropped = 0;
  for (auto& s : slow)
    dropped += s->dropped();
  CHECK(dropped > 0); // the slow subscribers lost records instead of stalling vCPUs
  CHECK(f.metric("kvmid_bus_dropped_total") >= double(dropped));
  check_invariants(f);
  CHECK(f.metric("kvmid_protocol_errors_total") == 0);
}

// The kernel does not remove INT3 bytes when a session drops, so the next
// session finds kvmid's own INT3 in place; kvmid must adopt it with the
// byte its history recorded, so UNHOOK restores that byte.
TEST_CASE("chaos: after reconnects under load - UNHOOK still restores the byte under kvmid's INT3") {
  fleet f([](sim::options& o) {
    o.vms = 4;
    o.vcpus_per_vm = 4;
    o.workload.rate_per_vcpu = 300;
    o.reconnect_delay = 10ms;
  });
  REQUIRE(f.configured(60s));
  for (uint32_t round = 0; round < 3; ++round) {
    for (uint32_t v = 0; v < f.so.vms; ++v)
      REQUIRE(f.h->wait_until([&] { return f.planted(v); }, 10000ms));
    std::vector<std::future<sim::outcome>> fs;
    for (uint32_t v = 0; v < f.so.vms; ++v)
      fs.push_back(f.h->inject_fault(v, "disconnect"));
    for (auto& x : fs)
      f.get(std::move(x));
    REQUIRE(f.h->wait_until(
      [&] {
        for (uint32_t v = 0; v < f.so.vms; ++v)
          if (f.h->vm_counters(v).sessions < round + 2 || !f.h->hooked(v))
            return false;
        return true;
      },
      20000ms));
    REQUIRE(f.configured(30s));
  }
  std::vector<std::future<sim::outcome>> un;
  for (uint32_t v = 0; v < f.so.vms; ++v)
    un.push_back(f.h->request_unhook(v));
  for (auto& x : un)
    CHECK(f.get(std::move(x)).ok);
  for (uint32_t v = 0; v < f.so.vms; ++v) {
    INFO("vm " << v);
    REQUIRE(f.h->wait_until([&] { return f.h->vm(v).unhooked; }, 20000ms));
    CHECK(f.h->memory(v, bp_gpa, 1)[0] == bp_original);
  }
  check_invariants(f);
}
