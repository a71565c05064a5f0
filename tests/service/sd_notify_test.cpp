// kvmid under a service manager (Type=notify, WatchdogSec): a real kvmid
// process with $NOTIFY_SOCKET and $WATCHDOG_USEC, the manager's socket bound
// by the test. READY=1 means the listeners accept; WATCHDOG=1 keeps coming;
// SIGHUP is RELOADING=1 then READY=1; SIGTERM is STOPPING=1.
#include "tests/service/notify_socket.hpp"
#include "tests/support/kvmid_daemon.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>

using namespace kvmid::test;

namespace {

size_t count(const std::vector<std::string>& seen, const std::string& state) {
  return size_t(std::count(seen.begin(), seen.end(), state));
}

// Sets the variables for the process started meanwhile (children inherit
// the environment at fork), and takes them away again.
struct service_env {
  service_env(const std::string& notify, const std::string& watchdog_usec) {
    ::setenv("NOTIFY_SOCKET", notify.c_str(), 1);
    ::setenv("WATCHDOG_USEC", watchdog_usec.c_str(), 1);
  }
  ~service_env() {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
  }
};

} // namespace

TEST_CASE("sd_notify: READY once listening then WATCHDOG pings then RELOADING and STOPPING") {
  kvmid_daemon d("sd-notify", std::vector<uint8_t>(32, 0x5a), "notify-token");
  notify_socket manager((d.dir / "notify.sock").string());
  d.write_config(d.base_config(std::chrono::milliseconds(3000), "info"));
  {
    service_env env(manager.path(), "200000"); // WatchdogSec=200ms: a ping every 100 ms
    d.kvmid = spawn({KVMID_BIN, "--config", d.config_path()}, (d.dir / "kvmid.out").string(),
                    (d.dir / "kvmid.err").string());
  }
  REQUIRE(d.kvmid > 0);
  INFO("kvmid stderr: " << d.log());

  std::vector<std::string> seen;
  REQUIRE(manager.wait_for("READY=1", seen));
  // Nothing waits once READY=1 has arrived: both listeners take connections.
  int kvmi = connect_unix(d.kvmi_sock);
  CHECK(kvmi >= 0);
  ::close(kvmi);
  CHECK(d.http("GET", "/v1/vms").status == 200);

  seen.clear();
  for (int i = 0; i < 3; ++i)
    REQUIRE(manager.wait_for("WATCHDOG=1", seen));
  CHECK(count(seen, "WATCHDOG=1") >= 3);

  // A reload tells the manager it is under way, then that kvmid serves again.
  seen.clear();
  ::kill(d.kvmid, SIGHUP);
  REQUIRE(manager.wait_for("RELOADING=1", seen));
  REQUIRE(manager.wait_for("READY=1", seen));

  seen.clear();
  ::kill(d.kvmid, SIGTERM);
  REQUIRE(manager.wait_for("STOPPING=1", seen));
  CHECK(d.stop() == 0);
}
