#include "server/kvmictl/command_line.hpp"

#include <doctest/doctest.h>

using namespace kvmictl;

TEST_SUITE("control") {

TEST_CASE("kvmictl: numeric arguments are decimal or 0x hex and nothing else") {
  auto* read = find_command("read");
  REQUIRE(read);
  for (const char* good : {"0", "4096", "0x1000", "0XfF", "18446744073709551615"})
    CHECK(check_args(*read, {"web1", good, "1"}).empty());
  for (const char* bad : {"1k", "0x", "-1", "+1", " 1", "1 ", "1e3", "0x1g", "1.0",
                          "18446744073709551616", "0x10000000000000000"}) {
    CAPTURE(bad);
    CHECK(check_args(*read, {"web1", bad, "1"}).ends_with("is not a number (decimal or 0x hex)"));
  }
}

TEST_CASE("kvmictl: argument errors name the command and the bad argument") {
  auto* read = find_command("read");
  REQUIRE(read);
  CHECK(check_args(*read, {"web1", "0x1000", "16"}).empty());
  CHECK(check_args(*read, {"web1", "0x1000", "1k"})
        == "read: LEN '1k' is not a number (decimal or 0x hex)");
  CHECK(check_args(*read, {"web1", "zz", "16"})
        == "read: GPA 'zz' is not a number (decimal or 0x hex)");
  CHECK(check_args(*read, {"web1", "0x1000", "0"}) == "read: LEN '0' is out of range 1..65536");
  CHECK(check_args(*read, {"web1", "0x1000"}) == "read takes VM GPA LEN (2 given)");
  CHECK(check_args(*read, {"", "0x1000", "1"}) == "read: VM is empty");
  auto* regs = find_command("regs");
  REQUIRE(regs);
  CHECK(check_args(*regs, {"web1", "65536"}) == "regs: VCPU '65536' is out of range 0..65535");
  CHECK(check_args(*find_command("vms"), {"extra"}) == "vms takes no arguments (1 given)");
  CHECK(find_command("nosuch") == nullptr);
}

TEST_CASE("kvmictl: the usage lists every command and each has its own help") {
  auto u = usage();
  for (auto& c : commands()) {
    CAPTURE(c.name);
    CHECK(u.find("\n  " + std::string(c.name)) != std::string::npos);
    auto h = command_help(c);
    CHECK(h.starts_with("usage: kvmictl [OPTIONS] " + std::string(c.name)));
    CHECK_FALSE(c.help.empty());
  }
}

TEST_CASE("kvmictl: the hints say where to point kvmictl and where the token comes from") {
  auto u = unreachable_hint("unix:/run/kvmid/api.sock");
  CHECK(u.find("unix:/run/kvmid/api.sock") != std::string::npos);
  CHECK(u.find("--server") != std::string::npos);
  CHECK(u.find("--unix") != std::string::npos);
  CHECK(unauthorized_hint(false).starts_with("no token given"));
  CHECK(unauthorized_hint(true).find("api.token_file") != std::string::npos);
  CHECK(unauthorized_hint(true).find("--token-file") != std::string::npos);
}

}
