// One cookie format at both ends: kvmid's cookie_file reader
// (server/config.hpp read_cookie) and kvmi-sim's (--cookie-file) take a
// file's bytes exactly, so the handshake between them completes for binary
// cookies ending in 0x0a and for text cookies with their newline, and both
// refuse a cookie out of bounds with the same words (proto/cookie.hpp).
#include "kernel-patches/sim/cookie_file.hpp"
#include "proto/cookie.hpp"
#include "proto/handshake.hpp"
#include "server/config.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sys/stat.h>

using namespace kvmi;
namespace fs = std::filesystem;

namespace {

struct cookie_dir {
  fs::path p;
  cookie_dir() {
    std::string t = (fs::temp_directory_path() / "kvmid-cookie-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()));
    p = t;
  }
  ~cookie_dir() {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    auto f = p / name;
    std::ofstream(f, std::ios::binary) << bytes;
    REQUIRE(::chmod(f.c_str(), 0600) == 0);
    return f.string();
  }
};

// What each end makes of one cookie file.
struct both_reads {
  std::vector<uint8_t> kvmid;
  std::string kvmid_error;
  sim::cookie_read sim;
};

both_reads read_both(const std::string& path) {
  both_reads r;
  try {
    r.kvmid = kvmid::read_cookie(path, "kvmid.json", "/cookie_file");
  } catch (const kvmid::config_error& e) {
    CHECK(e.field == "/cookie_file");
    r.kvmid_error = e.reason;
  }
  r.sim = sim::read_cookie_file(path);
  return r;
}

// kvmid's end keyed by kvmid's read, the device manager's by kvmi-sim's;
// bytes go both ways until neither end has more to send.
bool handshake_completes(const both_reads& r, hs::mode m) {
  hs::guest_info info;
  info.name = "cookie-vm";
  info.vcpu_count = 1;
  hs::tool_side tool(r.kvmid, m);
  hs::dm_side dm(r.sim.bytes, info, m);
  for (int round = 0; round < 4 && (!dm.out().empty() || !tool.out().empty()); ++round) {
    std::vector<uint8_t> msg;
    msg.swap(dm.out());
    std::span<const uint8_t> in(msg);
    tool.feed(in);
    msg.clear();
    msg.swap(tool.out());
    in = msg;
    dm.feed(in);
  }
  INFO("kvmid: " << tool.reason() << " | kvmi-sim: " << dm.reason());
  return tool.state() == hs::status::done && dm.state() == hs::status::done;
}

} // namespace

TEST_CASE("cookie: a binary cookie ending in 0x0a completes the handshake read by kvmid and kvmi-sim") {
  cookie_dir d;
  for (std::string tail : {"\n", "\r\n", "\n\n"}) {
    std::string bytes;
    for (int i = 0; i < 30; ++i)
      bytes += char(i * 37 + 11);
    bytes += tail;
    auto r = read_both(d.write("cookie", bytes));
    REQUIRE(r.kvmid_error.empty());
    REQUIRE(r.sim.error.empty());
    CHECK(r.kvmid == std::vector<uint8_t>(bytes.begin(), bytes.end()));
    CHECK(r.sim.bytes == r.kvmid);
    CHECK(handshake_completes(r, hs::mode::kvmi));
    CHECK(handshake_completes(r, hs::mode::qemu_v5));
  }
}

TEST_CASE("cookie: a text cookie keeps its trailing newline at both ends") {
  cookie_dir d;
  std::string text = "correct horse battery staple\n";
  auto r = read_both(d.write("cookie", text));
  REQUIRE(r.kvmid_error.empty());
  REQUIRE(r.sim.error.empty());
  CHECK(std::string(r.kvmid.begin(), r.kvmid.end()) == text);
  CHECK(r.sim.bytes == r.kvmid);
  CHECK(handshake_completes(r, hs::mode::kvmi));
  CHECK(handshake_completes(r, hs::mode::qemu_v5));
  // The same secret without its newline is another secret.
  both_reads stripped = r;
  stripped.sim.bytes.pop_back();
  CHECK_FALSE(handshake_completes(stripped, hs::mode::kvmi));
}

TEST_CASE("cookie: out-of-bounds cookies are refused by kvmid and kvmi-sim with the same reason") {
  cookie_dir d;
  struct bound_case {
    size_t size;
    std::string_view why;
  };
  for (auto [size, why] : std::vector<bound_case>{{0, "shorter than 16 bytes"},
                                                  {15, "shorter than 16 bytes"},
                                                  {hs::max_cookie + 1, "longer than 4096 bytes"},
                                                  {16, ""},
                                                  {hs::max_cookie, ""}}) {
    CAPTURE(size);
    auto path = d.write("cookie", std::string(size, '\n'));
    auto r = read_both(path);
    std::string expect = why.empty() ? "" : "cookie file " + path + ": " + std::string(why);
    CHECK(r.kvmid_error == expect);
    CHECK(r.sim.error == expect);
    CHECK(hs::check_cookie(std::vector<uint8_t>(size, '\n')) == why);
    if (why.empty())
      CHECK(r.sim.bytes == r.kvmid);
  }
  std::string hex15(30, 'a');
  CHECK(sim::cookie_from_hex(hex15).error == "--cookie: shorter than 16 bytes");
  auto ok = sim::cookie_from_hex(hex15 + "0a");
  CHECK(ok.error.empty());
  CHECK(ok.bytes.size() == 16);
  CHECK(ok.bytes.back() == 0x0a);
  CHECK(sim::cookie_from_hex(hex15 + "0").error == "--cookie: an odd number of hex digits");
  CHECK(sim::cookie_from_hex(hex15 + "zz").error == "--cookie: not hex");
}

TEST_CASE("cookie: a directory is refused by both readers without an exception") {
  cookie_dir d;
  both_reads r;
  CHECK_NOTHROW(r = read_both(d.p.string()));
  CHECK(r.kvmid_error == "cookie file " + d.p.string() + ": not a regular file");
  CHECK(r.sim.error == r.kvmid_error);
}
