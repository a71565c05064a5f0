#include "kernel-patches/sim/fault_injector.hpp"

#include "kernel-patches/sim/host_impl.hpp"

#include <cstring>

namespace kvmi::sim::detail {

namespace {
std::future<outcome> ready(outcome o) {
  std::promise<outcome> p;
  p.set_value(std::move(o));
  return p.get_future();
}

vm::waiter take_armed(std::deque<vm::waiter>& q) {
  vm::waiter w;
  if (!q.empty()) {
    w = std::move(q.front());
    q.pop_front();
  }
  return w;
}

// A header with an id no kernel sends, then random bytes: the tool must
// close. No seq given: a random one.
void put_garbage(vm& v, std::optional<uint32_t> seq, byte_order order) {
  uint8_t g[40];
  for (auto& b : g)
    b = static_cast<uint8_t>(v.rng());
  msg_hdr hd{0xbeef, 32, seq ? *seq : static_cast<uint32_t>(v.rng())};
  to_order(hd, order);
  std::memcpy(g, &hd, sizeof hd);
  put_bytes(v.out, std::span<const uint8_t>(g, sizeof g));
}
} // namespace

fault_injector::fault_injector(shard& s) : s_(s) {}

bool fault_injector::strikes(vm& v, double p) { return !s_.quiesced() && chance(v, p); }

void fault_injector::send_frame(vm& v, std::span<const uint8_t> f) {
  if (v.fd < 0 || !v.connected || v.close_after_send)
    return; // after a frame cut mid-way nothing more goes out
  auto& fl = *v.faults;
  if (strikes(v, fl.garbage)) {
    ++v.c.faults_injected;
    put_garbage(v, std::nullopt, s_.o.order);
  } else if (strikes(v, fl.drop_mid_frame)) {
    ++v.c.faults_injected;
    put_bytes(v.out, f.subspan(0, std::max<size_t>(1, f.size() / 2)));
    v.close_after_send = true;
  } else if (!v.split_at && (!v.torn_waiters.empty() || strikes(v, fl.torn_frames))) {
    vm::waiter injected;
    if (!v.torn_waiters.empty()) {
      injected = std::move(v.torn_waiters.front());
      v.torn_waiters.pop_front();
    } else {
      ++v.c.faults_injected;
    }
    put_bytes(v.out, f.subspan(0, f.size() / 2));
    v.split_at = v.out.size();
    put_bytes(v.out, f.subspan(f.size() / 2));
    await_sent(v, std::move(injected));
  } else {
    put_bytes(v.out, f);
  }
  s_.net.mark_dirty(v);
}

void fault_injector::send_reply(vm& v, std::vector<uint8_t>& frame, bool from_vcpu) {
  auto& fl = *v.faults;
  auto injected = take_armed(v.slow_waiters);
  if (injected || strikes(v, fl.slow_reply_fraction)) {
    if (!injected)
      ++v.c.faults_injected;
    slow_.push_back(slow_reply{v.local, v.gen, frame, std::move(injected)});
    s_.net.add_timer(clock::now() + fl.slow_reply_delay, timer_kind::slow_send, v.local, 0, v.gen);
    return;
  }
  auto emit = [&](std::span<const uint8_t> f) {
    if (from_vcpu)
      put_bytes(v.deferred, f);
    else
      send_frame(v, f);
  };
  emit(frame);
  injected = take_armed(v.dup_waiters);
  if (injected || strikes(v, fl.duplicate_reply)) {
    if (!injected)
      ++v.c.faults_injected;
    emit(frame);
    if (from_vcpu && injected)
      v.deferred_waiters.push_back(std::move(injected));
    else
      await_sent(v, std::move(injected));
  }
  if (strikes(v, fl.unknown_seq_reply)) {
    ++v.c.faults_injected;
    msg_hdr hd;
    std::memcpy(&hd, frame.data(), sizeof hd);
    to_order(hd, s_.o.order);
    hd.seq ^= 0x5a5a0000u; // a seq the tool never used
    to_order(hd, s_.o.order);
    std::memcpy(frame.data(), &hd, sizeof hd);
    emit(frame);
  }
}

void fault_injector::await_sent(vm& v, vm::waiter w) {
  if (!w)
    return;
  size_t unsent = v.send_inflight ? v.inflight.size() - v.inflight_off : 0;
  v.sent_waiters.emplace_back(v.sent_bytes + unsent + v.out.size(), std::move(w));
}

void fault_injector::resolve_sent(vm& v) {
  std::erase_if(v.sent_waiters, [&](auto& w) {
    if (w.first > v.sent_bytes)
      return false;
    w.second->set_value(outcome{});
    return true;
  });
}

void fault_injector::reject_waiters(vm& v) {
  auto no = [](vm::waiter& w) { w->set_value(rejected("the session ended before the fault went out")); };
  for (auto& [at, w] : v.sent_waiters)
    no(w);
  v.sent_waiters.clear();
  for (auto& w : v.deferred_waiters)
    no(w);
  v.deferred_waiters.clear();
  for (auto* q : {&v.torn_waiters, &v.dup_waiters, &v.slow_waiters}) {
    for (auto& w : *q)
      no(w);
    q->clear();
  }
  for (auto& r : slow_)
    if (r.vm_local == v.local && r.injected)
      no(r.injected);
  std::erase_if(slow_, [&](auto& r) { return r.vm_local == v.local; });
  v.sent_bytes = 0;
}

void fault_injector::send_slow_reply(vm& v) {
  for (auto it = slow_.begin(); it != slow_.end(); ++it)
    if (it->vm_local == v.local && it->gen == v.gen) {
      auto r = std::move(*it);
      slow_.erase(it);
      send_frame(v, r.bytes);
      await_sent(v, std::move(r.injected));
      break;
    }
}

std::future<outcome> fault_injector::inject(vm& v, const std::string& fault) {
  if (!v.hooked)
    return ready(rejected("vm not hooked"));
  auto& o = s_.o;
  auto w = std::make_shared<std::promise<outcome>>();
  auto f = w->get_future();
  // These are frames a broken kernel would send, in the host's dialect.
  s_.kern->encode_stray_event(v, v.scratch);
  if (fault == "drop_mid_frame") {
    put_bytes(v.out, std::span<const uint8_t>(v.scratch).subspan(0, v.scratch.size() / 2));
    v.close_after_send = true;
    await_sent(v, std::move(w));
  } else if (fault == "garbage") {
    put_garbage(v, 1, o.order);
    await_sent(v, std::move(w));
  } else if (fault == "unknown_seq_reply") {
    s_.kern->encode_stray_reply(v, 0xdead0000u | (v.rng() & 0xffff), v.scratch);
    put_bytes(v.out, std::span<const uint8_t>(v.scratch));
    await_sent(v, std::move(w));
  } else if (fault == "torn") {
    v.torn_waiters.push_back(std::move(w));
  } else if (fault == "duplicate_reply") {
    v.dup_waiters.push_back(std::move(w));
  } else if (fault == "slow_reply") {
    v.slow_waiters.push_back(std::move(w));
  } else if (fault == "disconnect") {
    s_.dm.end_session(v);
    w->set_value(outcome{});
  } else {
    return ready(rejected("unknown fault: " + fault));
  }
  ++v.c.faults_injected;
  s_.net.mark_dirty(v);
  return f;
}

void fault_injector::reconnect_storm() {
  auto drain = s_.o.faults.reconnect_drain;
  for (auto& v : s_.vms)
    if (v->hooked && !v->draining) {
      ++v->c.faults_injected;
      if (drain.count() <= 0) {
        s_.dm.end_session(*v);
        continue;
      }
      v->draining = true;
      v->drain_deadline = clock::now() + drain;
      drain_check(*v);
    }
}

namespace {
// Events an operator's pause or a vCPU's creation may hold on purpose: a
// drain does not wait for them.
bool drains(const vcpu& c) {
  return c.waiting && c.ev != event_id::pause_vcpu && c.ev != event_id::create_vcpu;
}
} // namespace

void fault_injector::drain_check(vm& v) {
  if (!v.draining)
    return;
  auto waiting = std::count_if(v.vcpus.begin(), v.vcpus.end(), drains);
  auto now = clock::now();
  if (waiting > 0 && now < v.drain_deadline) {
    s_.net.add_timer(now + std::chrono::milliseconds(2), timer_kind::drain_check, v.local, 0,
                     v.gen);
    return;
  }
  v.c.violations[static_cast<size_t>(violation::reply_lost)] += static_cast<uint64_t>(waiting);
  s_.dm.end_session(v);
}

void fault_injector::hotplug_storm() {
  auto& o = s_.o;
  uint32_t cap = o.faults.hotplug_max_vcpus ? o.faults.hotplug_max_vcpus : o.vcpus_per_vm * 2;
  for (auto& v : s_.vms)
    if (v->hooked && v->vcpus.size() < std::min<uint32_t>(cap, 65535)) {
      ++v->c.faults_injected;
      s_.guest.hotplug(*v);
    }
}

} // namespace kvmi::sim::detail
