#include "server/kvmictl/command_line.hpp"

#include <doctest/doctest.h>

#include <cstdio>

#include <unistd.h>

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

TEST_CASE("kvmictl: access - hex and shell arguments are checked before any request") {
  auto* spa = find_command("set-page-access");
  REQUIRE(spa);
  CHECK(check_args(*spa, {"web1", "0x1000", "r-x"}).empty());
  CHECK(check_args(*spa, {"web1", "0x1000", "rw"})
        == "set-page-access: ACCESS 'rw' is not an access like r-x, r-- or rwx");
  auto* write = find_command("write");
  REQUIRE(write);
  CHECK(check_args(*write, {"web1", "0x1000", "90cc"}).empty());
  CHECK(check_args(*write, {"web1", "0x1000", "9"}).ends_with("is not hex bytes (an even number "
                                                                "of 0-9a-f digits)"));
  CHECK(check_args(*write, {"web1", "0x1000", std::string(8194, 'a')}).ends_with("is more than 4096 bytes"));
  CHECK(check_args(*find_command("completion"), {"zsh"})
        == "completion: SHELL 'zsh' is not a shell kvmictl completes (bash)");
}

TEST_CASE("kvmictl: an option belongs to the commands that take it") {
  CHECK(check_option(*find_command("events"), "--enable").empty());
  CHECK(check_option(*find_command("events"), "--force").empty());
  CHECK(check_option(*find_command("regs"), "--msrs").empty());
  CHECK(check_option(*find_command("watch"), "--count").empty());
  CHECK(check_option(*find_command("events"), "--msrs")
        == "events: option --msrs does not apply (it takes --enable --disable --force)");
  CHECK(check_option(*find_command("vms"), "--count") == "vms: option --count does not apply");
}

TEST_CASE("kvmictl: the bash completion offers commands - options and nothing else") {
  // Runs the script in bash with a faked command line and reads COMPREPLY.
  auto complete = [](const std::string& words, int cword) {
    std::string script = bash_completion();
    std::string path = "/tmp/kvmictl-completion-" + std::to_string(::getpid()) + ".sh";
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f);
    std::fwrite(script.data(), 1, script.size(), f);
    std::fclose(f);
    std::string cmd = "bash -c 'source " + path + "; COMP_WORDS=(" + words + "); COMP_CWORD="
                      + std::to_string(cword) + "; _kvmictl; echo \"${COMPREPLY[*]}\"'";
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    std::string out;
    while (size_t n = std::fread(buf, 1, sizeof buf, p))
      out.append(buf, n);
    int st = ::pclose(p);
    std::remove(path.c_str());
    CHECK(st == 0);
    while (!out.empty() && out.back() == '\n')
      out.pop_back();
    return out;
  };
  CHECK(complete("kvmictl pa", 1) == "pause page-access");
  CHECK(complete("kvmictl set-", 1) == "set-page-access");
  CHECK(complete("kvmictl events web1 0 --e", 4) == "--enable");
  CHECK(complete("kvmictl --json regs web1 0 --m", 5) == "--msrs");
  CHECK(complete("kvmictl help add", 2) == "add-breakpoint");
  CHECK(complete("kvmictl completion b", 2) == "bash");
  CHECK(complete("kvmictl vms --c", 2) == "");
}

}
