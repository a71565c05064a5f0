#include "bench/jetstream_server.hpp"

#include "tests/support/child_process.hpp"
#include "tests/support/socket.hpp"

#include <chrono>
#include <stdexcept>
#include <thread>

namespace bench {

jetstream_server::jetstream_server(const std::string& nats_server_bin)
  : port_(kvmid::test::free_loopback_port()) {
  pid_ = kvmid::test::spawn({nats_server_bin, "-js", "-sd", (dir_ / "store").string(), "-a",
                             "127.0.0.1", "-p", std::to_string(port_)},
                            (dir_ / "out.log").string(), (dir_ / "err.log").string());
  if (pid_ < 0)
    throw std::runtime_error("cannot start " + nats_server_bin);
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!kvmid::test::loopback_accepts(port_)) {
    if (kvmid::test::try_reap(pid_) != -2 || std::chrono::steady_clock::now() > end) {
      kvmid::test::stop(pid_);
      pid_ = -1;
      throw std::runtime_error(nats_server_bin + " did not accept on 127.0.0.1:"
                               + std::to_string(port_) + " within 10 s: " + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

jetstream_server::~jetstream_server() { kvmid::test::stop(pid_); }

std::string jetstream_server::log() const { return dir_.read("err.log"); }

} // namespace bench
