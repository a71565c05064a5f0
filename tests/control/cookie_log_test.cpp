// The handshake cookie is a shared secret: kvmid must never write it to
// its logs, in any encoding, even at debug level and when a handshake
// fails.
#include "tests/support/kvmid_process.hpp"

#include "server/control/encoding.hpp"

#include <algorithm>
#include <cctype>

using namespace kvmid::test;

namespace {

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

} // namespace

TEST_CASE("cookies never appear in kvmid's logs") {
  kvmid_process::options o;
  o.log_level = "debug";
  kvmid_process t(o);
  auto& cookie = t.cookie;
  { // A device manager with the wrong secret, which keeps trying.
    kvmi::sim::options so;
    so.unix_path = t.kvmi_sock;
    speak_test_dialect(so);
    so.cookie = cookie;
    so.faults.bad_mac = 1.0;
    so.name_prefix = "bad-mac-";
    so.reconnect_delay = kvmi::sim::ms(20);
    kvmi::sim::host wrong(so);
    wrong.start();
    REQUIRE(wrong.wait_until([&] { return wrong.vm_counters(0).handshake_failures >= 3; },
                             kvmi::sim::ms(30000)));
    wrong.stop();
  }
  { // And a peer that sends garbage instead of a hello.
    int s = connect_unix(t.kvmi_sock);
    send_all(s, std::string(48, 'Z'));
    read_all(s);
    ::close(s);
  }
  REQUIRE(wait_until(
    [&] {
      auto m = t.curl("GET", "/metrics").body;
      return m.find("kvmid_handshake_failures_total{") != std::string::npos;
    },
    "the failed handshakes in /metrics"));
  // kvmid exits, so everything it logged is in the files.
  CHECK(t.stop_kvmid() == 0);
  std::string logs = t.tmp.read("kvmid.out") + t.tmp.read("kvmid.err");
  REQUIRE(logs.find("handshake") != std::string::npos); // the failures were logged
  std::string raw(cookie.begin(), cookie.end());
  auto hex = kvmid::control::to_hex(cookie);
  auto b64 = kvmid::control::to_base64(cookie);
  CHECK(logs.find(raw) == std::string::npos);
  CHECK(logs.find(hex) == std::string::npos);
  CHECK(upper(logs).find(upper(hex)) == std::string::npos);
  CHECK(logs.find(b64.substr(0, 16)) == std::string::npos);
  // Nor any 8-byte stretch of it.
  for (size_t i = 0; i + 8 <= cookie.size(); i += 4) {
    CAPTURE(i);
    CHECK(logs.find(raw.substr(i, 8)) == std::string::npos);
    CHECK(logs.find(hex.substr(2 * i, 16)) == std::string::npos);
  }
}
