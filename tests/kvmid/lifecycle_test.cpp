// The KVMI socket's life on kvmid's side, in one process against kvmi-sim
// and raw peers: handshake deadlines that partial data cannot extend, the
// cap on pending handshakes, one log line and one counted reason for every
// close, and UNIX peers named by pid.
#include "tests/support/inproc_fleet.hpp"
#include "tests/support/socket.hpp"

#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <future>
#include <optional>
#include <thread>
#include <fstream>
#include <sstream>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace kvmid;
using namespace std::chrono_literals;
namespace sim = kvmi::sim;

namespace {

const std::vector<uint8_t> cookie(32, 0x42);

struct lifecycle_fleet : testing::inproc_fleet {
  explicit lifecycle_fleet(const std::function<void(testing::inproc_options&)>& tweak = {})
      : inproc_fleet(options(tweak)) {}
  static testing::inproc_options options(const std::function<void(testing::inproc_options&)>& tweak) {
    testing::inproc_options o;
    o.name = "lifecycle";
    o.listener.cookie = cookie;
    o.sim.cookie = cookie;
    o.sim.vms = 1;
    o.sim.vcpus_per_vm = 1;
    o.sim.reconnect = false;
    if (tweak)
      tweak(o);
    return o;
  }
  std::string sock() const { return (dir / "kvmi.sock").string(); }
  bool wait_metric(const std::string& name, const std::string& label, const std::string& value,
                   double want) {
    return h->wait_until([&] { return metric(name, label, value) == want; }, 10000ms);
  }
};

// Everything written to stderr (fd 2) while it lives goes to a file too.
struct stderr_capture {
  std::string path;
  int saved = -1;
  explicit stderr_capture(const std::filesystem::path& dir) : path((dir / "stderr.log").string()) {
    std::fflush(stderr);
    saved = ::dup(2);
    int f = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(f >= 0);
    ::dup2(f, 2);
    ::close(f);
  }
  ~stderr_capture() {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
  }
  std::string text() const {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  size_t lines_with(const std::string& a, const std::string& b = {}) const {
    size_t n = 0;
    std::istringstream in(text());
    for (std::string l; std::getline(in, l);)
      n += l.find(a) != std::string::npos && (b.empty() || l.find(b) != std::string::npos);
    return n;
  }
};

} // namespace

TEST_CASE("a peer trickling its handshake is closed at the step's deadline although it keeps sending"
          * doctest::skip(test::only_in(test::dialect::v5, "the case trickles a v5 hello"))) {
  lifecycle_fleet f([](testing::inproc_options& o) { o.listener.handshake_timeout = 200ms; });
  int fd = test::connect_unix(f.sock());
  // A genuine hello, one byte each 50 ms: 48 bytes would take 2.4 s.
  kvmi::hs::dm_side dm(cookie, {});
  auto hello = dm.out();
  size_t sent = 0;
  bool closed = false;
  while (!closed && sent < hello.size()) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) > 0) {
      char b[256];
      closed = ::recv(fd, b, sizeof b, 0) <= 0;
      continue;
    }
    if (::send(fd, &hello[sent], 1, MSG_NOSIGNAL) != 1)
      closed = true;
    else
      ++sent;
  }
  INFO("hello bytes sent before kvmid closed: " << sent << " of " << hello.size());
  CHECK(closed);
  CHECK(sent < hello.size());
  ::close(fd);
  CHECK(f.wait_metric("kvmid_handshake_failures_total", "reason", "timeout", 1));
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "handshake_timeout", 1));
}

TEST_CASE("max_handshakes refuses connection N+1 while N are pending and admits again after") {
  lifecycle_fleet f([](testing::inproc_options& o) {
    o.listener.max_handshakes = 3;
    o.listener.handshake_timeout = 30000ms;
  });
  REQUIRE(f.ready(0)); // the VM's own handshake is over
  stderr_capture err(f.dir);
  std::vector<int> pending;
  for (int i = 0; i < 3; ++i)
    pending.push_back(test::connect_unix(f.sock()));
  REQUIRE(f.wait_metric("kvmid_handshakes_pending", {}, {}, 3));
  int extra = test::connect_unix(f.sock());
  CHECK(test::wait_eof(extra));
  ::close(extra);
  CHECK(f.wait_metric("kvmid_handshake_failures_total", "reason", "too_many_pending", 1));
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "handshake_limit", 1));
  for (int fd : pending)
    ::close(fd);
  REQUIRE(f.wait_metric("kvmid_handshakes_pending", {}, {}, 0));
  int again = test::connect_unix(f.sock());
  REQUIRE(f.wait_metric("kvmid_handshakes_pending", {}, {}, 1)); // admitted
  CHECK(f.metric("kvmid_vm_disconnects_total", "reason", "handshake_limit") == 1);
  ::close(again);
  REQUIRE(f.wait_metric("kvmid_handshakes_pending", {}, {}, 0));
  CHECK(err.lines_with("refusing new connections") == 1);
  CHECK(err.lines_with("admitted again after 1 refused") == 1);
  CHECK(err.lines_with("closed: handshake_limit") == 0); // one line per burst, not per peer
  CHECK(f.h->hooked(0));
}

TEST_CASE("every close of a VM socket logs one line and is counted by reason") {
  lifecycle_fleet f([](testing::inproc_options& o) { o.sim.vms = 3; });
  for (uint32_t v = 0; v < 3; ++v)
    REQUIRE(f.ready(v));
  stderr_capture err(f.dir);
  f.get(f.h->inject_fault(0, "disconnect"));
  f.get(f.h->inject_fault(1, "garbage"));
  auto u = f.call<done>([&](control_api& a, auto cb) { a.unhook(f.uuid(2), cb); });
  CHECK_MESSAGE(u.ok(), (u.ok() ? std::string() : u.error().message));
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "peer_closed", 1));
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "protocol_error", 1));
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "unhook", 1));
  REQUIRE(f.h->wait_until([&] { return f.metric("kvmid_vms") == 0; }, 10000ms));
  INFO("stderr: " << err.text());
  CHECK(err.lines_with(f.uuid(0), "closed: peer_closed") == 1);
  CHECK(err.lines_with(f.uuid(1), "closed: protocol_error") == 1);
  CHECK(err.lines_with(f.uuid(2), "closed: unhook") == 1);
  for (uint32_t v = 0; v < 3; ++v)
    CHECK(err.lines_with(f.uuid(v)) == 1); // nothing else about the close
}

TEST_CASE("a failed handshake names the peer's pid and its reason in its log line and lifecycle record") {
  lifecycle_fleet f;
  auto sub = f.c->bus().subscribe(bus_filter{{}, {bus_kind::lifecycle}, {"handshake-failed"}});
  stderr_capture err(f.dir);
  int fd = test::connect_unix(f.sock());
  std::vector<uint8_t> junk(48, 0x5a); // not a hello: v5 bad magic, v7 struct_size 0x5a5a5a5a
  REQUIRE(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) == ssize_t(junk.size()));
  CHECK(test::wait_eof(fd));
  ::close(fd);
  std::vector<bus_record> got;
  REQUIRE(f.h->wait_until([&] { return sub->poll(got) > 0 || !got.empty(); }, 10000ms));
  std::string peer, reason;
  for (auto& [k, v] : got[0].fields) {
    if (k == "peer")
      peer = v;
    if (k == "reason")
      reason = v;
  }
  auto me = "pid=" + std::to_string(::getpid());
  CHECK(peer == "unix:" + f.sock() + " " + me + " uid=" + std::to_string(::getuid()));
  // The metric label and the record's reason are the token; the record's
  // message and the log line the sentence.
  bool v5 = test::test_dialect() == test::dialect::v5;
  std::string token = v5 ? "bad_magic" : "bad_size";
  std::string sentence = v5 ? "hello: bad magic" : "v7 handshake: struct_size beyond 64 KiB";
  CHECK(reason == token);
  CHECK(got[0].message == sentence);
  CHECK(f.metric("kvmid_handshake_failures_total", "reason", token) == 1);
  REQUIRE(f.wait_metric("kvmid_vm_disconnects_total", "reason", "handshake_failed", 1));
  CHECK(err.lines_with("closed: handshake_failed (" + sentence + ")", me) == 1);
}

namespace {

// Relays one simulated VM's connection to kvmid; stall() stops reading what
// kvmid sends, as a device manager that hangs would.
struct stalling_relay {
  std::string path;
  int lfd = -1;
  std::promise<std::string> target;
  std::atomic<bool> stalled{false}, stop{false};
  std::thread th;

  explicit stalling_relay(const std::filesystem::path& dir) : path((dir / "relay.sock").string()) {
    lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lfd, 4) == 0);
    th = std::thread([this] { run(); });
  }
  ~stalling_relay() {
    stop = true;
    th.join();
    ::close(lfd);
  }

  void run() {
    int vm = -1;
    while (!stop && vm < 0) {
      pollfd p{lfd, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0)
        vm = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    }
    auto t = target.get_future();
    if (vm < 0 || t.wait_for(10s) != std::future_status::ready)
      return;
    int kv = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, t.get().c_str(), sizeof a.sun_path - 1);
    if (::connect(kv, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      stop = true; // the simulator then sees its connection close
    char b[65536];
    while (!stop) {
      pollfd p[2] = {{vm, POLLIN, 0}, {stalled ? -1 : kv, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0)
        continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
          continue;
        auto n = ::recv(p[i].fd, b, sizeof b, 0);
        if (n <= 0) {
          stop = true;
          break;
        }
        ::send(i == 0 ? kv : vm, b, size_t(n), MSG_NOSIGNAL);
      }
    }
    ::close(vm);
    ::close(kv);
  }
};

// A v5 host played by hand: its handshake, then what kvmid sends.
struct hand_host {
  kvmi::hs::guest_info g;
  std::optional<kvmi::hs::dm_side> dm;
  int fd = -1;
  std::vector<uint8_t> in; // received after the handshake

  hand_host(const std::string& sock, uint8_t id, std::string name) {
    g.id[0] = id; // not the simulated VM's
    g.vcpu_count = 1;
    g.name = std::move(name);
    g.regions.push_back({0, 64ull << 20, uint32_t(kvmi::hs::region_type::ram), 0, 0});
    dm.emplace(cookie, g);
    fd = test::connect_unix(sock);
    flush();
  }
  ~hand_host() { close(); }
  hand_host(const hand_host&) = delete;
  hand_host& operator=(const hand_host&) = delete;

  std::string uuid() const { return kvmi::hs::to_string(g.id); }
  void close() {
    if (fd >= 0)
      ::close(fd);
    fd = -1;
  }
  bool hooked() const { return dm->state() == kvmi::hs::status::done; }

  // Reads until the handshake is done: false when `within` passed first.
  bool handshake(std::chrono::milliseconds within) {
    return read_until([&] { return hooked(); }, within);
  }
  // Reads until the handshake is done and kvmid's first frame header is in,
  // or `within` passed (nullopt; also when kvmid closed).
  std::optional<kvmi::msg_hdr> first_frame(std::chrono::milliseconds within) {
    if (!read_until([&] { return hooked() && in.size() >= sizeof(kvmi::msg_hdr); }, within))
      return std::nullopt;
    kvmi::msg_hdr h;
    std::memcpy(&h, in.data(), sizeof h);
    return h;
  }

private:
  template <class Pred>
  bool read_until(Pred done, std::chrono::milliseconds within) {
    auto until = std::chrono::steady_clock::now() + within;
    while (!done()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
      pollfd p{fd, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, int(left.count())) <= 0)
        return false;
      char b[4096];
      ssize_t n = ::recv(fd, b, sizeof b, 0);
      if (n <= 0)
        return false;
      in.insert(in.end(), b, b + n);
      if (!hooked()) {
        std::span<const uint8_t> rest(in);
        dm->feed(rest);
        REQUIRE(dm->state() != kvmi::hs::status::failed);
        flush();
        in.erase(in.begin(), in.end() - ptrdiff_t(rest.size()));
      }
    }
    return true;
  }

  void flush() {
    if (dm->out().empty())
      return;
    REQUIRE(test::send_all(fd, {reinterpret_cast<const char*>(dm->out().data()), dm->out().size()}));
    dm->out().clear();
  }
};

} // namespace

TEST_CASE("a VM that stops reading is closed for send_queue_full with one line") {
  std::string t = "/tmp/kvmid-relay-XXXXXX";
  REQUIRE(mkdtemp(t.data()));
  std::filesystem::path rdir = t;
  std::optional<stalling_relay> relay(std::in_place, rdir);
  lifecycle_fleet f([&](testing::inproc_options& o) {
    o.reactor.send_queue_limit = 16;
    o.core.command_timeout = 2000ms;
    o.sim_unix_path = relay->path;
  });
  relay->target.set_value(f.sock());
  REQUIRE(f.ready(0));
  auto vm = f.uuid(0);
  REQUIRE(f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(vm, cb); }).ok());
  stderr_capture err(f.dir);
  relay->stalled = true;
  // Writes of guest memory: far more command bytes than the socket holds.
  for (int i = 0; i < 400; ++i)
    f.c->api().write_physical(vm, 0x300000 + uint64_t(i % 16) * 4096,
                              std::vector<uint8_t>(4096, uint8_t(i)), [](api_result<done>) {});
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "send_queue_full", 1));
  REQUIRE(f.h->wait_until([&] { return f.metric("kvmid_vms") == 0; }, 10000ms));
  INFO("stderr: " << err.text());
  CHECK(err.lines_with(vm, "closed: send_queue_full") == 1);
  CHECK(err.lines_with(vm) == 1);
  relay.reset();
  std::error_code ec;
  std::filesystem::remove_all(rdir, ec);
}

// The session ends while kvmid's first command (GET_VERSION) waits for its
// reply: the host closed, so the failed command is no protocol error. A
// reconnect storm over a slow host met this in about 1 of 30 runs.
TEST_CASE("a host that closes while GET_VERSION waits for its reply is a peer close - not a protocol error"
          * doctest::skip(test::only_in(test::dialect::v5, "the case plays a v5 host by hand"))) {
  lifecycle_fleet f;
  REQUIRE(f.ready(0));
  double errors = f.metric("kvmid_protocol_errors_total");
  double peer_closed = f.metric("kvmid_vm_disconnects_total", "reason", "peer_closed");
  hand_host host(f.sock(), 0x77, "closes-early");
  auto first = host.first_frame(10000ms); // the handshake, then kvmid's first frame
  REQUIRE_MESSAGE(first, "kvmid closed or went silent before its first command");
  CHECK(first->id == uint16_t(kvmi::msg_id::get_version));
  REQUIRE(f.wait_metric("kvmid_vms", {}, {}, 2));
  host.close(); // with GET_VERSION unanswered
  CHECK(f.wait_metric("kvmid_vm_disconnects_total", "reason", "peer_closed", peer_closed + 1));
  CHECK(f.wait_metric("kvmid_vms", {}, {}, 1)); // its actor is gone: the failed command was seen
  CHECK(f.metric("kvmid_protocol_errors_total") == errors);
  CHECK(f.h->hooked(0));
}

// max_setups VMs set up at once; the next waits its turn, hooked but sent
// nothing (so nothing is enabled and its guest raises no events), and
// starts when a set-up ends, here by its host going.
TEST_CASE("max_setups: a VM waits its turn with nothing sent - and sets up when the one before ends"
          * doctest::skip(test::only_in(test::dialect::v5, "the case plays v5 hosts by hand"))) {
  lifecycle_fleet f([](testing::inproc_options& o) {
    o.core.max_setups = 1;
    o.core.command_timeout = 60000ms; // a held place outlasts the test
  });
  REQUIRE(f.ready(0));
  REQUIRE(f.wait_metric("kvmid_vm_setups", "state", "running", 0)); // done: the place is back
  auto setup_of = [&](const std::string& vm) {
    auto i = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(vm, cb); });
    REQUIRE(i.ok());
    return i.value().setup;
  };
  CHECK(setup_of(f.uuid(0)) == "done");

  hand_host first(f.sock(), 0x71, "first");
  auto get_version = first.first_frame(10000ms);
  REQUIRE(get_version); // left unanswered: this set-up holds the one place
  CHECK(get_version->id == uint16_t(kvmi::msg_id::get_version));
  CHECK(f.metric("kvmid_vm_setups", "state", "running") == 1);
  CHECK(setup_of(first.uuid()) == "running");

  hand_host second(f.sock(), 0x72, "second");
  REQUIRE(second.handshake(10000ms));
  REQUIRE(f.wait_metric("kvmid_vm_setups", "state", "waiting", 1));
  CHECK(setup_of(second.uuid()) == "waiting");
  CHECK_FALSE(second.first_frame(300ms)); // hooked, and not a byte more

  first.close();
  auto next = second.first_frame(10000ms);
  REQUIRE(next);
  CHECK(next->id == uint16_t(kvmi::msg_id::get_version));
  CHECK(f.wait_metric("kvmid_vm_setups", "state", "waiting", 0));
  CHECK(f.metric("kvmid_vm_setups", "state", "running") == 1);
  CHECK(setup_of(second.uuid()) == "running");
  second.close();
  CHECK(f.wait_metric("kvmid_vm_setups", "state", "running", 0));
}

// An operator's unhook is meant to last: the device manager reconnects at
// once, and kvmid refuses that VM's handshakes until it is admitted again.
// The kernel's own UNHOOK event holds nothing off.
TEST_CASE("an operator's unhook lasts - the VM's handshakes are refused until it is admitted") {
  lifecycle_fleet f([](testing::inproc_options& o) {
    o.sim.reconnect = true;
    o.sim.reconnect_delay = 20ms;
  });
  REQUIRE(f.ready(0));
  auto vm = f.uuid(0);
  auto un = f.call<done>([&](control_api& a, auto cb) { a.unhook(vm, cb); });
  REQUIRE_MESSAGE(un.ok(), (un.ok() ? std::string() : un.error().message));
  REQUIRE(f.h->wait_until(
    [&] { return f.metric("kvmid_vm_disconnects_total", "reason", "not_admitted") >= 2; },
    10000ms));
  CHECK(f.metric("kvmid_handshake_failures_total", "reason", "not_admitted")
        >= 2);
  CHECK(f.metric("kvmid_vms") == 0);
  auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(vm, cb); });
  REQUIRE(info.ok());
  CHECK_FALSE(info.value().connected);
  CHECK(info.value().sessions == 1);

  auto in = f.call<done>([&](control_api& a, auto cb) { a.admit(vm, cb); });
  REQUIRE(in.ok());
  REQUIRE(f.ready(0)); // hooked and configured at its next reconnect
  CHECK(f.metric("kvmid_vms") == 1);
  auto twice = f.call<done>([&](control_api& a, auto cb) { a.admit(vm, cb); });
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().code == api_errc::not_found);

  // The kernel's UNHOOK (the host ending introspection) holds nothing off.
  REQUIRE(f.get(f.h->request_unhook(0)).ok);
  REQUIRE(f.h->wait_until([&] { return f.metric("kvmid_vms") == 0; }, 10000ms));
  CHECK(f.c->admitted(vm));
}
