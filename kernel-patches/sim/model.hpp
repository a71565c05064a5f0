// Internal: the state of one simulated VM (its guest, its connection and
// the kernel's session state). Owned by one event loop (shard) and touched
// only under its mutex.
#pragma once

#include "kernel-patches/sim/dm_handshake.hpp"
#include "kernel-patches/sim/invariants.hpp"
#include "kernel-patches/sim/sim.hpp"

#include <deque>
#include <memory_resource>
#include <random>
#include <set>
#include <unordered_map>

namespace kvmi::sim::detail {

using clock = std::chrono::steady_clock;
using time_point = clock::time_point;

// Well-known x86 MSRs the guest model carries.
namespace msr {
inline constexpr uint32_t tsc = 0x10, apic_base = 0x1b, sysenter_cs = 0x174,
                          sysenter_esp = 0x175, sysenter_eip = 0x176, pat = 0x277,
                          misc_enable = 0x1a0, efer = 0xc0000080, star = 0xc0000081,
                          lstar = 0xc0000082, cstar = 0xc0000083, fmask = 0xc0000084,
                          fs_base = 0xc0000100, gs_base = 0xc0000101,
                          kernel_gs_base = 0xc0000102, tsc_aux = 0xc0000103;
}

// One guest action on a vCPU: what the guest does, where it stands and
// what it has seen so far.
struct guest_action {
  enum kind : uint8_t { msr, cr, access, execute, hypercall, descriptor, xsetbv };
  kind k = msr;
  uint32_t a = 0;      // msr index, cr number, access mode, descriptor kind
  uint64_t x = 0;      // value to write, or gpa
  uint64_t y = 0;      // descriptor: write flag; access: byte to write
  uint8_t phase = 0;   // execute: 0 = fetch permission, 1 = INT3 check
  bool walked = false; // workload.page_walks: the page-table write is done
  bool in_walk = false; // the PF event it waits in is the page walk's
  bool workload = false;
  std::shared_ptr<std::promise<outcome>> done; // scripted actions only
  outcome out;
};

struct injection {
  uint8_t nr = 0;
  bool has_error = false;
  uint16_t error_code = 0;
  uint64_t address = 0;
};

struct vcpu {
  uint16_t index = 0;
  bool initialised = true; // false: hot-plugged, the guest has not started it
  bool kicked = false;     // served a command while running: re-enters after the batch
  kvm_regs regs{};
  kvm_sregs sregs{};
  uint64_t xcr0 = 0x7;
  std::vector<std::pair<uint32_t, uint64_t>> msrs; // sorted by index

  // Introspection state of the current session.
  uint32_t events = 0;   // CONTROL_EVENTS mask
  uint8_t cr_watch = 0;  // bit per watched CR: 0 -> cr0, 1 -> cr3, 2 -> cr4
  std::vector<uint32_t> msr_watch;
  uint32_t pauses = 0;   // queued PAUSE_VCPU jobs
  bool create_pending = false;
  std::optional<kvm_regs> set_regs; // SET_REGISTERS waiting for the event reply
  std::optional<injection> inject;
  bool singlestep = false; // v7 VCPU_CONTROL_SINGLESTEP: one instruction per entry

  // The event this vCPU waits in.
  bool waiting = false;
  event_id ev{};
  uint32_t ev_seq = 0;
  time_point ev_sent{};
  uint64_t ev_new = 0;      // CR/MSR: the value the guest tried to write
  bool ev_for_action = false;

  // Guest actions.
  bool has_current = false;
  guest_action current;
  std::deque<guest_action> queue;
  bool workload_due = false;
};

struct page {
  uint8_t bytes[4096];
};

// Per-VM counters as arrays, so the hot path never builds map keys.
struct vm_counts {
  std::array<uint64_t, event_slots> events{};
  std::array<uint64_t, 3> replies{};
  std::array<uint64_t, 64> commands{}; // by the dialect's message id
  // Error replies by -err; the last slot holds every code >= 63 (ENOSYS).
  std::array<uint64_t, 64> errors{};
  static size_t error_slot(int32_t err) { return std::min<size_t>(size_t(-int64_t(err)), 63); }
  std::array<uint64_t, static_cast<size_t>(violation::count_)> violations{};
  uint64_t breakpoint_hits = 0, pf_allowed = 0, pf_retried = 0, pf_crashed = 0,
           pf_unreported = 0, hmis = 0, commands_on_running_vcpus = 0, sessions = 0, reconnects = 0, handshake_failures = 0, connect_failures = 0,
           unanswered_at_close = 0, restricted_at_close = 0, int3_at_close = 0,
           aborted_by_tool = 0,
           faults_injected = 0;

  vm_counts& operator+=(const vm_counts& o) {
    auto sum = [](auto& a, const auto& b) {
      for (size_t i = 0; i < a.size(); ++i)
        a[i] += b[i];
    };
    sum(events, o.events);
    sum(replies, o.replies);
    sum(commands, o.commands);
    sum(errors, o.errors);
    sum(violations, o.violations);
    breakpoint_hits += o.breakpoint_hits;
    pf_allowed += o.pf_allowed;
    pf_retried += o.pf_retried;
    pf_crashed += o.pf_crashed;
    pf_unreported += o.pf_unreported;
    hmis += o.hmis;
    commands_on_running_vcpus += o.commands_on_running_vcpus;
    sessions += o.sessions;
    reconnects += o.reconnects;
    handshake_failures += o.handshake_failures;
    connect_failures += o.connect_failures;
    unanswered_at_close += o.unanswered_at_close;
    restricted_at_close += o.restricted_at_close;
    int3_at_close += o.int3_at_close;
    aborted_by_tool += o.aborted_by_tool;
    faults_injected += o.faults_injected;
    return *this;
  }
};

struct vm {
  uint32_t index = 0;  // global
  uint32_t local = 0;  // in its shard
  hs::uuid uuid{};
  std::string name;
  std::mt19937_64 rng;

  // Guest.
  std::deque<vcpu> vcpus;
  std::unordered_map<uint64_t, std::unique_ptr<page>> memory; // sparse, by gfn
  std::vector<hs::region> regions;
  std::vector<bool> gpu_online; // per GPU RAM region, in region order
  bool crashed = false;

  // Connection.
  int fd = -1;
  uint32_t gen = 0; // bumps per connection: stale completions are ignored
  bool connecting = false, connected = false, hooked = false;
  bool recv_inflight = false, send_inflight = false, connect_inflight = false;
  bool close_after_send = false;
  bool ever_hooked = false;
  uint32_t failures_in_row = 0; // connects and handshakes: the reconnect backoff
  int connect_errno = 0;        // of the last failed connect
  std::unique_ptr<dm_handshake> dm;
  std::unique_ptr<frame_splitter> splitter;
  std::vector<uint8_t> rbuf;
  std::vector<uint8_t> out, inflight, deferred, scratch;
  size_t inflight_off = 0;
  size_t split_at = 0;      // torn frame: send only up to here, then pause
  bool held = false;        // waiting for the torn pause to pass
  bool dirty = false;
  const fault_spec* faults = nullptr; // this VM's frame, reply and handshake faults

  // Injected faults waiting to go out (inject_fault). A promise resolves
  // once the socket took every byte up to its mark in this connection's
  // stream; the session ending first rejects it.
  using waiter = std::shared_ptr<std::promise<outcome>>;
  uint64_t sent_bytes = 0; // sent on this connection
  std::vector<std::pair<uint64_t, waiter>> sent_waiters;
  std::vector<waiter> deferred_waiters; // bytes still in `deferred`
  std::deque<waiter> torn_waiters, dup_waiters, slow_waiters; // armed for the next frame/reply

  // Kernel session state.
  uint32_t ev_seq = 0;
  uint32_t vm_events = 0;   // CONTROL_VM_EVENTS mask
  bool cmd_replies = true;  // v7 CONTROL_CMD_RESPONSE: commands get replies
  std::unordered_map<uint64_t, uint8_t> access; // restricted pages by gfn
  // Every gpa the tool wrote an INT3 to (WRITE_PHYSICAL), across sessions:
  // the kernel never restores guest memory, so these outlive the tool.
  std::set<uint64_t> tool_int3;
  uint32_t tokens = 0;
  std::pmr::unsynchronized_pool_resource pool;
  std::pmr::unordered_map<uint32_t, uint16_t> pending{&pool}; // event seq -> vcpu
  bool unhook_sent = false, unhook_requested = false, unhooked = false;
  std::vector<std::shared_ptr<std::promise<outcome>>> unhook_waiters;
  uint32_t unhook_gen = 0;

  // A drained close (faults.reconnect_drain): no new guest work until the
  // pending replies are in or the deadline passed, then the session ends.
  bool draining = false;
  time_point drain_deadline{};

  vm_counts c;
};

inline outcome rejected(std::string why) {
  outcome o;
  o.ok = false;
  o.error = std::move(why);
  return o;
}

template <class T>
void put_bytes(std::vector<uint8_t>& out, std::span<const T> in) {
  auto p = reinterpret_cast<const uint8_t*>(in.data());
  out.insert(out.end(), p, p + in.size_bytes());
}

// A draw from the VM's own generator comes out true with probability p.
inline bool chance(vm& v, double p) {
  return p > 0 && std::uniform_real_distribution<double>(0, 1)(v.rng) < p;
}

} // namespace kvmi::sim::detail
