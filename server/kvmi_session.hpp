// The KVMI listener kind: the handshake of its dialect (server/dialect,
// each step with an absolute deadline, at most max_handshakes at once), then
// frames split by proto's frame_splitter, put in the actors' terms by the
// dialect and routed in one hop: events to their vCPU actor, command
// replies to the VM actor. Every close of the socket
// is logged once with its reason and counted in kvmid_vm_disconnects_total.
#pragma once

#include "actors/core.hpp"
#include "proto/handshake.hpp"
#include "server/dialect/dialect.hpp"
#include "server/handshake_gate.hpp"
#include "server/reactor.hpp"

#include <chrono>
#include <memory>
#include <vector>

namespace kvmid {

struct kvmi_listener_options {
  std::vector<uint8_t> cookie; // never logged
  kvmi::hs::mode mode = kvmi::hs::mode::kvmi; // the handshake of a v5 listener
  protocol proto = protocol::v5;
  kvmi::v7::hs::layout v7_layout = kvmi::v7::hs::layout::max_gpa;
  // Per step, from the moment the step starts (kvmid waits for the peer's
  // next message); bytes that trickle in do not extend it.
  std::chrono::milliseconds handshake_timeout{10000};
  // Handshakes pending at once, over every listener sharing `gate`; a gate
  // of max_handshakes is made for this listener alone when none is given.
  size_t max_handshakes = 64;
  std::shared_ptr<handshake_gate> gate;
};

net::handler_factory kvmi_handler_factory(net::reactor& r, core& c, kvmi_listener_options o);

} // namespace kvmid
