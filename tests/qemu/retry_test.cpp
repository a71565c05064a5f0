// A write-protected page of a real guest, answered RETRY while it stays
// protected: on hardware the write faults again and again and never lands;
// kvmi-qemu, whose watchpoint stops after the write, writes the page back.
// kvmid never answers so (it makes the page writable before a RETRY), so a
// minimal introspector plays the tool here.
#include "kernel-patches/qemu/guest_image.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/wait.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

namespace {

#if defined(__x86_64__)

using namespace kvmi;
using kvmid::test::wait_until;

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The last progress line's count and hostname.
std::pair<long, std::string> last_progress(const std::string& console) {
  auto at = console.rfind("progress ");
  if (at == std::string::npos)
    return {-1, {}};
  std::istringstream line(console.substr(at));
  std::string word, name;
  long n = -1;
  line >> word >> n >> name;
  return {n, name};
}

TEST_CASE("RETRY on a still write-protected page keeps a real guest's hostname") {
  test::listener l;
  kvmid::test::temp_dir tmp("qemu-retry");
  std::filesystem::create_directories(tmp.path() / "vm");
  tmp.write("cookie", std::string(test::test_cookie_text));
  pid_t kq = kvmid::test::spawn(
    {KVMI_QEMU_BIN, "--unix", l.path(), "--cookie-file", (tmp.path() / "cookie").string(),
     "--work-dir", (tmp.path() / "vm").string(), "--guest-dir", qemu::default_guest_dir(), "--name", "qemu-retry",
     "--symbols", "init_uts_ns"},
    (tmp.path() / "out").string(), (tmp.path() / "err").string());
  REQUIRE(kq > 0);
  struct reaper {
    pid_t pid;
    ~reaper() { kvmid::test::stop(pid); }
  } reap{kq};
  auto console = [&] { return slurp(tmp.path() / "vm" / "serial.log"); };
  INFO("kvmi-qemu: " << slurp(tmp.path() / "err") << "\nconsole tail: "
                     << console().substr(console().size() > 400 ? console().size() - 400 : 0));
  int fd = l.accept(std::chrono::seconds(180)); // after the guest booted
  REQUIRE(fd >= 0);
  test::conn c(fd);
  REQUIRE(c.handshake());
  auto syms = qemu::kallsyms_from_console(console());
  REQUIRE(syms.count("init_uts_ns"));
  // struct uts_namespace starts with struct new_utsname: sysname[65], nodename[65].
  uint64_t nodename = syms["init_uts_ns"] - 0xffffffff80000000ull + 65;
  uint64_t page = nodename & ~uint64_t(0xfff);

  auto ok = [&](command cmd) {
    auto r = c.call(std::move(cmd));
    return r && r->err == 0;
  };
  REQUIRE(ok(control_vm_events{flag(event_id::create_vcpu), 0}));
  auto created = c.next_event();
  REQUIRE(created);
  REQUIRE(created->kind() == event_id::create_vcpu);
  REQUIRE(ok(control_events{0, 0, flag(event_id::pf)}));
  set_page_access_cmd protect{};
  protect.req.count = 1;
  protect.entries = {{page, uint8_t(page_access_r | page_access_x), {}}};
  REQUIRE(ok(protect));
  // /init names the guest kvmi-guest before its first progress line (which
  // may not be out yet) and renames it from round 40 on.
  long start = std::max(0L, last_progress(console()).first);
  c.reply(*created, action::continue_);

  // The workload renames the guest every 40 rounds; two attempts denied.
  size_t pf = 0;
  bool in_nodename = false;
  REQUIRE(wait_until(
    [&] {
      while (auto e = c.next_event(std::chrono::milliseconds(20))) {
        // Only the hostname's bytes are denied: the page holds other kernel
        // data written from interrupts, and undoing those writes after the
        // fact corrupts the kernel (it panicked), where hardware would
        // have kept the writer faulting.
        bool deny = false;
        if (e->kind() == event_id::pf) {
          ++pf;
          auto gpa = std::get<event_pf>(e->data).gpa;
          deny = gpa >= nodename && gpa < nodename + 65;
          in_nodename = in_nodename || deny;
        }
        c.reply(*e, deny ? action::retry : action::continue_);
      }
      return last_progress(console()).first >= (start / 40 + 2) * 40 + 1;
    },
    "two rename attempts of the guest", std::chrono::seconds(120)));
  CHECK(pf > 0);
  CHECK(in_nodename);
  CHECK(last_progress(console()).second == "kvmi-guest");
  auto r = c.call(read_physical{nodename, 11});
  REQUIRE(r);
  auto& d = std::get<physical_data>(r->data).data;
  CHECK(std::string(d.begin(), d.end()) == std::string("kvmi-guest\0", 11));
}

#else

TEST_CASE("kvmi-qemu needs an x86-64 host") {
  MESSAGE("skipped: kvmi-qemu boots an x86-64 guest kernel and maps x86-64 registers");
}

#endif

} // namespace
