// kvmi-sim: a simulated KVMI host (patched kernel + device manager) for
// many VMs x many vCPUs in one process. Each VM connects to the introspector,
// performs the handshake as its device manager, then behaves as the v5
// kernel or the kvmi-v7 kernel branch (options::dialect, docs/protocol.md).
//
// Embedding: fill options, construct host, start(); drive scripted guest
// actions (each returns a std::future<outcome>) and inspect guest state from
// any thread; stop() or the destructor ends everything. All public methods
// are thread-safe.
#pragma once

#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "proto/ids.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kvmi::sim {

using ms = std::chrono::milliseconds;
using us = std::chrono::microseconds;

// --- configuration -----------------------------------------------------------

// The KVMI dialect the host speaks (docs/protocol.md): the v5 kernel with
// kvmid's or the v5-era QEMU handshake, or the kvmi-v7 kernel branch with
// its QEMU's handshake, as libkvmi expects.
enum class protocol : uint8_t { v5, v7 };

// What the v7 QEMU appends to its 96-byte handshake struct, if anything.
enum class qemu_v7_hello : uint8_t {
  plain,   // 96 bytes: the struct of the kvmi-v7 QEMU branch
  max_gpa, // + u64 max_gpa (104 bytes), as later QEMUs send
  e820,    // cpu_type + the E820 map (104 + 24 n bytes), the other later form
};

// Event counter slots inside the host: v5's ids 0..10 and v7's SINGLESTEP 11
// and CPUID 13.
inline constexpr size_t event_slots = 14;

// One NVLink2 GPU passed through to the VM: its RAM region (sparse, pages
// faulted in lazily) and its 64 KiB ATSD register region.
struct gpu_spec {
  uint64_t ram_size = 16ull << 30; // 16 or 32 GiB
  // When the guest driver has trained the links and the RAM becomes online,
  // counted from the VM's first hook; nullopt: never online.
  std::optional<ms> online_after = ms{0};
};

struct memory_spec {
  // Guest RAM from gpa 0; above 3 GiB the rest continues at 4 GiB, the hole
  // [3 GiB, 4 GiB) is an MMIO region.
  uint64_t ram_size = 256ull << 20;
  std::vector<gpu_spec> gpus;
};

// Relative weights of the guest actions a seeded workload draws.
struct workload_mix {
  double msr = 1, cr = 1, access = 1, execute = 1, breakpoint = 0.2, hypercall = 0.5,
         descriptor = 0.5, xsetbv = 0.2;
  double trap = 0.2; // probability that an injected exception gets overwritten (TRAP)
};

struct workload_spec {
  double rate_per_vcpu = 0; // guest actions per second per vCPU; 0 = scripted only
  workload_mix mix;
  // The "hot" guest pages the workload touches and executes in (kernel text
  // and data of the simulated guest), so tools that protect them see events.
  uint64_t hot_gpa = 0x100000;
  uint32_t hot_pages = 64;
  // Every access and fetch first walks the guest's page tables: the MMU
  // writes the accessed bit into the top-level table at CR3, so a tool that
  // write-protects page tables (libkvmi's hookguest does) sees PF events on
  // them. Off: the walk is not modelled.
  bool page_walks = false;
  // A vCPU's thread runs the guest between two exits; it does not sleep.
  // The simulator waits for the next guest action on its event loop: a wait
  // shorter than this is spun through instead of slept (0: always slept).
  // Flat out, sleeping the microsecond before each event made the round
  // trips slower on a virtual machine (the bench: p50 by a fifth, and 1-2 %
  // of them over 200 us against 0.3-0.6 % spun through).
  us spin_below{0};
};

struct fault_spec {
  double drop_mid_frame = 0;    // per sent frame: send part of it, then close
  double torn_frames = 0;       // per sent frame: split it over two sends with a pause
  double garbage = 0;           // per sent frame: send random bytes instead
  double duplicate_reply = 0;   // per command reply: send it twice
  double unknown_seq_reply = 0; // per command reply: also send a reply with an unused seq
  double slow_reply_fraction = 0; // per command reply: delay it by slow_reply_delay
  ms slow_reply_delay{20};
  ms torn_pause{2};
  ms reconnect_storm_every{0}; // >0: every period, every VM drops its session
  // >0: a storm first drains each VM: its workload stops, the host waits up
  // to this long for every event reply, then closes. An event still waiting
  // then is a lost reply (violation reply_lost), which a plain close would
  // have counted as aborted. 0: the storm closes at once.
  ms reconnect_drain{0};
  ms hotplug_storm_every{0};   // >0: every period, every hooked VM hot-plugs a vCPU
  uint32_t hotplug_max_vcpus = 0; // bound for the storm (0: vcpus_per_vm * 2)
  double bad_mac = 0;           // per handshake: the device manager uses a wrong cookie
};

struct options {
  // Where the introspector listens: a UNIX socket path, or TCP on loopback.
  std::string unix_path;
  std::string tcp_host = "127.0.0.1";
  uint16_t tcp_port = 0; // used when unix_path is empty

  uint32_t vms = 1;
  uint32_t vcpus_per_vm = 1;
  uint64_t seed = 1;
  // v5: the handshake's HMAC key (required). v7: QEMU's secret; empty: any
  // cookie hash passes, as QEMU without a secret does.
  std::vector<uint8_t> cookie;
  protocol dialect = protocol::v5;
  hs::mode handshake = hs::mode::kvmi; // v5 only
  qemu_v7_hello v7_hello = qemu_v7_hello::plain; // v7 only
  byte_order order = byte_order::native; // swapped: the host has the other byte order
  std::string name_prefix = "sim-vm-";
  // VM names as a pattern, "%d" standing for the VM's index (e.g. "web-%d");
  // empty: name_prefix then the index.
  std::string name_format;

  // The host's allow masks (GET_VERSION reports them; others get EACCES/EPERM).
  // Commands by v5 id (v5 only); events by id in both dialects, v7's
  // SINGLESTEP (11) and CPUID (13) included.
  uint32_t allowed_commands = known_commands | flag(msg_id::get_version);
  uint32_t allowed_events = known_events | (1u << 11) | (1u << 13);

  memory_spec memory;
  std::map<uint32_t, memory_spec> memory_per_vm; // overrides `memory` for these VMs
  workload_spec workload;
  fault_spec faults;
  // Overrides `faults` for these VMs: their frame, reply and handshake
  // faults (the storms run on the host-wide `faults`).
  std::map<uint32_t, fault_spec> faults_per_vm;

  bool reconnect = true;          // reconnect after the session closes (not after unhook/crash)
  ms reconnect_delay{50};
  // After failures in a row (connect refused, handshake failed) the delay
  // doubles per failure up to this; a completed handshake resets it.
  ms reconnect_delay_max{2000};
  ms unhook_timeout{60000};       // QEMU's UNHOOK_TIMEOUT_SEC: then the host closes itself
  uint32_t max_tokens = 64;       // GET_MAP_TOKEN gives EAGAIN beyond this
  // A hot-plugged vCPU stays uninitialised (KVM_MP_STATE_UNINITIALIZED: it
  // does not run and its vCPU commands get -KVM_EAGAIN) until the guest
  // starts it, this long after the hot-plug; nullopt: never.
  std::optional<ms> hotplug_start_after = ms{0};
  unsigned threads = 1;           // event loops; VMs are spread over them
  ms progress_every{0};           // >0: print a progress line to stderr
};

// --- outcomes of guest actions -------------------------------------------------

struct outcome {
  bool ok = true;                // false: rejected (no such VM/vCPU, VM not running)
  std::string error;             // why it was rejected
  uint32_t events = 0;           // events this action raised (RETRY raises again)
  std::optional<event_id> event; // kind of the last event raised
  std::optional<action> reply;   // action of the last reply (nullopt: no event or aborted)
  bool aborted = false;          // session ended while the event waited (kernel: CONTINUE)
  bool crashed = false;          // the reply was CRASH: the VM is dead
  bool allowed = true;           // access/execute: the access went through
  bool guest_exception = false;  // #BP/#PF delivered to the guest instead
  uint64_t value = 0;            // the value the guest ended up with (MSR, CR, XCR0)
  uint32_t vcpu = 0;             // hotplug: the new vCPU's index
};

// --- inspection ---------------------------------------------------------------

enum class vcpu_state : uint8_t { running, in_event, paused };

struct vcpu_view {
  vcpu_state state = vcpu_state::running;
  std::optional<event_id> event; // the event it waits in
  uint32_t pending_pauses = 0;   // PAUSE_VCPU jobs not yet sent
  double wait_ms = 0;            // how long it has waited in its event
  uint32_t enabled_events = 0;   // CONTROL_EVENTS mask
  kvm_regs regs{};
  kvm_sregs sregs{};             // cr0/cr3/cr4/efer live here
  uint64_t xcr0 = 0;
  bool initialised = true;       // false: hot-plugged, not started by the guest yet
};

struct counters {
  std::array<uint64_t, num_events> events{};  // sent, by event id (v5's ids, v7's too)
  std::map<std::string, uint64_t> v7_events; // sent, v7's own ids (singlestep, cpuid)
  std::array<uint64_t, 3> replies{};          // received, by action
  std::map<std::string, uint64_t> commands;   // received, by command name
  std::map<std::string, uint64_t> errors;     // error replies sent, by KVM_E* name
  std::map<std::string, uint64_t> violations; // protocol violations by kind
  uint64_t breakpoint_hits = 0;               // INT3 executed (event or guest #BP)
  uint64_t pf_allowed = 0, pf_retried = 0, pf_crashed = 0;
  uint64_t pf_unreported = 0;                 // restricted access let through: PF not enabled
  uint64_t hmis = 0;
  // vCPU commands a running vCPU was kicked out of the guest to serve (the
  // rest found it waiting in an event).
  uint64_t commands_on_running_vcpus = 0;
  uint64_t sessions = 0;        // completed handshakes
  uint64_t reconnects = 0;
  uint64_t handshake_failures = 0;
  uint64_t connect_failures = 0;    // connects that failed (no socket, refused, ...)
  uint64_t unanswered_at_close = 0; // events still waiting when a session ended
  // What a tool left when a session ended, before the kernel's own clean-up:
  // pages it still had restricted (the kernel then restores rwx), and INT3
  // bytes it wrote that were still in guest memory (nothing restores those).
  uint64_t restricted_at_close = 0;
  uint64_t int3_at_close = 0;
  uint64_t aborted_by_tool = 0;     // of those, when the tool closed the socket (not the host)
  uint64_t faults_injected = 0;
  uint64_t violation_count() const;
};

struct vm_view {
  uint32_t index = 0;
  hs::uuid uuid{};
  std::string name;
  bool connected = false; // socket up (handshake may still run)
  bool hooked = false;    // handshake done, KVMI session live
  bool crashed = false;
  bool unhooked = false;  // UNHOOK completed (the tool closed) or timed out
  std::vector<hs::region> regions;
  std::vector<vcpu_view> vcpus;
  counters c;
};

struct latency {
  uint64_t count = 0;
  double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
  // The whole distribution: (upper bound in us, fraction of events at or
  // below it), one point per non-empty bucket of the log-linear histogram.
  std::vector<std::pair<double, double>> cdf;
  // The histogram itself, as (bucket, events) for the non-empty buckets,
  // and its largest value: what pooling several runs needs.
  std::vector<std::pair<uint32_t, uint64_t>> buckets;
  uint64_t max_ns = 0;
};

// The distribution of several runs' events together, as if one run had
// seen them all.
latency pooled(const std::vector<latency>& runs);

struct report {
  uint32_t vms = 0, vcpus = 0;
  double seconds = 0;
  counters total;
  latency event_latency; // event sent -> reply received
  // vCPUs waiting in an event now; those in PAUSE_VCPU or CREATE_VCPU (what
  // an operator pause holds); the age of the oldest other event still
  // waiting for its reply.
  uint64_t waiting = 0, waiting_held = 0;
  double oldest_pending_ms = 0;
  std::string connect_error; // why the last failed connect failed; empty if none did
  bool ok() const { return total.violation_count() == 0 && total.hmis == 0; }
};
nlohmann::json to_json(const report& r);

// --- the host ------------------------------------------------------------------

class host {
public:
  explicit host(options o);
  ~host(); // stops
  host(const host&) = delete;
  host& operator=(const host&) = delete;

  void start(); // spawns the event loop thread(s); VMs connect at once
  void stop();  // closes every session and joins
  // No new guest work: the workload, the storms and the random faults stop
  // while sessions stay up (and reconnect), so the introspector can answer
  // what is still waiting. Scripted actions and injected faults still run.
  void quiesce();
  const options& opts() const;

  // Evaluates pred (which may call the inspection methods) after every batch
  // of work until it is true or the timeout passes. Returns its last value.
  bool wait_until(const std::function<bool()>& pred, ms timeout);

  // Inspection (snapshots, safe from any thread).
  uint32_t vm_count() const;
  vm_view vm(uint32_t vm) const;
  std::optional<vcpu_view> vcpu(uint32_t vm, uint32_t vcpu) const;
  std::optional<uint64_t> msr(uint32_t vm, uint32_t vcpu, uint32_t msr) const;
  std::optional<uint64_t> cr(uint32_t vm, uint32_t vcpu, uint32_t cr) const;
  uint8_t page_access(uint32_t vm, uint64_t gpa) const; // rwx when untracked
  std::vector<uint8_t> memory(uint32_t vm, uint64_t gpa, size_t n) const;
  counters vm_counters(uint32_t vm) const;
  report make_report() const;
  // Shortcut for tests.
  bool hooked(uint32_t vm) const;

  // The guest writes its own memory (e.g. code with its own INT3 bytes).
  void guest_write(uint32_t vm, uint64_t gpa, std::vector<uint8_t> bytes);

  // Scripted guest actions on one vCPU. They queue behind what that vCPU
  // is doing and resolve when the guest has the final outcome.
  std::future<outcome> write_msr(uint32_t vm, uint32_t vcpu, uint32_t msr, uint64_t value);
  std::future<outcome> write_cr(uint32_t vm, uint32_t vcpu, uint32_t cr, uint64_t value);
  std::future<outcome> access(uint32_t vm, uint32_t vcpu, uint64_t gpa, uint8_t rwx);
  std::future<outcome> execute(uint32_t vm, uint32_t vcpu, uint64_t gpa);
  std::future<outcome> hypercall(uint32_t vm, uint32_t vcpu);
  std::future<outcome> descriptor(uint32_t vm, uint32_t vcpu, uint8_t desc, bool write);
  std::future<outcome> xsetbv(uint32_t vm, uint32_t vcpu, uint64_t xcr0);

  // VM-level actions.
  std::future<outcome> hotplug(uint32_t vm);        // adds a vCPU (CREATE_VCPU if enabled)
  std::future<outcome> request_unhook(uint32_t vm); // as QEMU would; resolves when closed
  std::future<outcome> crash(uint32_t vm);          // the guest dies
  // Fault injection on demand: "drop_mid_frame" (half a frame, then close),
  // "garbage" (a frame with an id no kernel sends), "torn" (the next frame
  // not yet torn goes out in two sends with faults.torn_pause between; each
  // call tears one more), "unknown_seq_reply" (a GET_VERSION reply with a
  // seq the tool never used), "duplicate_reply" (the next command reply is
  // sent twice), "slow_reply" (the next command reply waits
  // faults.slow_reply_delay), "disconnect". The future resolves once the
  // fault's bytes went out on the socket (ok = false: the session ended or
  // the host stopped first).
  std::future<outcome> inject_fault(uint32_t vm, const std::string& fault);

  // Runs a JSON scenario: {"steps": [{"op": "write_msr", "vm": 0, "vcpu": 0,
  // "msr": 3221225602, "value": 1, "expect": {...}}, {"op": "sleep", "ms": 5}, ...]}.
  // Each step waits for its outcome (timeout_ms, default 5000). Returns one
  // result object per step; "failed" is set when an expectation did not hold.
  nlohmann::json run_scenario(const nlohmann::json& scenario);

  struct impl;

private:
  std::unique_ptr<impl> p_;
};

// The memory map a VM announces in the handshake for these options.
std::vector<hs::region> memory_map(const memory_spec& m);

} // namespace kvmi::sim
