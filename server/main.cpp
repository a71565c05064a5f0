// kvmid: the KVMI introspection daemon.
//   kvmid --config config/kvmid.json
//   kvmid --simulate 4x4 --duration 10     (an in-process kvmi-sim fleet)
#include "actors/core.hpp"
#include "actors/log.hpp"
#include "server/config.hpp"
#include "server/dialect/dialect.hpp"
#include "server/instance_lock.hpp"
#include "server/kvmi_rings.hpp"
#include "server/kvmi_session.hpp"
#include "server/reactor.hpp"
#include "server/shutdown.hpp"
#include "server/systemd_notify.hpp"

#include "kvmid_version.hpp"

#ifdef KVMID_HAVE_CONTROL
#include "server/check_config.hpp"
#include "server/control/api.hpp"
#include "server/nats/jetstream_publisher.hpp"
#include "server/nats/nats_api.hpp"
#include "server/nats/nats_link.hpp"
#endif
#ifdef KVMID_HAVE_SIM
#include "kernel-patches/sim/sim.hpp"
#include <nlohmann/json.hpp>
#endif

#include <openssl/rand.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>

using namespace kvmid;

namespace {

void usage(FILE* f) {
  std::fprintf(f,
               "usage: kvmid [--config FILE] [--log-level error|warn|info|debug]\n"
               "             [--simulate VMSxVCPUS] [--duration SECONDS]\n"
               "       kvmid --check-config FILE | --version\n"
               "  --config FILE        JSON config (see config/kvmid.json)\n"
               "  --check-config FILE  validate FILE, print it with every default filled in;\n"
               "                       exit 0 if kvmid would start with it, 1 if not\n"
               "  --simulate 4x4       run kvmi-sim in-process against kvmid's own socket\n"
               "  --duration SECONDS   exit cleanly after this time, printing a final summary\n");
}

// The fleet summary: VMs, vCPUs, events/s by kind, alerts.
struct summary {
  std::array<uint64_t, kvmi::num_events> last{};
  uint64_t last_alerts = 0;
  std::chrono::steady_clock::time_point last_t = std::chrono::steady_clock::now();

  static uint64_t alerts(const std::vector<metric_family>& fams) {
    uint64_t n = 0;
    for (auto& f : fams)
      if (f.name == "kvmid_alerts_total")
        for (auto& s : f.samples)
          n += uint64_t(s.value);
    return n;
  }

  std::array<uint64_t, kvmi::num_events> first{};
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();

  std::string line(core& c, bool final) {
    auto fams = c.metrics().snapshot();
    int64_t vms = 0, vcpus = 0;
    std::map<std::string, uint64_t> ev;
    for (auto& f : fams) {
      if (f.name == "kvmid_vms" && !f.samples.empty())
        vms = int64_t(f.samples[0].value);
      if (f.name == "kvmid_vcpus" && !f.samples.empty())
        vcpus = int64_t(f.samples[0].value);
      if (f.name == "kvmid_events_total")
        for (auto& s : f.samples)
          ev[s.lbls.empty() ? "" : s.lbls[0].second] = uint64_t(s.value);
    }
    auto now = std::chrono::steady_clock::now();
    double dt = std::chrono::duration<double>(now - (final ? t0 : last_t)).count();
    last_t = now;
    std::string out = std::string(final ? "final: " : "") + std::to_string(vms) + " VMs, "
                      + std::to_string(vcpus) + " vCPUs | events/s";
    uint64_t total = 0;
    for (uint32_t e = 0; e < kvmi::num_events; ++e) {
      auto nm = std::string(kvmi::name(static_cast<kvmi::event_id>(e)));
      uint64_t v = ev[nm];
      total += v;
      uint64_t d = v - (final ? first[e] : last[e]);
      last[e] = v;
      if (d > 0 && dt > 0) {
        char b[64];
        std::snprintf(b, sizeof b, " %s %.0f", nm.c_str(), double(d) / dt);
        out += b;
      }
    }
    uint64_t a = alerts(fams);
    if (final)
      out += " | alerts " + std::to_string(a) + " | events " + std::to_string(total);
    else
      out += " | alerts +" + std::to_string(a - last_alerts) + " (total " + std::to_string(a)
             + ") | events total " + std::to_string(total);
    last_alerts = a;
    return out;
  }
};

// SIGHUP re-reads the policies, as POST /v1/policies/reload does; a bad
// file keeps the policies in force.
void reload_on_hup(core& c) {
  systemd::reloading();
  struct ready_again {
    ~ready_again() { systemd::ready(); } // the old policies or the new: serving either way
  } serving_after;
  auto answer = std::make_shared<std::promise<api_result<done>>>();
  auto f = answer->get_future();
  c.api().reload_policies([answer](api_result<done> r) { answer->set_value(std::move(r)); });
  if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    std::fprintf(stderr, "kvmid: SIGHUP: policy reload gave no answer within 10 s\n");
    return;
  }
  auto r = f.get();
  if (r.ok())
    std::fprintf(stderr, "kvmid: SIGHUP: policies reloaded\n");
  else
    std::fprintf(stderr, "kvmid: SIGHUP: policy reload failed, the old policies stay: %s\n",
                 r.error().message.c_str());
}

std::vector<uint8_t> random_cookie() {
  std::vector<uint8_t> c(32);
  RAND_bytes(c.data(), int(c.size()));
  return c;
}

#ifdef KVMID_HAVE_SIM
// The demo policy --simulate uses without a config: protect what the
// simulated guest touches, so every policy path shows in the summary.
policy_set demo_policies() {
  policy_set ps;
  vm_policy p;
  p.name = "demo";
  p.match = {"*"};
  kvmi::sim::workload_spec w;
  p.pages.push_back({"kernel-text", w.hot_gpa, uint64_t(w.hot_pages / 2) * kvmi::page_size,
                     kvmi::page_access_r | kvmi::page_access_x, pf_action::allow_once});
  p.msrs.push_back({"lstar", 0xc0000082});
  p.msrs.push_back({"sysenter-eip", 0x176});
  for (auto n : {"cr0.wp", "cr4.smep", "cr4.smap"})
    p.crs.push_back(*parse_cr_pin(n));
  ps.policies.push_back(p);
  return ps;
}
#endif

} // namespace

int main(int argc, char** argv) {
  std::string config_path, check_path, level_arg, simulate;
  double duration = 0;
  bool impatient_unhook = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvmid: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--config" || a == "-c")
      config_path = next();
    else if (a == "--check-config")
      check_path = next();
    else if (a == "--log-level")
      level_arg = next();
    else if (a == "--simulate")
      simulate = next();
    else if (a == "--simulate-impatient-unhook") // a test hook, see below; not in usage()
      impatient_unhook = true;
    else if (a == "--duration") {
      auto s = next();
      char* end = nullptr;
      duration = std::strtod(s.c_str(), &end);
      if (*end || duration <= 0) {
        std::fprintf(stderr, "kvmid: --duration must be a positive number of seconds\n");
        return 2;
      }
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else if (a == "--version") {
      print_version("kvmid");
      return 0;
    } else {
      std::fprintf(stderr, "kvmid: unknown argument %s\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }
  if (!check_path.empty()) {
#ifdef KVMID_HAVE_CONTROL
    return check_config(check_path, stdout, stderr);
#else
    std::fprintf(stderr, "kvmid: built without the control plane; --check-config is unavailable\n");
    return 2;
#endif
  }
  uint32_t sim_vms = 0, sim_vcpus = 0;
  if (!simulate.empty()) {
#ifndef KVMID_HAVE_SIM
    std::fprintf(stderr, "kvmid: built without kvmi-sim; --simulate is unavailable\n");
    return 2;
#else
    if (std::sscanf(simulate.c_str(), "%ux%u", &sim_vms, &sim_vcpus) != 2 || sim_vms == 0
        || sim_vcpus == 0 || sim_vms > 4096 || sim_vcpus > 1024) {
      std::fprintf(stderr, "kvmid: --simulate wants VMSxVCPUS, e.g. 4x4\n");
      return 2;
    }
#endif
  }
  if (config_path.empty() && simulate.empty()) {
    std::fprintf(stderr, "kvmid: --config FILE is required (or --simulate VMSxVCPUS)\n");
    usage(stderr);
    return 2;
  }

  std::fprintf(stderr, "kvmid: version %.*s (%.*s) starting\n", int(build_version.size()),
               build_version.data(), int(build_type.size()), build_type.data());
  config cfg;
  std::vector<std::vector<uint8_t>> cookies;
  std::filesystem::path tmpdir;
  try {
    if (!config_path.empty()) {
      cfg = load_config(config_path);
      std::vector<uint8_t> def;
      if (!cfg.cookie_file.empty())
        def = read_cookie(cfg.cookie_file, cfg.file, "/cookie_file");
      for (size_t i = 0; i < cfg.listeners.size(); ++i)
        cookies.push_back(cfg.listeners[i].cookie_file.empty()
                            ? def
                            : read_cookie(cfg.listeners[i].cookie_file, cfg.file,
                                          "/listeners/" + std::to_string(i) + "/cookie_file"));
    } else {
      // --simulate alone: a private socket and a random cookie.
      char tmpl[] = "/tmp/kvmid-sim-XXXXXX";
      if (!mkdtemp(tmpl)) {
        std::perror("kvmid: mkdtemp");
        return 1;
      }
      tmpdir = tmpl;
      cfg.file = "(built-in --simulate config)";
      kvmi_listener_config l;
      l.spec.type = net::listen_spec::kind::unix_socket;
      l.spec.path = (tmpdir / "kvmi.sock").string();
      cfg.listeners.push_back(l);
      cookies.push_back(random_cookie());
#ifdef KVMID_HAVE_SIM
      cfg.policies = demo_policies();
#endif
    }
  } catch (const config_error& e) {
    std::fprintf(stderr, "kvmid: bad config %s\n", e.what());
    return 1;
  }
  if (!level_arg.empty()) {
    auto l = parse_log_level(level_arg);
    if (!l) {
      std::fprintf(stderr, "kvmid: --log-level must be error, warn, info or debug\n");
      return 2;
    }
    cfg.level = *l;
  }
  log_verbosity.store(int(cfg.level));
  if (cfg.handshake == kvmi::hs::mode::qemu_v5)
    std::fprintf(stderr, "kvmid: WARNING: qemu-v5 handshake: only the tool is authenticated "
                         "and the exchange can be replayed\n");

  // Signals are taken synchronously by the main thread only.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  instance_lock state_lock; // one kvmid per state directory
  std::string state_dir;    // where the state is kept; empty: nowhere
  core_options co;
  co.worker_threads = cfg.workers;
  co.policies = cfg.policies;
  co.command_timeout = cfg.command_timeout;
  co.max_setups = cfg.max_setups;
  {
    // An explicit state_dir must work; the default may be unavailable to an
    // unprivileged kvmid, which then keeps the record in memory only.
    bool explicit_dir = !cfg.state_dir.empty() || !tmpdir.empty();
    std::string dir = cfg.state_dir;
    if (dir.empty() && !tmpdir.empty())
      dir = (tmpdir / "state").string();
    if (dir.empty())
      dir = default_state_dir();
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec && !explicit_dir) {
      std::fprintf(stderr, "kvmid: WARNING: state directory %s: %s; planted breakpoints will not "
                           "survive a restart (set state_dir)\n",
                   dir.c_str(), ec.message().c_str());
    } else {
      auto lk = instance_lock::acquire((std::filesystem::path(dir) / "kvmid.lock").string(),
                                       "state directory " + dir);
      if (auto* why = std::get_if<lock_error>(&lk)) {
        std::fprintf(stderr, "kvmid: %s\n", why->message.c_str());
        return 1;
      }
      state_lock = std::move(std::get<instance_lock>(lk));
      try {
        co.planted = load_planted(dir);
        co.state_dir = dir;
        state_dir = dir;
      } catch (const state_error& e) {
        std::fprintf(stderr, "kvmid: bad state file %s\n", e.what());
        return 1;
      }
    }
  }
  if (!config_path.empty())
    co.reload = [path = config_path](std::string& err) -> std::optional<policy_set> {
      try {
        return load_config(path).policies;
      } catch (const config_error& e) {
        err = e.what();
        return std::nullopt;
      }
    };
  int rc = 0;
  {
    // The core goes before the reactor: a VM actor still finishing past the
    // shutdown bound may take a send buffer from the reactor or post to it.
    auto the_core = std::make_unique<core>(co);
    core& c = *the_core;
    std::string protocols; // the KVMI dialects this build speaks, "v5,v7"
    for (auto p : all_protocols) {
      if (!protocols.empty())
        protocols += ',';
      protocols += name(p);
    }
    c.metrics()
      .get_gauge("kvmid_build_info",
                 "The running kvmid's version and the KVMI dialects it speaks (always 1)",
                 {{"version", std::string(build_version)}, {"protocols", protocols}})
      .set(1);
    net::reactor_options ro;
    ro.send_queue_limit = cfg.send_queue_limit;
    ro.spin = cfg.poll;
    ro.heartbeat = systemd::watchdog_period();
    ro.on_heartbeat = systemd::watchdog;
    c.metrics().declare("kvmid_accept_errors_total", "Failed accepts on any listener, by errno",
                        metric_type::counter);
    ro.on_accept_error = [&c](int err) {
      const char* n = strerrorname_np(err);
      c.metrics()
        .get_counter("kvmid_accept_errors_total", "Failed accepts on any listener, by errno",
                     {{"errno", n ? n : std::to_string(err)}})
        .inc();
    };
    // The extra KVMI rings feed the watchdog through the main ring's
    // heartbeat: kvmid is alive when every ring turns.
    std::unique_ptr<kvmi_rings> rings;
    if (ro.heartbeat.count() > 0)
      ro.on_heartbeat = [&rings, period = ro.heartbeat] {
        if (!rings || rings->alive(3 * period))
          systemd::watchdog();
      };
    net::reactor r(ro);
    size_t ring_count =
      cfg.rings ? cfg.rings : default_kvmi_rings(std::thread::hardware_concurrency());
    try {
      rings = std::make_unique<kvmi_rings>(r, ring_count, ro);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvmid: cannot start %zu KVMI rings (config /rings): %s\n", ring_count,
                   e.what());
      return 1;
    }
    auto gate = std::make_shared<handshake_gate>(cfg.max_handshakes);
    std::string sim_target;
    try {
      for (size_t i = 0; i < cfg.listeners.size(); ++i) {
        kvmi_listener_options lo;
        lo.cookie = cookies[i];
        lo.mode = cfg.handshake;
        lo.proto = cfg.listeners[i].proto;
        lo.v7_layout = cfg.listeners[i].v7_layout;
        lo.handshake_timeout = cfg.handshake_timeout;
        lo.gate = gate;
        int li = rings->add_listener(cfg.listeners[i].spec, c, lo);
        auto sp = cfg.listeners[i].spec;
        if (sp.type == net::listen_spec::kind::tcp)
          sp.port = r.bound_port(li); // the port really bound when 0 was asked for
        std::fprintf(stderr, "kvmid: KVMI %s listening on %s\n", name(lo.proto).data(),
                     sp.describe().c_str());
        if (sim_target.empty() && sp.type == net::listen_spec::kind::unix_socket)
          sim_target = sp.path;
        else if (sim_target.empty() && sp.type == net::listen_spec::kind::tcp)
          sim_target = "tcp:" + std::to_string(r.bound_port(li));
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kvmid: cannot listen: %s\n", e.what());
      return 1;
    }
#ifdef KVMID_HAVE_CONTROL
    std::unique_ptr<control::core_backend> backend;
    std::unique_ptr<control::http_api> api;
    if (cfg.api) {
      auto o = control::parse_api_options(*cfg.api);
      if (auto* err = std::get_if<std::string>(&o)) {
        std::fprintf(stderr, "kvmid: bad config %s: /api: %s\n", cfg.file.c_str(), err->c_str());
        return 1;
      }
      auto& ao = std::get<control::api_options>(o);
      std::optional<control::token_auth> token;
      try {
        token.emplace(control::token_auth::from_file(ao.token_file));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "kvmid: bad config %s: /api/token_file: %s\n", cfg.file.c_str(), e.what());
        return 1;
      }
      try {
        backend = std::make_unique<control::core_backend>(c);
        std::optional<control::token_auth> read_token;
        if (!ao.read_token_file.empty())
          read_token = control::token_auth::from_file(ao.read_token_file);
        control::api_access access(std::move(*token), std::move(read_token));
        api = std::make_unique<control::http_api>(*backend, std::move(access), ao,
                                                  control::reactor_poster(r));
        for (auto l : ao.listen) {
          int li = r.add_listener(l, api->factory(l));
          if (l.type == net::listen_spec::kind::tcp)
            l.port = r.bound_port(li);
          bool https = ao.tls && l.type == net::listen_spec::kind::tcp;
          std::fprintf(stderr, "kvmid: API listening on %s%s\n", l.describe().c_str(),
                       https ? " (HTTPS)" : "");
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "kvmid: control plane: %s\n", e.what());
        return 1;
      }
    }
    // NATS: the publisher spools in the state directory; the API needs the
    // HTTP API's handlers.
    std::unique_ptr<nats_link> nats;
    std::unique_ptr<jetstream_publisher> publisher;
    std::unique_ptr<nats_api> nats_control;
    if (cfg.nats.enabled) {
      if (state_dir.empty()) {
        std::fprintf(stderr, "kvmid: bad config %s: /nats: the spool needs a usable state_dir\n",
                     cfg.file.c_str());
        return 1;
      }
      auto sp = spool::open(std::filesystem::path(state_dir) / "nats-spool", cfg.nats.spool_records);
      if (auto* err = std::get_if<std::string>(&sp)) {
        std::fprintf(stderr, "kvmid: nats: %s\n", err->c_str());
        return 1;
      }
      auto l = nats_link::connect(cfg.nats);
      if (auto* err = std::get_if<std::string>(&l)) {
        std::fprintf(stderr, "kvmid: bad config %s: %s\n", cfg.file.c_str(), err->c_str());
        return 1;
      }
      nats = std::move(std::get<std::unique_ptr<nats_link>>(l));
      try {
        publisher = std::make_unique<jetstream_publisher>(*nats, c.bus(), c.metrics(), cfg.nats,
                                                          std::move(std::get<spool>(sp)));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "kvmid: nats: %s\n", e.what());
        return 1;
      }
      std::fprintf(stderr, "kvmid: nats: publishing to stream %s as %s.%s.*\n",
                   cfg.nats.stream.c_str(), cfg.nats.record_subject_root().c_str(),
                   cfg.nats.host.c_str());
      if (cfg.nats.api && !api) {
        std::fprintf(stderr, "kvmid: nats: no API over NATS without an \"api\" section\n");
      } else if (cfg.nats.api) {
        auto na = nats_api::start(*nats, *api, cfg.nats);
        if (auto* err = std::get_if<std::string>(&na)) {
          std::fprintf(stderr, "kvmid: nats: %s\n", err->c_str());
          return 1;
        }
        nats_control = std::move(std::get<std::unique_ptr<nats_api>>(na));
      }
    }
#endif
    r.start();
    rings->start();
    if (ring_count > 1)
      std::fprintf(stderr, "kvmid: %zu rings serve the KVMI sockets\n", ring_count);
    if (!r.multishot())
      std::fprintf(stderr, "kvmid: multishot recv unavailable, using plain recv\n");
    systemd::ready(); // every KVMI and API listener is bound and listening

#ifdef KVMID_HAVE_SIM
    std::unique_ptr<kvmi::sim::host> sim;
    if (sim_vms) {
      if (sim_target.empty()) {
        std::fprintf(stderr, "kvmid: --simulate needs a unix or tcp listener\n");
        return 1;
      }
      kvmi::sim::options so;
      if (sim_target.rfind("tcp:", 0) == 0)
        so.tcp_port = uint16_t(std::stoi(sim_target.substr(4)));
      else
        so.unix_path = sim_target;
      so.vms = sim_vms;
      so.vcpus_per_vm = sim_vcpus;
      so.cookie = cookies[0];
      so.handshake = cfg.handshake;
      so.workload.rate_per_vcpu = 50;
      so.threads = 1;
      if (impatient_unhook)
        so.unhook_timeout = kvmi::sim::ms(0);
      sim = std::make_unique<kvmi::sim::host>(so);
      sim->start();
      if (impatient_unhook) {
        // A host that gives no time for UNHOOK: the simulator records an
        // unhook_timeout violation, so the tests can see that a violation
        // makes the exit code non-zero. Asked once kvmid has enabled the
        // UNHOOK event (else the host just closes).
        bool enabled = sim->wait_until(
          [&] { return sim->vm(0).c.commands.count("control_vm_events") > 0; },
          kvmi::sim::ms(30000));
        if (enabled)
          sim->request_unhook(0);
      }
      std::fprintf(stderr, "kvmid: simulating %u VMs x %u vCPUs\n", sim_vms, sim_vcpus);
    }
#endif

    summary sum;
    auto start = std::chrono::steady_clock::now();
    bool print = cfg.level >= log_level::info;
    while (true) {
      timespec ts{1, 0};
      int sig = sigtimedwait(&sigs, nullptr, &ts);
      if (sig == SIGINT || sig == SIGTERM) {
        std::fprintf(stderr, "kvmid: signal %d, shutting down\n", sig);
        break;
      }
      if (sig == SIGHUP)
        reload_on_hup(c);
      c.metrics()
        .get_gauge("kvmid_send_queue_depth", "Messages queued for sending on all KVMI sockets")
        .set(int64_t(rings->queued_total()));
      for (size_t i = 0; i < rings->count(); ++i)
        c.metrics()
          .get_gauge("kvmid_ring_connections",
                     "Sockets each io_uring ring serves (ring 0 also the API's)",
                     {{"ring", std::to_string(i)}})
          .set(int64_t(rings->connections(i)));
      if (print)
        std::printf("kvmid: %s\n", sum.line(c, false).c_str());
      std::fflush(stdout);
      if (duration > 0
          && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
               >= duration)
        break;
    }
    systemd::stopping();
    // Nothing of kvmid's stays in a guest once it is gone.
    if (!unhook_for_shutdown(c, cfg.shutdown_timeout))
      rc = 4;
    std::printf("kvmid: %s\n", sum.line(c, true).c_str());
#ifdef KVMID_HAVE_SIM
    if (sim) {
      auto rep = sim->make_report();
      sim->stop();
      std::printf("kvmid: simulator: %u VMs, %u vCPUs, %llu sessions, %llu protocol "
                  "violations, %llu HMIs, event->reply p50 %.1f us p99 %.1f us\n",
                  rep.vms, rep.vcpus, (unsigned long long)rep.total.sessions,
                  (unsigned long long)rep.total.violation_count(),
                  (unsigned long long)rep.total.hmis, rep.event_latency.p50_us,
                  rep.event_latency.p99_us);
      if (!rep.ok())
        rc = 3;
    }
#endif
    std::fflush(stdout);
    r.stop();
    rings->stop();
#ifdef KVMID_HAVE_CONTROL
    // The last records (the unhooks above) reach NATS or the spool.
    nats_control.reset();
    publisher.reset();
    nats.reset();
    api.reset();
    backend.reset();
#endif
    the_core.reset();
  }
  if (!tmpdir.empty())
    std::filesystem::remove_all(tmpdir);
  return rc;
}
