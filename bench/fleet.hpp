// kvmid measured through kvmi-sim: event round trips (as the simulated
// kernel sees them: event sent -> reply received), throughput, attach time
// and kvmid's memory, each next to the floor it is compared to.
#pragma once

#include "bench/publishing.hpp"
#include "kernel-patches/sim/sim.hpp"

#include <chrono>
#include <cstdint>
#include <string>

namespace bench {

// kvmid in this process (a v5 listener, or a v7 one against kvmi-sim
// speaking v7), or the raw C++ responder.
enum class target { kvmid, kvmid_v7, raw };

struct fleet_run {
  kvmi::sim::latency lat;   // event sent -> reply received, whole run
  double events_per_s = 0;  // replies received per second in the measured window
  uint64_t events = 0;      // replies in the window
  double attach_s = 0;      // sim start -> every vCPU configured
  // CPU time of the introspector's threads (every thread of this process
  // but the simulator's and the bench's own) over the window, per reply.
  double cpu_us_per_event = 0;
  double kernel_us_per_event = 0; // the part of it spent in the kernel (system time)
  uint64_t violations = 0, hmis = 0;
  nats_figures nats;        // with a publisher (drive's `nats`)
};

// vms x vcpus, each vCPU drawing guest actions at `rate` per second, for
// `seconds` after every vCPU is configured. With `nats`, kvmid (not the raw
// responder) also publishes its bus records to JetStream as configured.
// `poll`: kvmid's poll_us (reactor_options::spin), 0 as by default.
fleet_run drive(target t, uint32_t vms, uint32_t vcpus, double rate, double seconds,
                unsigned sim_threads = 1, const kvmid::nats_options* nats = nullptr,
                std::chrono::microseconds poll = std::chrono::microseconds{0});

struct memory_run {
  uint64_t base_kib = 0;          // kvmid with no VM
  uint64_t vms_kib = 0;           // with `vms` VMs x 1 vCPU
  uint64_t fleet_kib = 0;         // with fleet_vms x fleet_vcpus (idle: no workload)
  uint32_t vms = 0, fleet_vms = 0, fleet_vcpus = 0;
  double attach_s = 0;            // the fleet: sim start -> every vCPU configured
  // At scale: scale_vms x scale_vcpus (0: not run), attach time and RSS.
  uint32_t scale_vms = 0, scale_vcpus = 0;
  uint64_t scale_kib = 0;
  double scale_attach_s = 0;
  // What slowed the scale attach down, as the simulator saw it: sessions
  // that had to be made again, handshakes that failed, refused connects.
  uint64_t scale_reconnects = 0, scale_handshake_failures = 0, scale_connect_failures = 0;
  double per_vm_kib() const;      // (vms_kib - base) / vms
  double per_vcpu_kib() const;    // (fleet - vms-run) / extra vCPUs
  bool ok = false;
  std::string error;
};

// kvmid as a process (the kvmid binary at kvmid_bin), RSS from /proc.
memory_run measure_memory(const std::string& kvmid_bin, uint32_t vms, uint32_t fleet_vms,
                          uint32_t fleet_vcpus, uint32_t scale_vms = 0, uint32_t scale_vcpus = 0);

} // namespace bench
