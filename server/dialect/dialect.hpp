// The KVMI dialect of one session, chosen once by its listener: the
// handshake, then the translation between the host's frames and the v5
// messages the actors speak (events, command replies, commands, event
// replies). Actors never see which dialect the host speaks.
#pragma once

#include "actors/messages.hpp"
#include "actors/protocol_fault.hpp"
#include "server/dialect/handshake_failure.hpp"
#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "proto/v7/handshake.hpp"

#include <memory>
#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid {

enum class protocol : uint8_t { v5, v7 };
inline constexpr std::array all_protocols{protocol::v5, protocol::v7};
std::string_view name(protocol p);

// kvmid's end of a handshake: feed what arrived, send what out() holds.
class tool_handshake {
public:
  virtual ~tool_handshake() = default;
  // Bytes past the end of the handshake stay in `in` (the KVMI stream's).
  virtual kvmi::hs::status feed(std::span<const uint8_t>& in) = 0;
  virtual std::vector<uint8_t>& out() = 0; // to send, then clear()
  virtual handshake_failure failure() const = 0;
  virtual const kvmi::hs::guest_info& info() const = 0;
};

// One frame from the host, as the actors take it.
struct from_host {
  std::optional<kvmi::event_msg> event;
  std::optional<raw_frame> reply; // a v5 reply frame in the session's byte order
  std::optional<protocol_fault> error; // set: nothing more of this stream is trusted
};

class dialect {
public:
  virtual ~dialect() = default;
  virtual uint32_t max_payload() const = 0;
  // The ring thread, frame by frame.
  virtual from_host decode(const kvmi::frame& f) = 0;
  // Any actor's thread: the bytes of one write into out (cleared first).
  // A command the host's dialect cannot express gets no bytes and its
  // reply in `local`, so it fails as the kernel would have it fail.
  virtual void encode(std::vector<uint8_t>& out, const kvmi::command_msg& m,
                      std::optional<raw_frame>& local) = 0;
  virtual void encode(std::vector<uint8_t>& out, const kvmi::event_reply_msg& m) = 0;
  // Single-stepping one vCPU, with its SINGLESTEP event delivered as
  // kvmi::event_id::singlestep; unanswered. False: the dialect has none
  // (v5: a breakpoint cannot be planted again behind its instruction).
  virtual bool encode_singlestep(std::vector<uint8_t>&, uint16_t /*vcpu*/, bool /*enable*/) {
    return false;
  }
  virtual bool can_singlestep() const { return false; }

  // What the VM actor needs from its start and the handshake did not say
  // (v7: the memory bound, GET_MAX_GFN, when QEMU sent no map): the bytes
  // the session sends before any actor exists; empty for nothing.
  virtual std::vector<uint8_t> prologue(const kvmi::hs::guest_info&) { return {}; }
  // A frame while the prologue waits: completes g, or says why not.
  virtual std::optional<protocol_fault> on_prologue(const kvmi::frame&, kvmi::hs::guest_info&) {
    return protocol_fault{protocol_error_reason::bad_prologue,
                          "a frame before the session started"};
  }
};

struct dialect_options {
  protocol proto = protocol::v5;
  kvmi::hs::mode v5_handshake = kvmi::hs::mode::kvmi;
  kvmi::v7::hs::layout v7_layout = kvmi::v7::hs::layout::max_gpa;
};

std::unique_ptr<tool_handshake> make_handshake(const dialect_options& o,
                                               std::vector<uint8_t> cookie);
std::unique_ptr<dialect> make_dialect(const dialect_options& o, const kvmi::hs::guest_info& g);

// Per dialect, each in a file named after it.
std::unique_ptr<tool_handshake> make_v5_handshake(kvmi::hs::mode m, std::vector<uint8_t> cookie);
std::unique_ptr<tool_handshake> make_v7_handshake(kvmi::v7::hs::layout l,
                                                  std::vector<uint8_t> cookie);
std::unique_ptr<dialect> make_v5_dialect(kvmi::byte_order order);
std::unique_ptr<dialect> make_v7_dialect();

} // namespace kvmid
