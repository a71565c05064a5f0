// kvmictl's command line as a user meets it: a usage error is one line
// naming the bad argument (exit 2) and never reaches a server; help for
// one command; a server that is not there is named with the way to point
// kvmictl elsewhere (exit 3).
#include "tests/support/child_process.hpp"
#include "tests/support/temp_dir.hpp"

#include <doctest/doctest.h>

using namespace kvmid::test;

namespace {

// A socket path where nothing listens: a usage error must not get as far
// as trying it, and a real command fails to connect.
struct nowhere {
  temp_dir tmp{"kvmictl"};
  std::string sock = (tmp.path() / "api.sock").string();
  run_result kvmictl(std::vector<std::string> args) {
    args.insert(args.begin(), {KVMICTL_BIN, "--unix", sock});
    return run(args, std::chrono::seconds(30));
  }
};

} // namespace

TEST_CASE("kvmictl: a bad argument is a one-line usage error naming it - exit 2") {
  nowhere n;
  struct row {
    std::vector<std::string> args;
    std::string err;
  } rows[] = {
    {{"read", "VM", "0x1000", "1k"}, "kvmictl: read: LEN '1k' is not a number (decimal or 0x hex)"},
    {{"read", "VM", "0x1000"}, "kvmictl: read takes VM GPA LEN (2 given)"},
    {{"regs", "VM", "-1"}, "kvmictl: regs: VCPU '-1' is not a number (decimal or 0x hex)"},
    {{"vms", "extra"}, "kvmictl: vms takes no arguments (1 given)"},
    {{"frobnicate"}, "kvmictl: unknown command 'frobnicate' ('kvmictl help' lists them)"},
    {{"--frob", "vms"}, "kvmictl: unknown option '--frob' ('kvmictl --help' lists the options)"},
    {{"--timeout", "3s", "vms"}, "kvmictl: --timeout '3s' must be a number 1..86400"},
    {{"watch", "--count", "ten"}, "kvmictl: --count 'ten' must be a number 1..1073741824"},
    {{"vms", "--server"}, "kvmictl: --server needs a value"},
  };
  for (auto& r : rows) {
    CAPTURE(r.err);
    auto res = n.kvmictl(r.args);
    CHECK(res.status == 2);
    // The reason first, on one line; for a command, a pointer to its help.
    CHECK(res.err.starts_with(r.err));
    CHECK(res.err.find('\n') == res.err.size() - 1);
    CHECK(res.err.find("cannot reach") == std::string::npos);
    CHECK(res.out.empty());
  }
}

TEST_CASE("kvmictl: help COMMAND and COMMAND --help print that command's usage") {
  nowhere n;
  auto a = n.kvmictl({"help", "read"});
  auto b = n.kvmictl({"read", "--help"});
  CHECK(a.status == 0);
  CHECK(b.status == 0);
  CHECK(a.out.starts_with("usage: kvmictl [OPTIONS] read VM GPA LEN\n"));
  CHECK(a.out == b.out);
  auto all = n.kvmictl({"help"});
  CHECK(all.status == 0);
  CHECK(all.out.find("\n  read VM GPA LEN") != std::string::npos);
  CHECK(n.kvmictl({"--help"}).out == all.out);
  auto bad = n.kvmictl({"help", "nosuch"});
  CHECK(bad.status == 2);
  CHECK(bad.err == "kvmictl: no command 'nosuch' ('kvmictl help' lists them)\n");
}

TEST_CASE("kvmictl: a server that is not there is named with how to point kvmictl elsewhere") {
  nowhere n;
  auto r = n.kvmictl({"vms"});
  CHECK(r.status == 3);
  CHECK(r.err.starts_with("kvmictl: cannot reach unix:" + n.sock + ": "));
  CHECK(r.err.find("--server URL, --unix PATH or KVMID_API") != std::string::npos);
  // The same for a TCP URL nothing listens on (port 1 on loopback).
  auto t = run({KVMICTL_BIN, "--server", "http://127.0.0.1:1", "vms"}, std::chrono::seconds(30));
  CHECK(t.status == 3);
  CHECK(t.err.starts_with("kvmictl: cannot reach http://127.0.0.1:1: "));
  CHECK(t.err.find("--server URL") != std::string::npos);
}
