// A KVM-VMI host as a test plays it, written with proto/v7: QEMU's
// handshake, then a kernel that answers kvmid's commands (one reply per
// CONTROL_CMD_RESPONSE batch), keeps what kvmid enabled and set, sends
// events and records kvmid's event replies.
#pragma once

#include "proto/v7/codec.hpp"
#include "proto/v7/handshake.hpp"
#include "tests/support/socket.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <poll.h>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

namespace kvmid::test {

namespace v7 = kvmi::v7;

struct v7_event_reply {
  kvmi::msg_hdr hdr;
  v7::event_reply_msg msg;
};

struct v7_host {
  int fd = -1;
  uint32_t vcpus = 2;
  uint64_t max_gfn = (1ull << 30) / 4096 - 1; // GET_MAX_GFN: a 1 GiB guest
  uint32_t next_seq = 1;
  bool eof = false;
  // What kvmid asked for.
  std::vector<v7::command_msg> commands; // in arrival order, batches included
  std::vector<size_t> replied;           // indexes into commands that got a reply
  std::map<uint16_t, std::set<uint16_t>> enabled; // vCPU -> event ids
  std::set<uint16_t> vm_enabled;
  std::map<uint64_t, uint8_t> access; // gpa -> access (view 0)
  std::vector<uint16_t> views;        // of every SET_PAGE_ACCESS
  std::vector<v7_event_reply> replies;
  uint32_t pauses_asked = 0;
  bool batching = false;
  std::vector<uint16_t> owed_pauses; // vCPUs a PAUSE_VCPU asked to stop

  explicit v7_host(const std::string& path) : fd(connect_unix(path, 30)) {}
  ~v7_host() {
    if (fd >= 0)
      ::close(fd);
  }
  v7_host(const v7_host&) = delete;
  v7_host& operator=(const v7_host&) = delete;

  bool send(const std::vector<uint8_t>& b) {
    return send_all(fd, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
  }

  // QEMU's struct, struct_size bytes (extra unknown ones zero).
  bool hello(uint32_t struct_size, std::optional<uint64_t> max_gpa = std::nullopt,
             const std::string& name = "v7-guest") {
    v7::hs::qemu_hello h;
    for (size_t i = 0; i < h.uuid.size(); ++i)
      h.uuid[i] = uint8_t(0x70 + i);
    h.name = name;
    h.max_gpa = max_gpa;
    std::vector<uint8_t> full;
    v7::hs::encode(full, h, v7::hs::layout::max_gpa);
    full.resize(std::max<size_t>(struct_size, 4), 0);
    std::memcpy(full.data(), &struct_size, 4);
    return send(full);
  }

  // Exactly n bytes, or fewer if kvmid closed first (eof set).
  std::vector<uint8_t> read_n(size_t n) {
    std::vector<uint8_t> b(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::recv(fd, b.data() + got, n - got, 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0) {
        eof = true;
        b.resize(got);
        return b;
      }
      got += size_t(r);
    }
    return b;
  }

  std::optional<v7::hs::tool_answer> answer() {
    auto b = read_n(sizeof(v7::hs::tool_answer));
    auto a = v7::hs::decode_tool_answer(b);
    if (!a)
      return std::nullopt;
    return *a;
  }

  // kvmid closed the socket (waits up to the receive timeout).
  bool closed_by_kvmid() {
    char c;
    for (;;) {
      ssize_t r = ::recv(fd, &c, 1, 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r > 0)
        continue; // what kvmid sent before closing
      return r == 0 || errno == ECONNRESET;
    }
  }

  void reply(const v7::command_msg& c, v7::reply_data data = {}) {
    v7::reply_msg r;
    r.id = v7::id_of(c.body);
    r.seq = c.seq;
    r.data = std::move(data);
    std::vector<uint8_t> b;
    v7::encode(b, r);
    REQUIRE(send(b));
  }

  void event(uint16_t vcpu, v7::event_id kind, v7::event_data data = {}) {
    v7::event_msg e;
    e.seq = next_seq++;
    e.common.size = sizeof(v7::event);
    e.common.vcpu = vcpu;
    e.common.event = static_cast<uint8_t>(kind);
    e.common.arch.mode = 8;
    e.data = std::move(data);
    std::vector<uint8_t> b;
    v7::encode(b, e);
    REQUIRE(send(b));
  }

  // Answers one command as a v7 kernel would, and keeps its effect.
  void serve(const v7::command_msg& c) {
    commands.push_back(c);
    bool answer = !batching;
    v7::reply_data data;
    std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, v7::get_version>)
          data = v7::version_reply{{1, 0, {}}, true};
        else if constexpr (std::is_same_v<T, v7::get_guest_info>)
          data = v7::get_guest_info_reply{vcpus, {}};
        else if constexpr (std::is_same_v<T, v7::control_cmd_response>) {
          batching = !x.enable;
          answer = x.enable != 0;
        } else if constexpr (std::is_same_v<T, v7::pause_vcpu>) {
          ++pauses_asked;
          owed_pauses.push_back(c.vcpu);
        } else if constexpr (std::is_same_v<T, v7::control_events>) {
          if (x.enable)
            enabled[c.vcpu].insert(x.event_id);
          else
            enabled[c.vcpu].erase(x.event_id);
        } else if constexpr (std::is_same_v<T, v7::control_vm_events>) {
          if (x.enable)
            vm_enabled.insert(x.event_id);
          else
            vm_enabled.erase(x.event_id);
        } else if constexpr (std::is_same_v<T, v7::set_page_access_cmd>) {
          views.push_back(x.req.view);
          for (auto& e : x.entries)
            access[e.gpa] = e.access;
        } else if constexpr (std::is_same_v<T, v7::get_max_gfn>)
          data = v7::get_max_gfn_reply{max_gfn};
        else if constexpr (std::is_same_v<T, v7::read_physical>)
          data = v7::physical_data{std::vector<uint8_t>(x.size, 0x90)};
      },
      c.body);
    if (answer) {
      replied.push_back(commands.size() - 1);
      reply(c, std::move(data));
      // wait=1: each PAUSE_VCPU of the batch stops its vCPU in a PAUSE event.
      for (auto v : owed_pauses)
        event(v, v7::event_id::pause_vcpu);
      owed_pauses.clear();
    }
  }

  // Reads and serves frames until done() holds; false at the deadline or
  // when kvmid closed.
  bool serve_until(const std::function<bool()>& done,
                   std::chrono::milliseconds limit = std::chrono::milliseconds(20000)) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (eof || std::chrono::steady_clock::now() > end)
        return false;
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      auto h = read_n(sizeof(kvmi::msg_hdr));
      if (eof)
        return false;
      kvmi::msg_hdr hdr;
      std::memcpy(&hdr, h.data(), sizeof hdr);
      auto body = read_n(hdr.size);
      if (eof)
        return false;
      std::vector<uint8_t> whole(h);
      whole.insert(whole.end(), body.begin(), body.end());
      auto m = v7::decode_from_tool(std::span<const uint8_t>(whole));
      REQUIRE_MESSAGE(m.ok(), "kvmid sent a frame a v7 kernel refuses: " << m.err().reason);
      if (auto* r = std::get_if<v7::event_reply_msg>(&*m))
        replies.push_back({hdr, *r});
      else
        serve(std::get<v7::command_msg>(*m));
    }
    return true;
  }
};

} // namespace kvmid::test
