// What a synchronous test introspector has read from its host and not yet
// taken: whole frames in arrival order, from which a test takes the reply
// to one command or the next event, each within a deadline. The conn of
// each dialect (mini_tool.hpp, mini_tool_v7.hpp) builds on it and decodes
// what it takes with its dialect's codec.
#pragma once

#include "proto/codec.hpp"
#include "tests/sim/tool_socket.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace kvmi::test {

struct raw_frame {
  msg_hdr hdr{};
  std::vector<uint8_t> payload;
  frame view() const { return frame{hdr, payload}; }
};

// Shape: how the dialect decodes a command's reply (reply_shape).
template <class Shape>
class frame_inbox {
public:
  using ms = std::chrono::milliseconds;
  using steady = std::chrono::steady_clock;

  frame_inbox(int fd, frame_splitter sp, uint16_t event_msg_id)
      : sock_(fd), splitter_(std::move(sp)), event_msg_id_(event_msg_id) {}
  frame_inbox(const frame_inbox&) = delete;
  frame_inbox& operator=(const frame_inbox&) = delete;

  void close() { sock_.close(); }
  int fd() const { return sock_.fd(); }
  bool closed() const { return sock_.eof(); }
  void send_all(std::span<const uint8_t> b) { sock_.send_all(b); }

  // True once the host closed the socket (or until timeout: false).
  bool wait_closed(ms timeout = ms{30000}) {
    auto deadline = steady::now() + timeout;
    while (!sock_.eof())
      if (!pump(deadline))
        return sock_.eof();
    return true;
  }

  // The next frame of any kind, as it came.
  std::optional<raw_frame> next_raw(ms timeout = ms{30000}) {
    return take([](const raw_frame&) { return true; }, timeout);
  }

  // Seqs of non-event frames in the order they arrived on the socket.
  const std::vector<uint32_t>& arrival() const { return arrival_; }
  // Frames read so far and not taken: all, events, replies.
  size_t queued_frames() const { return frames_.size(); }
  size_t queued_events() const {
    return size_t(std::count_if(frames_.begin(), frames_.end(),
                                [&](const raw_frame& f) { return is_event(f); }));
  }
  size_t queued_replies() const { return queued_frames() - queued_events(); }
  bool stream_error() const { return bad_stream_; }
  uint64_t partial_reads() const { return partial_reads_; }

  // Reads whatever is there within the deadline; false on timeout/EOF.
  bool pump(steady::time_point deadline) {
    uint8_t buf[65536];
    auto n = sock_.read_some(buf, sizeof buf, deadline);
    if (n <= 0)
      return false;
    feed(std::span<const uint8_t>(buf, static_cast<size_t>(n)));
    return true;
  }

protected:
  bool is_event(const raw_frame& f) const { return f.hdr.id == event_msg_id_; }
  uint32_t next_seq() { return ++seq_; }
  // How the reply to seq decodes, remembered when the command goes out.
  void expect(uint32_t seq, Shape s) { shapes_.emplace_back(seq, s); }
  Shape shape_of(uint32_t seq) const {
    Shape shape{};
    for (auto& [s, sh] : shapes_)
      if (s == seq)
        shape = sh;
    return shape;
  }

  std::optional<raw_frame> take_reply(uint32_t seq, ms timeout) {
    return take([&](const raw_frame& f) { return !is_event(f) && f.hdr.seq == seq; }, timeout);
  }
  std::optional<raw_frame> take_event(ms timeout) {
    return take([&](const raw_frame& f) { return is_event(f); }, timeout);
  }

  // Bytes of the KVMI stream, split into the queue.
  void feed(std::span<const uint8_t> in) {
    auto err = splitter_.feed(in, [&](const frame& f) {
      frames_.push_back(raw_frame{f.hdr, {f.payload.begin(), f.payload.end()}});
      if (f.hdr.id != event_msg_id_)
        arrival_.push_back(f.hdr.seq);
    });
    if (err)
      bad_stream_ = true;
    if (splitter_.buffered() > 0)
      ++partial_reads_; // a read ended inside a frame
  }

  tool_socket sock_;
  frame_splitter splitter_;

private:
  template <class Pred>
  std::optional<raw_frame> take(Pred wanted, ms timeout) {
    auto deadline = steady::now() + timeout;
    while (true) {
      auto it = std::find_if(frames_.begin(), frames_.end(), wanted);
      if (it != frames_.end()) {
        auto f = std::move(*it);
        frames_.erase(it);
        return f;
      }
      if (!pump(deadline))
        return std::nullopt;
    }
  }

  uint16_t event_msg_id_;
  std::deque<raw_frame> frames_;
  std::vector<std::pair<uint32_t, Shape>> shapes_;
  std::vector<uint32_t> arrival_;
  uint32_t seq_ = 0;
  bool bad_stream_ = false;
  uint64_t partial_reads_ = 0;
};

} // namespace kvmi::test
