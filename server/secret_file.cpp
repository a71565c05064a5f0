#include "server/secret_file.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kvmid {

namespace {

struct fd_closer {
  int fd;
  ~fd_closer() { ::close(fd); }
};

std::string octal_mode(mode_t m) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", unsigned(m & 07777));
  return b;
}

} // namespace

secret_read read_secret_file(const std::string& path, size_t max) {
  secret_read r;
  // O_NONBLOCK: a FIFO put in a secret's place must not hang start-up.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    r.error = path + ": cannot open: " + std::strerror(errno);
    return r;
  }
  fd_closer closer{fd};
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    r.error = path + ": cannot stat: " + std::strerror(errno);
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    r.error = path + ": not a regular file";
    return r;
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    r.error = path + ": mode " + octal_mode(st.st_mode)
              + " lets group or others access it (chmod 600 " + path + ")";
    return r;
  }
  r.bytes.resize(max + 1);
  size_t got = 0;
  while (got < r.bytes.size()) {
    ssize_t n = ::read(fd, r.bytes.data() + got, r.bytes.size() - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      r.error = path + ": cannot read: " + std::strerror(errno);
      r.bytes.clear();
      return r;
    }
    if (n == 0)
      break;
    got += size_t(n);
  }
  if (got > max) {
    r.error = path + ": longer than " + std::to_string(max) + " bytes";
    r.bytes.clear();
    return r;
  }
  r.bytes.resize(got);
  return r;
}

} // namespace kvmid
