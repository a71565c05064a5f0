// kvmi-sim: run many simulated VMs against an introspector, print a JSON
// report at the end, exit non-zero on any protocol violation or HMI, and
// when no VM ever got a session (cannot connect, or every handshake failed).
#include "kvmid_version.hpp"
#include "kernel-patches/sim/cookie_file.hpp"
#include "kernel-patches/sim/sim.hpp"

#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

namespace {

std::atomic<bool> interrupted{false};

void usage() {
  std::fputs(
    "usage: kvmi-sim (--unix PATH | --tcp HOST:PORT) [options]\n"
    "  --vms N --vcpus N --seed N --threads N\n"
    "  --cookie HEX | --cookie-file PATH   the VM secret (HMAC key): 16..4096 bytes,\n"
    "                                      a file's bytes exactly (docs/cookie.md);\n"
    "                                      v7: QEMU's secret, optional (none: any hash)\n"
    "  --protocol v5|v7                    the kernel's KVMI dialect (v5)\n"
    "  --qemu-hello plain|max-gpa|e820     v7: what QEMU appends to its 96-byte struct\n"
    "  --name PATTERN                      VM names, %d = the VM's index (sim-vm-%d)\n"
    "  --handshake kvmi|qemu-v5            --swapped (other byte order)\n"
    "  --ram MiB --gpu GiB[@online_ms|@never] (repeatable)\n"
    "  --rate N (guest actions/s per vCPU; 0 = scripted only) --duration S\n"
    "  --spin-us N (waits for the next guest action shorter than N us are\n"
    "              spun through, as a vCPU runs between exits; 0)\n"
    "  --page-walks (accesses write the accessed bit into the page table at CR3)\n"
    "  --scenario FILE (JSON steps; runs after all VMs are hooked)\n"
    "  --allow-commands MASK --allow-events MASK\n"
    "  --fault-drop P --fault-torn P --fault-garbage P --fault-dup-reply P\n"
    "  --fault-unknown-seq P --fault-slow P[@ms] --fault-bad-mac P\n"
    "  --reconnect-storm MS --reconnect-drain MS --hotplug-storm MS --no-reconnect\n"
    "  --reconnect-max MS (failed connects back off up to this; 2000)\n"
    "  --progress MS --report FILE\n",
    stderr);
}

// A VM name pattern: one %d (the VM's index) and no other %.
bool valid_name_pattern(const std::string& p) {
  auto at = p.find('%');
  return at != std::string::npos && p.compare(at, 2, "%d") == 0 &&
         p.find('%', at + 2) == std::string::npos;
}

// Why no VM ever got a session, or empty when one did.
std::string no_session_reason(const kvmi::sim::report& r, const kvmi::sim::options& o) {
  if (r.vms == 0 || r.total.sessions > 0)
    return {};
  if (r.total.handshake_failures > 0)
    return std::to_string(r.total.handshake_failures) +
           (o.dialect == kvmi::sim::protocol::v7 ? " handshake failures (cookie hash mismatch: wrong cookie?)"
                                      : " handshake failures (MAC mismatch: wrong cookie?)");
  std::string target = o.unix_path;
  if (target.empty())
    target.append(o.tcp_host).append(":").append(std::to_string(o.tcp_port));
  std::string reason = "cannot connect to ";
  reason.append(target).append(": ");
  reason.append(r.connect_error.empty() ? "no answer" : r.connect_error);
  return reason;
}

} // namespace

int main(int argc, char** argv) {
  if (kvmid::version_requested(argc, argv, "kvmi-sim"))
    return 0;
  using namespace kvmi::sim;
  options o;
  double duration = 10;
  std::string scenario_file, report_file;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc)
          throw std::invalid_argument("missing value for " + a);
        return argv[++i];
      };
      auto prob = [&]() { return std::stod(next()); };
      if (a == "--unix") o.unix_path = next();
      else if (a == "--tcp") {
        auto hp = next();
        auto c = hp.rfind(':');
        if (c == std::string::npos)
          throw std::invalid_argument("--tcp wants HOST:PORT");
        o.unix_path.clear();
        o.tcp_host = hp.substr(0, c);
        o.tcp_port = static_cast<uint16_t>(std::stoul(hp.substr(c + 1)));
      } else if (a == "--vms") o.vms = static_cast<uint32_t>(std::stoul(next()));
      else if (a == "--vcpus") o.vcpus_per_vm = static_cast<uint32_t>(std::stoul(next()));
      else if (a == "--seed") o.seed = std::stoull(next());
      else if (a == "--threads") o.threads = static_cast<unsigned>(std::stoul(next()));
      else if (a == "--cookie" || a == "--cookie-file") {
        auto c = a == "--cookie" ? cookie_from_hex(next()) : read_cookie_file(next());
        if (!c.error.empty())
          throw std::invalid_argument(c.error);
        o.cookie = std::move(c.bytes);
      } else if (a == "--name") {
        o.name_format = next();
        if (!valid_name_pattern(o.name_format))
          throw std::invalid_argument("--name wants one %d (the VM's index), e.g. web-%d");
      } else if (a == "--handshake") {
        auto m = next();
        if (m == "kvmi") o.handshake = kvmi::hs::mode::kvmi;
        else if (m == "qemu-v5") o.handshake = kvmi::hs::mode::qemu_v5;
        else throw std::invalid_argument("--handshake kvmi|qemu-v5");
      } else if (a == "--protocol") {
        auto p = next();
        if (p == "v5") o.dialect = protocol::v5;
        else if (p == "v7") o.dialect = protocol::v7;
        else throw std::invalid_argument("--protocol v5|v7");
      } else if (a == "--qemu-hello") {
        auto h = next();
        if (h == "plain") o.v7_hello = qemu_v7_hello::plain;
        else if (h == "max-gpa") o.v7_hello = qemu_v7_hello::max_gpa;
        else if (h == "e820") o.v7_hello = qemu_v7_hello::e820;
        else throw std::invalid_argument("--qemu-hello plain|max-gpa|e820");
      } else if (a == "--swapped") o.order = kvmi::byte_order::swapped;
      else if (a == "--ram") o.memory.ram_size = std::stoull(next()) << 20;
      else if (a == "--gpu") {
        auto g = next();
        gpu_spec s;
        auto at = g.find('@');
        s.ram_size = std::stoull(g.substr(0, at)) << 30;
        if (at != std::string::npos) {
          auto when = g.substr(at + 1);
          if (when == "never") s.online_after.reset();
          else s.online_after = ms{std::stoll(when)};
        }
        o.memory.gpus.push_back(s);
      } else if (a == "--rate") o.workload.rate_per_vcpu = std::stod(next());
      else if (a == "--duration") duration = std::stod(next());
      else if (a == "--spin-us") {
        o.workload.spin_below = us{std::stoll(next())};
        if (o.workload.spin_below.count() < 0)
          throw std::invalid_argument("--spin-us wants 0 or more microseconds");
      }
      else if (a == "--page-walks") o.workload.page_walks = true;
      else if (a == "--scenario") scenario_file = next();
      else if (a == "--allow-commands") o.allowed_commands = static_cast<uint32_t>(std::stoul(next(), nullptr, 0));
      else if (a == "--allow-events") o.allowed_events = static_cast<uint32_t>(std::stoul(next(), nullptr, 0));
      else if (a == "--fault-drop") o.faults.drop_mid_frame = prob();
      else if (a == "--fault-torn") o.faults.torn_frames = prob();
      else if (a == "--fault-garbage") o.faults.garbage = prob();
      else if (a == "--fault-dup-reply") o.faults.duplicate_reply = prob();
      else if (a == "--fault-unknown-seq") o.faults.unknown_seq_reply = prob();
      else if (a == "--fault-slow") {
        auto s = next();
        auto at = s.find('@');
        o.faults.slow_reply_fraction = std::stod(s.substr(0, at));
        if (at != std::string::npos)
          o.faults.slow_reply_delay = ms{std::stoll(s.substr(at + 1))};
      } else if (a == "--fault-bad-mac") o.faults.bad_mac = prob();
      else if (a == "--reconnect-storm") o.faults.reconnect_storm_every = ms{std::stoll(next())};
      else if (a == "--reconnect-drain") o.faults.reconnect_drain = ms{std::stoll(next())};
      else if (a == "--hotplug-storm") o.faults.hotplug_storm_every = ms{std::stoll(next())};
      else if (a == "--no-reconnect") o.reconnect = false;
      else if (a == "--reconnect-max") o.reconnect_delay_max = ms{std::stoll(next())};
      else if (a == "--progress") o.progress_every = ms{std::stoll(next())};
      else if (a == "--report") report_file = next();
      else if (a == "-h" || a == "--help") {
        usage();
        return 0;
      } else
        throw std::invalid_argument("unknown option " + a);
    }
    if (o.unix_path.empty() && o.tcp_port == 0)
      throw std::invalid_argument("need --unix PATH or --tcp HOST:PORT");
    if (o.cookie.empty() && o.dialect == protocol::v5)
      throw std::invalid_argument("need --cookie HEX or --cookie-file PATH (the VM's secret)");
    if (o.dialect == protocol::v7 && (o.handshake != kvmi::hs::mode::kvmi || o.order != kvmi::byte_order::native))
      throw std::invalid_argument("--handshake and --swapped are v5's: v7 has QEMU's handshake, native order");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvmi-sim: %s\n", e.what());
    usage();
    return 2;
  }

  std::signal(SIGINT, [](int) { interrupted = true; });
  std::signal(SIGTERM, [](int) { interrupted = true; });
  std::signal(SIGPIPE, SIG_IGN);

  bool scenario_failed = false;
  nlohmann::json scenario_results;
  try {
    host h(o);
    h.start();
    if (!scenario_file.empty()) {
      std::ifstream f(scenario_file);
      auto sc = nlohmann::json::parse(f);
      h.wait_until(
        [&] {
          for (uint32_t v = 0; v < h.vm_count(); ++v)
            if (!h.hooked(v))
              return false;
          return true;
        },
        ms{10000});
      scenario_results = h.run_scenario(sc);
      for (auto& r : scenario_results)
        if (r.value("failed", false))
          scenario_failed = true;
    } else {
      auto end = std::chrono::steady_clock::now() +
                 std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                   std::chrono::duration<double>(duration));
      while (!interrupted && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(ms{50});
    }
    h.stop();
    auto r = h.make_report();
    auto j = to_json(r);
    if (!scenario_file.empty())
      j["scenario"] = scenario_results;
    auto no_session = no_session_reason(r, o);
    if (!no_session.empty()) {
      j["ok"] = false;
      j["error"] = no_session;
    }
    auto text = j.dump(2);
    if (!report_file.empty())
      std::ofstream(report_file) << text << "\n";
    std::cout << text << std::endl;
    if (!no_session.empty())
      std::fprintf(stderr, "kvmi-sim: %s\n", no_session.c_str());
    return r.ok() && !scenario_failed && no_session.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvmi-sim: %s\n", e.what());
    return 2;
  }
}
