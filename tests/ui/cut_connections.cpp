#include "tests/ui/cut_connections.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace kvmid::test {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

// The inodes of the process's established TCP sockets whose local port is
// `port`: what it accepted there (its listening socket is not established).
std::set<std::string> accepted_inodes(pid_t pid, uint16_t port) {
  std::set<std::string> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line); // the header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string slot, local, remote, st, queues, timer, retr, uid, timeout, inode;
      f >> slot >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode;
      auto colon = local.rfind(':');
      if (st == "01" && colon != std::string::npos
          && std::stoul(local.substr(colon + 1), nullptr, 16) == port)
        out.insert(inode);
    }
  }
  return out;
}

} // namespace

size_t cut_accepted_connections(pid_t server, uint16_t port) {
  auto inodes = accepted_inodes(server, port);
  int pidfd = int(::syscall(SYS_pidfd_open, server, 0));
  if (pidfd < 0)
    fail("pidfd_open of " + std::to_string(server));
  size_t cut = 0;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(server) + "/fd", ec)) {
    auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (ec || !target.starts_with("socket:[")
        || !inodes.count(target.substr(8, target.size() - 9)))
      continue;
    int fd = int(::syscall(SYS_pidfd_getfd, pidfd, std::stoi(e.path().filename().string()), 0));
    if (fd < 0) {
      ::close(pidfd);
      fail("pidfd_getfd of the server's " + e.path().string());
    }
    if (::shutdown(fd, SHUT_RDWR) == 0)
      ++cut;
    ::close(fd);
  }
  ::close(pidfd);
  return cut;
}

} // namespace kvmid::test
