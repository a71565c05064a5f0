// A nats-server with JetStream for the bench's NATS runs: loopback only, a
// free port, its store in a temp dir. Started and stopped as the tests
// start theirs (tests/support/child_process.hpp): PR_SET_PDEATHSIG kills it
// with the bench, also when the bench aborts or is interrupted.
#pragma once

#include "tests/support/temp_dir.hpp"

#include <cstdint>
#include <string>
#include <sys/types.h>

namespace bench {

class jetstream_server {
public:
  // Throws, with the server's stderr, if it does not accept within 10 s.
  explicit jetstream_server(const std::string& nats_server_bin);
  ~jetstream_server();
  jetstream_server(const jetstream_server&) = delete;
  jetstream_server& operator=(const jetstream_server&) = delete;

  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

private:
  std::string log() const;

  kvmid::test::temp_dir dir_{"bench-nats"};
  uint16_t port_;
  pid_t pid_ = -1;
};

} // namespace bench
