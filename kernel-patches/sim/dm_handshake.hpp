// The device manager's end of the handshake, in the dialect the host
// speaks: kvmid's (or the v5-era QEMU's) exchange for v5, the kvmi-v7
// QEMU's for v7. The device manager drives it through this interface only.
#pragma once

#include "kernel-patches/sim/sim.hpp"
#include "proto/v7/handshake.hpp"

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace kvmi::sim::detail {

class dm_handshake {
public:
  virtual ~dm_handshake() = default;
  // Consumes handshake bytes; what follows the handshake stays in `in`
  // (it belongs to the KVMI stream).
  virtual hs::status feed(std::span<const uint8_t>& in) = 0;
  virtual std::vector<uint8_t>& out() = 0; // to send, then clear()
  virtual hs::status state() const = 0;
  virtual std::string reason() const = 0; // why it failed
};

// v5: kvmid's handshake or the v5-era QEMU one (proto/handshake.hpp).
std::unique_ptr<dm_handshake> make_dm_handshake_v5(std::vector<uint8_t> cookie,
                                                   hs::guest_info info, hs::mode m);

// v7: QEMU sends its struct, reads the tool's {struct_size, SHA-1 of the
// cookie} answer and, with a secret configured, closes on a mismatch.
// Without one (secret empty) any hash passes, as QEMU does.
std::unique_ptr<dm_handshake> make_dm_handshake_v7(std::vector<uint8_t> secret,
                                                   const v7::hs::qemu_hello& hello,
                                                   qemu_v7_hello layout);

} // namespace kvmi::sim::detail
