// One nats-server with JetStream for a test binary: loopback only, a store
// in a temp dir that outlives stop()/start() (the stream survives a server
// restart, as in production), tied to the test by PR_SET_PDEATHSIG
// (child_process.hpp) so it dies with an aborted test. NATS_SERVER_BIN
// comes from the build.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <sstream>
#include <string>

namespace kvmid::test {

class nats_server {
public:
  static constexpr size_t max_payload = 64 * 1024;

  nats_server() : dir_("nats"), port_(free_loopback_port()) { start(); }
  ~nats_server() { stop(); }
  nats_server(const nats_server&) = delete;
  nats_server& operator=(const nats_server&) = delete;

  void start() {
    REQUIRE(pid_ <= 0);
    // A small max_payload, so a test can reach it with one API answer.
    auto conf = dir_.write("nats.conf", "max_payload: " + std::to_string(max_payload) + "\n");
    pid_ = spawn({NATS_SERVER_BIN, "-c", conf.string(), "-js", "-sd", (dir_ / "store").string(),
                  "-a", "127.0.0.1", "-p", std::to_string(port_)},
                 (dir_ / "out.log").string(), (dir_ / "err.log").string());
    REQUIRE(pid_ > 0);
    REQUIRE_MESSAGE(wait_until([&] { return accepts() || try_reap(pid_) != -2; },
                               "nats-server to accept on port " + std::to_string(port_)),
                    log());
    REQUIRE_MESSAGE(accepts(), "nats-server exited: " << log());
  }
  void stop() {
    if (pid_ > 0)
      kvmid::test::stop(pid_);
    pid_ = -1;
  }
  bool running() const { return pid_ > 0; }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
  std::string log() const {
    std::ifstream in(dir_ / "err.log");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

private:
  bool accepts() const { return loopback_accepts(port_); }

  temp_dir dir_;
  uint16_t port_;
  pid_t pid_ = -1;
};

} // namespace kvmid::test
