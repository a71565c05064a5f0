// Network namespaces for a fleet on one machine: a hub (the test process,
// the NATS cluster, Prometheus, Alertmanager) and hosts, each joined to the
// hub by its own veth pair and /24, 10.77.<n>.0 for host n (1-based): the
// host is .1, the hub's end .254. The hosts reach nothing but the hub, and
// no interface is made outside the namespaces. Names carry the test's pid
// (kvmid-fleet-<pid>-...) so parallel runs do not clash; a run's
// namespaces go with the object, also when a REQUIRE fails, and a run whose
// process died (SIGKILL, no destructor) has its namespaces removed by the
// next. Needs root and IP_BIN (iproute2) from the build.
#pragma once

#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <sched.h>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace kvmid::test {

class fleet_network {
public:
  static constexpr const char* prefix = "kvmid-fleet-";

  // Why the namespaces cannot be made here; empty when they can.
  static std::string unusable() {
    if (::geteuid() != 0)
      return "network namespaces need root";
    if (::access(IP_BIN, X_OK) != 0)
      return std::string(IP_BIN) + " (iproute2) is missing";
    auto r = run({IP_BIN, "netns", "list"});
    if (r.status != 0)
      return "ip netns does not work here: " + r.err;
    return {};
  }

  explicit fleet_network(size_t hosts) : hosts_(hosts) {
    remove_stale();
    own_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    REQUIRE(own_ >= 0);
    try {
      build();
    } catch (...) { // a REQUIRE failed half-way: no destructor will run
      remove();
      throw;
    }
  }
  ~fleet_network() { remove(); }
  fleet_network(const fleet_network&) = delete;
  fleet_network& operator=(const fleet_network&) = delete;

  std::string hub() const { return name("hub"); }
  std::string host(size_t n) const { return name("h" + std::to_string(n)); }
  static std::string host_ip(size_t n) { return "10.77." + std::to_string(n) + ".1"; }
  static std::string hub_ip(size_t n) { return "10.77." + std::to_string(n) + ".254"; }

  // The calling thread, and what it starts or connects from now on, is in
  // the hub until leave().
  void enter_hub() {
    int fd = ::open(("/var/run/netns/" + hub()).c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE_MESSAGE(fd >= 0, "open the hub namespace: " << std::strerror(errno));
    int rc = ::setns(fd, CLONE_NEWNET);
    ::close(fd);
    REQUIRE_MESSAGE(rc == 0, "setns into the hub: " << std::strerror(errno));
  }
  void leave() {
    if (own_ >= 0)
      ::setns(own_, CLONE_NEWNET);
  }

  // The command run inside host n's namespace (ip netns exec execs it in
  // place: the pid is the command's).
  std::vector<std::string> in_host(size_t n) const { return {IP_BIN, "netns", "exec", host(n)}; }

  // Cuts or restores host n's link at the hub's end.
  void set_link(size_t n, bool up) {
    ip({"-n", hub(), "link", "set", hub_end(n), up ? "up" : "down"});
  }

  // The pids still in any of the namespaces (ip netns pids).
  std::vector<std::string> pids_inside() const {
    std::vector<std::string> out;
    for (auto& ns : made_) {
      std::istringstream in(run({IP_BIN, "netns", "pids", ns}).out);
      for (std::string p; in >> p;)
        out.push_back(ns + ":" + p);
    }
    return out;
  }
  // This run's namespaces that `ip netns list` still shows.
  std::vector<std::string> listed() const {
    std::vector<std::string> out;
    for (auto& ns : list())
      if (ns.rfind(name(""), 0) == 0)
        out.push_back(ns);
    return out;
  }

  // Leaves the hub and deletes every namespace (their interfaces go with
  // them). Idempotent.
  void remove() {
    leave();
    for (auto& ns : made_)
      run({IP_BIN, "netns", "del", ns});
    made_.clear();
    if (own_ >= 0)
      ::close(own_);
    own_ = -1;
  }

private:
  std::string name(const std::string& what) const {
    return prefix + std::to_string(::getpid()) + "-" + what;
  }
  static std::string hub_end(size_t n) { return "vh" + std::to_string(n); }

  // The hub, then each host with its link.
  void build() {
    ip({"netns", "add", hub()});
    made_.push_back(hub());
    ip({"-n", hub(), "link", "set", "lo", "up"});
    for (size_t n = 1; n <= hosts_; ++n) {
      ip({"netns", "add", host(n)});
      made_.push_back(host(n));
      // Both ends are made inside their namespaces: the name "eth0" is
      // the host's own, "vh<n>" the hub's.
      ip({"link", "add", hub_end(n), "netns", hub(), "type", "veth", "peer", "name", "eth0",
          "netns", host(n)});
      ip({"-n", host(n), "link", "set", "lo", "up"});
      ip({"-n", host(n), "addr", "add", host_ip(n) + "/24", "dev", "eth0"});
      ip({"-n", host(n), "link", "set", "eth0", "up"});
      ip({"-n", hub(), "addr", "add", hub_ip(n) + "/24", "dev", hub_end(n)});
      ip({"-n", hub(), "link", "set", hub_end(n), "up"});
    }
  }

  static void ip(std::vector<std::string> args) {
    args.insert(args.begin(), IP_BIN);
    auto r = run(args);
    std::string cmd;
    for (auto& a : args)
      cmd.append(a).append(" ");
    REQUIRE_MESSAGE(r.status == 0, cmd << "failed: " << r.err);
  }
  static std::vector<std::string> list() {
    std::vector<std::string> out;
    std::istringstream in(run({IP_BIN, "netns", "list"}).out);
    for (std::string line; std::getline(in, line);)
      out.push_back(line.substr(0, line.find(' ')));
    return out;
  }
  // Namespaces of a run whose process is gone: it died before its
  // destructor ran.
  static void remove_stale() {
    std::string pre = prefix;
    for (auto& ns : list()) {
      if (ns.rfind(pre, 0) != 0)
        continue;
      pid_t owner = pid_t(std::atol(ns.c_str() + pre.size()));
      if (owner > 0 && ::kill(owner, 0) != 0 && errno == ESRCH) {
        MESSAGE("removing namespace " << ns << " left by a run that died");
        run({IP_BIN, "netns", "del", ns});
      }
    }
  }

  size_t hosts_;
  int own_ = -1;
  std::vector<std::string> made_;
};

} // namespace kvmid::test
