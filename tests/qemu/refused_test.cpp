// What the gdbstub has no equivalent for, as a minimal tool sees it on the
// wire: CR and MSR interception, CPUID, XSAVE, exception injection and map
// tokens are refused with the kernel's error codes, and no event comes for
// them. v5: absent from GET_VERSION's masks, -KVM_EACCES for a command the
// host does not allow, -KVM_EPERM for a disallowed event in
// CONTROL_EVENTS. v7: CHECK_COMMAND and CHECK_EVENT say no, and the
// commands get -KVM_EPERM. kvmi-qemu hooks at once (--hook-when ""), while
// the firmware runs: no guest boot needed.
#include "kernel-patches/qemu/guest_image.hpp"
#include "tests/sim/mini_tool.hpp"
#include "tests/sim/mini_tool_v7.hpp"
#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <iterator>

namespace {

#if defined(__x86_64__)

using namespace kvmi;

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// kvmi-qemu hooking at once into `l`, in `protocol`; stopped by the test.
struct refused_host {
  test::listener l;
  kvmid::test::temp_dir tmp{"qemu-refused"};
  pid_t kq = -1;
  struct reaper {
    pid_t* pid;
    ~reaper() { kvmid::test::stop(*pid); }
  } reap{&kq};

  explicit refused_host(const char* protocol) {
    std::filesystem::create_directories(tmp.path() / "vm");
    tmp.write("cookie", std::string(test::test_cookie_text));
    kq = kvmid::test::spawn(
      {KVMI_QEMU_BIN, "--unix", l.path(), "--cookie-file", (tmp.path() / "cookie").string(),
       "--work-dir", (tmp.path() / "vm").string(), "--guest-dir", qemu::default_guest_dir(),
       "--name", "qemu-refused", "--hook-when", "", "--protocol", protocol},
      (tmp.path() / "out").string(), (tmp.path() / "err").string());
    REQUIRE(kq > 0);
  }
  std::string log() const { return slurp(tmp.path() / "err"); }
};

TEST_CASE("kvmi-qemu refuses the commands and events the gdbstub cannot serve with the kernel's errors") {
  refused_host h("v5");
  auto& l = h.l;
  INFO("kvmi-qemu: " << h.log());
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


TEST_CASE("kvmi-qemu in v7 refuses what the gdbstub cannot serve with -KVM_EPERM and single-steps a vCPU") {
  namespace v7 = kvmi::v7;
  refused_host h("v7");
  INFO("kvmi-qemu: " << h.log());
  int fd = h.l.accept(std::chrono::seconds(60));
  REQUIRE(fd >= 0);
  test::v7tool::conn c(fd);
  auto cookie = test::test_cookie();
  REQUIRE(c.handshake(cookie, v7::hs::layout::e820));
  // QEMU's struct: the name, x86-64, the E820 map with the legacy hole
  // reserved and 256 MiB of RAM.
  CHECK(c.hello().name == "qemu-refused");
  CHECK(c.hello().cpu_type == v7::hs::cpu_type_x86_64);
  REQUIRE(c.hello().e820.size() == 3);
  CHECK(c.hello().e820[0].type == 1);
  CHECK(c.hello().e820[1].address == 0xa0000);
  CHECK(c.hello().e820[1].type == 2);
  CHECK(c.hello().e820[2].address + c.hello().e820[2].length == 256ull << 20);

  auto v = c.call(v7::get_version{});
  REQUIRE(v);
  CHECK(v->err == 0);
  auto gfn = c.call(v7::get_max_gfn{});
  REQUIRE(gfn);
  CHECK(std::get<v7::get_max_gfn_reply>(gfn->data).gfn == ((256ull << 20) - 1) >> 12);
  auto check_command = [&](v7::msg_id id) {
    auto r = c.call(v7::check_command{uint16_t(id), 0, 0});
    REQUIRE(r);
    return r->err;
  };
  auto check_event = [&](v7::event_id e) {
    auto r = c.call(v7::check_event{uint16_t(e), 0, 0});
    REQUIRE(r);
    return r->err;
  };
  for (auto id : {v7::msg_id::control_cr, v7::msg_id::control_msr, v7::msg_id::get_cpuid,
                  v7::msg_id::get_xsave, v7::msg_id::inject_exception, v7::msg_id::get_map_token}) {
    CAPTURE(v7::name(id));
    CHECK(check_command(id) == -kvm_eperm);
  }
  for (auto id : {v7::msg_id::read_physical, v7::msg_id::set_page_access,
                  v7::msg_id::vcpu_control_singlestep, v7::msg_id::pause_vcpu}) {
    CAPTURE(v7::name(id));
    CHECK(check_command(id) == 0);
  }
  for (auto e : {v7::event_id::cr, v7::event_id::msr, v7::event_id::xsetbv,
                 v7::event_id::hypercall, v7::event_id::trap, v7::event_id::descriptor,
                 v7::event_id::cpuid}) {
    CAPTURE(v7::name(e));
    CHECK(check_event(e) == -kvm_eperm);
    auto r = c.call(v7::control_events{uint16_t(e), 1, 0, 0}, 0);
    REQUIRE(r);
    CHECK(r->err == -kvm_eperm);
  }
  CHECK(check_event(v7::event_id::singlestep) == 0);
  auto cr = c.call(v7::control_cr{1, 0, 0, 4}, 0);
  REQUIRE(cr);
  CHECK(cr->err == -kvm_eperm);

  // PAUSE_VCPU, then one instruction single-stepped: a SINGLESTEP event
  // with RIP moved on, and nothing else made up meanwhile.
  for (auto e : {v7::event_id::pause_vcpu, v7::event_id::singlestep}) {
    auto r = c.call(v7::control_events{uint16_t(e), 1, 0, 0}, 0);
    REQUIRE(r);
    CHECK(r->err == 0);
  }
  auto p = c.call(v7::pause_vcpu{0, 0, 0, 0}, 0);
  REQUIRE(p);
  CHECK(p->err == 0);
  auto paused = c.next_event();
  REQUIRE(paused);
  CHECK(paused->kind() == v7::event_id::pause_vcpu);
  CHECK(paused->common.vcpu == 0);
  auto regs = paused->common.arch.regs;
  auto on = c.call(v7::vcpu_control_singlestep{1, {}}, 0);
  REQUIRE(on);
  CHECK(on->err == 0);
  c.reply(*paused, action::continue_);
  // One SINGLESTEP per instruction for as long as stepping stays on. The
  // firmware may be in a REP string instruction, whose iterations leave RIP
  // where it is and move RCX/RDI: some register moves.
  std::optional<v7::event_msg> step;
  bool moved = false;
  for (int n = 0; n < 200 && !moved; ++n) {
    if (step)
      c.reply(*step, action::continue_);
    step = c.next_event();
    REQUIRE(step);
    REQUIRE(step->kind() == v7::event_id::singlestep);
    CHECK(step->common.vcpu == 0);
    CHECK(std::get<v7::event_singlestep>(step->data).failed == 0);
    moved = std::memcmp(&step->common.arch.regs, &regs, sizeof regs) != 0;
  }
  CHECK(moved);
  auto off = c.call(v7::vcpu_control_singlestep{0, {}}, 0);
  REQUIRE(off);
  CHECK(off->err == 0);
  c.reply(*step, action::continue_);
  // The session still serves what maps: a read of low RAM.
  auto mem = c.call(v7::read_physical{0x1000, 16});
  REQUIRE(mem);
  CHECK(mem->err == 0);
  CHECK(std::get<v7::physical_data>(mem->data).data.size() == 16);
}

#else

TEST_CASE("kvmi-qemu needs an x86-64 host") {
  MESSAGE("skipped: kvmi-qemu boots an x86-64 guest kernel and maps x86-64 registers");
}

#endif

} // namespace
