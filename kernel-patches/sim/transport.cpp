#include "kernel-patches/sim/transport.hpp"

#include "kernel-patches/sim/host_impl.hpp"

#include <cstring>
#include <optional>
#include <stdexcept>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace kvmi::sim::detail {

namespace {

enum op : uint8_t { op_connect = 1, op_recv, op_send, op_wake };

// A completion names its operation, the connection it belongs to (stale
// ones are ignored) and the VM.
uint64_t ud(op o, uint32_t gen, uint32_t local) {
  return (uint64_t(o) << 56) | (uint64_t(gen & 0xffffff) << 32) | local;
}

} // namespace

transport::transport(shard& s) : s_(s) {
  if (int e = io_uring_queue_init(4096, &ring_, 0); e < 0)
    throw std::runtime_error(std::string("io_uring_queue_init: ") + strerror(-e));
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
}

transport::~transport() {
  io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0)
    ::close(wake_fd_);
}

void transport::wake() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

io_uring_sqe* transport::sqe() {
  auto* s = io_uring_get_sqe(&ring_);
  if (!s) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void transport::add_timer(time_point at, timer_kind k, uint32_t vm_local, uint32_t vcpu,
                          uint32_t gen) {
  timers_.push(timer{at, k, vm_local, vcpu, gen, ++timer_seq_});
}

void transport::mark_dirty(vm& v) {
  if (!v.dirty) {
    v.dirty = true;
    dirty_.push_back(v.local);
  }
}

void transport::flush(vm& v) {
  v.dirty = false;
  if (v.fd < 0 || !v.connected || v.send_inflight || v.held || v.out.empty())
    return;
  if (v.split_at) {
    if (v.split_at > 0 && v.split_at <= v.out.size()) {
      v.inflight.assign(v.out.begin(), v.out.begin() + static_cast<long>(v.split_at));
      v.out.erase(v.out.begin(), v.out.begin() + static_cast<long>(v.split_at));
    }
    v.split_at = 0;
    v.held = true; // the tail waits for torn_pause
    add_timer(clock::now() + v.faults->torn_pause, timer_kind::torn_resume, v.local, 0, v.gen);
  } else {
    v.inflight.clear();
    std::swap(v.inflight, v.out);
  }
  v.inflight_off = 0;
  submit_send(v);
}

void transport::resume_torn(vm& v) {
  v.held = false;
  if (!v.send_inflight)
    flush(v);
}

void transport::submit_send(vm& v) {
  auto* s = sqe();
  io_uring_prep_send(s, v.fd, v.inflight.data() + v.inflight_off,
                     v.inflight.size() - v.inflight_off, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, ud(op_send, v.gen, v.local));
  v.send_inflight = true;
}

void transport::receive(vm& v) {
  auto* s = sqe();
  io_uring_prep_recv(s, v.fd, v.rbuf.data(), v.rbuf.size(), 0);
  io_uring_sqe_set_data64(s, ud(op_recv, v.gen, v.local));
  v.recv_inflight = true;
}

void transport::connect(vm& v) {
  auto* h = s_.h;
  if (h->stopping || v.crashed || v.unhooked || v.fd >= 0)
    return;
  if (v.recv_inflight || v.send_inflight || v.connect_inflight) {
    add_timer(clock::now() + ms{5}, timer_kind::connect, v.local);
    return;
  }
  int fd = ::socket(h->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return connect_failed(v, errno);
  if (h->addr.ss_family == AF_INET) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  v.fd = fd;
  ++v.gen;
  v.connecting = true;
  v.connect_inflight = true;
  auto* s = sqe();
  io_uring_prep_connect(s, fd, reinterpret_cast<sockaddr*>(&h->addr), h->addr_len);
  io_uring_sqe_set_data64(s, ud(op_connect, v.gen, v.local));
}

void transport::connect_failed(vm& v, int err) {
  ++v.c.connect_failures;
  v.connect_errno = err;
  s_.dm.reconnect_later(v, true);
}

void transport::close(vm& v) {
  ::shutdown(v.fd, SHUT_RDWR);
  ::close(v.fd);
  v.fd = -1;
  ++v.gen; // completions of this connection are stale from now on
}

void transport::on_cqe(io_uring_cqe* cqe) {
  uint64_t d = io_uring_cqe_get_data64(cqe);
  auto o_ = static_cast<op>(d >> 56);
  uint32_t gen = (d >> 32) & 0xffffff;
  uint32_t local = d & 0xffffffff;
  int res = cqe->res;
  if (o_ == op_wake) {
    wake_armed_ = false;
    return;
  }
  if (local >= s_.vms.size())
    return;
  auto& v = *s_.vms[local];
  bool current = (v.gen & 0xffffff) == gen;
  switch (o_) {
    case op_connect:
      v.connect_inflight = false;
      if (!current)
        return;
      if (res < 0) {
        ::close(v.fd);
        v.fd = -1;
        ++v.gen;
        v.connecting = false;
        return connect_failed(v, -res);
      }
      s_.dm.on_connected(v);
      return;
    case op_recv:
      v.recv_inflight = false;
      if (!current || v.fd < 0)
        return;
      if (res <= 0) {
        if (res == -EINTR || res == -EAGAIN)
          return receive(v);
        return s_.dm.end_session(v, true); // the tool closed (or the socket failed)
      }
      s_.dm.on_bytes(v, std::span<const uint8_t>(v.rbuf.data(), static_cast<size_t>(res)));
      if (current && (v.gen & 0xffffff) == gen && v.fd >= 0 && !v.recv_inflight)
        receive(v);
      return;
    case op_send:
      v.send_inflight = false;
      if (!current || v.fd < 0)
        return;
      if (res < 0)
        return s_.dm.end_session(v, true);
      v.inflight_off += static_cast<size_t>(res);
      v.sent_bytes += static_cast<size_t>(res);
      s_.faults.resolve_sent(v);
      if (v.inflight_off < v.inflight.size())
        return submit_send(v);
      flush(v);
      // A frame cut mid-way: drop the connection once its first half is out.
      if (v.close_after_send && !v.send_inflight && v.out.empty())
        s_.dm.end_session(v);
      return;
    default:
      return;
  }
}

void transport::arm_wake() {
  auto* w = sqe();
  io_uring_prep_read(w, wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
  io_uring_sqe_set_data64(w, ud(op_wake, 0, 0));
  wake_armed_ = true;
}

void transport::loop() {
  arm_wake();
  const auto spin_below = s_.o.workload.spin_below;
  while (true) {
    __kernel_timespec ts{0, 50'000'000};
    std::optional<time_point> spin_until;
    {
      std::lock_guard<std::mutex> l(s_.mu);
      if (!timers_.empty()) {
        auto d = timers_.top().at - clock::now();
        auto ns = std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
        ns = std::min<int64_t>(ns, 50'000'000);
        ts = {0, static_cast<long long>(ns)};
        if (d < spin_below)
          spin_until = timers_.top().at;
      }
    }
    io_uring_cqe* cqe = nullptr;
    if (spin_until) {
      // Sends go out, then the loop polls for completions until the timer
      // is due; a wake() completes the eventfd read and ends it too.
      io_uring_submit(&ring_);
      while (!io_uring_cq_ready(&ring_) && clock::now() < *spin_until) {
      }
    } else {
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    std::unique_lock<std::mutex> l(s_.mu);
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      on_cqe(cqe);
      ++n;
    }
    io_uring_cq_advance(&ring_, n);
    if (s_.h->stopping)
      break;
    if (!wake_armed_)
      arm_wake();
    auto now = clock::now();
    while (!timers_.empty() && timers_.top().at <= now) {
      auto t = timers_.top();
      timers_.pop();
      s_.on_timer(t);
    }
    service();
    l.unlock();
    s_.h->notify();
  }
  s_.shut_down();
}

// After every batch: send what is queued.
void transport::service() {
  for (size_t i = 0; i < dirty_.size(); ++i) {
    auto& v = *s_.vms[dirty_[i]];
    s_.kern->end_of_batch(v);
    flush(v);
  }
  dirty_.clear();
}

} // namespace kvmi::sim::detail
