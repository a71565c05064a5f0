#include "kernel-patches/qemu/qemu_process.hpp"

#include "kernel-patches/qemu/gdb_remote.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace kvmi::qemu {

qemu_process::qemu_process(qemu_options o) : o_(std::move(o)) {}

qemu_process::~qemu_process() { stop(); }

std::vector<std::string> qemu_process::command_line() const {
  // One TCG thread runs every vCPU in turn: a vCPU's debug stop ends the
  // turn before another vCPU runs, so two watchpoint hits never race for
  // the gdbstub's one stop reply (with a thread per vCPU one of them can be
  // lost). Stops lost otherwise: kvmi_host::ask_unseen.
  return {o_.binary,
          "-accel", "tcg,thread=single",
          "-m", std::to_string(o_.memory_mib) + "M",
          "-smp", std::to_string(o_.vcpus),
          "-nographic", "-no-reboot",
          "-monitor", "none",
          "-serial", "file:" + o_.serial_log,
          "-kernel", o_.kernel,
          "-initrd", o_.initrd,
          "-append", o_.append,
          "-chardev", join({"socket,path=", gdb_socket(), ",server=on,wait=off,id=g"}),
          "-gdb", "chardev:g",
          "-chardev", join({"socket,path=", qmp_socket(), ",server=on,wait=off,id=q"}),
          "-mon", "chardev=q,mode=control"};
}

std::string qemu_process::start() {
  auto args = command_line();
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string log = o_.dir + "/qemu.log";
  pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0)
    return std::string("fork: ") + std::strerror(errno);
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
      ::_exit(127);
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0)
      ::_exit(127);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  return {};
}

bool qemu_process::running() {
  if (pid_ <= 0)
    return false;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

// Best effort: QEMU exits cleanly (flushing the serial log) on "quit".
std::string qemu_process::qmp_quit() {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  auto path = qmp_socket();
  if (fd < 0 || path.size() >= sizeof a.sun_path)
    return "no QMP socket";
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  std::string why;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    why = std::strerror(errno);
  } else {
    std::string cmds = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";
    if (::send(fd, cmds.data(), cmds.size(), MSG_NOSIGNAL) != ssize_t(cmds.size()))
      why = "QMP send failed";
  }
  ::close(fd);
  return why;
}

void qemu_process::stop(std::chrono::milliseconds grace) {
  if (!running())
    return;
  qmp_quit();
  auto end = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < end) {
    if (!running())
      return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

} // namespace kvmi::qemu
