// A table of every message kind the protocol knows: its id, direction and
// sizes. Used by `kvmi-messages`, the docs and the exhaustiveness tests.
#pragma once

#include "proto/ids.hpp"

#include <cstdint>
#include <span>
#include <string_view>

namespace kvmi {

struct message_kind {
  std::string_view name;
  std::string_view direction; // "command", "reply", "event", "event-reply"
  uint16_t id;                // hdr.id
  int32_t event;              // event id for events/event replies, else -1
  uint32_t size;              // payload bytes (fixed part)
  uint32_t element;           // bytes per trailing element, 0 if fixed
};

std::span<const message_kind> message_kinds();

} // namespace kvmi
