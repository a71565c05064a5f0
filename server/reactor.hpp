// The io_uring reactor (the KVMI sessions and the control plane build on
// it: change it additively). Everything here except the `reactor` thread-safe
// post_* functions runs on the ring thread and must never block or wait on
// an actor: hand work to actors with anon_send / control_api and come back
// through reactor::post_send / post.
//
// A listener kind (KVMI, HTTP, ...) is a listen_spec plus a handler_factory;
// every accepted connection gets its own connection_handler. The reactor does
// accept, recv (multishot into provided buffers where the kernel supports it,
// plain recv otherwise) and send (one send per queued message, in order) for
// every socket, and per-connection timers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid::net {

using conn_id = uint64_t; // never reused within one reactor

// Where to listen.
struct listen_spec {
  enum class kind : uint8_t { unix_socket, tcp, vsock };
  kind type = kind::unix_socket;
  // unix_socket: created. A socket file already there is replaced only when
  // nothing accepts on it (connect refused: stale); "<path>.lock" is held
  // meanwhile, so a second server on the same path fails instead.
  std::string path;
  uint32_t mode = 0600;      // unix_socket: chmod of the socket file
  int64_t uid = -1;          // unix_socket: chown owner, -1 keeps
  int64_t gid = -1;          // unix_socket: chown group, -1 keeps
  std::string host = "127.0.0.1"; // tcp: numeric IPv4/IPv6 address
  uint16_t port = 0;         // tcp: 0 picks a free port (see reactor::bound_port)
  uint32_t cid = 0xFFFFFFFFu; // vsock: VMADDR_CID_ANY by default
  uint32_t vport = 0;        // vsock port
  std::string describe() const; // "unix:/path", "tcp:127.0.0.1:8080", "vsock:-1:9999"
};

enum class close_reason : uint8_t {
  peer_closed,  // orderly EOF
  io_error,     // recv/send failed
  local,        // the handler or an actor asked for it
  queue_full,   // the bounded send queue overflowed
  shutdown,     // reactor stopping
};
std::string_view name(close_reason r);

// The ring-thread view of one connection, handed to the handler's callbacks.
// Valid only inside those callbacks (do not keep the reference).
class conn_ctx {
public:
  virtual ~conn_ctx() = default;
  virtual conn_id id() const = 0;
  // "unix:/path pid=1 uid=0" (SO_PEERCRED), "tcp:1.2.3.4:5", "vsock:3:1024"
  virtual const std::string& peer() const = 0;
  // Queues a copy of bytes as one send (header+payload of one message go in
  // one call). Returns false when the bounded queue is full: the connection
  // is then closed with close_reason::queue_full.
  virtual bool send(std::span<const uint8_t> bytes) = 0;
  // Same, taking over a buffer (no copy).
  virtual bool send(std::vector<uint8_t>&& bytes) = 0;
  // Closes after the queued sends have gone out (or at once if `now`).
  virtual void close(bool now = false) = 0;
  // One-shot timer; on expiry handler->on_timer(ctx, token). Re-arming the
  // same token replaces the old timer.
  virtual void set_timer(std::chrono::milliseconds after, uint64_t token) = 0;
  virtual void cancel_timer(uint64_t token) = 0;
  virtual size_t queued() const = 0; // messages waiting to be sent
};

class connection_handler;
using posted_fn = std::function<void(conn_ctx&, connection_handler&)>;

// One per accepted connection; all callbacks run on the ring thread.
class connection_handler {
public:
  virtual ~connection_handler() = default;
  virtual void on_open(conn_ctx&) {}
  // Bytes as they arrived (no framing). The span is only valid during the call.
  virtual void on_data(conn_ctx&, std::span<const uint8_t> bytes) = 0;
  virtual void on_timer(conn_ctx&, uint64_t /*token*/) {}
  // Called once; the handler is destroyed right after.
  virtual void on_close(conn_ctx&, close_reason) {}
  // Work posted for this connection (reactor::post). A handler that wraps
  // another (TLS) passes it on with the ctx the wrapped handler sees.
  virtual void run_posted(conn_ctx& ctx, const posted_fn& fn) { fn(ctx, *this); }
};

using handler_factory = std::function<std::unique_ptr<connection_handler>()>;

// Called on the ring thread with each socket a listener accepts and its
// peer's name: true when it took the socket (to serve it on another
// reactor, reactor::adopt), false to serve it here.
using handoff_fn = std::function<bool(int fd, const std::string& peer)>;

// Work the ring thread does after each turn's completions, before it sleeps:
// the actors a KVMI session hosts on the ring run here. Returns true when it
// left work for the next turn (the ring then collects completions without
// sleeping). Called once more with stopping = true after the last turn, to
// hand what is left to other threads.
using turn_hook = std::function<bool(bool stopping)>;

struct reactor_options {
  // The ring thread's name (top -H, perf, /proc): at most 15 characters.
  std::string thread_name = "kvmid-ring";
  unsigned ring_entries = 1024;
  size_t send_queue_limit = 4096;  // messages per connection
  unsigned buffer_count = 512;     // provided recv buffers (multishot)
  unsigned buffer_size = 16384;
  bool force_plain_recv = false;   // tests: take the fallback path even if multishot works
  // After a turn that received data or ran posted work, the ring polls
  // this long for more (a completion, work another thread posts) before it
  // sleeps in the kernel: what comes meanwhile is handled without waking
  // the thread. Off by default, since while work keeps coming the ring
  // never sleeps and spends a core (config/README.md has the bench's
  // figures).
  std::chrono::microseconds spin{0};
  // An accept that fails for want of resources (EMFILE, ENFILE, ENOBUFS,
  // ENOMEM) is retried after this delay, doubling up to accept_backoff_max
  // while it keeps failing, instead of at once (which spins a core).
  std::chrono::milliseconds accept_backoff{50};
  std::chrono::milliseconds accept_backoff_max{1000};
  // Called on the ring thread for every failed accept, with its errno.
  std::function<void(int err)> on_accept_error;
  // Called on the ring thread every `heartbeat` (0: never), from the loop
  // that serves the sockets: a ring thread stuck anywhere stops calling it
  // (a service manager's watchdog takes that as a hung kvmid).
  std::chrono::milliseconds heartbeat{0};
  std::function<void()> on_heartbeat;
};

class reactor {
public:
  explicit reactor(reactor_options opts = {});
  ~reactor(); // stops and joins
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;

  // Before or after start(), from any thread. Throws std::system_error with
  // the address on failure (bind/listen), so start-up can name it.
  int add_listener(const listen_spec& spec, handler_factory make, handoff_fn handoff = {});
  // The TCP port actually bound (for port 0), or 0.
  uint16_t bound_port(int listener) const;

  void start();  // spawns the ring thread
  void stop();   // closes every connection (close_reason::shutdown) and joins
  bool running() const;
  bool multishot() const; // true when multishot recv with provided buffers is in use

  // Thread-safe: from actors, API callbacks, anything. They never block on
  // the ring (a mutex-protected queue + eventfd wake-up) and are dropped
  // silently for a connection that is gone.
  void post_send(conn_id c, std::vector<uint8_t> bytes);
  void post_close(conn_id c);
  // Runs fn on the ring thread with the connection's ctx/handler if it
  // still exists.
  void post(conn_id c, std::function<void(conn_ctx&, connection_handler&)> fn);
  void post(std::function<void()> fn);
  // Thread-safe: serves fd, a socket another reactor accepted, from this
  // reactor's next turn, with a handler from make; counted in connections()
  // at once. Closed if this reactor stops first.
  void adopt(int fd, std::string peer, handler_factory make);

  // From any thread; takes effect at the ring's next turn.
  void add_turn_hook(turn_hook h);
  bool on_ring_thread() const;

  size_t connections() const;
  size_t queued_total() const; // messages waiting on every connection (metrics)
  uint64_t accept_attempts() const; // accepts submitted on every listener

  // Thread-safe pool of send buffers (capacity kept): take one, fill it,
  // hand it to post_send / ctx.send; the ring returns it after sending.
  std::vector<uint8_t> take_buffer();

  struct impl;

private:
  std::unique_ptr<impl> impl_;
};

} // namespace kvmid::net
