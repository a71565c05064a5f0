// The device manager's part of a VM's connection, as QEMU plays it:
// connect, run the handshake, hand the socket to the kernel, reconnect when
// the session ends, and ask for an unhook.
#pragma once

#include "kernel-patches/sim/model.hpp"

namespace kvmi::sim::detail {

struct shard;

class device_manager {
public:
  explicit device_manager(shard& s);

  hs::guest_info guest_info(const vm& v) const; // what the handshake announces
  v7::hs::qemu_hello qemu_hello(const vm& v) const; // the same, as the v7 QEMU says it
  void on_connected(vm& v);
  void on_bytes(vm& v, std::span<const uint8_t> in);
  void on_handshake_timeout(vm& v, uint32_t gen);
  // The socket is gone (tool closed, error, fault, crash, unhook). by_tool:
  // the tool closed the socket (the host did not end the session itself).
  void end_session(vm& v, bool by_tool = false);
  void request_unhook(vm& v, vm::waiter p);
  // The next connect attempt; failed: this one failed, so back off further.
  void reconnect_later(vm& v, bool failed);

private:
  std::unique_ptr<dm_handshake> start_handshake(vm& v);

  shard& s_;
};

} // namespace kvmi::sim::detail
