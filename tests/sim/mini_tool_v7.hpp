// A minimal, test-only v7 introspector, as libkvmi behaves: accepts the v7
// QEMU's handshake struct, answers with the SHA-1 of its cookie, then speaks
// the v7 dialect synchronously (send a command, wait for its reply; events
// queue up). Batches are wrapped in CONTROL_CMD_RESPONSE as libkvmi wraps
// them.
#pragma once

#include "proto/v7/codec.hpp"
#include "proto/v7/handshake.hpp"
#include "tests/sim/frame_inbox.hpp"
#include "tests/sim/mini_tool.hpp"

#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

namespace kvmi::test::v7tool {

namespace v7 = kvmi::v7;
using ms = std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

class conn : public frame_inbox<v7::reply_shape> {
public:
  explicit conn(int fd)
      : frame_inbox(fd, frame_splitter{byte_order::native, v7::max_payload},
                    uint16_t(v7::msg_id::event)) {}
  const v7::hs::qemu_hello& hello() const { return hello_; }

  // Reads QEMU's struct and answers with SHA-1(cookie). False if the
  // struct did not come or did not decode.
  bool handshake(std::span<const uint8_t> cookie, v7::hs::layout l = v7::hs::layout::max_gpa,
                 ms timeout = ms{30000}) {
    auto deadline = steady::now() + timeout;
    std::vector<uint8_t> head(4);
    if (!read_exact(head.data(), 4, deadline))
      return false;
    auto size = v7::hs::qemu_hello_size(head);
    if (!size)
      return false;
    head.resize(*size);
    if (!read_exact(head.data() + 4, *size - 4, deadline))
      return false;
    auto h = v7::hs::decode_qemu_hello(head, l);
    if (!h)
      return false;
    hello_ = *h;
    std::vector<uint8_t> out;
    v7::hs::encode(out, v7::hs::make_answer(cookie));
    send_all(out);
    return true;
  }

  uint32_t send(v7::command c, uint16_t vcpu = 0) {
    std::vector<uint8_t> out;
    uint32_t seq = put(out, std::move(c), vcpu);
    send_all(out);
    return seq;
  }
  std::optional<v7::reply_msg> call(v7::command c, uint16_t vcpu = 0, ms timeout = ms{30000}) {
    return wait_reply(send(std::move(c), vcpu), timeout);
  }

  // libkvmi's batch: CCR{enable 0, now 1}, the commands, CCR{enable 1, now
  // 1}, in one write. Returns the seqs of every message, the last CCR's last.
  std::vector<uint32_t> send_batch(std::vector<std::pair<v7::command, uint16_t>> cs) {
    std::vector<uint8_t> all;
    std::vector<uint32_t> seqs;
    seqs.push_back(put(all, v7::control_cmd_response{0, 1, 0, 0}, 0));
    for (auto& [c, vcpu] : cs)
      seqs.push_back(put(all, std::move(c), vcpu));
    seqs.push_back(put(all, v7::control_cmd_response{1, 1, 0, 0}, 0));
    send_all(all);
    return seqs;
  }

  std::optional<v7::reply_msg> wait_reply(uint32_t seq, ms timeout = ms{30000}) {
    auto f = take_reply(seq, timeout);
    if (!f)
      return std::nullopt;
    auto r = v7::decode_reply(f->view(), shape_of(seq));
    if (!r)
      return std::nullopt;
    return std::move(*r);
  }

  std::optional<v7::event_msg> next_event(ms timeout = ms{30000}) {
    auto f = take_event(timeout);
    if (!f)
      return std::nullopt;
    auto e = v7::decode_event(f->view());
    if (!e)
      return std::nullopt;
    return std::move(*e);
  }

  // A frame with any id and payload; its reply is decoded as error code only.
  uint32_t send_raw(uint16_t id, std::span<const uint8_t> payload) {
    msg_hdr h{id, static_cast<uint16_t>(payload.size()), next_seq()};
    expect(h.seq, v7::reply_shape{static_cast<v7::msg_id>(id), 0, false});
    std::vector<uint8_t> out(sizeof h);
    std::memcpy(out.data(), &h, sizeof h);
    out.insert(out.end(), payload.begin(), payload.end());
    send_all(out);
    return h.seq;
  }

  // The full reply, or its first `wire_size` bytes, or `extra` zero bytes
  // more than the kernel's struct.
  void reply(const v7::event_msg& e, action a, std::optional<uint64_t> new_val = std::nullopt,
             uint16_t wire_size = 0, size_t extra = 0) {
    v7::event_reply_msg r;
    r.seq = e.seq;
    r.vcpu = e.common.vcpu;
    r.common = v7::event_reply{static_cast<uint8_t>(a), e.common.event, 0, 0};
    if (e.kind() == v7::event_id::cr)
      r.extra = v7::event_cr_reply{new_val.value_or(std::get<v7::event_cr>(e.data).new_value)};
    else if (e.kind() == v7::event_id::msr)
      r.extra = v7::event_msr_reply{new_val.value_or(std::get<v7::event_msr>(e.data).new_value)};
    else if (e.kind() == v7::event_id::pf)
      r.extra = v7::event_pf_reply{};
    r.wire_size = wire_size;
    std::vector<uint8_t> out;
    v7::encode(out, r);
    if (extra) {
      out.resize(out.size() + extra, 0);
      msg_hdr h;
      std::memcpy(&h, out.data(), sizeof h);
      h.size = static_cast<uint16_t>(out.size() - sizeof h);
      std::memcpy(out.data(), &h, sizeof h);
    }
    send_all(out);
  }

private:
  uint32_t put(std::vector<uint8_t>& all, v7::command c, uint16_t vcpu) {
    v7::command_msg m{next_seq(), vcpu, std::move(c)};
    expect(m.seq, v7::expected_reply(m.body));
    std::vector<uint8_t> one;
    v7::encode(one, m);
    all.insert(all.end(), one.begin(), one.end());
    return m.seq;
  }
  bool read_exact(uint8_t* buf, size_t n, steady::time_point deadline) {
    while (n > 0) {
      auto got = sock_.read_some(buf, n, deadline);
      if (got <= 0)
        return false;
      buf += got;
      n -= static_cast<size_t>(got);
    }
    return true;
  }

  v7::hs::qemu_hello hello_;
};

} // namespace kvmi::test::v7tool
