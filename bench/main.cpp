// kvmid-bench: prints a table and writes bench-results.json (and a latency
// CDF plot when gnuplot is present). Every figure names the floor it is
// compared to, measured in the same run.
//   kvmid-bench [ROUNDS [OUT_DIR [SECONDS [SECTIONS]]]]
// SECTIONS is a comma list of latency, throughput, memory, guest (a real
// Linux guest under QEMU) and nats (JetStream publishing on vs off, against
// a nats-server the bench starts; default all),
// so one figure can be re-measured while working on it. KVMID_BENCH_RINGS=n
// spreads kvmid's KVMI sockets over n rings (default 1, the config's
// `rings`): worth it only where the simulator leaves cores free.
#include "bench/fleet.hpp"
#include "bench/guest.hpp"
#include "bench/jetstream_server.hpp"
#include "actors/log.hpp"
#include "bench/floor.hpp"
#include "proto/codec.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

// The most common event on the hot path (a PF violation) and its reply.
const size_t event_bytes = sizeof(kvmi::msg_hdr) + kvmi::event_size(kvmi::event_id::pf);
const size_t reply_bytes = sizeof(kvmi::msg_hdr) + kvmi::event_reply_size(kvmi::event_id::pf);

nlohmann::json to_json(const bench::summary& s) {
  return {{"p50_ns", s.p50}, {"p99_ns", s.p99}, {"p999_ns", s.p999}, {"max_ns", s.max},
          {"mean_ns", s.mean}};
}

nlohmann::json to_json(const kvmi::sim::latency& l) {
  return {{"count", l.count}, {"p50_ns", l.p50_us * 1e3}, {"p99_ns", l.p99_us * 1e3},
          {"p999_ns", l.p999_us * 1e3}, {"max_ns", l.max_us * 1e3}};
}

void row(const char* name, const bench::summary& s) {
  std::printf("%-40s %9.1f %9.1f %9.1f %9.1f\n", name, s.p50 / 1e3, s.p99 / 1e3, s.p999 / 1e3,
              s.max / 1e3);
}

// With the introspector's CPU time per event answered: at these rates
// its threads are mostly idle between events, so this is where the cost
// of waking (and of polling before sleeping) shows.
void row(const char* name, const bench::fleet_run& r, const bench::summary& floor) {
  auto& l = r.lat;
  std::printf("%-40s %9.1f %9.1f %9.1f %9.1f   x%.2f x%.2f x%.2f   %.1f us CPU/event"
              " (%.1f in the kernel)\n",
              name, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.p50_us * 1e3 / double(floor.p50),
              l.p99_us * 1e3 / double(floor.p99), l.p999_us * 1e3 / double(floor.p999),
              r.cpu_us_per_event, r.kernel_us_per_event);
}

void write_cdf(const std::string& path, bench::samples s) {
  std::sort(s.begin(), s.end());
  std::ofstream out(path);
  for (size_t i = 0; i < s.size(); i += std::max<size_t>(1, s.size() / 2000))
    out << s[i] / 1e3 << ' ' << double(i) / double(s.size()) << '\n';
}

// The simulator's histogram, bucket by bucket.
void write_cdf(const std::string& path, const kvmi::sim::latency& l) {
  std::ofstream out(path);
  for (auto& [us, fraction] : l.cdf)
    out << us << ' ' << fraction << '\n';
}

const char* verdict(bool met) { return met ? "met" : "MISSED"; }

// A run with NATS publishing beside the same run without.
void row_vs(const char* name, const kvmi::sim::latency& l, const kvmi::sim::latency& off) {
  std::printf("%-40s %9.1f %9.1f %9.1f %9.1f   x%.2f x%.2f\n", name, l.p50_us, l.p99_us,
              l.p999_us, l.max_us, off.p50_us > 0 ? l.p50_us / off.p50_us : 0,
              off.p99_us > 0 ? l.p99_us / off.p99_us : 0);
}

nlohmann::json to_json(const bench::nats_figures& n) {
  return {{"published_in_window", n.published}, {"published_per_s", n.published_per_s},
          {"published_total", n.published_total}, {"stream_messages", n.stream_messages},
          {"bus_dropped", n.bus_dropped}, {"spool_peak_records", n.spool_peak},
          {"spool_used", n.spool_peak > 0}, {"spool_full_dropped", n.spool_full}};
}

// Publishing to its own stream and subjects, so each run counts only its
// records; raw events too (the heaviest load the config can ask for).
kvmid::nats_options publish_to(const std::string& url, const std::string& name) {
  kvmid::nats_options o;
  o.enabled = true;
  o.urls = {url};
  o.host = "bench";
  o.subject_prefix = "bench_" + name;
  o.stream = "BENCH_" + name;
  o.raw_events = true;
  return o;
}

// Of several windows of one target: the run whose CPU per event is the
// median, with the median events/s and what every run's simulator saw.
bench::fleet_run median_run(std::vector<bench::fleet_run> runs) {
  std::vector<double> eps;
  uint64_t violations = 0, hmis = 0;
  for (auto& r : runs) {
    eps.push_back(r.events_per_s);
    violations += r.violations;
    hmis += r.hmis;
  }
  std::sort(eps.begin(), eps.end());
  std::sort(runs.begin(), runs.end(), [](const bench::fleet_run& a, const bench::fleet_run& b) {
    return a.cpu_us_per_event < b.cpu_us_per_event;
  });
  auto m = runs[runs.size() / 2];
  m.events_per_s = eps[eps.size() / 2];
  m.violations = violations;
  m.hmis = hmis;
  return m;
}

// Several windows of one target as one: their events pooled, CPU per event
// over all of them.
bench::fleet_run pooled_run(const std::vector<bench::fleet_run>& runs) {
  bench::fleet_run all;
  std::vector<kvmi::sim::latency> lats;
  double cpu = 0, kernel = 0, eps = 0, attach = 0;
  for (auto& r : runs) {
    lats.push_back(r.lat);
    all.events += r.events;
    cpu += r.cpu_us_per_event * double(r.events);
    kernel += r.kernel_us_per_event * double(r.events);
    eps += r.events_per_s;
    attach += r.attach_s;
    all.violations += r.violations;
    all.hmis += r.hmis;
  }
  all.lat = kvmi::sim::pooled(lats);
  if (all.events) {
    all.cpu_us_per_event = cpu / double(all.events);
    all.kernel_us_per_event = kernel / double(all.events);
  }
  if (!runs.empty()) {
    all.events_per_s = eps / double(runs.size());
    all.attach_s = attach / double(runs.size());
  }
  return all;
}

// The floors and the 1-vCPU round trips: slices each, alternating.
constexpr int latency_slices = 3;

// The 1-vCPU round trip once more with the ring polling for the next event
// this long before it sleeps (kvmid's poll_us): what an operator who gives
// kvmid a core of its own gets for it. Longer than a polled round trip
// here (about 20 us), so the next event arrives while the ring polls.
constexpr std::chrono::microseconds latency_poll{200};
const std::string polled_name =
  "kvmid, 1 vCPU, poll_us " + std::to_string(latency_poll.count());

} // namespace

// The idle-actor floor, measured in a child process (this binary again) so
// that no heap the other runs freed makes it look cheaper. 0: failed.
double idle_actor_floor_kib(size_t n) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec); // in sh, it is sh
  if (ec)
    return 0;
  std::string cmd = "'" + self.string() + "' --idle-actor-floor " + std::to_string(n);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p)
    return 0;
  double kib = 0;
  if (std::fscanf(p, "%lf", &kib) != 1)
    kib = 0;
  return ::pclose(p) == 0 ? kib : 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--idle-actor-floor") {
    std::printf("%.3f\n", bench::idle_actor_kib(std::strtoul(argv[2], nullptr, 10), 2));
    return 0;
  }
  // No line per VM (connected, closed when the run ends): the output is the table.
  kvmid::log_verbosity = kvmid::log_error;
  size_t rounds = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50000;
  std::string out_dir = argc > 2 ? argv[2] : ".";
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "kvmid-bench: cannot create %s: %s\n", out_dir.c_str(),
                 ec.message().c_str());
    return 2;
  }
  double secs = argc > 3 ? std::strtod(argv[3], nullptr) : 3.0;
  std::string sections = argc > 4 ? argv[4] : "latency,throughput,memory,guest,nats";
  sections = "," + sections + ",";
  auto want = [&](const char* name) {
    // Appended, not "," + std::string(name): GCC 12 at -O3 reports a false
    // -Wrestrict in operator+(const char*, string&&).
    std::string needle = ",";
    needle.append(name).push_back(',');
    return sections.find(needle) != std::string::npos;
  };
  for (size_t i = 1; i + 1 < sections.size();) {
    size_t j = sections.find(',', i);
    auto w = sections.substr(i, j - i);
    if (w != "latency" && w != "throughput" && w != "memory" && w != "guest" && w != "nats") {
      std::fprintf(stderr,
                   "kvmid-bench: unknown section '%s' (latency, throughput, memory, guest, nats)\n",
                   w.c_str());
      return 2;
    }
    i = j + 1;
  }
  nlohmann::json report;
  report["event_bytes"] = event_bytes;
  report["reply_bytes"] = reply_bytes;
  report["rounds"] = rounds;
  report["seconds_per_run"] = secs;

  bench::samples blocking, uring;
  bench::summary fb, fu;
  bench::fleet_run k1, k1v7, r1, k1p, k64, r64, kt, rt;
  bench::fleet_run n1_off, n1_on, n64_off, n64_on, nt_off, nt_on;
  bench::memory_run mem;
  double actor_floor = 0; // KiB per idle CAF actor
  double share = 0;
  if (want("latency")) {
    std::printf("round trip of a %zu-byte event and its %zu-byte reply, %zu rounds (us);"
                " floors and 1 vCPU in %d slices each, pooled\n",
                event_bytes, reply_bytes, rounds, latency_slices);
    std::printf("%-40s %9s %9s %9s %9s   %s\n", "", "p50", "p99", "p99.9", "max",
                "ratio to the io_uring floor (p50 p99 p99.9), CPU");
    // Event round trips as the simulated kernel sees them (event sent ->
    // reply received), the vCPUs running flat out. The raw responder through
    // the same simulator shows what the simulator itself adds. The floors
    // and the 1-vCPU runs take turns in slices, each figure pooled over its
    // slices, so that a shared machine's drift reaches the floor and what is
    // compared to it alike: measured back to back, one after the other, the
    // same build's p99 ratio moved between x1.6 and x2.8 here.
    const double flat_out = 1e6;
    std::vector<bench::fleet_run> k1s, k1v7s, r1s, k1ps;
    for (int i = 0; i < latency_slices; ++i) {
      auto b = bench::floor_blocking(rounds / latency_slices, event_bytes, reply_bytes);
      auto u = bench::floor_uring(rounds / latency_slices, event_bytes, reply_bytes);
      blocking.insert(blocking.end(), b.begin(), b.end());
      uring.insert(uring.end(), u.begin(), u.end());
      k1s.push_back(bench::drive(bench::target::kvmid, 1, 1, flat_out, secs / latency_slices));
      k1v7s.push_back(bench::drive(bench::target::kvmid_v7, 1, 1, flat_out, secs / latency_slices));
      r1s.push_back(bench::drive(bench::target::raw, 1, 1, flat_out, secs / latency_slices));
      k1ps.push_back(bench::drive(bench::target::kvmid, 1, 1, flat_out, secs / latency_slices, 1,
                                  nullptr, latency_poll));
    }
    fb = bench::summarize(blocking);
    fu = bench::summarize(uring);
    k1 = pooled_run(k1s);
    k1v7 = pooled_run(k1v7s);
    r1 = pooled_run(r1s);
    k1p = pooled_run(k1ps);
    row("floor: UNIX socket, blocking", fb);
    row("floor: UNIX socket, io_uring", fu);
    auto hop = bench::summarize(bench::actor_hop(rounds, 2));
    row("hop: thread -> CAF actor -> thread", hop);
    report["actor_hop"] = to_json(hop);
    report["floor_blocking"] = to_json(fb);
    report["floor_uring"] = to_json(fu);
    report["latency_slices"] = latency_slices;
    row("kvmid, 1 vCPU", k1, fu);
    row("kvmid v7 (kvmi-sim v7), 1 vCPU", k1v7, fu);
    row("raw responder, 1 vCPU", r1, fu);
    row(polled_name.c_str(), k1p, fu);
    std::fflush(stdout);
    k64 = bench::drive(bench::target::kvmid, 1, 64, flat_out, secs);
    row("kvmid, 64 vCPUs", k64, fu);
    r64 = bench::drive(bench::target::raw, 1, 64, flat_out, secs);
    row("raw responder, 64 vCPUs", r64, fu);
    std::fflush(stdout);
    report["kvmid_1vcpu"] = to_json(k1.lat);
    report["raw_1vcpu"] = to_json(r1.lat);
    report["kvmid_64vcpu"] = to_json(k64.lat);
    report["raw_64vcpu"] = to_json(r64.lat);
    report["kvmid_1vcpu"]["ratio_p50_to_floor"] = k1.lat.p50_us * 1e3 / double(fu.p50);
    report["kvmid_1vcpu"]["ratio_p99_to_floor"] = k1.lat.p99_us * 1e3 / double(fu.p99);
    report["kvmid_1vcpu_poll"] = to_json(k1p.lat);
    report["kvmid_1vcpu_poll"]["poll_us"] = latency_poll.count();
    report["kvmid_1vcpu_poll"]["ratio_p50_to_floor"] = k1p.lat.p50_us * 1e3 / double(fu.p50);
    report["kvmid_1vcpu_poll"]["ratio_p99_to_floor"] = k1p.lat.p99_us * 1e3 / double(fu.p99);
    report["kvmid_v7_1vcpu"] = to_json(k1v7.lat);
    report["kvmid_v7_1vcpu"]["ratio_p50_to_floor"] = k1v7.lat.p50_us * 1e3 / double(fu.p50);
    report["kvmid_v7_1vcpu"]["ratio_p99_to_floor"] = k1v7.lat.p99_us * 1e3 / double(fu.p99);
    report["kvmid_64vcpu"]["ratio_p50_to_floor"] = k64.lat.p50_us * 1e3 / double(fu.p50);
    report["kvmid_64vcpu"]["ratio_p99_to_floor"] = k64.lat.p99_us * 1e3 / double(fu.p99);
    for (auto [key, run] : {std::pair{"kvmid_1vcpu", &k1}, std::pair{"kvmid_v7_1vcpu", &k1v7},
                            std::pair{"raw_1vcpu", &r1}, std::pair{"kvmid_1vcpu_poll", &k1p},
                            std::pair{"kvmid_64vcpu", &k64},
                            std::pair{"raw_64vcpu", &r64}}) {
      report[key]["cpu_us_per_event"] = run->cpu_us_per_event;
      report[key]["kernel_us_per_event"] = run->kernel_us_per_event;
    }
  }

  if (want("throughput")) {
    // Throughput: 4,096 vCPUs over 128 VMs, each asking for far more than
    // two cores serve.
    // Three windows of each, alternating, so that a shared machine's drift
    // reaches both: one window's CPU per event moves by 10 % and more.
    std::printf("\nthroughput, 128 VMs x 32 vCPUs, medians of 3 windows of %.0f s each\n", secs);
    std::vector<bench::fleet_run> ks, rs;
    for (int i = 0; i < 3; ++i) {
      ks.push_back(bench::drive(bench::target::kvmid, 128, 32, 2000, secs));
      rs.push_back(bench::drive(bench::target::raw, 128, 32, 2000, secs));
    }
    kt = median_run(std::move(ks));
    rt = median_run(std::move(rs));
    share = rt.events_per_s > 0 ? kt.events_per_s / rt.events_per_s : 0;
    std::printf("%-40s %12.0f events/s\n", "raw responder (floor)", rt.events_per_s);
    std::printf("%-40s %12.0f events/s   %.0f %% of the floor\n", "kvmid", kt.events_per_s,
                share * 100);
    std::printf("%-40s %12.2f us   (%.2f in the kernel; raw responder %.2f, %.2f)\n",
                "kvmid CPU time per event", kt.cpu_us_per_event, kt.kernel_us_per_event,
                rt.cpu_us_per_event, rt.kernel_us_per_event);
    report["throughput"] = {{"kvmid_events_per_s", kt.events_per_s},
                            {"raw_events_per_s", rt.events_per_s},
                            {"ratio", share},
                            {"kvmid_cpu_us_per_event", kt.cpu_us_per_event},
                            {"kvmid_kernel_us_per_event", kt.kernel_us_per_event},
                            {"raw_cpu_us_per_event", rt.cpu_us_per_event},
                            {"raw_kernel_us_per_event", rt.kernel_us_per_event},
                            {"kvmid_latency", to_json(kt.lat)},
                            {"raw_latency", to_json(rt.lat)}};
    std::fflush(stdout);
  }

  if (want("memory")) {
    // Memory and attach time: kvmid as its own process.
    std::printf("\nkvmid memory (RSS) and attach time, kvmid as a process\n");
    mem = bench::measure_memory(KVMID_BIN, 100, 100, 100, 1000, 100);
    actor_floor = idle_actor_floor_kib(100000);
    std::printf("%-40s %9.2f KiB   (100,000 of them, a vCPU actor's state size)\n",
                "floor: one idle CAF actor", actor_floor);
    if (mem.ok) {
      std::printf("%-40s %9llu KiB\n", "idle kvmid, no VM",
                  (unsigned long long)mem.base_kib);
      std::printf("%-40s %9.1f KiB   (100 VMs x 1 vCPU)\n", "per VM (with its one vCPU)",
                  mem.per_vm_kib());
      std::printf("%-40s %9.2f KiB   (100 VMs x 100 vCPUs, idle; median of 3)   x%.2f the floor\n",
                  "per idle vCPU", mem.per_vcpu_kib(),
                  actor_floor > 0 ? mem.per_vcpu_kib() / actor_floor : 0.0);
      std::printf("%-40s %9.3f s\n", "attach + configure 10,000 vCPUs", mem.attach_s);
      std::printf("%-40s %9.3f s   kvmid RSS %.0f MiB\n", "attach + configure 100,000 vCPUs",
                  mem.scale_attach_s, double(mem.scale_kib) / 1024);
      std::printf("%-40s %9llu reconnects, %llu failed handshakes, %llu refused connects\n",
                  "  ... the simulator retried", (unsigned long long)mem.scale_reconnects,
                  (unsigned long long)mem.scale_handshake_failures,
                  (unsigned long long)mem.scale_connect_failures);
    } else {
      std::printf("memory run failed: %s\n", mem.error.c_str());
    }
    report["memory"] = {{"ok", mem.ok},           {"error", mem.error},
                        {"base_kib", mem.base_kib}, {"vms_kib", mem.vms_kib},
                        {"fleet_kib", mem.fleet_kib}, {"per_vm_kib", mem.per_vm_kib()},
                        {"per_idle_vcpu_kib", mem.per_vcpu_kib()},
                        {"idle_caf_actor_kib", actor_floor},
                        {"attach_10000_vcpus_s", mem.attach_s},
                        {"attach_100000_vcpus_s", mem.scale_attach_s},
                        {"rss_100000_vcpus_kib", mem.scale_kib},
                        {"scale_reconnects", mem.scale_reconnects},
                        {"scale_handshake_failures", mem.scale_handshake_failures},
                        {"scale_connect_failures", mem.scale_connect_failures}};
  }

  if (want("guest")) {
    std::printf("\nreal Linux guest (QEMU TCG, 1 vCPU), kvmid v7 through kvmi-qemu: the guest\n"
                "held from its stop to its resume (us)\n");
    std::printf("%-40s %9s %9s %9s %9s   %s\n", "", "p50", "p99", "p99.9", "max",
                "ratio to the gdbstub alone (p50 p99)");
    auto g = bench::measure_guest(KVMID_BIN, KVMI_QEMU_BIN, 200);
    if (g.ok) {
      auto bb = bench::summarize(g.bare_bp), kb = bench::summarize(g.kvmid_bp);
      auto bp = bench::summarize(g.bare_pf), kp = bench::summarize(g.kvmid_pf);
      auto beside = [](const char* name, const bench::summary& s, const bench::summary& f,
                       size_t n) {
        std::printf("%-40s %9.1f %9.1f %9.1f %9.1f   x%.2f x%.2f   (%zu hits)\n", name,
                    s.p50 / 1e3, s.p99 / 1e3, s.p999 / 1e3, s.max / 1e3,
                    double(s.p50) / double(f.p50), double(s.p99) / double(f.p99), n);
      };
      row("gdbstub alone: breakpoint stepped over", bb);
      beside("kvmid: breakpoint hit, re-armed", kb, bb, g.kvmid_bp.size());
      row("gdbstub alone: watched write put back", bp);
      beside("kvmid: write denied (skipped)", kp, bp, g.kvmid_pf.size());
      report["guest"] = {{"bare_breakpoint", to_json(bb)},  {"kvmid_breakpoint", to_json(kb)},
                         {"bare_watchpoint", to_json(bp)},  {"kvmid_denial", to_json(kp)},
                         {"kvmid_breakpoint_hits", g.kvmid_bp.size()},
                         {"kvmid_denials", g.kvmid_pf.size()}};
    } else {
      std::printf("guest run skipped or failed: %s\n", g.error.c_str());
      report["guest"] = {{"error", g.error}};
    }
    std::fflush(stdout);
  }

  if (want("nats")) {
    std::printf("\nNATS JetStream publishing (nats-server on loopback, raw events too, acks "
                "awaited)\nround trip of a %zu-byte event and its reply (us)\n", event_bytes);
    std::printf("%-40s %9s %9s %9s %9s   %s\n", "", "p50", "p99", "p99.9", "max",
                "ratio to NATS off (p50 p99)");
    std::fflush(stdout);
    try {
      bench::jetstream_server ns(NATS_SERVER_BIN);
      const double flat_out = 1e6;
      auto o1 = publish_to(ns.url(), "1"), o64 = publish_to(ns.url(), "64"),
           ot = publish_to(ns.url(), "4096");
      n1_off = bench::drive(bench::target::kvmid, 1, 1, flat_out, secs);
      n1_on = bench::drive(bench::target::kvmid, 1, 1, flat_out, secs, 1, &o1);
      row_vs("kvmid, 1 vCPU, NATS off", n1_off.lat, n1_off.lat);
      row_vs("kvmid, 1 vCPU, NATS on", n1_on.lat, n1_off.lat);
      std::fflush(stdout);
      n64_off = bench::drive(bench::target::kvmid, 1, 64, flat_out, secs);
      n64_on = bench::drive(bench::target::kvmid, 1, 64, flat_out, secs, 1, &o64);
      row_vs("kvmid, 64 vCPUs, NATS off", n64_off.lat, n64_off.lat);
      row_vs("kvmid, 64 vCPUs, NATS on", n64_on.lat, n64_off.lat);
      std::fflush(stdout);
      nt_off = bench::drive(bench::target::kvmid, 128, 32, 2000, secs);
      nt_on = bench::drive(bench::target::kvmid, 128, 32, 2000, secs, 1, &ot);
      auto& n = nt_on.nats;
      std::printf("\n128 VMs x 32 vCPUs flat out, NATS on, %.0f s window\n", secs);
      std::printf("%-40s %12.0f events/s   (NATS off: %.0f)\n", "kvmid", nt_on.events_per_s,
                  nt_off.events_per_s);
      std::printf("%-40s %12.0f records/s\n", "published, acked by JetStream",
                  n.published_per_s);
      std::printf("%-40s %12llu   (the stream holds %lld)\n", "acked over the run, drained",
                  (unsigned long long)n.published_total, (long long)n.stream_messages);
      std::printf("%-40s %12llu   (the publisher's bus queue was full)\n", "records dropped",
                  (unsigned long long)n.bus_dropped);
      std::printf("%-40s %12s   (peak %lld records, %llu dropped full)\n", "spool used",
                  n.spool_peak > 0 ? "yes" : "no", (long long)n.spool_peak,
                  (unsigned long long)n.spool_full);
      report["nats"] = {
        {"kvmid_1vcpu_off", to_json(n1_off.lat)},
        {"kvmid_1vcpu_on", to_json(n1_on.lat)},
        {"ratio_p50_1vcpu", n1_on.lat.p50_us / n1_off.lat.p50_us},
        {"ratio_p99_1vcpu", n1_on.lat.p99_us / n1_off.lat.p99_us},
        {"publisher_1vcpu", to_json(n1_on.nats)},
        {"kvmid_64vcpu_off", to_json(n64_off.lat)},
        {"kvmid_64vcpu_on", to_json(n64_on.lat)},
        {"ratio_p50_64vcpu", n64_on.lat.p50_us / n64_off.lat.p50_us},
        {"ratio_p99_64vcpu", n64_on.lat.p99_us / n64_off.lat.p99_us},
        {"publisher_64vcpu", to_json(n64_on.nats)},
        {"throughput",
         {{"vcpus", 128 * 32},
          {"kvmid_events_per_s_off", nt_off.events_per_s},
          {"kvmid_events_per_s_on", nt_on.events_per_s},
          {"publisher", to_json(n)}}}};
    } catch (const std::exception& e) {
      std::printf("nats run failed: %s\n", e.what());
      report["nats"] = {{"error", e.what()}};
    }
    std::fflush(stdout);
  }

  uint64_t bad = k1.violations + k1v7.violations + k64.violations + kt.violations + k1.hmis
                 + k1v7.hmis + k64.hmis + kt.hmis;
  for (auto* n : {&n1_off, &n1_on, &n64_off, &n64_on, &nt_off, &nt_on})
    bad += n->violations + n->hmis;
  std::printf("\ntargets (this machine)\n");
  // The goals of the performance work, each against its floor of this run.
  bool t1 = k1.lat.p50_us * 1e3 <= 1.3 * double(fu.p50);
  bool t2 = k1.lat.p99_us * 1e3 <= 2.0 * double(fu.p99);
  bool t64 = r64.lat.p50_us > 0 && k64.lat.p50_us <= 2.0 * r64.lat.p50_us;
  bool t3 = share >= 1.0;
  bool tcpu = kt.events > 0 && kt.cpu_us_per_event <= 2.0;
  bool t4 = mem.ok && mem.per_vcpu_kib() <= 1.5;
  bool t5 = mem.ok && mem.attach_s < 2.0;
  bool t6 = mem.ok && mem.scale_vms && mem.scale_attach_s < 5.0;
  if (want("latency")) {
    std::printf("  p50 <= 1.3x floor at 1 vCPU:           x%.2f  %s\n",
                k1.lat.p50_us * 1e3 / double(fu.p50), verdict(t1));
    std::printf("  p99 <= 2x floor at 1 vCPU:             x%.2f  %s\n",
                k1.lat.p99_us * 1e3 / double(fu.p99), verdict(t2));
    std::printf("    the raw responder, same runs:        p50 x%.2f, p99 x%.2f\n",
                r1.lat.p50_us * 1e3 / double(fu.p50), r1.lat.p99_us * 1e3 / double(fu.p99));
    std::printf("    kvmid with poll_us %lld:               p50 x%.2f, p99 x%.2f (%.1f us CPU/event)\n",
                static_cast<long long>(latency_poll.count()), k1p.lat.p50_us * 1e3 / double(fu.p50),
                k1p.lat.p99_us * 1e3 / double(fu.p99), k1p.cpu_us_per_event);
    std::printf("  p50 <= 2x raw responder at 64 vCPUs:   x%.2f  %s\n",
                r64.lat.p50_us > 0 ? k64.lat.p50_us / r64.lat.p50_us : 0, verdict(t64));
  }
  if (want("throughput")) {
    std::printf("  >= 100 %% of the raw responder:         %.0f %%  %s\n", share * 100,
                verdict(t3));
    std::printf("  <= 2 us of kvmid CPU per event:        %.2f us  %s\n", kt.cpu_us_per_event,
                verdict(tcpu));
  }
  if (want("memory")) {
    std::printf("  <= 1.5 KiB per idle vCPU:              %.2f KiB  %s\n", mem.per_vcpu_kib(),
                verdict(t4));
    std::printf("  10,000 vCPUs attached in < 2 s:        %.3f s  %s\n", mem.attach_s,
                verdict(t5));
    std::printf("  100,000 vCPUs attached in < 5 s:       %.3f s  %s\n", mem.scale_attach_s,
                verdict(t6));
  }
  // Publishing must not delay an event's reply: within 10 % of the same
  // run without it.
  bool tn50 = n1_off.lat.p50_us > 0 && n1_on.lat.p50_us <= 1.1 * n1_off.lat.p50_us;
  bool tn99 = n1_off.lat.p99_us > 0 && n1_on.lat.p99_us <= 1.1 * n1_off.lat.p99_us;
  if (want("nats") && n1_off.lat.p50_us > 0) {
    std::printf("  NATS on: p50 within 10 %% of off:      x%.2f  %s\n",
                n1_on.lat.p50_us / n1_off.lat.p50_us, verdict(tn50));
    std::printf("  NATS on: p99 within 10 %% of off:      x%.2f  %s\n",
                n1_on.lat.p99_us / n1_off.lat.p99_us, verdict(tn99));
  }
  std::printf("  invariant violations + HMIs seen by the simulator in kvmid runs: %llu\n",
              (unsigned long long)bad);
  report["targets"] = {{"p50_1vcpu", t1},     {"p99_1vcpu", t2},      {"p50_64vcpu", t64},
                       {"throughput", t3},     {"cpu_per_event", tcpu}, {"memory_per_vcpu", t4},
                       {"attach_10000", t5},    {"attach_100000", t6},
                       {"nats_p50_1vcpu", tn50}, {"nats_p99_1vcpu", tn99}};
  report["kvmid_violations_and_hmis"] = bad;

  if (want("latency")) {
    write_cdf(out_dir + "/floor_blocking.dat", blocking);
    write_cdf(out_dir + "/floor_uring.dat", uring);
    write_cdf(out_dir + "/kvmid_1vcpu.dat", k1.lat);
    write_cdf(out_dir + "/raw_1vcpu.dat", r1.lat);
    write_cdf(out_dir + "/kvmid_1vcpu_poll.dat", k1p.lat);
    write_cdf(out_dir + "/kvmid_64vcpu.dat", k64.lat);
    write_cdf(out_dir + "/raw_64vcpu.dat", r64.lat);
  }
  if (!(std::ofstream(out_dir + "/bench-results.json") << report.dump(2) << '\n')) {
    std::fprintf(stderr, "kvmid-bench: cannot write %s/bench-results.json\n", out_dir.c_str());
    return 2;
  }
  std::FILE* gp = want("latency") ? popen("gnuplot 2>/dev/null", "w") : nullptr;
  if (gp) {
    const char* d = out_dir.c_str();
    std::fprintf(gp,
                 "set terminal png size 900,500\nset output '%s/latency-cdf.png'\n"
                 "set logscale x\nset xlabel 'round trip (us)'\nset ylabel 'fraction'\n"
                 "set key bottom right\nset yrange [0:1.02]\nset termoption noenhanced\n"
                 "plot '%s/floor_blocking.dat' w l t 'floor blocking', "
                 "'%s/floor_uring.dat' w l t 'floor io_uring', "
                 "'%s/raw_1vcpu.dat' w l t 'raw responder via sim, 1 vCPU', "
                 "'%s/kvmid_1vcpu.dat' w l t 'kvmid via sim, 1 vCPU', "
                 "'%s/kvmid_1vcpu_poll.dat' w l t 'kvmid via sim, 1 vCPU, polling', "
                 "'%s/raw_64vcpu.dat' w l t 'raw responder via sim, 64 vCPUs', "
                 "'%s/kvmid_64vcpu.dat' w l t 'kvmid via sim, 64 vCPUs'\n",
                 d, d, d, d, d, d, d, d);
    pclose(gp);
  }
  std::printf("wrote %s/bench-results.json and %s/latency-cdf.png\n", out_dir.c_str(),
              out_dir.c_str());
  return bad == 0 ? 0 : 3;
}
