#include "bench/fleet.hpp"
#include "bench/floor.hpp"
#include "bench/policy.hpp"
#include "bench/raw_responder.hpp"

#include "actors/core.hpp"
#include "server/kvmi_rings.hpp"
#include "server/kvmi_session.hpp"
#include "server/reactor.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace bench {

namespace fs = std::filesystem;
namespace sim = kvmi::sim;
using namespace std::chrono_literals;

namespace {

struct tmpdir {
  fs::path p;
  tmpdir() {
    char t[] = "/tmp/kvmid-bench-XXXXXX";
    if (!mkdtemp(t))
      throw std::runtime_error("mkdtemp failed");
    p = t;
  }
  ~tmpdir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
};

const std::vector<uint8_t> cookie(32, 0x61);

kvmid::vm_policy bench_policy() {
  kvmid::vm_policy p;
  p.name = "bench";
  p.match = {"*"};
  p.hypercalls = false; // the raw responder does not enable them either
  p.msrs.push_back({"lstar", policy_msr});
  p.crs.push_back(*kvmid::parse_cr_pin("cr0.wp"));
  p.crs.push_back(*kvmid::parse_cr_pin("cr4.smep"));
  p.pages.push_back({"kernel-text", policy_text, uint64_t(policy_pages) * kvmi::page_size,
                     kvmi::page_access_r | kvmi::page_access_x, kvmid::pf_action::allow_once});
  return p;
}

// Every VM hooked and every vCPU with the policy's events on; polled
// cheaply (a per-batch predicate over 10,000 vCPUs costs more than the work).
bool configured(sim::host& h, uint32_t vms, std::chrono::milliseconds timeout,
                std::chrono::milliseconds poll = 5ms) {
  auto end = std::chrono::steady_clock::now() + timeout;
  uint32_t mask = policy_events();
  uint32_t from = 0;
  while (std::chrono::steady_clock::now() < end) {
    while (from < vms) {
      auto v = h.vm(from);
      bool ok = v.hooked && !v.vcpus.empty();
      for (auto& c : v.vcpus)
        ok = ok && (c.enabled_events & mask) == mask;
      if (!ok)
        break;
      ++from;
    }
    if (from == vms)
      return true;
    std::this_thread::sleep_for(poll);
  }
  return false;
}

uint64_t replies(const sim::report& r) {
  return r.total.replies[0] + r.total.replies[1] + r.total.replies[2];
}

uint64_t rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6));
  return 0;
}

struct cpu_seconds {
  double user = 0, system = 0;
};

// CPU seconds of this process's threads, but the simulator's (named
// kvmi-sim) and the calling one.
cpu_seconds introspector_cpu_s() {
  static const long ticks = ::sysconf(_SC_CLK_TCK);
  std::string self = std::to_string(::gettid());
  cpu_seconds s;
  std::error_code ec;
  for (auto& t : fs::directory_iterator("/proc/self/task", ec)) {
    auto tid = t.path().filename().string();
    std::string comm;
    std::getline(std::ifstream(t.path() / "comm"), comm);
    if (tid == self || comm.rfind("kvmi-sim", 0) == 0)
      continue;
    std::string stat;
    std::getline(std::ifstream(t.path() / "stat"), stat);
    auto close = stat.rfind(')');
    if (close == std::string::npos)
      continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) { // fields 14 and 15: utime, stime
      if (i == 14)
        utime = std::stoull(field);
      else if (i == 15)
        stime = std::stoull(field);
    }
    s.user += double(utime) / double(ticks);
    s.system += double(stime) / double(ticks);
  }
  return s;
}

void stop_pid(pid_t pid) {
  if (pid <= 0)
    return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    int st;
    if (::waitpid(pid, &st, WNOHANG) == pid)
      return;
    std::this_thread::sleep_for(10ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

} // namespace

fleet_run drive(target t, uint32_t vms, uint32_t vcpus, double rate, double seconds,
                unsigned sim_threads, const kvmid::nats_options* nats,
                std::chrono::microseconds poll) {
  tmpdir dir;
  std::string sock = (dir.p / "kvmi.sock").string();
  std::unique_ptr<kvmid::core> c;
  std::unique_ptr<kvmid::net::reactor> r;
  std::unique_ptr<kvmid::kvmi_rings> rings;
  std::unique_ptr<raw_responder> raw;
  std::unique_ptr<publishing> pub;
  bool v7 = t == target::kvmid_v7;
  // kvmid (or the raw responder) on every CPU but the first, the simulated
  // vCPUs on the first, as the floor's two ends (floor.hpp): left to the
  // scheduler, they shared a core in some runs, the NATS-on 1 vCPU round
  // trip then taking 6.7 us at p50 against 66 us with NATS off.
  {
    on_cpu introspector_side(1, true); // its threads keep it
    if (t != target::raw) {
      kvmid::core_options co;
      co.policies.policies.push_back(bench_policy());
      c = std::make_unique<kvmid::core>(co);
      kvmid::net::reactor_options ro;
      ro.spin = poll;
      r = std::make_unique<kvmid::net::reactor>(ro);
      kvmid::net::listen_spec s;
      s.path = sock;
      kvmid::kvmi_listener_options lo;
      lo.cookie = cookie;
      lo.max_handshakes = SIZE_MAX; // every VM connects at once; the cap is not measured here
      lo.proto = v7 ? kvmid::protocol::v7 : kvmid::protocol::v5;
      // KVMID_BENCH_RINGS=n: kvmid's sockets over n rings (kvmi_rings.hpp).
      const char* n = std::getenv("KVMID_BENCH_RINGS");
      rings = std::make_unique<kvmid::kvmi_rings>(*r, n ? std::strtoul(n, nullptr, 10) : 1, ro);
      rings->add_listener(s, *c, lo);
      if (nats)
        pub = std::make_unique<publishing>(*c, *nats, dir.p / "nats-spool");
      r->start();
      rings->start();
    } else {
      raw = std::make_unique<raw_responder>(sock, cookie);
    }
  }
  sim::options so;
  so.unix_path = sock;
  so.cookie = cookie;
  so.vms = vms;
  so.vcpus_per_vm = vcpus;
  so.workload.rate_per_vcpu = rate;
  // The simulated vCPUs run between exits, as real ones do, rather than
  // sleep through the microsecond a flat-out workload leaves (sim.hpp).
  so.workload.spin_below = 50us;
  so.threads = sim_threads;
  so.seed = 3;
  so.dialect = v7 ? sim::protocol::v7 : sim::protocol::v5;
  fleet_run out;
  on_cpu vcpu_side(0);
  {
    sim::host h(so);
    uint64_t t0 = now_ns();
    h.start();
    if (!configured(h, vms, 120s))
      throw std::runtime_error("bench: the fleet was not configured within 120 s");
    out.attach_s = double(now_ns() - t0) / 1e9;
    auto r0 = h.make_report();
    auto cpu0 = introspector_cpu_s();
    uint64_t p0 = pub ? pub->published() : 0;
    uint64_t w0 = now_ns();
    if (pub) {
      auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
      while (std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(50ms);
        pub->sample();
      }
    } else {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    }
    auto r1 = h.make_report();
    auto cpu1 = introspector_cpu_s();
    uint64_t p1 = pub ? pub->published() : 0;
    uint64_t w1 = now_ns();
    h.stop();
    if (pub)
      out.nats = pub->finish(p1 - p0, double(w1 - w0) / 1e9);
    out.events = replies(r1) - replies(r0);
    out.events_per_s = double(out.events) / (double(w1 - w0) / 1e9);
    if (out.events) {
      double sys = cpu1.system - cpu0.system;
      out.cpu_us_per_event = (cpu1.user - cpu0.user + sys) * 1e6 / double(out.events);
      out.kernel_us_per_event = sys * 1e6 / double(out.events);
    }
    out.lat = r1.event_latency;
    out.violations = r1.total.violation_count();
    out.hmis = r1.total.hmis;
  }
  raw.reset();
  pub.reset();
  if (r)
    r->stop();
  if (rings)
    rings->stop();
  c.reset();
  return out;
}

double memory_run::per_vm_kib() const {
  return vms ? double(int64_t(vms_kib) - int64_t(base_kib)) / vms : 0;
}
double memory_run::per_vcpu_kib() const {
  uint64_t extra = uint64_t(fleet_vms) * fleet_vcpus - vms;
  // The fleet also has fleet_vms - vms more VMs than the per-VM run.
  double vm_part = per_vm_kib() * (double(fleet_vms) - double(vms));
  return extra ? (double(int64_t(fleet_kib) - int64_t(vms_kib)) - vm_part) / double(extra) : 0;
}

memory_run measure_memory(const std::string& kvmid_bin, uint32_t vms, uint32_t fleet_vms,
                          uint32_t fleet_vcpus, uint32_t scale_vms, uint32_t scale_vcpus) {
  memory_run m;
  m.vms = vms;
  m.fleet_vms = fleet_vms;
  m.fleet_vcpus = fleet_vcpus;
  tmpdir dir;
  std::string sock = (dir.p / "kvmi.sock").string();
  std::ofstream(dir.p / "cookie", std::ios::binary) << std::string(cookie.begin(), cookie.end());
  fs::permissions(dir.p / "cookie", fs::perms::owner_read | fs::perms::owner_write);
  nlohmann::json cfg = {
    {"log_level", "warn"},
    {"cookie_file", (dir.p / "cookie").string()},
    {"state_dir", (dir.p / "state").string()},
    // Every VM connects at once: the handshake cap (64 by default) would
    // make most of them back off and retry, and that is not measured here.
    {"max_handshakes", 4096},
    {"listeners", nlohmann::json::array({{{"type", "unix"}, {"path", sock}}})},
    {"policies",
     nlohmann::json::array(
       {{{"name", "bench"},
         {"match", nlohmann::json::array({"*"})},
         {"hypercalls", false},
         {"page_protection", nlohmann::json::array({{{"name", "kernel-text"},
                                                     {"gpa", policy_text},
                                                     {"size", policy_pages * 4096},
                                                     {"access", "r-x"},
                                                     {"on_violation", "allow-once"}}})},
         {"msr_protection", nlohmann::json::array({{{"name", "lstar"}, {"msr", policy_msr}}})},
         {"cr_pins", nlohmann::json::array({"cr0.wp", "cr4.smep"})}}})}};
  std::ofstream(dir.p / "kvmid.json") << cfg.dump(2);

  // One kvmid per measurement, so each figure starts from the same heap.
  auto run = [&](uint32_t nvms, uint32_t nvcpus, double* attach,
                 memory_run* retries = nullptr) -> uint64_t {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    auto err = (dir.p / "kvmid.err").string();
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    std::string bin = kvmid_bin, flag = "--config", path = (dir.p / "kvmid.json").string();
    char* argv[] = {bin.data(), flag.data(), path.data(), nullptr};
    pid_t pid = -1;
    int rc = posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      throw std::runtime_error("cannot start " + kvmid_bin);
    for (int i = 0; i < 500 && !fs::exists(sock); ++i)
      std::this_thread::sleep_for(10ms);
    std::this_thread::sleep_for(300ms); // actor system and ring up
    uint64_t kib = 0;
    try {
      if (nvms == 0) {
        kib = rss_kib(pid);
      } else {
        sim::options so;
        so.unix_path = sock;
        so.cookie = cookie;
        so.vms = nvms;
        so.vcpus_per_vm = nvcpus;
        so.threads = 2;
        sim::host h(so);
        uint64_t t0 = now_ns();
        h.start();
        if (!configured(h, nvms, 300s))
          throw std::runtime_error("kvmid did not configure the fleet within 300 s");
        if (attach)
          *attach = double(now_ns() - t0) / 1e9;
        if (retries) {
          auto rep = h.make_report();
          retries->scale_reconnects = rep.total.reconnects;
          retries->scale_handshake_failures = rep.total.handshake_failures;
          retries->scale_connect_failures = rep.total.connect_failures;
        }
        std::this_thread::sleep_for(500ms); // idle: let the allocator settle
        kib = rss_kib(pid);
        h.stop();
      }
    } catch (...) {
      stop_pid(pid);
      throw;
    }
    stop_pid(pid);
    return kib;
  };
  try {
    // Each figure is the median of three kvmids: one RSS reading moves by
    // a megabyte or so from run to run (where the heap happens to split),
    // a tenth of a KiB per vCPU at this size.
    auto median3 = [&](uint32_t nvms, uint32_t nvcpus, double* attach) {
      std::array<uint64_t, 3> k{};
      std::array<double, 3> a{};
      for (size_t i = 0; i < k.size(); ++i)
        k[i] = run(nvms, nvcpus, attach ? &a[i] : nullptr);
      std::sort(k.begin(), k.end());
      std::sort(a.begin(), a.end());
      if (attach)
        *attach = a[1];
      return k[1];
    };
    m.base_kib = run(0, 0, nullptr);
    m.vms_kib = median3(vms, 1, nullptr);
    m.fleet_kib = median3(fleet_vms, fleet_vcpus, &m.attach_s);
    if (scale_vms) {
      m.scale_vms = scale_vms;
      m.scale_vcpus = scale_vcpus;
      m.scale_kib = run(scale_vms, scale_vcpus, &m.scale_attach_s, &m);
    }
    m.ok = true;
  } catch (const std::exception& e) {
    m.error = e.what();
  }
  return m;
}

} // namespace bench
