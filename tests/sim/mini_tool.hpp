// A minimal, test-only introspector: listens on a UNIX socket in a fresh
// temp dir, performs the tool side of the handshake, then speaks KVMI
// synchronously (send a command, wait for its reply; events queue up).
#pragma once

#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "tests/sim/frame_inbox.hpp"
#include "tests/support/temp_dir.hpp"

#include <chrono>
#include <cstdlib>
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

// One KVMI connection, driven synchronously by a test.
class conn : public frame_inbox<reply_shape> {
public:
  conn(int fd, std::vector<uint8_t> cookie = test_cookie(), hs::mode m = hs::mode::kvmi)
    : frame_inbox(fd, frame_splitter{}, uint16_t(msg_id::event)), hs_(std::move(cookie), m) {}

  const hs::guest_info& info() const { return hs_.info(); }
  byte_order order() const { return hs_.info().order; }

  bool handshake(ms timeout = 30000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (hs_.state() == hs::status::in_progress) {
      uint8_t buf[4096];
      auto n = sock_.read_some(buf, sizeof buf, deadline);
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

  uint32_t send(command c) {
    std::vector<uint8_t> out;
    uint32_t seq = put(out, std::move(c));
    send_all(out);
    return seq;
  }
  // Several commands in one send(), so the host reads them in one go.
  std::vector<uint32_t> send_batch(std::vector<command> cs) {
    std::vector<uint8_t> all;
    std::vector<uint32_t> seqs;
    for (auto& c : cs)
      seqs.push_back(put(all, std::move(c)));
    send_all(all);
    return seqs;
  }

  std::optional<reply_msg> wait_reply(uint32_t seq, ms timeout = 30000ms) {
    auto f = take_reply(seq, timeout);
    if (!f)
      return std::nullopt;
    auto r = decode_reply(f->view(), shape_of(seq), order());
    if (!r)
      return std::nullopt;
    return std::move(*r);
  }

  std::optional<reply_msg> call(command c, ms timeout = 30000ms) {
    return wait_reply(send(std::move(c)), timeout);
  }

  std::optional<event_msg> next_event(ms timeout = 30000ms) {
    auto f = take_event(timeout);
    if (!f)
      return std::nullopt;
    auto e = decode_event(f->view(), order());
    if (!e)
      return std::nullopt;
    return std::move(*e);
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

private:
  // Appends the command's frame to `all`; its seq.
  uint32_t put(std::vector<uint8_t>& all, command c) {
    command_msg m{next_seq(), std::move(c)};
    expect(m.seq, expected_reply(m.body));
    std::vector<uint8_t> one;
    encode(one, m, order());
    all.insert(all.end(), one.begin(), one.end());
    return m.seq;
  }

  hs::tool_side hs_;
};

} // namespace kvmi::test
