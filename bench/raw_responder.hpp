// The throughput floor kvmid is compared to: a raw C++ KVMI introspector
// with no actors. One epoll thread accepts device managers on a UNIX socket,
// performs the tool side of the handshake (proto's hs::tool_side), enables
// the same events kvmid's bench policy enables (at CREATE_VCPU, as kvmid
// does), and answers every event CONTINUE in place.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

namespace bench {

class raw_responder {
public:
  raw_responder(std::string unix_path, std::vector<uint8_t> cookie);
  ~raw_responder(); // stops and joins
  raw_responder(const raw_responder&) = delete;
  raw_responder& operator=(const raw_responder&) = delete;

  std::atomic<uint64_t> events{0}, sessions{0}, errors{0};

private:
  void run();
  std::string path_;
  std::vector<uint8_t> cookie_;
  int listen_fd_ = -1, wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread th_;
};

} // namespace bench
