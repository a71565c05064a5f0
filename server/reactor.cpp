// The io_uring reactor: one ring thread does accept, recv and send for
// every socket; actors and API callbacks reach it only through a
// mutex-protected task queue plus an eventfd the ring reads.
#include "server/reactor.hpp"

#include "actors/log.hpp"
#include "server/instance_lock.hpp"

#include <liburing.h>
#include <pthread.h>

#include <arpa/inet.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <csignal>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

namespace kvmid::net {

std::string listen_spec::describe() const {
  switch (type) {
    case kind::unix_socket: return "unix:" + path;
    case kind::tcp: return "tcp:" + host + ":" + std::to_string(port);
    case kind::vsock:
      return "vsock:" + std::to_string(int32_t(cid)) + ":" + std::to_string(vport);
  }
  return "?";
}

std::string_view name(close_reason r) {
  switch (r) {
    case close_reason::peer_closed: return "peer_closed";
    case close_reason::io_error: return "io_error";
    case close_reason::local: return "local";
    case close_reason::queue_full: return "queue_full";
    case close_reason::shutdown: return "shutdown";
  }
  return "?";
}

namespace {

enum op_type : uint64_t { op_accept = 1, op_recv, op_send, op_wake, op_shutdown_done };
constexpr uint64_t id_mask = (uint64_t(1) << 56) - 1;
uint64_t tag(op_type t, uint64_t id) { return (uint64_t(t) << 56) | (id & id_mask); }
constexpr uint16_t buf_group = 7;

struct listener {
  int fd = -1;
  listen_spec spec;
  handler_factory make;
  handoff_fn handoff; // may take an accepted socket to another reactor
  uint16_t port = 0;
  bool armed = false;
  sockaddr_storage addr{};
  socklen_t addrlen = sizeof(sockaddr_storage);
  // unix_socket: the path's lock, and the socket file this listener bound
  // (the only one it may unlink).
  instance_lock lock;
  bool created = false;
  dev_t dev = 0;
  ino_t ino = 0;
  // Accept failing for want of resources: the current retry delay (0 when
  // accepting works) and the failures of this burst.
  std::chrono::milliseconds backoff{0};
  uint64_t failures = 0;
};

// Accept errors that mean "no resources now": retried after a delay.
bool resource_shortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

// Connects to a UNIX socket path to learn whether a server accepts there.
// A refusal proves the file stale; so does a listener whose process is
// gone (a kvmid killed a moment ago accepts until the kernel has torn its
// io_uring down). Any other answer, a full backlog included, is a server.
bool unix_socket_stale(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), std::min(path.size(), sizeof a.sun_path - 1));
  bool stale = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    stale = errno == ECONNREFUSED;
  } else {
    ucred cr{};
    socklen_t len = sizeof cr;
    stale = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.pid > 0
            && ::kill(cr.pid, 0) != 0 && errno == ESRCH;
  }
  ::close(fd);
  return stale;
}

} // namespace

struct reactor::impl {
  struct conn final : conn_ctx {
    impl* r = nullptr;
    conn_id cid = 0;
    int fd = -1;
    std::string peer_;
    std::unique_ptr<connection_handler> h;
    std::deque<std::vector<uint8_t>> q;
    size_t off = 0;              // bytes of q.front() already sent
    std::vector<iovec> iov;      // the send in flight: q's head, gathered
    msghdr mh{};
    bool sending = false, recv_armed = false;
    bool dirty = false; // listed in impl::dirty
    bool closing = false, flush_then_close = false, notified = false, finished = false;
    close_reason why = close_reason::local;
    std::vector<uint8_t> rbuf; // plain recv fallback

    conn_id id() const override { return cid; }
    const std::string& peer() const override { return peer_; }
    bool send(std::span<const uint8_t> b) override {
      auto v = r->take_buffer();
      v.assign(b.begin(), b.end());
      return send(std::move(v));
    }
    bool send(std::vector<uint8_t>&& b) override {
      if (closing)
        return false;
      if (q.size() >= r->opts.send_queue_limit) {
        r->begin_close(*this, close_reason::queue_full, true);
        return false;
      }
      q.push_back(std::move(b));
      r->queued.fetch_add(1, std::memory_order_relaxed);
      if (!dirty) {
        dirty = true;
        r->dirty.push_back(cid);
      }
      return true;
    }
    void close(bool now) override {
      if (now || q.empty())
        r->begin_close(*this, close_reason::local, true);
      else
        flush_then_close = true;
    }
    void set_timer(std::chrono::milliseconds after, uint64_t token) override {
      cancel_timer(token);
      auto at = std::chrono::steady_clock::now() + after;
      auto it = r->timers.emplace(at, std::make_pair(cid, token));
      r->timer_index[{cid, token}] = it;
    }
    void cancel_timer(uint64_t token) override {
      auto it = r->timer_index.find({cid, token});
      if (it != r->timer_index.end()) {
        r->timers.erase(it->second);
        r->timer_index.erase(it);
      }
    }
    size_t queued() const override { return q.size(); }
  };

  using clock = std::chrono::steady_clock;
  using timer_map = std::multimap<clock::time_point, std::pair<conn_id, uint64_t>>;

  reactor_options opts;
  io_uring ring{};
  bool ring_ok = false;
  int wake_fd = -1;
  uint64_t wake_val = 0;
  std::thread th;
  std::atomic<bool> run_flag{false}, stop_req{false};
  std::atomic<size_t> nconns{0};
  std::atomic<size_t> queued{0};
  std::atomic<uint64_t> accepts{0};

  // multishot recv
  bool use_multishot = false;
  io_uring_buf_ring* br = nullptr;
  size_t br_size = 0;
  std::vector<uint8_t> bufs;
  unsigned nbufs = 0;

  mutable std::mutex lmu;
  std::vector<listener> listeners;
  std::vector<size_t> new_listeners;

  std::unordered_map<conn_id, std::unique_ptr<conn>> conns;
  conn_id next_id = 1;
  std::vector<conn_id> dirty, dirty_run; // connections with sends to start, once each
  std::vector<conn_id> dead;  // finished, to destroy
  timer_map timers;
  std::map<std::pair<conn_id, uint64_t>, timer_map::iterator> timer_index;

  std::mutex tmu;
  bool spinning = false;             // under tmu: posters skip the eventfd write
  std::atomic<bool> posted{false};   // polled while spinning, set under tmu
  std::vector<std::function<void()>> tasks;
  // Sends from other threads have their own queue: no std::function (and
  // no allocation) per reply on the hot path.
  std::vector<std::pair<conn_id, std::vector<uint8_t>>> sends, sends_ring;
  bool posted_here = false; // ring thread only: it posted to the queues itself

  std::vector<turn_hook> turn_hooks, new_turn_hooks; // new_: under lmu

  std::mutex pool_mu;
  std::vector<std::vector<uint8_t>> pool;

  // The ring thread's own spare buffers, without a lock: the vCPU actors
  // run here and send a reply per event.
  std::vector<std::vector<uint8_t>> pool_here;

  std::vector<uint8_t> take_buffer() {
    std::vector<uint8_t> v;
    if (on_ring() && !pool_here.empty()) {
      v = std::move(pool_here.back());
      pool_here.pop_back();
    } else {
      std::lock_guard lk(pool_mu);
      if (pool.empty())
        return {};
      v = std::move(pool.back());
      pool.pop_back();
    }
    v.clear();
    return v;
  }
  // A few hundred spares serve the replies in flight; more would keep an
  // attach storm's worth of buffers (5,000 of them once) scattered over
  // the heap for good.
  void give_buffer(std::vector<uint8_t>&& v) {
    if (v.capacity() == 0 || v.capacity() > 65536)
      return;
    if (on_ring() && pool_here.size() < 256) {
      pool_here.push_back(std::move(v));
      return;
    }
    std::lock_guard lk(pool_mu);
    if (pool.size() < 256)
      pool.push_back(std::move(v));
  }

  io_uring_sqe* sqe() {
    auto* s = io_uring_get_sqe(&ring);
    if (!s) {
      io_uring_submit(&ring);
      s = io_uring_get_sqe(&ring);
    }
    return s;
  }

  // The reactor whose loop runs on this thread, if any.
  static inline thread_local impl* current = nullptr;
  bool on_ring() const { return current == this; }

  // From the ring thread itself (a turn hook's actors), work goes in the
  // same queues, so it stays in order with what other threads posted, but
  // needs no eventfd: the loop runs the queues before it sleeps.
  void wake_unless(bool quiet) {
    if (quiet)
      return;
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd, &one, sizeof one);
  }

  void post_send(conn_id c, std::vector<uint8_t>&& b) {
    bool local = on_ring();
    // From the ring, while no other thread's send waits: straight onto the
    // connection's queue, without a queue between (an attach storm posts a
    // command per vCPU at once; such a queue grew to megabytes and kept
    // them). A send another thread posted earlier is still in `sends`: then
    // this one queues behind it, so a connection's bytes keep their order.
    if (local && !posted.load(std::memory_order_acquire)) {
      if (auto* x = find(c))
        x->send(std::move(b));
      else
        give_buffer(std::move(b));
      return;
    }
    bool wake;
    {
      std::lock_guard lk(tmu);
      wake = tasks.empty() && sends.empty() && !spinning;
      sends.emplace_back(c, std::move(b));
      posted.store(true, std::memory_order_release);
    }
    if (local)
      posted_here = true; // only the ring thread may touch it
    wake_unless(!wake || local);
  }

  void post(std::function<void()> fn) {
    bool wake;
    bool local = on_ring();
    {
      std::lock_guard lk(tmu);
      wake = tasks.empty() && sends.empty() && !spinning;
      tasks.push_back(std::move(fn));
      posted.store(true, std::memory_order_release);
    }
    if (local)
      posted_here = true; // only the ring thread may touch it
    wake_unless(!wake || local);
  }

  // Runs every turn hook; true when one of them left work for the next turn.
  bool run_turn_hooks(bool stopping) {
    bool more = false;
    for (auto& h : turn_hooks)
      more |= h(stopping);
    if (posted_here) {
      posted_here = false;
      run_tasks();
      more = true; // the tasks may have handed the hooks new work
    }
    return more;
  }

  void arm_wake() {
    auto* s = sqe();
    io_uring_prep_read(s, wake_fd, &wake_val, sizeof wake_val, 0);
    io_uring_sqe_set_data64(s, tag(op_wake, 0));
  }

  void arm_accept(size_t li) {
    auto& l = listeners[li];
    l.addrlen = sizeof l.addr;
    auto* s = sqe();
    io_uring_prep_accept(s, l.fd, reinterpret_cast<sockaddr*>(&l.addr), &l.addrlen,
                         SOCK_CLOEXEC);
    io_uring_sqe_set_data64(s, tag(op_accept, li));
    l.armed = true;
    accepts.fetch_add(1, std::memory_order_relaxed);
  }

  // Listener retries share the connection timers under conn id 0 (never a
  // connection's), the listener's index as the token; the heartbeat too,
  // under a token no listener index reaches.
  static constexpr conn_id listener_timer = 0;
  static constexpr uint64_t heartbeat_token = ~uint64_t(0);

  void arm_heartbeat() {
    if (opts.heartbeat.count() <= 0 || !opts.on_heartbeat)
      return;
    auto it = timers.emplace(clock::now() + opts.heartbeat,
                             std::make_pair(listener_timer, heartbeat_token));
    timer_index[{listener_timer, heartbeat_token}] = it;
  }

  void retry_accept_later(size_t li, int err) {
    auto& l = listeners[li];
    l.backoff = l.backoff.count() == 0 ? opts.accept_backoff
                                       : std::min(l.backoff * 2, opts.accept_backoff_max);
    if (l.failures++ == 0 && log_on(log_error))
      std::fprintf(stderr,
                   "kvmid: accept on %s failed: %s; retrying every %lld..%lld ms until it works\n",
                   l.spec.describe().c_str(), std::strerror(err),
                   static_cast<long long>(opts.accept_backoff.count()),
                   static_cast<long long>(opts.accept_backoff_max.count()));
    auto it = timers.emplace(clock::now() + l.backoff, std::make_pair(listener_timer, li));
    timer_index[{listener_timer, li}] = it;
  }

  void accept_recovered(listener& l) {
    if (l.failures && log_on(log_warn))
      std::fprintf(stderr, "kvmid: accept on %s works again after %llu failed attempts\n",
                   l.spec.describe().c_str(), static_cast<unsigned long long>(l.failures));
    l.failures = 0;
    l.backoff = {};
  }

  void arm_recv(conn& c) {
    if (c.closing || c.recv_armed)
      return;
    auto* s = sqe();
    if (use_multishot) {
      io_uring_prep_recv_multishot(s, c.fd, nullptr, 0, 0);
      s->flags |= IOSQE_BUFFER_SELECT;
      s->buf_group = buf_group;
    } else {
      if (c.rbuf.empty())
        c.rbuf.resize(opts.buffer_size);
      io_uring_prep_recv(s, c.fd, c.rbuf.data(), c.rbuf.size(), 0);
    }
    io_uring_sqe_set_data64(s, tag(op_recv, c.cid));
    c.recv_armed = true;
  }

  // Up to this many queued messages go out in one sendmsg: replies to a
  // VM's vCPUs that were decided together reach its kernel together (one
  // wakeup there, one completion here), not one ring round each.
  static constexpr size_t max_gather = 64;

  void start_send(conn& c) {
    if (c.sending || c.q.empty() || c.fd < 0)
      return;
    c.iov.clear();
    size_t off = c.off;
    for (auto& b : c.q) {
      if (c.iov.size() == max_gather)
        break;
      c.iov.push_back({b.data() + off, b.size() - off});
      off = 0;
    }
    c.mh = {};
    c.mh.msg_iov = c.iov.data();
    c.mh.msg_iovlen = c.iov.size();
    auto* s = sqe();
    io_uring_prep_sendmsg(s, c.fd, &c.mh, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, tag(op_send, c.cid));
    c.sending = true;
  }

  void begin_close(conn& c, close_reason why, bool now) {
    if (c.closing)
      return;
    c.closing = true;
    c.why = why;
    if (now && !c.q.empty()) {
      // The buffers of a send in flight stay until its completion.
      size_t keep = c.sending ? std::min(c.iov.size(), c.q.size()) : 0;
      queued.fetch_sub(c.q.size() - keep, std::memory_order_relaxed);
      c.q.erase(c.q.begin() + keep, c.q.end());
    }
    // Wakes the pending recv (and fails a pending send); finish() runs when
    // nothing is in flight any more.
    ::shutdown(c.fd, SHUT_RDWR);
    maybe_finish(c);
  }

  // Runs on_close and closes the fd once nothing is in flight; the conn
  // object itself goes at the end of the loop iteration (callers may still
  // hold a reference).
  void maybe_finish(conn& c) {
    if (c.finished || !c.closing || c.recv_armed || c.sending)
      return;
    if (!c.notified) {
      c.notified = true;
      // Cancel timers before the handler goes.
      for (auto it = timer_index.lower_bound({c.cid, 0});
           it != timer_index.end() && it->first.first == c.cid;) {
        timers.erase(it->second);
        it = timer_index.erase(it);
      }
      if (c.h)
        c.h->on_close(c, c.why);
    }
    ::close(c.fd);
    c.fd = -1;
    queued.fetch_sub(c.q.size(), std::memory_order_relaxed);
    c.q.clear();
    c.finished = true;
    dead.push_back(c.cid);
  }

  void reap() {
    for (auto id : dead)
      if (conns.erase(id)) // destroys the conn and its handler
        nconns.fetch_sub(1, std::memory_order_relaxed);
    dead.clear();
  }

  void on_accept(size_t li, int res) {
    auto& l = listeners[li];
    l.armed = false;
    if (stop_req.load())
      return;
    if (res < 0 && opts.on_accept_error)
      opts.on_accept_error(-res);
    if (res < 0 && resource_shortage(-res))
      return retry_accept_later(li, -res);
    if (res >= 0) {
      accept_recovered(l);
      auto peer = peer_name(l, res);
      if (!l.handoff || !l.handoff(res, peer)) {
        nconns.fetch_add(1, std::memory_order_relaxed);
        open_conn(res, std::move(peer), l.make);
      }
    }
    if (res != -EBADF && res != -EINVAL)
      arm_accept(li);
  }

  // Serves fd (already counted in nconns), accepted here or by another
  // reactor that handed it over.
  void open_conn(int fd, std::string peer, const handler_factory& make) {
    auto c = std::make_unique<conn>();
    c->r = this;
    c->cid = next_id++;
    c->fd = fd;
    c->peer_ = std::move(peer);
    c->h = make();
    auto* cp = c.get();
    conns.emplace(cp->cid, std::move(c));
    if (!cp->h) {
      begin_close(*cp, close_reason::local, true);
    } else {
      cp->h->on_open(*cp);
      if (!cp->closing)
        arm_recv(*cp);
    }
  }

  static std::string peer_name(const listener& l, int fd) {
    char b[INET6_ADDRSTRLEN + 16] = "";
    switch (l.addr.ss_family) {
      case AF_INET: {
        auto* a = reinterpret_cast<const sockaddr_in*>(&l.addr);
        inet_ntop(AF_INET, &a->sin_addr, b, sizeof b);
        return "tcp:" + std::string(b) + ":" + std::to_string(ntohs(a->sin_port));
      }
      case AF_INET6: {
        auto* a = reinterpret_cast<const sockaddr_in6*>(&l.addr);
        inet_ntop(AF_INET6, &a->sin6_addr, b, sizeof b);
        return "tcp:[" + std::string(b) + "]:" + std::to_string(ntohs(a->sin6_port));
      }
      case AF_VSOCK: {
        auto* a = reinterpret_cast<const sockaddr_vm*>(&l.addr);
        return "vsock:" + std::to_string(a->svm_cid) + ":" + std::to_string(a->svm_port);
      }
      default: {
        std::string p = "unix:" + l.spec.path;
        ucred cr{};
        socklen_t len = sizeof cr;
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0)
          p += " pid=" + std::to_string(cr.pid) + " uid=" + std::to_string(cr.uid);
        return p;
      }
    }
  }

  void on_recv(conn& c, io_uring_cqe* cqe) {
    int res = cqe->res;
    bool more = use_multishot && (cqe->flags & IORING_CQE_F_MORE);
    if (!more)
      c.recv_armed = false;
    if (res > 0) {
      if (use_multishot) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        uint8_t* p = bufs.data() + size_t(bid) * opts.buffer_size;
        if (!c.closing)
          c.h->on_data(c, std::span<const uint8_t>(p, size_t(res)));
        io_uring_buf_ring_add(br, p, opts.buffer_size, bid, io_uring_buf_ring_mask(nbufs), 0);
        io_uring_buf_ring_advance(br, 1);
      } else if (!c.closing) {
        c.h->on_data(c, std::span<const uint8_t>(c.rbuf.data(), size_t(res)));
      }
      if (!c.recv_armed)
        arm_recv(c);
      maybe_finish(c);
      return;
    }
    if (res == -ENOBUFS && !c.closing) {
      arm_recv(c); // buffers come back as handlers return; try again
      return;
    }
    if (res == 0)
      begin_close(c, close_reason::peer_closed, false);
    else if (!c.closing)
      begin_close(c, close_reason::io_error, true);
    maybe_finish(c);
  }

  void on_send(conn& c, int res) {
    c.sending = false;
    if (res < 0) {
      if (!c.closing)
        begin_close(c, close_reason::io_error, true);
      maybe_finish(c);
      return;
    }
    size_t left = size_t(res); // may end inside any of the gathered messages
    while (!c.q.empty()) {
      size_t n = c.q.front().size() - c.off;
      if (left < n) {
        c.off += left;
        break;
      }
      left -= n;
      give_buffer(std::move(c.q.front()));
      c.q.pop_front();
      queued.fetch_sub(1, std::memory_order_relaxed);
      c.off = 0;
    }
    if (c.q.empty() && c.flush_then_close && !c.closing) {
      begin_close(c, close_reason::local, false);
      return;
    }
    if (c.closing && c.q.empty()) {
      maybe_finish(c);
      return;
    }
    start_send(c);
    maybe_finish(c);
  }

  conn* find(conn_id id) {
    auto it = conns.find(id);
    return it == conns.end() || it->second->finished ? nullptr : it->second.get();
  }

  void run_tasks() {
    std::vector<std::function<void()>> mine;
    {
      std::lock_guard lk(tmu);
      mine.swap(tasks);
      sends_ring.swap(sends);
      posted.store(false, std::memory_order_relaxed);
    }
    for (auto& [cid, b] : sends_ring) {
      if (auto* x = find(cid))
        x->send(std::move(b));
      else
        give_buffer(std::move(b));
    }
    sends_ring.clear(); // capacity stays for the next round
    for (auto& t : mine)
      t();
  }

  void fire_timers() {
    auto now = clock::now();
    while (!timers.empty() && timers.begin()->first <= now) {
      auto [cid, token] = timers.begin()->second;
      timer_index.erase({cid, token});
      timers.erase(timers.begin());
      if (cid == listener_timer && token == heartbeat_token) {
        opts.on_heartbeat();
        arm_heartbeat();
        continue;
      }
      if (cid == listener_timer) {
        if (!stop_req.load() && token < listeners.size())
          arm_accept(size_t(token));
        continue;
      }
      if (auto* c = find(cid); c && !c->closing && c->h)
        c->h->on_timer(*c, token);
    }
  }

  void flush_dirty() {
    dirty_run.swap(dirty); // starting a send may list a connection again
    for (auto id : dirty_run)
      if (auto* c = find(id)) {
        c->dirty = false;
        start_send(*c);
      }
    dirty_run.clear(); // capacity stays for the next turn
  }

  // Busy-polls for work posted by other threads or a completion, for at most
  // opts.spin. True when there is work to do without sleeping.
  bool spin_for_work() {
    {
      std::lock_guard lk(tmu);
      if (!tasks.empty() || !sends.empty())
        return true;
      spinning = true;
    }
    auto until = clock::now() + opts.spin;
    bool got = false;
    for (unsigned i = 0; !got; ++i) {
      got = posted.load(std::memory_order_acquire) || io_uring_cq_ready(&ring) > 0
            || (__atomic_load_n(ring.sq.kflags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN);
      if (!got && (i & 63) == 63) {
        if (clock::now() >= until)
          break;
        sched_yield(); // on a busy machine the thread we wait for may need this core
      }
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    std::lock_guard lk(tmu);
    spinning = false;
    return got || !tasks.empty() || !sends.empty();
  }

  void loop() {
    current = this;
    arm_wake();
    arm_heartbeat();
    bool active = false; // the last round handed work on or received some
    bool more = false;   // a turn hook left work: collect completions, do not sleep
    while (true) {
      {
        std::lock_guard lk(lmu);
        for (auto li : new_listeners)
          arm_accept(li);
        new_listeners.clear();
        for (auto& h : new_turn_hooks)
          turn_hooks.push_back(std::move(h));
        new_turn_hooks.clear();
      }
      flush_dirty();
      if (stop_req.load() && conns.empty())
        break;
      __kernel_timespec ts{};
      __kernel_timespec* tsp = nullptr;
      if (more || posted_here) {
        tsp = &ts; // work is waiting here: collect completions, do not sleep
      } else if (!timers.empty()) {
        auto d = timers.begin()->first - clock::now();
        if (d < clock::duration::zero())
          d = clock::duration::zero();
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
        ts.tv_sec = ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        tsp = &ts;
      }
      if (active && opts.spin.count() > 0 && !stop_req.load()) {
        io_uring_submit(&ring); // replies go out before polling for the next work
        active = false;
        if (spin_for_work()) {
          active = true;
          run_tasks();
          flush_dirty();
          ts = {};
          tsp = &ts; // only collect what has completed: there is work
        }
      }
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, tsp, nullptr);
      if (rc < 0 && rc != -ETIME && rc != -EINTR)
        break;
      unsigned head, n = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++n;
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        auto type = static_cast<op_type>(ud >> 56);
        uint64_t id = ud & id_mask;
        switch (type) {
          case op_accept: on_accept(size_t(id), cqe->res); break;
          case op_recv:
            active = true;
            if (auto* c = find(id))
              on_recv(*c, cqe);
            break;
          case op_send:
            if (auto* c = find(id))
              on_send(*c, cqe->res);
            break;
          case op_wake:
            active = true;
            run_tasks();
            if (!stop_req.load() || !conns.empty())
              arm_wake();
            break;
          default: break;
        }
      }
      io_uring_cq_advance(&ring, n);
      fire_timers();
      more = run_turn_hooks(false);
      reap();
      if (stop_req.load()) {
        run_tasks();
        std::vector<conn*> all;
        for (auto& [id, c] : conns)
          all.push_back(c.get());
        for (auto* c : all)
          begin_close(*c, close_reason::shutdown, true);
        reap();
        std::lock_guard lk(lmu);
        for (auto& l : listeners)
          if (l.fd >= 0) {
            ::shutdown(l.fd, SHUT_RDWR);
          }
      }
    }
    run_turn_hooks(true); // the hooks hand what is left to other threads
  }

  void setup_multishot() {
    if (opts.force_plain_recv)
      return;
    nbufs = 1;
    while (nbufs < opts.buffer_count)
      nbufs <<= 1;
    br_size = sizeof(io_uring_buf) * nbufs;
    void* mem = mmap(nullptr, br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
      return;
    br = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(br);
    reg.ring_entries = nbufs;
    reg.bgid = buf_group;
    if (io_uring_register_buf_ring(&ring, &reg, 0) != 0) {
      munmap(mem, br_size);
      br = nullptr;
      return; // older kernel: plain recv
    }
    bufs.resize(size_t(nbufs) * opts.buffer_size);
    for (unsigned i = 0; i < nbufs; ++i)
      io_uring_buf_ring_add(br, bufs.data() + size_t(i) * opts.buffer_size, opts.buffer_size, i,
                            io_uring_buf_ring_mask(nbufs), int(i));
    io_uring_buf_ring_advance(br, int(nbufs));
    // Probe: multishot recv needs IORING_OP_RECV with IORING_RECV_MULTISHOT (5.19+).
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    bool ok = probe && io_uring_opcode_supported(probe, IORING_OP_SOCKET); // 5.19 marker
    if (probe)
      io_uring_free_probe(probe);
    use_multishot = ok;
  }
};

reactor::reactor(reactor_options opts) : impl_(std::make_unique<impl>()) {
  impl_->opts = opts;
  // A completion waits for the ring thread to enter the kernel instead of
  // interrupting it with an IPI while it runs: the thread enters the kernel
  // every turn anyway, and at 64 vCPUs flat out this took a third off the
  // kernel's time per event (1.6 to 1.0 us). IORING_SQ_TASKRUN tells
  // spin_for_work such completions wait. Kernels before 5.19 take neither.
  int rc = io_uring_queue_init(opts.ring_entries, &impl_->ring,
                               IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
  if (rc == -EINVAL)
    rc = io_uring_queue_init(opts.ring_entries, &impl_->ring, 0);
  if (rc < 0)
    throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init");
  impl_->ring_ok = true;
  impl_->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (impl_->wake_fd < 0)
    throw std::system_error(errno, std::generic_category(), "eventfd");
  impl_->setup_multishot();
}

reactor::~reactor() {
  stop();
  for (auto& l : impl_->listeners) {
    if (l.fd >= 0)
      ::close(l.fd);
    struct stat st{};
    if (l.created && ::lstat(l.spec.path.c_str(), &st) == 0 && st.st_dev == l.dev
        && st.st_ino == l.ino)
      ::unlink(l.spec.path.c_str()); // still the file this listener bound
  }
  if (impl_->br) {
    io_uring_unregister_buf_ring(&impl_->ring, buf_group);
    munmap(impl_->br, impl_->br_size);
  }
  if (impl_->ring_ok)
    io_uring_queue_exit(&impl_->ring);
  if (impl_->wake_fd >= 0)
    ::close(impl_->wake_fd);
}

int reactor::add_listener(const listen_spec& spec, handler_factory make, handoff_fn handoff) {
  auto fail = [&](const char* what) {
    throw std::system_error(errno, std::generic_category(),
                            std::string(what) + " " + spec.describe());
  };
  int fd = -1;
  uint16_t port = 0;
  listener l;
  switch (spec.type) {
    case listen_spec::kind::unix_socket: {
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      if (spec.path.empty() || spec.path.size() >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        fail("bad socket path");
      }
      std::memcpy(a.sun_path, spec.path.data(), spec.path.size());
      auto lk = instance_lock::acquire(spec.path + ".lock", spec.describe());
      if (auto* why = std::get_if<lock_error>(&lk))
        throw std::system_error(why->err, std::generic_category(), why->message);
      l.lock = std::move(std::get<instance_lock>(lk));
      struct stat st{};
      if (::lstat(spec.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
        // Another server (one that takes no lock) may still accept there:
        // replacing its file would cut it off from every new peer.
        if (!unix_socket_stale(spec.path)) {
          errno = EADDRINUSE;
          fail("a server still accepts connections on");
        }
        ::unlink(spec.path.c_str()); // stale: its server is gone
      }
      fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0)
        fail("socket");
      if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
        int e = errno;
        ::close(fd);
        errno = e;
        fail("bind");
      }
      if (::chmod(spec.path.c_str(), spec.mode) < 0
          || ((spec.uid >= 0 || spec.gid >= 0)
              && ::chown(spec.path.c_str(), uid_t(spec.uid), gid_t(spec.gid)) < 0)) {
        int e = errno;
        ::close(fd);
        errno = e;
        fail("chmod/chown");
      }
      if (::lstat(spec.path.c_str(), &st) == 0) {
        l.created = true;
        l.dev = st.st_dev;
        l.ino = st.st_ino;
      }
      break;
    }
    case listen_spec::kind::tcp: {
      sockaddr_storage ss{};
      socklen_t len = 0;
      auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
      auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
      if (inet_pton(AF_INET, spec.host.c_str(), &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(spec.port);
        len = sizeof *a4;
      } else if (inet_pton(AF_INET6, spec.host.c_str(), &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(spec.port);
        len = sizeof *a6;
      } else {
        errno = EINVAL;
        fail("bad address");
      }
      fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0)
        fail("socket");
      int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
        int e = errno;
        ::close(fd);
        errno = e;
        fail("bind");
      }
      socklen_t l2 = sizeof ss;
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &l2);
      port = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);
      break;
    }
    case listen_spec::kind::vsock: {
      sockaddr_vm a{};
      a.svm_family = AF_VSOCK;
      a.svm_cid = spec.cid;
      a.svm_port = spec.vport;
      fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0)
        fail("socket");
      if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
        int e = errno;
        ::close(fd);
        errno = e;
        fail("bind");
      }
      break;
    }
  }
  if (::listen(fd, 1024) < 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    fail("listen");
  }
  std::lock_guard lk(impl_->lmu);
  l.fd = fd;
  l.spec = spec;
  l.make = std::move(make);
  l.handoff = std::move(handoff);
  l.port = port;
  impl_->listeners.push_back(std::move(l));
  size_t idx = impl_->listeners.size() - 1;
  impl_->new_listeners.push_back(idx);
  if (impl_->run_flag.load())
    impl_->post([] {}); // wake the ring so it arms the accept
  return int(idx);
}

uint16_t reactor::bound_port(int l) const {
  std::lock_guard lk(impl_->lmu);
  return l >= 0 && size_t(l) < impl_->listeners.size() ? impl_->listeners[size_t(l)].port : 0;
}

void reactor::start() {
  if (impl_->run_flag.exchange(true))
    return;
  impl_->th = std::thread([this] {
    // Named, so top -H, perf and /proc show which thread serves the sockets.
    pthread_setname_np(pthread_self(), impl_->opts.thread_name.c_str());
    impl_->loop();
  });
}

void reactor::stop() {
  if (!impl_->run_flag.load())
    return;
  impl_->stop_req.store(true);
  impl_->post([] {});
  if (impl_->th.joinable())
    impl_->th.join();
  impl_->run_flag.store(false);
}

bool reactor::running() const { return impl_->run_flag.load(); }
bool reactor::multishot() const { return impl_->use_multishot; }
size_t reactor::connections() const { return impl_->nconns.load(); }
size_t reactor::queued_total() const { return impl_->queued.load(); }
uint64_t reactor::accept_attempts() const { return impl_->accepts.load(); }
std::vector<uint8_t> reactor::take_buffer() { return impl_->take_buffer(); }

void reactor::post_send(conn_id c, std::vector<uint8_t> bytes) {
  impl_->post_send(c, std::move(bytes));
}

void reactor::post_close(conn_id c) {
  auto* im = impl_.get();
  im->post([im, c] {
    if (auto* x = im->find(c))
      x->close(false);
  });
}

void reactor::post(conn_id c, std::function<void(conn_ctx&, connection_handler&)> fn) {
  auto* im = impl_.get();
  im->post([im, c, fn = std::move(fn)] {
    if (auto* x = im->find(c); x && !x->closing && x->h)
      x->h->run_posted(*x, fn);
  });
}

void reactor::post(std::function<void()> fn) { impl_->post(std::move(fn)); }

namespace {
// An accepted socket on its way to another ring, counted there: closed and
// uncounted unless that ring takes it (it may stop first, and its queued
// tasks then never run).
struct handed_conn {
  std::atomic<size_t>* nconns;
  int fd;
  handed_conn(std::atomic<size_t>* n, int f) : nconns(n), fd(f) {
    // Counted at once: whoever places the next socket by connections()
    // sees this one, though it opens at the ring's next turn.
    nconns->fetch_add(1, std::memory_order_relaxed);
  }
  handed_conn(const handed_conn&) = delete;
  handed_conn& operator=(const handed_conn&) = delete;
  ~handed_conn() {
    if (fd >= 0) {
      ::close(fd);
      nconns->fetch_sub(1, std::memory_order_relaxed);
    }
  }
};
} // namespace

void reactor::adopt(int fd, std::string peer, handler_factory make) {
  auto* im = impl_.get();
  auto h = std::make_shared<handed_conn>(&im->nconns, fd);
  im->post([im, h, peer = std::move(peer), make = std::move(make)]() mutable {
    if (!im->stop_req.load()) // else closed with the task
      im->open_conn(std::exchange(h->fd, -1), std::move(peer), make);
  });
}

void reactor::add_turn_hook(turn_hook h) {
  std::lock_guard lk(impl_->lmu);
  impl_->new_turn_hooks.push_back(std::move(h));
}

bool reactor::on_ring_thread() const { return impl_->on_ring(); }

} // namespace kvmid::net
