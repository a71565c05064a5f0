// The socket end of a test introspector: whole sends, reads bounded by a
// deadline, the peer's close noticed.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <span>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kvmi::test {

class tool_socket {
public:
  using time_point = std::chrono::steady_clock::time_point;

  explicit tool_socket(int fd) : fd_(fd) {}
  ~tool_socket() { close(); }
  tool_socket(const tool_socket&) = delete;
  tool_socket& operator=(const tool_socket&) = delete;

  void close() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  bool eof() const { return eof_; }

  void send_all(std::span<const uint8_t> b) {
    while (!b.empty() && fd_ >= 0) {
      auto n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL);
      if (n <= 0)
        return;
      b = b.subspan(static_cast<size_t>(n));
    }
  }

  // What arrived by the deadline; <= 0 on timeout, close or error.
  ssize_t read_some(uint8_t* buf, size_t len, time_point deadline) {
    if (fd_ < 0 || eof_)
      return -1;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count()))) <= 0)
      return -1;
    auto n = ::recv(fd_, buf, len, 0);
    if (n <= 0)
      eof_ = true;
    return n;
  }

private:
  int fd_;
  bool eof_ = false;
};

} // namespace kvmi::test
