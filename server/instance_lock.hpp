// One kvmid per resource: an flock(2) on a lock file held for the process's
// lifetime. The holder writes its pid into the file so a second instance
// can name it. The lock file is never unlinked: unlinking it would let two
// processes hold locks on two different files of the same name.
#pragma once

#include <string>
#include <sys/types.h>
#include <variant>

namespace kvmid {

struct lock_error {
  int err = 0;         // EADDRINUSE when another process holds the lock
  std::string message; // names the resource, the lock file and the holder's pid
};

class instance_lock {
public:
  // The lock, or why not: "<what> is held by another kvmid (pid N, lock
  // <path>)" when taken, or the system error naming the path.
  static std::variant<instance_lock, lock_error> acquire(const std::string& path,
                                                         const std::string& what);
  instance_lock() = default;
  instance_lock(instance_lock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  instance_lock& operator=(instance_lock&& o) noexcept;
  instance_lock(const instance_lock&) = delete;
  instance_lock& operator=(const instance_lock&) = delete;
  ~instance_lock();
  bool held() const { return fd_ >= 0; }

private:
  explicit instance_lock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

} // namespace kvmid
