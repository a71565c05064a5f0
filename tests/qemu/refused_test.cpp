// What the gdbstub has no equivalent for, as a minimal tool sees it on the
// wire: CR and MSR interception, CPUID, XSAVE, exception injection and map
// tokens are not in GET_VERSION's masks and are refused with the kernel's
// error codes (-KVM_EACCES for a command the host does not allow,
// -KVM_EPERM for a disallowed event in CONTROL_EVENTS), and no event comes
// for them. kvmi-qemu hooks at once (--hook-when ""), while the firmware
// runs: no guest boot needed.
#include "kernel-patches/qemu/guest_image.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <iterator>

namespace {

#if defined(__x86_64__)

using namespace kvmi;

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

TEST_CASE("kvmi-qemu refuses the commands and events the gdbstub cannot serve with the kernel's errors") {
  test::listener l;
  kvmid::test::temp_dir tmp("qemu-refused");
  std::filesystem::create_directories(tmp.path() / "vm");
  tmp.write("cookie", std::string(test::test_cookie_text));
  pid_t kq = kvmid::test::spawn(
    {KVMI_QEMU_BIN, "--unix", l.path(), "--cookie-file", (tmp.path() / "cookie").string(),
     "--work-dir", (tmp.path() / "vm").string(), "--guest-dir", qemu::default_guest_dir(), "--name",
     "qemu-refused", "--hook-when", ""},
    (tmp.path() / "out").string(), (tmp.path() / "err").string());
  REQUIRE(kq > 0);
  struct reaper {
    pid_t pid;
    ~reaper() { kvmid::test::stop(pid); }
  } reap{kq};
  INFO("kvmi-qemu: " << slurp(tmp.path() / "err"));
  int fd = l.accept(std::chrono::seconds(60));
  REQUIRE(fd >= 0);
  test::conn c(fd);
  REQUIRE(c.handshake());

  auto v = c.call(get_version{});
  REQUIRE(v);
  REQUIRE(v->err == 0);
  auto& masks = std::get<get_version_reply>(v->data);
  for (auto id : {msg_id::control_cr, msg_id::control_msr, msg_id::get_cpuid, msg_id::get_xsave,
                  msg_id::inject_exception, msg_id::get_map_token}) {
    CAPTURE(name(id));
    CHECK_FALSE(allowed_command(id, masks.commands));
  }
  for (auto e : {event_id::cr, event_id::msr, event_id::xsetbv, event_id::hypercall,
                 event_id::trap, event_id::descriptor}) {
    CAPTURE(name(e));
    CHECK((masks.events & flag(e)) == 0);
  }
  CHECK(allowed_command(msg_id::read_physical, masks.commands));
  CHECK((masks.events & flag(event_id::pf)) != 0);

  // Refused as a kernel whose host allows less refuses them.
  std::vector<command> refused = {control_cr{0, 1, 0, 4},
                                  control_msr{0, 1, 0, 0xc0000082},
                                  get_cpuid{0, {}, 1, 0},
                                  get_xsave{0, {}},
                                  inject_exception{0, 3, 0, 0, 0, 0},
                                  get_map_token{}};
  for (auto& cmd : refused) {
    CAPTURE(name(id_of(cmd)));
    auto r = c.call(cmd);
    REQUIRE(r);
    CHECK(r->err == -kvm_eacces);
  }
  for (auto e : {event_id::cr, event_id::msr, event_id::xsetbv, event_id::hypercall,
                 event_id::trap, event_id::descriptor}) {
    CAPTURE(name(e));
    auto r = c.call(control_events{0, 0, flag(e) | flag(event_id::pause_vcpu)});
    REQUIRE(r);
    CHECK(r->err == -kvm_eperm);
  }
  // The events it does serve are taken, and nothing was made up meanwhile:
  // the first event is the PAUSE_VCPU asked for now.
  auto ok = c.call(control_events{0, 0, flag(event_id::pause_vcpu) | flag(event_id::pf)});
  REQUIRE(ok);
  CHECK(ok->err == 0);
  auto paused = c.call(pause_all_vcpus{});
  REQUIRE(paused);
  CHECK(paused->err == 0);
  auto ev = c.next_event();
  REQUIRE(ev);
  CHECK(ev->kind() == event_id::pause_vcpu);
  c.reply(*ev, action::continue_);
  // The session still serves what maps: a read of low RAM.
  auto mem = c.call(read_physical{0x1000, 16});
  REQUIRE(mem);
  CHECK(mem->err == 0);
}

#else

TEST_CASE("kvmi-qemu needs an x86-64 host") {
  MESSAGE("skipped: kvmi-qemu boots an x86-64 guest kernel and maps x86-64 registers");
}

#endif

} // namespace
