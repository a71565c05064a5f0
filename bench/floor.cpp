#include "bench/floor.hpp"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>
#include <thread>

namespace bench {

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
}

summary summarize(samples s) {
  summary r;
  if (s.empty())
    return r;
  std::sort(s.begin(), s.end());
  auto at = [&](double q) { return s[std::min(s.size() - 1, size_t(q * double(s.size())))]; };
  r.p50 = at(0.50);
  r.p99 = at(0.99);
  r.p999 = at(0.999);
  r.max = s.back();
  double sum = 0;
  for (auto x : s)
    sum += double(x);
  r.mean = sum / double(s.size());
  return r;
}

namespace {

void check(bool ok, const char* what) {
  if (!ok)
    throw std::runtime_error(std::string(what) + ": " + std::strerror(errno));
}

void read_full(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    check(r > 0, "read");
    p += r;
    n -= size_t(r);
  }
}

void pair(int fds[2]) { check(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair"); }

// One io_uring op, waited for: the cost of the ring itself, not batching.
int uring_op(io_uring& ring, bool is_send, int fd, char* p, size_t n) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  if (is_send)
    io_uring_prep_send(sqe, fd, p, n, 0);
  else
    io_uring_prep_recv(sqe, fd, p, n, MSG_WAITALL);
  io_uring_submit(&ring);
  io_uring_cqe* cqe;
  check(io_uring_wait_cqe(&ring, &cqe) == 0, "io_uring_wait_cqe");
  int res = cqe->res;
  io_uring_cqe_seen(&ring, cqe);
  if (res <= 0)
    throw std::runtime_error("io_uring op failed");
  return res;
}

void uring_full(io_uring& ring, bool is_send, int fd, char* p, size_t n) {
  while (n > 0) {
    int r = uring_op(ring, is_send, fd, p, n);
    p += r;
    n -= size_t(r);
  }
}

} // namespace

on_cpu::on_cpu(int k, bool and_later) {
  if (sched_getaffinity(0, sizeof(saved_), &saved_) != 0 || CPU_COUNT(&saved_) < 2)
    return;
  cpu_set_t want;
  CPU_ZERO(&want);
  for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &saved_))
      continue;
    if (seen == k || (and_later && seen > k))
      CPU_SET(cpu, &want);
    ++seen;
  }
  pinned_ = CPU_COUNT(&want) > 0 && pthread_setaffinity_np(pthread_self(), sizeof(want), &want) == 0;
}

on_cpu::~on_cpu() {
  if (pinned_)
    pthread_setaffinity_np(pthread_self(), sizeof(saved_), &saved_);
}

samples floor_blocking(size_t rounds, size_t event_bytes, size_t reply_bytes) {
  int fds[2];
  pair(fds);
  // The "kernel" sends an event and waits; the "tool" answers.
  std::thread tool([&] {
    on_cpu tool_side(1);
    std::vector<char> in(event_bytes), out(reply_bytes, 1);
    for (size_t i = 0; i < rounds; ++i) {
      read_full(fds[1], in.data(), in.size());
      check(::write(fds[1], out.data(), out.size()) == ssize_t(out.size()), "write");
    }
  });
  on_cpu kernel_side(0); // after the thread starts, which would inherit it
  samples s;
  s.reserve(rounds);
  std::vector<char> ev(event_bytes, 2), rep(reply_bytes);
  for (size_t i = 0; i < rounds; ++i) {
    uint64_t t0 = now_ns();
    check(::write(fds[0], ev.data(), ev.size()) == ssize_t(ev.size()), "write");
    read_full(fds[0], rep.data(), rep.size());
    s.push_back(now_ns() - t0);
  }
  tool.join();
  close(fds[0]);
  close(fds[1]);
  return s;
}

samples floor_uring(size_t rounds, size_t event_bytes, size_t reply_bytes) {
  int fds[2];
  pair(fds);
  std::thread tool([&] {
    on_cpu tool_side(1);
    io_uring ring;
    io_uring_queue_init(8, &ring, 0);
    std::vector<char> in(event_bytes), out(reply_bytes, 1);
    for (size_t i = 0; i < rounds; ++i) {
      uring_full(ring, false, fds[1], in.data(), in.size());
      uring_full(ring, true, fds[1], out.data(), out.size());
    }
    io_uring_queue_exit(&ring);
  });
  io_uring ring;
  io_uring_queue_init(8, &ring, 0);
  on_cpu kernel_side(0); // after the thread starts, which would inherit it
  samples s;
  s.reserve(rounds);
  std::vector<char> ev(event_bytes, 2), rep(reply_bytes);
  for (size_t i = 0; i < rounds; ++i) {
    uint64_t t0 = now_ns();
    uring_full(ring, true, fds[0], ev.data(), ev.size());
    uring_full(ring, false, fds[0], rep.data(), rep.size());
    s.push_back(now_ns() - t0);
  }
  tool.join();
  io_uring_queue_exit(&ring);
  close(fds[0]);
  close(fds[1]);
  return s;
}

} // namespace bench
