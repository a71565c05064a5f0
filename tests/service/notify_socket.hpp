// The service manager's end of sd_notify: a UNIX datagram socket a test
// binds and names in $NOTIFY_SOCKET, reading the state lines kvmid sends.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

namespace kvmid::test {

class notify_socket {
public:
  explicit notify_socket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw std::runtime_error("bind " + path_ + ": " + std::strerror(errno));
  }
  ~notify_socket() { ::close(fd_); }
  notify_socket(const notify_socket&) = delete;
  notify_socket& operator=(const notify_socket&) = delete;

  const std::string& path() const { return path_; }

  // Reads datagrams until one holds the line `state` (e.g. "READY=1");
  // every line read on the way is appended to `seen`. False, and a failed
  // check, when none came within the deadline.
  bool wait_for(const std::string& state, std::vector<std::string>& seen,
                std::chrono::milliseconds deadline = std::chrono::seconds(30)) {
    auto end = std::chrono::steady_clock::now() + deadline;
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, int(left.count())) <= 0) {
        if (std::chrono::steady_clock::now() < end)
          continue; // EINTR
        FAIL_CHECK("no " << state << " on $NOTIFY_SOCKET within " << deadline.count() << " ms");
        return false;
      }
      char buf[4096];
      auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0)
        continue;
      bool found = false;
      std::string msg(buf, size_t(n));
      for (size_t at = 0; at < msg.size();) {
        auto nl = msg.find('\n', at);
        auto line = msg.substr(at, nl == std::string::npos ? std::string::npos : nl - at);
        at = nl == std::string::npos ? msg.size() : nl + 1;
        found = found || line == state;
        seen.push_back(line);
      }
      if (found)
        return true;
    }
  }

private:
  std::string path_;
  int fd_ = -1;
};

} // namespace kvmid::test
