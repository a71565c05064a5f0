// The QEMU process behind kvmi-qemu: qemu-system-x86_64 under TCG with the
// gdbstub and QMP on UNIX sockets and the serial console in a file, tied to
// this process by PR_SET_PDEATHSIG (it dies with us, also on a crash), and
// stopped by QMP "quit", SIGKILL past a grace period.
#pragma once

#include <chrono>
#include <string>
#include <sys/types.h>
#include <vector>

namespace kvmi::qemu {

struct qemu_options {
  std::string binary = "qemu-system-x86_64";
  std::string kernel, initrd;
  std::string append = "nokaslr console=ttyS0 panic=-1 quiet";
  unsigned memory_mib = 256;
  unsigned vcpus = 1;
  std::string dir;        // where the sockets go (short path: sun_path is 108 bytes)
  std::string serial_log; // the guest's console
};

class qemu_process {
public:
  explicit qemu_process(qemu_options o);
  ~qemu_process(); // stop()
  qemu_process(const qemu_process&) = delete;
  qemu_process& operator=(const qemu_process&) = delete;

  // Empty on success, else why QEMU did not start.
  std::string start();
  // QMP quit; SIGKILL if QEMU has not exited within `grace`.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  bool running();
  pid_t pid() const { return pid_; }

  std::string gdb_socket() const { return o_.dir + "/gdb.sock"; }
  std::string qmp_socket() const { return o_.dir + "/qmp.sock"; }
  const qemu_options& options() const { return o_; }
  std::vector<std::string> command_line() const;

private:
  std::string qmp_quit();

  qemu_options o_;
  pid_t pid_ = -1;
};

} // namespace kvmi::qemu
