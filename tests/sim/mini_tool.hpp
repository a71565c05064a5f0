// A minimal, test-only introspector: listens on a UNIX socket in a fresh
// temp dir, performs the tool side of the handshake, then speaks KVMI
// synchronously (send a command, wait for its reply; events queue up).
#pragma once

#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "tests/sim/tool_socket.hpp"
#include "tests/support/temp_dir.hpp"

#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kvmi::test {

using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;

// 16 bytes, the shortest cookie kvmi-sim's --cookie takes (proto/cookie.hpp).
inline constexpr std::string_view test_cookie_text = "kvmi-sim-cookie1";
inline constexpr const char* test_cookie_hex = "6b766d692d73696d2d636f6f6b696531";
inline std::vector<uint8_t> test_cookie() { return {test_cookie_text.begin(), test_cookie_text.end()}; }

// A listening UNIX socket under a fresh temp directory, removed at the end.
class listener {
public:
  listener() : path_((dir_ / "kvmi.sock").string()) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 1024) != 0)
      throw std::runtime_error("listener: bind/listen failed");
  }
  ~listener() { ::close(fd_); }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  // -1 on timeout.
  int accept(ms timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
      return -1;
    return ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }

private:
  kvmid::test::temp_dir dir_{"sim"};
  std::string path_;
  int fd_ = -1;
};

struct raw_frame {
  msg_hdr hdr{};
  std::vector<uint8_t> payload;
  frame view() const { return frame{hdr, payload}; }
};

// One KVMI connection, driven synchronously by a test.
class conn {
public:
  conn(int fd, std::vector<uint8_t> cookie = test_cookie(), hs::mode m = hs::mode::kvmi)
    : sock_(fd), hs_(std::move(cookie), m) {}
  conn(const conn&) = delete;

  void close() { sock_.close(); }
  int fd() const { return sock_.fd(); }
  bool closed() const { return sock_.eof(); }
  const hs::guest_info& info() const { return hs_.info(); }
  byte_order order() const { return hs_.info().order; }

  bool handshake(ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (hs_.state() == hs::status::in_progress) {
      uint8_t buf[4096];
      auto n = read_some(buf, sizeof buf, deadline);
      if (n <= 0)
        return false;
      std::span<const uint8_t> in(buf, static_cast<size_t>(n));
      hs_.feed(in);
      if (!hs_.out().empty()) {
        send_all(hs_.out());
        hs_.out().clear();
      }
      if (hs_.state() == hs::status::done) {
        splitter_.set_order(hs_.info().order);
        feed(in);
      }
    }
    return hs_.state() == hs::status::done;
  }

  void send_all(std::span<const uint8_t> b) { sock_.send_all(b); }

  uint32_t send(command c) {
    command_msg m{++seq_, std::move(c)};
    shapes_.emplace_back(m.seq, expected_reply(m.body));
    std::vector<uint8_t> out;
    encode(out, m, order());
    send_all(out);
    return m.seq;
  }
  // Several commands in one send(), so the host reads them in one go.
  std::vector<uint32_t> send_batch(std::vector<command> cs) {
    std::vector<uint8_t> all, one;
    std::vector<uint32_t> seqs;
    for (auto& c : cs) {
      command_msg m{++seq_, std::move(c)};
      shapes_.emplace_back(m.seq, expected_reply(m.body));
      encode(one, m, order());
      all.insert(all.end(), one.begin(), one.end());
      seqs.push_back(m.seq);
    }
    send_all(all);
    return seqs;
  }

  std::optional<reply_msg> wait_reply(uint32_t seq, ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      for (auto it = frames_.begin(); it != frames_.end(); ++it)
        if (it->hdr.id != uint16_t(msg_id::event) && it->hdr.seq == seq) {
          reply_shape shape{};
          for (auto& [s, sh] : shapes_)
            if (s == seq)
              shape = sh;
          auto r = decode_reply(it->view(), shape, order());
          frames_.erase(it);
          if (!r)
            return std::nullopt;
          return std::move(*r);
        }
      if (!pump(deadline))
        return std::nullopt;
    }
  }

  std::optional<reply_msg> call(command c, ms timeout = 30000ms) {
    return wait_reply(send(std::move(c)), timeout);
  }

  std::optional<event_msg> next_event(ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      for (auto it = frames_.begin(); it != frames_.end(); ++it)
        if (it->hdr.id == uint16_t(msg_id::event)) {
          auto e = decode_event(it->view(), order());
          frames_.erase(it);
          if (!e)
            return std::nullopt;
          return std::move(*e);
        }
      if (!pump(deadline))
        return std::nullopt;
    }
  }

  void reply(const event_msg& e, action a, std::optional<uint64_t> new_val = std::nullopt) {
    event_reply_msg r;
    r.seq = e.seq;
    r.common = event_reply{static_cast<uint32_t>(a), e.common.event};
    if (e.kind() == event_id::cr)
      r.extra = event_cr_reply{new_val.value_or(std::get<event_cr>(e.data).new_value)};
    else if (e.kind() == event_id::msr)
      r.extra = event_msr_reply{new_val.value_or(std::get<event_msr>(e.data).new_value)};
    else if (e.kind() == event_id::pf)
      r.extra = event_pf_reply{};
    std::vector<uint8_t> out;
    encode(out, r, order());
    send_all(out);
  }

  // True once the host closed the socket (or until timeout: false).
  bool wait_closed(ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!sock_.eof())
      if (!pump(deadline))
        return sock_.eof();
    return true;
  }

  // The next frame of any kind, as it came.
  std::optional<raw_frame> next_raw(ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (frames_.empty())
      if (!pump(deadline))
        return std::nullopt;
    auto f = std::move(frames_.front());
    frames_.pop_front();
    return f;
  }

  // Seqs of non-event frames in the order they arrived on the socket.
  const std::vector<uint32_t>& arrival() const { return arrival_; }
  size_t queued_frames() const { return frames_.size(); }
  bool stream_error() const { return bad_stream_; }
  uint64_t partial_reads() const { return partial_reads_; }

  // Reads whatever is there within the deadline; false on timeout/EOF.
  bool pump(std::chrono::steady_clock::time_point deadline) {
    uint8_t buf[65536];
    auto n = read_some(buf, sizeof buf, deadline);
    if (n <= 0)
      return false;
    feed(std::span<const uint8_t>(buf, static_cast<size_t>(n)));
    return true;
  }

private:
  ssize_t read_some(uint8_t* buf, size_t len, std::chrono::steady_clock::time_point deadline) {
    return sock_.read_some(buf, len, deadline);
  }
  void feed(std::span<const uint8_t> in) {
    auto err = splitter_.feed(in, [&](const frame& f) {
      frames_.push_back(raw_frame{f.hdr, {f.payload.begin(), f.payload.end()}});
      if (f.hdr.id != uint16_t(msg_id::event))
        arrival_.push_back(f.hdr.seq);
    });
    if (err)
      bad_stream_ = true;
    if (splitter_.buffered() > 0)
      ++partial_reads_; // a read ended inside a frame
  }

  tool_socket sock_;
  hs::tool_side hs_;
  frame_splitter splitter_;
  std::deque<raw_frame> frames_;
  std::vector<std::pair<uint32_t, reply_shape>> shapes_;
  std::vector<uint32_t> arrival_;
  uint32_t seq_ = 0;
  bool bad_stream_ = false;
  uint64_t partial_reads_ = 0;
};

} // namespace kvmi::test
