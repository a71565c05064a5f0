// A client of the GDB remote serial protocol, as QEMU's gdbstub speaks it
// (all-stop, no QStartNoAckMode: every packet is acknowledged with '+').
// Blocking, over a UNIX socket. Stop replies (T/S/W/X packets) that arrive
// while a command waits for its answer are kept for stop(), so a guest
// stopping on its own never gets taken for a command's reply.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmi::qemu {

// A stop reply, parsed: the signal, the thread that stopped and, for a
// watchpoint, the address it hit.
struct stop_reply {
  std::string raw;
  int signal = 0;           // 2: interrupted (^C), 5: trap (breakpoint, watchpoint, step)
  int thread = 0;           // gdb thread id (QEMU: vCPU index + 1); 0 if none given
  std::optional<uint64_t> watch; // the address a watchpoint hit
  bool exited = false;      // W/X: the target is gone
};
std::optional<stop_reply> parse_stop(std::string_view packet);

class gdb_remote {
public:
  using clock = std::chrono::steady_clock;

  gdb_remote() = default;
  ~gdb_remote();
  gdb_remote(const gdb_remote&) = delete;
  gdb_remote& operator=(const gdb_remote&) = delete;

  // Connects to the gdbstub's UNIX socket, retrying until `deadline` (QEMU
  // creates it a moment after it starts). Empty on success, else why not.
  std::string connect(const std::string& path, clock::duration deadline);
  int fd() const { return fd_; }

  // Sends a packet and returns the reply packet's payload; nullopt if the
  // connection failed or no reply came within the timeout (error() says).
  std::optional<std::string> request(std::string_view payload);
  // Sends a packet whose answer is a stop reply (c, s, vCont): no waiting.
  bool send(std::string_view payload);
  // ^C: QEMU stops the VM and answers with a stop reply (see stop()).
  bool interrupt();
  // The next stop reply: one kept earlier, or read within `timeout`.
  std::optional<stop_reply> stop(clock::duration timeout);
  // A stop reply already here or readable without blocking; nullopt if
  // none (yet). error() is set if the connection failed.
  std::optional<stop_reply> take_stop();

  // qXfer:features:read of a whole annex (chunked by QEMU's PacketSize).
  std::optional<std::string> read_feature(const std::string& annex);
  // qRcmd: a monitor command; its console output (O packets) joined.
  std::optional<std::string> monitor(std::string_view command);

  const std::string& error() const { return error_; }
  void clear_error() { error_.clear(); }

private:
  bool write_all(std::string_view bytes);
  // The next packet's payload (acknowledged), or nullopt on EOF/timeout.
  std::optional<std::string> read_packet(clock::time_point until);
  bool fill(clock::time_point until);

  int fd_ = -1;
  std::string in_;
  std::deque<stop_reply> stops_;
  std::string error_;
  clock::duration reply_timeout_ = std::chrono::seconds(10);
};

std::string to_hex(std::span<const uint8_t> bytes);
// Joined by appends: GCC 12 at -O3 reports a false -Wrestrict on
// "literal" + std::string temporaries.
std::string join(std::initializer_list<std::string_view> parts);
std::optional<std::vector<uint8_t>> from_hex(std::string_view hex);

} // namespace kvmi::qemu
