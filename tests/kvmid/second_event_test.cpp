// A vCPU waits in the kernel until its event is answered, so a second
// event from the same vCPU before the reply is a protocol error: kvmid
// closes that session and counts it. The host here is kvmi-sim behind a
// man-in-the-middle that sends one event frame twice.
#include "proto/v7/ids.hpp"
#include "tests/support/inproc_fleet.hpp"
#include "tests/support/socket.hpp"
#include "tests/support/wait.hpp"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace kvmid;
using kvmid::test::wait_until;
namespace sim = kvmi::sim;

namespace {

// The EVENT message's id in this run's dialect.
const uint16_t event_msg_id = test::test_dialect() == test::dialect::v7
                                    ? uint16_t(kvmi::v7::msg_id::event)
                                    : uint16_t(kvmi::msg_id::event);

// Sits on the path the host connects to and forwards both ways to kvmid's
// socket (moved aside). Once armed, it splits the host's stream into
// frames and sends the first event frame twice. Arm it only while the host
// is quiet, so the stream is between frames.
class duplicating_proxy {
public:
  duplicating_proxy(std::string listen_path, std::string upstream)
      : upstream_(std::move(upstream)) {
    lfd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, listen_path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lfd_, 4) == 0);
    thread_ = std::thread([this] { loop(); });
  }
  ~duplicating_proxy() {
    stop_ = true;
    thread_.join();
    ::close(lfd_);
  }
  void arm() { armed_ = true; }
  bool duplicated() const { return duplicated_; }

private:
  void loop() {
    int host = -1, kvmid = -1;
    std::vector<uint8_t> pending; // host -> kvmid bytes while armed
    auto forward = [](int to, const uint8_t* p, size_t n) {
      return test::send_all(to, std::string_view(reinterpret_cast<const char*>(p), n));
    };
    while (!stop_) {
      if (host < 0) {
        pollfd p{lfd_, POLLIN, 0};
        if (::poll(&p, 1, 50) > 0) { // 50 ms: how often stop_ is looked at
          host = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
          kvmid = test::connect_unix(upstream_);
        }
        continue;
      }
      pollfd p[2] = {{host, POLLIN, 0}, {kvmid, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0)
        continue;
      uint8_t buf[65536];
      if (p[1].revents & (POLLIN | POLLHUP)) {
        ssize_t n = ::recv(kvmid, buf, sizeof buf, 0);
        if (n <= 0 || !forward(host, buf, size_t(n)))
          break;
      }
      if (p[0].revents & (POLLIN | POLLHUP)) {
        ssize_t n = ::recv(host, buf, sizeof buf, 0);
        if (n <= 0)
          break;
        if (!armed_) {
          if (!forward(kvmid, buf, size_t(n)))
            break;
          continue;
        }
        pending.insert(pending.end(), buf, buf + n);
        while (armed_ && pending.size() >= sizeof(kvmi::msg_hdr)) {
          kvmi::msg_hdr h;
          std::memcpy(&h, pending.data(), sizeof h);
          size_t len = sizeof h + h.size;
          if (pending.size() < len)
            break;
          forward(kvmid, pending.data(), len);
          if (h.id == event_msg_id) {
            forward(kvmid, pending.data(), len); // the same event again
            duplicated_ = true;
            armed_ = false;
          }
          pending.erase(pending.begin(), pending.begin() + ptrdiff_t(len));
        }
        if (!armed_ && !pending.empty()) {
          forward(kvmid, pending.data(), pending.size());
          pending.clear();
        }
      }
    }
    if (host >= 0)
      ::close(host);
    if (kvmid >= 0)
      ::close(kvmid);
  }

  std::string upstream_;
  int lfd_ = -1;
  std::atomic<bool> stop_{false}, armed_{false}, duplicated_{false};
  std::thread thread_;
};

} // namespace

TEST_CASE("a second event from a vCPU before its reply closes the session and is counted") {
  std::unique_ptr<duplicating_proxy> proxy;
  testing::inproc_options o;
  o.name = "second-event";
  auto cookie = std::vector<uint8_t>(32, 0x42);
  o.core.command_timeout = std::chrono::milliseconds(5000);
  o.listener.cookie = cookie;
  o.sim.cookie = cookie;
  o.sim.vms = 1;
  o.sim.vcpus_per_vm = 1;
  o.sim.reconnect = false;
  // kvmid listens on kvmi.sock before the host starts: move it aside and
  // put the proxy in its place.
  o.before_start = [&](sim::host& h) {
    std::filesystem::path p = h.opts().unix_path;
    auto moved = p.parent_path() / "kvmid.sock";
    std::filesystem::rename(p, moved);
    proxy = std::make_unique<duplicating_proxy>(p.string(), moved.string());
  };
  testing::inproc_fleet f(o);
  REQUIRE(f.h->wait_until(
    [&] {
      auto v = f.h->vm(0);
      return v.hooked && !v.vcpus.empty() && v.vcpus[0].state == sim::vcpu_state::running
             && (v.vcpus[0].enabled_events & kvmi::flag(kvmi::event_id::pause_vcpu))
             && !v.vcpus[0].pending_pauses;
    },
    sim::ms(30000)));
  const char* reason = "second_event";
  CHECK(f.metric("kvmid_protocol_errors_total", "reason", reason) == 0);
  // The pause event is held by kvmid until resume: the copy arrives while
  // the vCPU is still waiting for its reply.
  proxy->arm();
  f.c->api().pause_vm(f.uuid(0), [](api_result<done>) {});
  REQUIRE(wait_until([&] { return proxy->duplicated(); }, "a pause event to pass the proxy"));
  CHECK(wait_until(
    [&] { return f.metric("kvmid_protocol_errors_total", "reason", reason) == 1; },
    "the protocol error counted with its reason"));
  CHECK(wait_until([&] { return !f.h->vm(0).connected; }, "kvmid to close the session"));
  // The socket closes first; the VM actor hears of it from the ring after.
  CHECK(wait_until(
    [&] {
      auto info = f.call<vm_info>([&](control_api& a, auto cb) { a.get_vm(f.uuid(0), cb); });
      REQUIRE(info.ok());
      return !info.value().connected;
    },
    "the API to show the VM disconnected"));
  // An honest host never sends that; what kvmid itself sent was in order.
  CHECK(f.h->make_report().total.violation_count() == 0);
  proxy.reset(); // before the fleet's sockets go
}
