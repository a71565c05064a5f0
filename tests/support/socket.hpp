// Raw client sockets for what a library client will not send: connect to a
// UNIX socket, send everything, read until the peer closes. Every read has
// a receive timeout as a safety net, so a silent server fails a test
// instead of hanging it.
#pragma once

#include <arpa/inet.h>
#include <chrono>
#include <poll.h>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kvmid::test {

// A connected UNIX stream socket (recv times out after `recv_timeout_s`);
// throws if the connect fails.
inline int connect_unix(const std::string& path, int recv_timeout_s = 30) {
  int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int e = errno;
    ::close(s);
    throw std::runtime_error("connect " + path + ": " + std::strerror(e));
  }
  timeval tv{recv_timeout_s, 0};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return s;
}

// Sends all of `bytes`; stops early if the peer closed (false then).
inline bool send_all(int s, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(s, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    bytes.remove_prefix(size_t(n));
  }
  return true;
}

// Reads until EOF (the peer closed: *eof = true) or the receive timeout.
inline std::string read_all(int s, bool* eof = nullptr) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(s, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      if (eof)
        *eof = true;
      break;
    }
    if (n < 0)
      break;
    out.append(buf, size_t(n));
  }
  return out;
}

// True if something accepts TCP connections on 127.0.0.1:port.
inline bool loopback_accepts(uint16_t port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

// A TCP port on 127.0.0.1 that was free a moment ago.
inline uint16_t free_loopback_port() {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

// True once the server closed (EOF or reset), discarding what it sent;
// false if it is still open after 30 s.
inline bool wait_eof(int fd) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
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

} // namespace kvmid::test
