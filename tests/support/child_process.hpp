// Child processes for tests: started with fork+exec (never a shell), tied
// to the test by PR_SET_PDEATHSIG so they die with it even when it aborts,
// run to completion under a deadline, and stopped by pid (never by name).
#pragma once

#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace kvmid::test {

struct run_result {
  int status = -1; // exit code; -1 if killed or not started
  std::string out, err;
};

namespace detail {

// Where the child's stdin/stdout/stderr come from: an open fd, or a file
// to append to.
struct stdio {
  int fd = -1;
  std::string file;
};

// After fork only async-signal-safe calls: everything is prepared before.
// PR_SET_PDEATHSIG fires when the forking thread exits: tests spawn from
// their own thread, which lives as long as the test.
inline pid_t fork_exec(std::vector<std::string> args, stdio out, stdio err) {
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid != 0)
    return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) // the test already died
    ::_exit(127);
  int in = ::open("/dev/null", O_RDONLY);
  ::dup2(in, 0);
  auto route = [](const stdio& s, int to) {
    int fd = s.fd >= 0 ? s.fd : ::open(s.file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0 || ::dup2(fd, to) < 0)
      ::_exit(127);
  };
  route(out, 1);
  route(err, 2);
  ::execve(argv[0], argv.data(), environ);
  ::_exit(127);
}

} // namespace detail

// Starts args[0] with stdout/stderr appended to the given files; -1 if the
// fork failed (a failed exec exits 127).
inline pid_t spawn(std::vector<std::string> args, const std::string& out_file,
                   const std::string& err_file) {
  return detail::fork_exec(std::move(args), {-1, out_file}, {-1, err_file});
}

// The exit code once the process has exited (then reaped); -2 while it runs.
inline int try_reap(pid_t pid) {
  int st = 0;
  if (::waitpid(pid, &st, WNOHANG) != pid)
    return -2;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
inline int stop(pid_t pid, std::chrono::milliseconds grace = std::chrono::milliseconds(10000)) {
  if (pid <= 0)
    return -1;
  ::kill(pid, SIGTERM);
  auto end = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < end) {
    if (int rc = try_reap(pid); rc != -2)
      return rc;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

// A child whose stdout and stderr the test reads: finish() collects them
// until the child exits. Killed (SIGKILL, by pid) if the test ends first.
class child {
public:
  explicit child(std::vector<std::string> args) : what_(args.empty() ? "" : args[0]) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2 failed");
    pid_ = detail::fork_exec(std::move(args), {out[1], {}}, {err[1], {}});
    ::close(out[1]);
    ::close(err[1]);
    fds_[0] = {out[0], POLLIN, 0};
    fds_[1] = {err[0], POLLIN, 0};
    if (pid_ < 0)
      throw std::runtime_error("fork failed: " + std::string(std::strerror(errno)));
  }
  ~child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (auto& f : fds_)
      if (f.fd >= 0)
        ::close(f.fd);
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  pid_t pid() const { return pid_; }
  void terminate() const {
    if (pid_ > 0)
      ::kill(pid_, SIGTERM);
  }

  // Reads stdout and stderr until the child closes them, then reaps it. If
  // that takes longer than `timeout` the child is killed: status -1 and err
  // says so.
  run_result finish(std::chrono::milliseconds timeout) {
    auto end = std::chrono::steady_clock::now() + timeout;
    bool killed = false;
    while (fds_[0].fd >= 0 || fds_[1].fd >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        ::kill(pid_, SIGKILL);
        killed = true;
        break;
      }
      if (::poll(fds_, 2, int(left.count())) <= 0)
        continue;
      for (int i = 0; i < 2; ++i) {
        auto& f = fds_[i];
        if (f.fd < 0 || !(f.revents & (POLLIN | POLLHUP)))
          continue;
        char buf[4096];
        ssize_t n = ::read(f.fd, buf, sizeof buf);
        if (n <= 0) {
          ::close(f.fd);
          f.fd = -1; // poll() ignores negative fds
        } else {
          (i == 0 ? r_.out : r_.err).append(buf, size_t(n));
        }
      }
    }
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    r_.status = killed ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (killed)
      r_.err += "\n(" + what_ + " killed after " + std::to_string(timeout.count()) + " ms)";
    return r_;
  }

private:
  std::string what_;
  pid_t pid_ = -1;
  pollfd fds_[2] = {{-1, 0, 0}, {-1, 0, 0}};
  run_result r_;
};

// Runs to completion, capturing stdout and stderr; killed after `timeout`.
inline run_result run(std::vector<std::string> args,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(60000)) {
  return child(std::move(args)).finish(timeout);
}

} // namespace kvmid::test
