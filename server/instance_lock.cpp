#include "server/instance_lock.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace kvmid {

std::variant<instance_lock, lock_error> instance_lock::acquire(const std::string& path,
                                                               const std::string& what) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    int e = errno;
    return lock_error{e, "cannot open the lock file " + path + " for " + what + ": "
                           + std::strerror(e)};
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    std::string holder;
    if (e == EWOULDBLOCK) {
      char b[32] = {};
      auto n = ::pread(fd, b, sizeof b - 1, 0);
      long pid = n > 0 ? std::strtol(b, nullptr, 10) : 0;
      holder = pid > 0 ? "pid " + std::to_string(pid) + ", " : std::string();
    }
    ::close(fd);
    if (e == EWOULDBLOCK)
      return lock_error{EADDRINUSE,
                        what + " is held by another kvmid (" + holder + "lock " + path + ")"};
    return lock_error{e, "cannot lock " + path + " for " + what + ": " + std::strerror(e)};
  }
  auto pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0
      || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // The lock holds without the pid; a second instance just cannot name us.
  }
  return instance_lock(fd);
}

instance_lock& instance_lock::operator=(instance_lock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

instance_lock::~instance_lock() {
  if (fd_ >= 0)
    ::close(fd_);
}

} // namespace kvmid
