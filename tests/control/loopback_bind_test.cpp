// kvmid's TCP listeners (the KVMI listener with its default host, and the
// API's) are bound to loopback only: checked on the running process's own
// sockets, as the kernel reports them, not on the config.
#include "tests/support/kvmid_process.hpp"

#include <fstream>
#include <set>
#include <sstream>

using namespace kvmid::test;

namespace {

// Inodes of the sockets the process holds open.
std::set<std::string> socket_inodes(pid_t pid) {
  std::set<std::string> out;
  for (auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    auto target = fs::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0)
      out.insert(target.substr(8, target.size() - 9));
  }
  return out;
}

struct tcp_listen {
  std::string local; // address:port in /proc/net hex, e.g. 0100007F:1F90
  bool v6 = false;
};

// Listening TCP sockets (state 0A) among `inodes`, from /proc/net/tcp{,6}.
std::vector<tcp_listen> listening(const std::set<std::string>& inodes) {
  std::vector<tcp_listen> out;
  for (bool v6 : {false, true}) {
    std::ifstream in(v6 ? "/proc/net/tcp6" : "/proc/net/tcp");
    std::string line;
    std::getline(in, line); // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, tr, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> st >> queues >> tr >> retr >> uid >> timeout >> inode;
      if (st == "0A" && inodes.count(inode))
        out.push_back({local, v6});
    }
  }
  return out;
}

bool loopback(const tcp_listen& l) {
  auto addr = l.local.substr(0, l.local.find(':'));
  if (!l.v6)
    return addr.size() == 8 && addr.substr(6, 2) == "7F"; // 127/8, little-endian words
  return addr == "00000000000000000000000001000000"                 // ::1
         || (addr.rfind("0000000000000000FFFF0000", 0) == 0 && addr.substr(30, 2) == "7F");
}

uint16_t port_of(const tcp_listen& l) {
  return uint16_t(std::stoul(l.local.substr(l.local.find(':') + 1), nullptr, 16));
}

} // namespace

TEST_CASE("kvmid's TCP listeners are bound to loopback only") {
  auto kvmi_port = free_loopback_port();
  kvmid_process::options o;
  o.vms = 1;
  o.tcp = true; // api.listen tcp:127.0.0.1:<port>
  o.extra_listeners = json::array({{{"type", "tcp"}, {"port", kvmi_port}}}); // host defaulted
  kvmid_process t(o);
  auto found = listening(socket_inodes(t.kvmid));
  std::set<uint16_t> ports;
  for (auto& l : found) {
    CAPTURE(l.local);
    CHECK(loopback(l));
    ports.insert(port_of(l));
  }
  // Both listeners were found, so the checks above saw them.
  CHECK(ports == std::set<uint16_t>{kvmi_port, t.tcp_port});
}
