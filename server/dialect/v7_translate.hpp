// The v7 dialect in kvmid's own terms: the actors speak the v5 messages
// (proto/codec.hpp); these pure functions turn them into v7 messages and
// back. One v5 command may become several v7 commands sent as one
// CONTROL_CMD_RESPONSE batch, answered once (PAUSE_ALL_VCPUS, the event
// masks); the batch's reply becomes the v5 command's reply.
#pragma once

#include "proto/codec.hpp"
#include "proto/v7/codec.hpp"

#include <string_view>
#include <vector>

namespace kvmid::v7x {

// How the v7 reply to a translated command becomes the v5 reply.
enum class reply_kind : uint8_t {
  // By the reply's data: GET_VERSION gets the masks kvmid translates,
  // GET_GUEST_INFO no TSC (v7 moved it to GET_VCPU_INFO).
  plain,
  paused, // PAUSE_ALL_VCPUS: how many PAUSE_VCPU the batch held
};

// What one v5 command becomes.
struct plan {
  std::vector<kvmi::v7::command_msg> msgs; // sent in one write; the last one is answered
  kvmi::v7::reply_shape shape;             // of the answered one
  reply_kind kind = reply_kind::plain;
  uint32_t paused = 0; // reply_kind::paused
  std::string_view refused; // non-empty: nothing v7 does this; answered locally
};

// The v5 commands the v7 dialect translates, as a GET_VERSION command mask
// (CONTROL_VE is absent: libkvmi never sends v7's).
uint32_t translated_commands();

// The answered message carries the v5 command's seq; each unanswered one
// of a batch takes the next inner_seq. vcpu_count: the vCPUs a pause stops.
plan to_v7(const kvmi::command_msg& m, uint32_t vcpu_count, uint32_t& inner_seq);

// VCPU_CONTROL_SINGLESTEP for one vCPU, unanswered (inner seqs): on, with
// its SINGLESTEP event enabled first; off leaves the event enabled (no
// SINGLESTEP comes without single-stepping).
std::vector<kvmi::v7::command_msg> singlestep(uint16_t vcpu, bool enable, uint32_t& inner_seq);

// The v5 reply to a v5 command from the v7 reply to its plan.
kvmi::reply_msg to_v5(kvmi::msg_id v5_id, const plan& p, kvmi::v7::reply_msg&& r);

// The v5 event of a v7 event; errors name events v5 has no words for.
kvmi::result<kvmi::event_msg> to_v5(const kvmi::v7::event_msg& e);

// The v7 reply to a v5 event reply for an event of that vCPU.
kvmi::v7::event_reply_msg to_v7(const kvmi::event_reply_msg& r, uint16_t vcpu);

} // namespace kvmid::v7x
