#include "bench/raw_responder.hpp"
#include "bench/policy.hpp"

#include "proto/codec.hpp"
#include "proto/handshake.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <unordered_map>

namespace bench {

namespace {

struct session {
  int fd = -1;
  kvmi::hs::tool_side hs;
  kvmi::frame_splitter sp;
  std::vector<uint8_t> out, one;
  uint32_t seq = 0;
  std::unordered_map<uint32_t, kvmi::reply_shape> shapes;
  bool hooked = false;
  bool close_after_send = false;
  explicit session(int f, std::vector<uint8_t> cookie) : fd(f), hs(std::move(cookie)) {}
};

void queue(session& s, kvmi::command c) {
  kvmi::command_msg m{++s.seq, std::move(c)};
  s.shapes[m.seq] = kvmi::expected_reply(m.body);
  kvmi::encode(s.one, m, s.hs.info().order);
  s.out.insert(s.out.end(), s.one.begin(), s.one.end());
}

} // namespace

raw_responder::raw_responder(std::string unix_path, std::vector<uint8_t> cookie)
  : path_(std::move(unix_path)), cookie_(std::move(cookie)) {
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path_.c_str());
  ::unlink(path_.c_str());
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0
      || ::listen(listen_fd_, 4096) != 0)
    throw std::runtime_error("raw_responder: cannot listen on " + path_);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
  th_ = std::thread([this] { run(); });
}

raw_responder::~raw_responder() {
  stop_ = true;
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  th_.join();
  ::close(listen_fd_);
  ::close(wake_fd_);
  ::unlink(path_.c_str());
}

void raw_responder::run() {
  using namespace kvmi;
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.ptr = &wake_fd_;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd_, &ev);
  std::unordered_map<int, std::unique_ptr<session>> ss;
  std::vector<uint8_t> buf(1 << 16);
  std::vector<epoll_event> evs(256);

  auto on_frame = [&](session& s, const frame& f) {
    auto order = s.hs.info().order;
    if (f.hdr.id == uint16_t(msg_id::event)) {
      auto e = decode_event(f, order);
      if (!e) {
        ++errors;
        return;
      }
      ++events;
      auto kind = e->kind();
      if (kind == event_id::unhook) {
        s.close_after_send = true; // nothing planted to remove
        return;
      }
      if (kind == event_id::create_vcpu) {
        uint16_t v = e->common.vcpu;
        queue(s, control_events{v, 0, policy_events()});
        queue(s, control_msr{v, 1, 0, policy_msr});
        queue(s, control_cr{v, 1, 0, 0});
        queue(s, control_cr{v, 1, 0, 4});
        if (v == 0) {
          set_page_access_cmd sp{{0, uint16_t(policy_pages), 0, 0}, {}};
          for (uint64_t p = 0; p < policy_pages; ++p)
            sp.entries.push_back({policy_text + p * page_size, page_access_r | page_access_x, {}});
          queue(s, sp);
        }
      }
      event_reply_msg r;
      r.seq = e->seq;
      r.common = event_reply{uint32_t(action::continue_), e->common.event};
      if (auto* c = std::get_if<event_cr>(&e->data))
        r.extra = event_cr_reply{c->new_value};
      else if (auto* m = std::get_if<event_msr>(&e->data))
        r.extra = event_msr_reply{m->new_value};
      else if (kind == event_id::pf)
        r.extra = event_pf_reply{};
      encode(s.one, r, order);
      s.out.insert(s.out.end(), s.one.begin(), s.one.end());
      return;
    }
    auto it = s.shapes.find(f.hdr.seq);
    if (it == s.shapes.end()) {
      ++errors;
      return;
    }
    auto r = decode_reply(f, it->second, order);
    s.shapes.erase(it);
    if (!r || r->err != 0)
      ++errors;
  };

  auto drop = [&](int fd) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    ss.erase(fd);
  };

  while (!stop_) {
    int n = ::epoll_wait(ep, evs.data(), int(evs.size()), 100);
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.ptr == nullptr) {
        for (;;) {
          int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
          if (fd < 0)
            break;
          ss[fd] = std::make_unique<session>(fd, cookie_);
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.fd = fd;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      if (evs[i].data.ptr == &wake_fd_)
        continue;
      int fd = evs[i].data.fd;
      auto it = ss.find(fd);
      if (it == ss.end())
        continue;
      auto& s = *it->second;
      ssize_t got = ::recv(fd, buf.data(), buf.size(), 0);
      if (got <= 0) {
        drop(fd);
        continue;
      }
      std::span<const uint8_t> in(buf.data(), size_t(got));
      if (!s.hooked) {
        s.hs.feed(in);
        s.out.insert(s.out.end(), s.hs.out().begin(), s.hs.out().end());
        s.hs.out().clear();
        if (s.hs.state() == hs::status::done) {
          s.hooked = true;
          ++sessions;
          s.sp.set_order(s.hs.info().order);
          queue(s, control_vm_events{flag(event_id::create_vcpu) | flag(event_id::unhook), 0});
        } else if (s.hs.state() == hs::status::failed) {
          ++errors;
          drop(fd);
          continue;
        }
      }
      if (s.hooked && !in.empty() && s.sp.feed(in, [&](const frame& f) { on_frame(s, f); })) {
        ++errors;
        drop(fd);
        continue;
      }
      // Blocking socket: the simulated kernel always reads, so this is short.
      std::span<const uint8_t> o(s.out);
      while (!o.empty()) {
        ssize_t k = ::send(fd, o.data(), o.size(), MSG_NOSIGNAL);
        if (k <= 0)
          break;
        o = o.subspan(size_t(k));
      }
      s.out.clear();
      if (s.close_after_send)
        drop(fd);
    }
  }
  for (auto& [fd, s] : ss)
    ::close(fd);
  ::close(ep);
}

} // namespace bench
