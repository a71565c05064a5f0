// The KVMI listener kind: the handshake (kvmi::hs::tool_side, 10 s per
// step), then frames split by proto's frame_splitter and routed in one hop:
// events to their vCPU actor, command replies to the VM actor.
#pragma once

#include "actors/core.hpp"
#include "proto/handshake.hpp"
#include "server/reactor.hpp"

#include <chrono>
#include <vector>

namespace kvmid {

struct kvmi_listener_options {
  std::vector<uint8_t> cookie; // never logged
  kvmi::hs::mode mode = kvmi::hs::mode::kvmi;
  std::chrono::milliseconds handshake_timeout{10000}; // per step
};

net::handler_factory kvmi_handler_factory(net::reactor& r, core& c, kvmi_listener_options o);

} // namespace kvmid
