// A nats-server JetStream cluster of three nodes in the calling thread's
// network namespace: node i takes clients on every address at port
// 4222+i and routes on 127.0.0.1:6222+i. Fixed ports: the namespace is the
// test's own. Each node's store outlives stop()/start(); every node dies
// with the test (PR_SET_PDEATHSIG). Needs NATS_SERVER_BIN.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <string>

namespace kvmid::test {

class nats_cluster {
public:
  static constexpr size_t nodes = 3;

  nats_cluster() : dir_("nats-cluster") {
    for (size_t i = 0; i < nodes; ++i)
      spawn_node(i);
    for (size_t i = 0; i < nodes; ++i)
      await_node(i);
  }
  ~nats_cluster() {
    for (size_t i = 0; i < nodes; ++i)
      stop(i);
  }
  nats_cluster(const nats_cluster&) = delete;
  nats_cluster& operator=(const nats_cluster&) = delete;

  void stop(size_t i) {
    if (pids_[i] > 0)
      kvmid::test::stop(pids_[i]);
    pids_[i] = -1;
  }
  void start(size_t i) {
    spawn_node(i);
    await_node(i);
  }
  bool running(size_t i) const { return pids_[i] > 0; }

  static uint16_t client_port(size_t i) { return uint16_t(4222 + i); }
  // Every node at `address`, as a client's server list.
  static std::string url(const std::string& address, size_t i) {
    return "nats://" + address + ":" + std::to_string(client_port(i));
  }
  std::string log(size_t i) const { return dir_.read("n" + std::to_string(i) + ".err"); }

private:
  void spawn_node(size_t i) {
    std::string n = "n" + std::to_string(i);
    std::string routes;
    for (size_t r = 0; r < nodes; ++r)
      routes += (r ? ", " : "") + std::string("nats-route://127.0.0.1:") + std::to_string(6222 + r);
    auto conf = dir_.write(n + ".conf",
                           "server_name: " + n + "\nlisten: 0.0.0.0:" + std::to_string(client_port(i))
                             + "\njetstream { store_dir: \"" + (dir_ / n).string() + "\" }\n"
                             + "cluster { name: kvmid-fleet\n  listen: 127.0.0.1:"
                             + std::to_string(6222 + i) + "\n  routes: [" + routes + "]\n}\n");
    pids_[i] = spawn({NATS_SERVER_BIN, "-c", conf.string()}, (dir_ / (n + ".out")).string(),
                     (dir_ / (n + ".err")).string());
    REQUIRE(pids_[i] > 0);
  }
  void await_node(size_t i) {
    REQUIRE_MESSAGE(wait_until([&] { return accepts(client_port(i)) || try_reap(pids_[i]) != -2; },
                               "NATS node n" + std::to_string(i) + " to accept clients"),
                    log(i));
    REQUIRE_MESSAGE(accepts(client_port(i)), "NATS node exited: " << log(i));
  }
  static bool accepts(uint16_t port) { return loopback_accepts(port); }

  temp_dir dir_;
  std::array<pid_t, nodes> pids_{-1, -1, -1};
};

} // namespace kvmid::test
