// The client end of a UNIX stream socket for tests: connect, and wait for
// the server to close. A hang is a failure, never a wait without end.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kvmid::testing {

inline int connect_unix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  REQUIRE_MESSAGE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0,
                  "connect to " << path << ": " << std::strerror(errno));
  return fd;
}

// True once the server closed (EOF or reset), discarding what it sent;
// false if it is still open after 10 s.
inline bool wait_eof(int fd) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0)
      continue;
    char b[4096];
    if (::recv(fd, b, sizeof b, 0) <= 0)
      return true;
  }
  return false;
}

} // namespace kvmid::testing
