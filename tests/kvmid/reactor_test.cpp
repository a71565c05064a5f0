// The io_uring reactor on real UNIX and TCP sockets: echo through both recv
// paths, per-connection timers, the bounded send queue, and sends posted
// from other threads.
#include "server/reactor.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

using namespace kvmid::net;
using namespace std::chrono_literals;
using kvmid::test::connect_unix;
using kvmid::test::temp_dir;
using kvmid::test::wait_eof;
using kvmid::test::wait_until;

namespace {

// Multishot recv into a provided-buffer ring needs Linux 5.19.
bool kernel_has_multishot_recv() {
  utsname u{};
  ::uname(&u);
  int major = 0, minor = 0;
  std::sscanf(u.release, "%d.%d", &major, &minor);
  return major > 5 || (major == 5 && minor >= 19);
}

// Reads exactly n bytes or fails after 30 s (a hang is a failure, not a wait).
std::string read_n(int fd, size_t n) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0)
      continue;
    char b[65536];
    auto r = ::recv(fd, b, std::min(sizeof b, n - out.size()), 0);
    if (r <= 0)
      break;
    out.append(b, size_t(r));
  }
  return out;
}


struct echo : connection_handler {
  std::atomic<int>* closes;
  explicit echo(std::atomic<int>* c) : closes(c) {}
  void on_data(conn_ctx& c, std::span<const uint8_t> b) override {
    if (b.size() >= 4 && std::memcmp(b.data(), "quit", 4) == 0)
      return c.close();
    c.send(b);
  }
  void on_close(conn_ctx&, close_reason) override { ++*closes; }
};

void echo_roundtrip(bool plain) {
  kvmid::test::temp_dir d("reactor");
  reactor_options o;
  o.force_plain_recv = plain;
  reactor r(o);
  if (plain)
    CHECK_FALSE(r.multishot());
  else
    CHECK(r.multishot() == kernel_has_multishot_recv());
  std::atomic<int> closes{0};
  listen_spec s;
  s.path = (d.path() / "echo.sock").string();
  s.mode = 0640;
  r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
  struct stat st{};
  REQUIRE(::stat(s.path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0640);
  r.start();
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i)
    fds.push_back(connect_unix(s.path));
  // Large messages cross many provided buffers and partial sends.
  std::string big(200000, 'x');
  for (size_t i = 0; i < big.size(); ++i)
    big[i] = char('a' + (i * 7) % 26);
  for (int fd : fds) {
    std::thread w([&] { ::send(fd, big.data(), big.size(), MSG_NOSIGNAL); });
    CHECK(read_n(fd, big.size()) == big);
    w.join();
  }
  for (int fd : fds) {
    ::send(fd, "quit", 4, MSG_NOSIGNAL);
    CHECK(wait_eof(fd));
    ::close(fd);
  }
  CHECK(wait_until([&] { return closes.load() == 8; }, "8 connections closed"));
  CHECK(r.connections() == 0);
  r.stop();
}

} // namespace

TEST_CASE("echo over a UNIX socket with multishot recv (when available)") { echo_roundtrip(false); }
TEST_CASE("echo over a UNIX socket with the plain recv fallback") { echo_roundtrip(true); }

TEST_CASE("timers fire per connection and can be cancelled") {
  kvmid::test::temp_dir d("reactor");
  reactor r;
  std::promise<uint64_t> fired;
  struct timed : connection_handler {
    std::promise<uint64_t>* p;
    void on_open(conn_ctx& c) override {
      c.set_timer(50ms, 1);
      c.set_timer(20ms, 2);
      c.cancel_timer(2);
    }
    void on_data(conn_ctx&, std::span<const uint8_t>) override {}
    void on_timer(conn_ctx& c, uint64_t t) override {
      p->set_value(t);
      c.close(true);
    }
  };
  listen_spec s;
  s.path = (d.path() / "t.sock").string();
  r.add_listener(s, [&] {
    auto h = std::make_unique<timed>();
    h->p = &fired;
    return h;
  });
  r.start();
  int fd = connect_unix(s.path);
  auto f = fired.get_future();
  CHECK(kvmid::test::get_within(std::move(f), "a timer to fire") == 1);
  CHECK(wait_eof(fd));
  ::close(fd);
}

TEST_CASE("a full send queue closes that connection only - posted sends arrive in order") {
  kvmid::test::temp_dir d("reactor");
  reactor_options o;
  o.send_queue_limit = 64;
  reactor r(o);
  std::mutex mu;
  std::vector<conn_id> ids;
  std::atomic<int> queue_full{0};
  struct h : connection_handler {
    std::mutex* mu;
    std::vector<conn_id>* ids;
    std::atomic<int>* qf;
    void on_open(conn_ctx& c) override {
      std::lock_guard lk(*mu);
      ids->push_back(c.id());
    }
    void on_data(conn_ctx& c, std::span<const uint8_t>) override {
      // Flood: a peer that never reads cannot hold more than the bound.
      std::vector<uint8_t> chunk(1 << 18, 0x5a);
      for (int i = 0; i < 1000 && c.send(std::span<const uint8_t>(chunk)); ++i) {
      }
    }
    void on_close(conn_ctx& c, close_reason why) override {
      if (why == close_reason::queue_full) {
        std::lock_guard lk(*mu);
        std::erase(*ids, c.id()); // what is left is the calm connection
        ++*qf;
      }
    }
  };
  listen_spec s;
  s.path = (d.path() / "q.sock").string();
  r.add_listener(s, [&] {
    auto x = std::make_unique<h>();
    x->mu = &mu;
    x->ids = &ids;
    x->qf = &queue_full;
    return x;
  });
  r.start();
  int flood = connect_unix(s.path);
  int calm = connect_unix(s.path);
  REQUIRE(wait_until(
    [&] {
      std::lock_guard lk(mu);
      return ids.size() == 2;
    },
    "both connections open"));
  ::send(flood, "go", 2, MSG_NOSIGNAL);
  REQUIRE(wait_until([&] { return queue_full.load() > 0; }, "the flooding connection closed"));
  CHECK(queue_full.load() == 1);
  conn_id calm_id;
  {
    std::lock_guard lk(mu);
    REQUIRE(ids.size() == 1);
    calm_id = ids[0];
  }
  // Sends posted from several threads arrive whole and, per thread, in order.
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) { // 40 in all: within the bound of 64
        auto b = r.take_buffer();
        b.assign({uint8_t(t), uint8_t(i), 0xee, 0xff});
        r.post_send(calm_id, std::move(b));
      }
    });
  for (auto& t : ts)
    t.join();
  auto got = read_n(calm, 160);
  REQUIRE(got.size() == 160);
  int next[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < got.size(); i += 4) {
    int t = uint8_t(got[i]);
    REQUIRE(t < 4);
    CHECK(uint8_t(got[i + 1]) == next[t]++);
    CHECK(uint8_t(got[i + 2]) == 0xee);
  }
  r.post_close(calm_id);
  CHECK(wait_eof(calm));
  ::close(flood);
  ::close(calm);
  r.post_send(calm_id, {1, 2, 3}); // a gone connection: dropped, no crash
}

TEST_CASE("sends from the ring and from another thread keep the order they were made in") {
  kvmid::test::temp_dir d("reactor");
  reactor r(reactor_options{});
  // On the ring (on_data), each step is made after the one before: a
  // thread's send posted and joined, then the ring's own, and the other way
  // round. The ring's own send goes straight to the connection unless
  // another thread's waits in the queue: then it must queue behind it.
  struct h : connection_handler {
    reactor* r = nullptr;
    void on_data(conn_ctx& c, std::span<const uint8_t>) override {
      auto send = [&](uint8_t tag) {
        auto b = r->take_buffer();
        b.assign({tag, 0xee});
        r->post_send(c.id(), std::move(b));
      };
      auto from_thread = [&](uint8_t tag) { std::thread([&] { send(tag); }).join(); };
      from_thread(1); // waits in the queue: the ring is busy here
      send(2);
      send(3);
      from_thread(4);
      send(5);
    }
  };
  listen_spec s;
  s.path = (d.path() / "order.sock").string();
  r.add_listener(s, [&] {
    auto x = std::make_unique<h>();
    x->r = &r;
    return x;
  });
  r.start();
  int fd = connect_unix(s.path);
  ::send(fd, "go", 2, MSG_NOSIGNAL);
  auto got = read_n(fd, 10);
  REQUIRE(got.size() == 10);
  for (size_t i = 0; i < 5; ++i) {
    CHECK(int(uint8_t(got[2 * i])) == int(i + 1));
    CHECK(uint8_t(got[2 * i + 1]) == 0xee);
  }
  ::close(fd);
}

TEST_CASE("tcp listeners bind loopback and report the port - bad addresses throw") {
  reactor r;
  std::atomic<int> closes{0};
  listen_spec s;
  s.type = listen_spec::kind::tcp;
  s.port = 0;
  int li = r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
  uint16_t port = r.bound_port(li);
  CHECK(port != 0);
  r.start();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  ::send(fd, "hello", 5, MSG_NOSIGNAL);
  CHECK(read_n(fd, 5) == "hello");
  ::close(fd);
  listen_spec bad;
  bad.type = listen_spec::kind::tcp;
  bad.host = "not-an-address";
  CHECK_THROWS_AS(r.add_listener(bad, [&] { return std::make_unique<echo>(&closes); }),
                  std::system_error);
  listen_spec badpath;
  badpath.path = "/nonexistent-dir/x.sock";
  CHECK_THROWS_AS(r.add_listener(badpath, [&] { return std::make_unique<echo>(&closes); }),
                  std::system_error);
}

namespace {

// A handler that answers from another thread, as a vCPU actor does: each
// message is handed to a worker that posts the reply after a delay spread
// around the ring's polling window, so replies land before, during and after
// the ring's polling. A lost wakeup shows as a missing reply.
void ping_pong_from_other_thread(std::chrono::microseconds spin) {
  kvmid::test::temp_dir d("reactor");
  reactor_options o;
  o.spin = spin;
  reactor r(o);
  struct worker_state {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<conn_id, uint32_t>> q;
    bool stop = false;
  } w;
  std::thread worker([&] {
    uint32_t n = 0;
    while (true) {
      std::unique_lock lk(w.mu);
      w.cv.wait(lk, [&] { return w.stop || !w.q.empty(); });
      if (w.q.empty())
        return;
      auto [id, v] = w.q.front();
      w.q.erase(w.q.begin());
      lk.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds((n++ * 37) % 120));
      auto b = r.take_buffer();
      b.resize(4);
      std::memcpy(b.data(), &v, 4);
      r.post_send(id, std::move(b));
    }
  });
  struct h : connection_handler {
    worker_state* w;
    void on_data(conn_ctx& c, std::span<const uint8_t> b) override {
      std::lock_guard lk(w->mu);
      for (size_t i = 0; i + 4 <= b.size(); i += 4) {
        uint32_t v;
        std::memcpy(&v, b.data() + i, 4);
        w->q.emplace_back(c.id(), v + 1);
      }
      w->cv.notify_one();
    }
  };
  listen_spec s;
  s.path = (d.path() / "pp.sock").string();
  r.add_listener(s, [&] {
    auto x = std::make_unique<h>();
    x->w = &w;
    return x;
  });
  r.start();
  int fd = connect_unix(s.path);
  for (uint32_t i = 0; i < 1000; ++i) {
    REQUIRE(::send(fd, &i, 4, MSG_NOSIGNAL) == 4);
    auto got = read_n(fd, 4);
    REQUIRE(got.size() == 4);
    uint32_t v;
    std::memcpy(&v, got.data(), 4);
    REQUIRE(v == i + 1);
  }
  {
    std::lock_guard lk(w.mu);
    w.stop = true;
  }
  w.cv.notify_one();
  worker.join();
  ::close(fd);
  r.stop();
}

} // namespace

TEST_CASE("replies posted from another thread arrive with the ring polling for 50 us") {
  ping_pong_from_other_thread(50us);
}
TEST_CASE("replies posted from another thread arrive with polling off") {
  ping_pong_from_other_thread(0us);
}
TEST_CASE("replies posted from another thread arrive with the ring polling for 1 ms") {
  ping_pong_from_other_thread(1000us);
}

TEST_CASE("queued messages go out gathered - whole and in order across partial sends") {
  kvmid::test::temp_dir d("reactor");
  reactor r;
  std::promise<conn_id> opened;
  struct h : connection_handler {
    std::promise<conn_id>* opened;
    void on_open(conn_ctx& c) override { opened->set_value(c.id()); }
    void on_data(conn_ctx&, std::span<const uint8_t>) override {}
  };
  listen_spec s;
  s.path = (d.path() / "g.sock").string();
  r.add_listener(s, [&] {
    auto x = std::make_unique<h>();
    x->opened = &opened;
    return x;
  });
  r.start();
  int fd = connect_unix(s.path);
  auto f = opened.get_future();
  conn_id id = kvmid::test::get_within(std::move(f), "the connection's id");
  // 3,000 messages of 1..2,999 bytes (about 4.5 MB, far more than the socket
  // buffer) posted while the peer reads nothing: sends end inside messages.
  std::string expect;
  for (uint32_t i = 0; i < 3000; ++i) {
    auto b = r.take_buffer();
    b.resize(1 + (i * 7919) % 2999);
    for (size_t k = 0; k < b.size(); ++k)
      b[k] = uint8_t(i + k);
    expect.append(b.begin(), b.end());
    r.post_send(id, std::move(b));
  }
  auto got = read_n(fd, expect.size());
  CHECK(got.size() == expect.size());
  CHECK(got == expect);
  ::close(fd);
  r.stop();
}

namespace {

// Lowers RLIMIT_NOFILE for one test and restores it, whatever happens.
struct fd_limit {
  rlimit old{};
  explicit fd_limit(rlim_t soft) {
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    rlimit l = old;
    l.rlim_cur = soft;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &l) == 0);
  }
  ~fd_limit() { ::setrlimit(RLIMIT_NOFILE, &old); }
};

int highest_open_fd() {
  int hi = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
    hi = std::max(hi, std::atoi(e.path().filename().c_str()));
  return hi;
}

} // namespace

// Not under the sanitizers: their runtimes open files of their own, which
// fail at the fd limit this test sets.
TEST_CASE("accept at the fd limit backs off instead of spinning - and recovers when fds free up"
          * doctest::test_suite("no-sanitize")) {
  temp_dir d;
  reactor_options o;
  std::atomic<int> emfile{0};
  o.on_accept_error = [&](int err) {
    if (err == EMFILE)
      ++emfile;
  };
  reactor r(o);
  std::atomic<int> closes{0};
  listen_spec s;
  s.path = (d.path() / "fd.sock").string();
  r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
  r.start();
  int warm = connect_unix(s.path); // the ring is up and its accept armed
  ::send(warm, "x", 1, MSG_NOSIGNAL);
  REQUIRE(read_n(warm, 1) == "x");
  ::close(warm);
  // Client sockets made before the limit: connecting them later needs no
  // new fd in this process, so their connections wait on an accept that
  // has none to give.
  std::vector<int> clients;
  for (int i = 0; i < 4; ++i)
    clients.push_back(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, s.path.c_str(), sizeof addr.sun_path - 1);
  std::vector<int> fillers;
  {
    fd_limit lim(rlim_t(highest_open_fd() + 32));
    while (true) { // every fd the limit allows
      int f = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (f < 0) {
        REQUIRE(errno == EMFILE);
        break;
      }
      fillers.push_back(f);
    }
    // An accept armed before the limit was lowered may still take one
    // connection past it (the kernel reads the limit when the accept is
    // queued); the accept armed after it finds no fd for the next one.
    for (int c : clients) {
      REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
      auto deadline = std::chrono::steady_clock::now() + 3s;
      while (emfile.load() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
      if (emfile.load() > 0)
        break;
    }
    REQUIRE_MESSAGE(emfile.load() > 0, "no accept failed with EMFILE with 4 connections waiting");
    // A second of the fd limit: without a back-off the ring re-submits the
    // failing accept hundreds of thousands of times.
    uint64_t before = r.accept_attempts();
    std::this_thread::sleep_for(1s);
    uint64_t attempts = r.accept_attempts() - before;
    INFO("accept attempts in 1 s at the fd limit: " << attempts);
    CHECK(attempts < 50);
    for (int f : fillers)
      ::close(f);
  }
  // fds are free again: a new connection is accepted and served.
  int fresh = connect_unix(s.path);
  ::send(fresh, "again", 5, MSG_NOSIGNAL);
  CHECK(read_n(fresh, 5) == "again");
  ::close(fresh);
  for (int c : clients)
    ::close(c);
}

TEST_CASE("a second listener on a live socket path fails and the first keeps accepting") {
  temp_dir d;
  std::atomic<int> closes{0};
  auto make = [&] { return std::make_unique<echo>(&closes); };
  listen_spec s;
  s.path = (d.path() / "live.sock").string();
  reactor first;
  first.add_listener(s, make);
  first.start();
  {
    reactor second;
    try {
      second.add_listener(s, make);
      FAIL("the second listener on " << s.path << " was accepted");
    } catch (const std::system_error& e) {
      std::string what = e.what();
      INFO(what);
      CHECK(what.find(s.path) != std::string::npos);
      CHECK(what.find("pid " + std::to_string(::getpid())) != std::string::npos);
    }
  } // the second reactor goes: it must not take the first's socket file along
  int fd = connect_unix(s.path);
  ::send(fd, "still", 5, MSG_NOSIGNAL);
  CHECK(read_n(fd, 5) == "still");
  ::close(fd);
}

TEST_CASE("a socket file some other server accepts on is never replaced - a stale one is") {
  temp_dir d;
  std::atomic<int> closes{0};
  auto make = [&] { return std::make_unique<echo>(&closes); };
  auto bound = [](const std::string& path, bool listening) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    if (listening)
      REQUIRE(::listen(fd, 8) == 0);
    return fd;
  };
  listen_spec live;
  live.path = (d.path() / "foreign.sock").string();
  int foreign = bound(live.path, true);
  {
    reactor r;
    CHECK_THROWS_AS(r.add_listener(live, make), std::system_error);
  }
  int c = connect_unix(live.path); // the foreign server is still reachable
  ::close(c);
  ::close(foreign);

  listen_spec stale;
  stale.path = (d.path() / "stale.sock").string();
  ::close(bound(stale.path, false)); // the file of a server that is gone
  reactor r;
  r.add_listener(stale, make);
  r.start();
  int fd = connect_unix(stale.path);
  ::send(fd, "fresh", 5, MSG_NOSIGNAL);
  CHECK(read_n(fd, 5) == "fresh");
  ::close(fd);
}

// A kvmid killed a moment ago: the kernel keeps its listener accepting
// until the dead process's io_uring is torn down, and the restarted kvmid
// must not wait on it. Here a child calls listen() on a socket this process
// holds, then exits: the listener accepts, under the credentials of a
// process that is gone.
TEST_CASE("a socket whose listening process is gone is stale although it still accepts") {
  temp_dir d;
  std::atomic<int> closes{0};
  listen_spec s;
  s.path = (d.path() / "left.sock").string();
  int left = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, s.path.c_str(), sizeof a.sun_path - 1);
  REQUIRE(::bind(left, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0)
    ::_exit(::listen(left, 8) == 0 ? 0 : 1);
  int st = 0;
  REQUIRE(::waitpid(child, &st, 0) == child);
  REQUIRE((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  ::close(connect_unix(s.path)); // it still accepts
  reactor r;
  r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
  r.start();
  int fd = connect_unix(s.path);
  ::send(fd, "mine", 4, MSG_NOSIGNAL);
  CHECK(read_n(fd, 4) == "mine");
  ::close(fd);
  ::close(left);
}

TEST_CASE("a reactor removes only the socket file it created") {
  temp_dir d;
  std::atomic<int> closes{0};
  listen_spec s;
  s.path = (d.path() / "mine.sock").string();
  {
    reactor r;
    r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
    r.start();
    r.stop();
    // Someone else's file now sits at the path.
    REQUIRE(::unlink(s.path.c_str()) == 0);
    int other = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, s.path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(other, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    ::close(other);
  }
  CHECK(std::filesystem::exists(s.path));
  {
    reactor r;
    r.add_listener(s, [&] { return std::make_unique<echo>(&closes); });
  }
  CHECK_FALSE(std::filesystem::exists(s.path)); // its own file goes
}

TEST_CASE("a UNIX peer is named with its pid and uid") {
  temp_dir d;
  reactor r;
  std::promise<std::string> peer;
  struct h : connection_handler {
    std::promise<std::string>* p;
    void on_open(conn_ctx& c) override { p->set_value(c.peer()); }
    void on_data(conn_ctx&, std::span<const uint8_t>) override {}
  };
  listen_spec s;
  s.path = (d.path() / "cred.sock").string();
  r.add_listener(s, [&] {
    auto x = std::make_unique<h>();
    x->p = &peer;
    return x;
  });
  r.start();
  int fd = connect_unix(s.path);
  auto f = peer.get_future();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(f.get()
        == "unix:" + s.path + " pid=" + std::to_string(::getpid())
             + " uid=" + std::to_string(::getuid()));
  ::close(fd);
}

// A watchdog fed by the heartbeat must starve when the ring is stuck: the
// heartbeat runs on the thread that runs posted work, so a task that never
// returns stops it; it resumes once the task returns.
TEST_CASE("the heartbeat repeats on the ring thread and pauses while the ring is busy") {
  std::mutex mu;
  std::vector<std::thread::id> beats;
  reactor_options o;
  o.heartbeat = 10ms;
  o.on_heartbeat = [&] {
    std::lock_guard lk(mu);
    beats.push_back(std::this_thread::get_id());
  };
  reactor r(o);
  auto count = [&] {
    std::lock_guard lk(mu);
    return beats.size();
  };
  r.start();
  REQUIRE(wait_until([&] { return count() >= 3; }, "three heartbeats"));

  std::promise<void> release;
  std::promise<std::pair<std::thread::id, size_t>> entered;
  auto released = release.get_future().share();
  r.post([&, released] {
    entered.set_value({std::this_thread::get_id(), count()});
    released.wait();
  });
  auto [ring, at_entry] = kvmid::test::get_within(entered.get_future(), "the posted task to run");
  {
    std::lock_guard lk(mu);
    for (auto id : beats)
      CHECK(id == ring);
  }
  // The ring is held: the one thread that could beat is inside the task.
  CHECK(count() == at_entry);
  release.set_value();
  CHECK(wait_until([&] { return count() >= at_entry + 2; }, "heartbeats after the task returned"));
  r.stop();
}

namespace {
// Echoes, and records whether each callback ran on the thread of `home`.
struct homed_echo : echo {
  reactor* home;
  std::atomic<int>* away;
  homed_echo(std::atomic<int>* c, reactor* h, std::atomic<int>* a) : echo(c), home(h), away(a) {}
  void on_open(conn_ctx&) override {
    if (!home->on_ring_thread())
      ++*away;
  }
  void on_data(conn_ctx& c, std::span<const uint8_t> b) override {
    if (!home->on_ring_thread())
      ++*away;
    echo::on_data(c, b);
  }
};
} // namespace

TEST_CASE("a listener hands accepted sockets to another reactor - which serves them on its thread") {
  temp_dir d("reactor");
  reactor front, back;
  std::atomic<int> closes{0}, away{0};
  listen_spec s;
  s.path = (d.path() / "handoff.sock").string();
  // Every other socket goes to `back`.
  std::atomic<int> accepted{0};
  front.add_listener(
    s, [&] { return std::make_unique<homed_echo>(&closes, &front, &away); },
    [&](int fd, const std::string& peer) {
      if (accepted++ % 2 == 0)
        return false;
      back.adopt(fd, peer, [&] { return std::make_unique<homed_echo>(&closes, &back, &away); });
      return true;
    });
  front.start();
  back.start();
  std::vector<int> fds;
  for (int i = 0; i < 6; ++i) {
    fds.push_back(connect_unix(s.path));
    std::string m = "hello " + std::to_string(i);
    ::send(fds.back(), m.data(), m.size(), MSG_NOSIGNAL);
    CHECK(read_n(fds.back(), m.size()) == m); // served before the next connects
  }
  CHECK(front.connections() == 3);
  CHECK(back.connections() == 3);
  CHECK(away.load() == 0); // every callback on its own reactor's thread
  for (int fd : fds) {
    ::send(fd, "quit", 4, MSG_NOSIGNAL);
    CHECK(wait_eof(fd));
    ::close(fd);
  }
  CHECK(wait_until([&] { return closes.load() == 6; }, "6 connections closed"));
  CHECK(front.connections() == 0);
  CHECK(back.connections() == 0);
  front.stop();
  back.stop();
}

TEST_CASE("a socket handed to a reactor that never runs is closed - and uncounted") {
  temp_dir d("reactor");
  reactor front;
  std::atomic<int> closes{0};
  listen_spec s;
  s.path = (d.path() / "handoff.sock").string();
  auto back = std::make_unique<reactor>(); // never started
  front.add_listener(
    s, [&] { return std::make_unique<echo>(&closes); },
    [&](int fd, const std::string& peer) {
      back->adopt(fd, peer, [&] { return std::make_unique<echo>(&closes); });
      return true;
    });
  front.start();
  int fd = connect_unix(s.path);
  CHECK(wait_until([&] { return back->connections() == 1; }, "the socket handed over"));
  CHECK(front.connections() == 0);
  front.stop();
  back.reset(); // its queued task goes, and the socket with it
  CHECK(wait_eof(fd));
  ::close(fd);
  CHECK(closes.load() == 0); // no handler was ever made
}
