// kvmid and a real Linux guest: kvmi-qemu boots Debian's cloud kernel with a
// busybox initramfs under QEMU TCG and serves kvmid the run's KVMI dialect
// (v5, or v7 under KVMID_TEST_DIALECT=v7) through QEMU's gdbstub. One guest
// and one kvmid per process, started by the first case that needs them, and
// shared by its cases in order. The guest prints "progress N" a few times a
// second and runs uname (the newuname syscall) each time.
#include "kernel-patches/qemu/guest_image.hpp"
#include "tests/support/host_dialect.hpp"
#include "tests/support/kvmid_daemon.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>

namespace {

using namespace kvmid::test;
using nlohmann::json;

#if defined(__x86_64__)

constexpr uint64_t start_kernel_map = 0xffffffff80000000ull; // with nokaslr

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", (unsigned long long)v);
  return b;
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct real_guest {
  kvmid_daemon kvmid{"qemu", std::vector<uint8_t>(32, 0x5d), "qemu-token-5e1d"};
  std::filesystem::path work = kvmid.dir / "vm";
  std::map<std::string, uint64_t> syms;
  pid_t kq = -1;
  struct reaper {
    pid_t* pid;
    ~reaper() { kvmid::test::stop(*pid); }
  } reap{&kq};

  // extra: more kvmi-qemu options.
  explicit real_guest(const std::vector<std::string>& extra = {}) {
    std::filesystem::create_directories(work);
    INFO("the guest kernel comes from scripts/deps.sh, into " << kvmi::qemu::default_guest_dir());
    REQUIRE(!kvmi::qemu::find_kernel(kvmi::qemu::default_guest_dir()).empty());
    std::vector<std::string> args = {
      KVMI_QEMU_BIN, "--unix", kvmid.kvmi_sock, "--cookie-file", (kvmid.dir / "cookie").string(),
      "--work-dir", work.string(), "--guest-dir", kvmi::qemu::default_guest_dir(), "--name",
      "qemu-guest", "--vcpus", "2", "--protocol", dialect_name(), "--symbols",
      "_stext,_etext,__x64_sys_newuname,__x64_sys_reboot,init_uts_ns"};
    args.insert(args.end(), extra.begin(), extra.end());
    kq = spawn(args, (kvmid.dir / "kvmi-qemu.out").string(),
               (kvmid.dir / "kvmi-qemu.err").string());
    REQUIRE(kq > 0);
    INFO("kvmi-qemu: " << log() << "\nconsole: " << console());
    // The addresses come from the guest's /proc/kallsyms (Debian ships a
    // placeholder System.map); kvmid's policy is written with them.
    REQUIRE(wait_until([&] { return kvmi::qemu::kallsyms_from_console(console()).size() == 5; },
                       "the guest to print its kallsyms lines", std::chrono::seconds(180)));
    syms = kvmi::qemu::kallsyms_from_console(console());
    auto cfg = kvmid.base_config(std::chrono::milliseconds(10000), "info");
    speak_test_dialect(cfg["listeners"][0]);
    cfg["policies"] = json::array(
      {{{"name", "qemu"},
        {"match", json::array({"qemu-*"})},
        {"hypercalls", false}, // kvmi-qemu has no HYPERCALL event
        {"breakpoints", json::array({{{"name", "newuname"}, {"gpa", hex(gpa("__x64_sys_newuname"))}}})}}});
    kvmid.start(cfg);
    REQUIRE(wait_until([&] { return connected(); }, "the guest's session with kvmid",
                       std::chrono::seconds(60)));
  }

  uint64_t gpa(const std::string& sym) const { return syms.at(sym) - start_kernel_map; }
  std::string console() const { return slurp(work / "serial.log"); }
  std::string log() const { return slurp(kvmid.dir / "kvmi-qemu.err"); }

  bool connected() {
    auto r = kvmid.http("GET", "/v1/vms/qemu-guest");
    return r.status == 200 && r.j().value("connected", false);
  }
  // The last progress count on the console.
  long progress() const {
    auto text = console();
    auto at = text.rfind("progress ");
    return at == std::string::npos ? -1 : std::atol(text.c_str() + at + 9);
  }
  // The hostname the last progress line shows (uname -n).
  std::string hostname() const {
    auto text = console();
    auto at = text.rfind("progress ");
    if (at == std::string::npos)
      return {};
    std::istringstream line(text.substr(at));
    std::string word, n, name;
    line >> word >> n >> name;
    return name;
  }
  // A breakpoint kvmid plants on __x64_sys_reboot, which the workload never
  // calls, so it stays planted; the byte under it.
  uint8_t plant_idle_breakpoint() {
    uint64_t at = gpa("__x64_sys_reboot");
    auto original = byte_at(at);
    REQUIRE(original);
    auto r = kvmid.http("POST", "/v1/vms/qemu-guest/breakpoints", json{{"gpa", hex(at)}}.dump());
    REQUIRE(r.status == 201);
    CHECK(byte_at(at) == uint8_t(0xcc)); // as kvmid sees its INT3
    return *original;
  }
  size_t count_in_log(const std::string& what) const {
    auto text = log();
    size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
      ++n;
    return n;
  }
  uint64_t alerts() {
    auto r = kvmid.http("GET", "/v1/vms/qemu-guest");
    return r.status == 200 ? r.j()["counters"].value("alerts", uint64_t(0)) : 0;
  }
  json breakpoint(uint64_t gpa_) {
    auto r = kvmid.http("GET", "/v1/vms/qemu-guest/breakpoints/" + hex(gpa_));
    return r.status == 200 ? r.j() : json();
  }
  uint64_t hits(uint64_t gpa_) {
    auto b = breakpoint(gpa_);
    return b.is_object() ? b.value("hits", uint64_t(0)) : 0;
  }
  std::optional<uint8_t> byte_at(uint64_t gpa_) {
    auto r = kvmid.http("GET", "/v1/vms/qemu-guest/memory?gpa=" + hex(gpa_) + "&len=1");
    if (r.status != 200)
      return std::nullopt;
    return uint8_t(std::stoul(r.j()["data"].get<std::string>(), nullptr, 16));
  }
};

real_guest& guest() {
  static real_guest g;
  return g;
}

// v5 restores the byte at the first hit and replies RETRY: one hit per
// plant. v7 single-steps the vCPU past the original instruction and plants
// the INT3 again: every uname is a hit.
TEST_CASE("a policy breakpoint on __x64_sys_newuname in a real guest is hit and counted while the guest runs on") {
  auto& g = guest();
  uint64_t at = g.gpa("__x64_sys_newuname");
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log());
  if (test_dialect() == dialect::v7) {
    REQUIRE(wait_until([&] { return g.hits(at) >= 5; }, "five hits of the re-armed breakpoint"));
    REQUIRE(wait_until([&] { return g.breakpoint(at).value("planted", false); },
                       "the INT3 back after a hit's single step"));
    CHECK(g.log().find("BREAKPOINT answered retry") != std::string::npos);
    CHECK(g.count_in_log("SINGLESTEP answered") >= 4);
    long p = g.progress();
    uint64_t h = g.hits(at);
    REQUIRE(wait_until([&] { return g.progress() >= p + 5; }, "the guest's progress past the hits"));
    CHECK(g.hits(at) >= h + 4); // each round's uname
    return;
  }
  // kvmid counts the hit, then restores the byte it read before planting.
  REQUIRE(wait_until(
    [&] {
      auto b = g.breakpoint(at);
      return b.is_object() && b.value("hits", 0) >= 1 && !b.value("planted", true);
    },
    "the policy breakpoint's first hit and its restore"));
  auto bp = g.breakpoint(at);
  auto original = g.byte_at(at);
  REQUIRE(original);
  CHECK(bp["original"] == hex(*original));
  CHECK(*original != 0xcc);
  // Planted again by the API, each time hit by the guest's next uname.
  for (int i = 0; i < 3; ++i) {
    uint64_t before = g.hits(at);
    auto r = g.kvmid.http("POST", "/v1/vms/qemu-guest/breakpoints", json{{"gpa", hex(at)}}.dump());
    REQUIRE(r.status == 201);
    // Counted first, then restored: planting again before the restore is a 409.
    REQUIRE(wait_until(
      [&] {
        auto b = g.breakpoint(at);
        return b.is_object() && b.value("hits", uint64_t(0)) == before + 1
               && !b.value("planted", true);
      },
      "hit " + std::to_string(i + 2) + " and its restore"));
  }
  CHECK(g.log().find("BREAKPOINT answered retry") != std::string::npos);
  long p = g.progress();
  REQUIRE(wait_until([&] { return g.progress() >= p + 5; }, "the guest's progress after the hits"));
  CHECK(g.byte_at(at) == original);
}

TEST_CASE("pausing a real guest stops its progress and shows registers consistent with its kallsyms") {
  auto& g = guest();
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log());
  long before = g.progress();
  REQUIRE(wait_until([&] { return g.progress() > before; }, "the guest making progress"));
  auto r = g.kvmid.http("POST", "/v1/vms/qemu-guest/pause");
  REQUIRE(r.status == 200);
  long held = g.progress();
  // Two vCPUs (-smp 2, gdbstub threads 1 and 2), each held in its own
  // PAUSE_VCPU event, each with its own registers.
  auto vcpus = g.kvmid.http("GET", "/v1/vms/qemu-guest/vcpus").j()["vcpus"];
  REQUIRE(vcpus.size() == 2);
  std::set<uint64_t> rsps;
  for (int n = 0; n < 2; ++n) {
    CAPTURE(n);
    CHECK(vcpus[n]["state"] == "paused");
    auto regs = g.kvmid.http("GET", "/v1/vms/qemu-guest/vcpus/" + std::to_string(n)
                                      + "/registers?msrs=0xc0000080");
    REQUIRE(regs.status == 200);
    auto j = regs.j();
    uint64_t rip = std::stoull(j["regs"]["rip"].get<std::string>(), nullptr, 16);
    bool in_text = rip >= g.syms.at("_stext") && rip < g.syms.at("_etext");
    bool in_user = rip < 0x0000800000000000ull;
    INFO("rip " << hex(rip));
    CHECK((in_text || in_user));
    CHECK(std::stoull(j["sregs"]["cr3"].get<std::string>(), nullptr, 16) != 0);
    uint64_t efer = std::stoull(j["msrs"][0]["value"].get<std::string>(), nullptr, 16);
    CHECK((efer & 0x400) != 0); // long mode active
    rsps.insert(std::stoull(j["regs"]["rsp"].get<std::string>(), nullptr, 16));
  }
  CHECK(rsps.size() == 2); // two CPUs, two stacks
  // Stopped means no count for as long as we look; a second is ~20 counts.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(g.progress() == held);
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/resume").status == 200);
  REQUIRE(wait_until([&] { return g.progress() > held + 2; }, "progress after the resume"));
}

TEST_CASE("an unhook and a reconnect leave no stray breakpoint in a real guest") {
  auto& g = guest();
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log());
  uint64_t at = g.gpa("__x64_sys_reboot");
  uint8_t original = g.plant_idle_breakpoint();
  size_t clean_ends = g.count_in_log("0 breakpoints left planted");
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/unhook").status == 200);
  REQUIRE(wait_until([&] { return g.count_in_log("0 breakpoints left planted") > clean_ends; },
                     "kvmi-qemu's session to end with no breakpoint left"));
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/admit").status == 200);
  REQUIRE(wait_until([&] { return g.connected(); }, "the guest hooked again",
                     std::chrono::seconds(60)));
  CHECK(g.byte_at(at) == original);
  // The new session's policy breakpoint works as the first one did.
  uint64_t newuname = g.gpa("__x64_sys_newuname");
  REQUIRE(wait_until([&] { return g.hits(newuname) >= 1; }, "the policy breakpoint hit again"));
  long p = g.progress();
  REQUIRE(wait_until([&] { return g.progress() > p + 2; }, "progress after the reconnect"));
}

TEST_CASE("writes into a write-protected page of a real guest raise page-protection alerts") {
  auto& g = guest();
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log());
  // The guest renames itself every 40 rounds: sethostname writes init_uts_ns.
  uint64_t page = g.gpa("init_uts_ns") & ~uint64_t(0xfff);
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/pause").status == 200);
  for (const char* n : {"0", "1"}) { // the rename may run on either vCPU
    auto ev = g.kvmid.http("PUT", std::string("/v1/vms/qemu-guest/vcpus/") + n + "/events",
                           json{{"enable", json::array({"pf"})}}.dump());
    INFO(ev.body);
    REQUIRE(ev.status == 200);
  }
  auto set = [&](const char* access) {
    return g.kvmid.http("PUT", "/v1/vms/qemu-guest/page-access",
                        json{{"gpa", hex(page)}, {"access", access}}.dump()).status;
  };
  CHECK(set("r-x") == 200);
  uint64_t before = g.alerts();
  std::string name = g.hostname();
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/resume").status == 200);
  REQUIRE(wait_until([&] { return g.alerts() > before; }, "a page-protection alert",
                     std::chrono::seconds(60)));
  CHECK(g.log().find("write-protected") != std::string::npos);
  // An operator's protection is allow-once: CONTINUE, the write stands
  // (kvmi-qemu keeps it) and the page stays protected.
  REQUIRE(wait_until([&] { return g.hostname() != name; }, "the guest's next hostname",
                     std::chrono::seconds(60)));
  auto pages = g.kvmid.http("GET", "/v1/vms/qemu-guest/page-access").j();
  REQUIRE(pages["ranges"].size() == 1);
  CHECK(pages["ranges"][0]["pages"] == 1);
  CHECK(pages["ranges"][0]["access"] == "r-x");
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/pause").status == 200);
  CHECK(set("rwx") == 200);
  REQUIRE(g.kvmid.http("POST", "/v1/vms/qemu-guest/resume").status == 200);
  CHECK(g.log().find("writable again") != std::string::npos);
  long p = g.progress();
  REQUIRE(wait_until([&] { return g.progress() > p + 2; }, "progress after the unprotect"));
}

// struct uts_namespace starts with struct new_utsname: sysname[65], nodename[65].
uint64_t nodename_gpa(const real_guest& g) { return g.gpa("init_uts_ns") + 65; }

// kvmid's policy with these page rules, reloaded; the reload's status.
int reload_pages(real_guest& g, json pages) {
  g.kvmid.config["policies"][0]["page_protection"] = std::move(pages);
  g.kvmid.write_config(g.kvmid.config);
  return g.kvmid.http("POST", "/v1/policies/reload").status;
}

json page_ranges(real_guest& g) {
  return g.kvmid.http("GET", "/v1/vms/qemu-guest/page-access").j()["ranges"];
}

// The hostname in guest memory, as kvmid reads it.
std::string nodename_in_memory(real_guest& g) {
  auto mem =
    g.kvmid.http("GET", "/v1/vms/qemu-guest/memory?gpa=" + hex(nodename_gpa(g)) + "&len=65");
  REQUIRE(mem.status == 200);
  std::string hexed = mem.j()["data"], text;
  for (size_t i = 0; i + 1 < hexed.size() && hexed.compare(i, 2, "00") != 0; i += 2)
    text += char(std::stoi(hexed.substr(i, 2), nullptr, 16));
  return text;
}

// kvmid's policy denies writes to nodename (the rest of its page allowed);
// through a whole round of the guest's renames (evil and kvmi-guest-N) the
// hostname stays, and kvmictl watch shows the page-protection alert. The
// hostname kept.
std::string deny_a_round_of_renames(real_guest& g) {
  uint64_t nodename = nodename_gpa(g);
  uint64_t page = nodename & ~uint64_t(0xfff);
  // Not "evil" yet: the guest turning evil later is the rule off at work.
  REQUIRE(wait_until([&] { auto n = g.hostname(); return !n.empty() && n != "evil"; },
                     "a hostname other than evil", std::chrono::seconds(120)));
  auto watch_out = g.kvmid.dir / "watch.out";
  pid_t watch = spawn({KVMICTL_BIN, "--unix", g.kvmid.api_sock, "--token", g.kvmid.token, "--json",
                       "watch", "--kind", "page-protection", "--count", "1"},
                      watch_out.string(), (g.kvmid.dir / "watch.err").string());
  struct reaper {
    pid_t pid;
    ~reaper() { kvmid::test::stop(pid); }
  } reap{watch};
  REQUIRE(wait_until(
    [&] {
      return g.kvmid.http("GET", "/metrics").body.find("kvmid_event_streams 1\n") != std::string::npos;
    },
    "kvmictl watch's event stream"));
  REQUIRE(reload_pages(g, json::array({{{"name", "hostname"},
                                        {"gpa", hex(page)},
                                        {"size", "0x1000"},
                                        {"access", "r-x"},
                                        {"on_violation", "deny"},
                                        {"deny_range", {{"gpa", hex(nodename)}, {"size", 65}}}}}))
          == 200);
  REQUIRE(wait_until([&] { return page_ranges(g).size() == 1; }, "the policy's page restriction"));
  // The name in memory once the restriction stands: the console's last
  // line may not show a rename made just before it yet.
  std::string name = nodename_in_memory(g);
  long at = g.progress();
  REQUIRE(wait_until([&] { return slurp(watch_out).find("page-protection") != std::string::npos; },
                     "a page-protection alert on kvmictl watch", std::chrono::seconds(120)));
  auto alert = json::parse(slurp(watch_out).substr(0, slurp(watch_out).find('\n')))["data"];
  CHECK(alert["vm_name"] == "qemu-guest");
  CHECK(alert["fields"]["rule"] == "hostname");
  CHECK(alert["fields"]["action"] == "retry");
  REQUIRE(wait_until([&] { return g.progress() > at + 81; }, "both renames of the guest",
                     std::chrono::seconds(180)));
  CHECK(g.hostname() == name);
  CHECK(nodename_in_memory(g) == name);
  // Denied by moving RIP, not let through for want of a decoded instruction.
  CHECK(g.kvmid.log().find("let through") == std::string::npos);
  CHECK(g.log().find("the write was undone (retry)") != std::string::npos);
  return name;
}

TEST_CASE("kvmid denies the guest's hostname evil with a page rule scoped to nodename and lets it through with the rule off") {
  auto& g = guest();
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log() << "\nconsole tail: "
                     << g.console().substr(g.console().size() - std::min<size_t>(g.console().size(), 400)));
  std::string name = deny_a_round_of_renames(g);

  // The policy off: the same rename lands.
  REQUIRE(reload_pages(g, json::array()) == 200);
  REQUIRE(wait_until([&] { return page_ranges(g).empty(); }, "the page writable again"));
  if (name == "evil") // renamed just before the restriction: wait for the next evil
    REQUIRE(wait_until([&] { return nodename_in_memory(g) != "evil"; }, "a rename away from evil",
                       std::chrono::seconds(180)));
  REQUIRE(wait_until([&] { return g.hostname() == "evil" && nodename_in_memory(g) == "evil"; },
                     "the guest renamed evil", std::chrono::seconds(180)));
}

// The gdbstub can lose a watchpoint stop, and the write then lands with no
// stop: kvmi-qemu, told to ignore every third stop, must still ask kvmid
// about each such write (found in the page after the next PF's reply), and
// kvmid's deny still holds. A guest of its own: the shared one keeps every
// stop.
TEST_CASE("a write whose watchpoint stop was lost is still asked about and kvmid's deny holds the hostname") {
  real_guest g({"--drop-watch-stops", "3"});
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log() << "\nconsole tail: "
                     << g.console().substr(g.console().size() - std::min<size_t>(g.console().size(), 400)));
  deny_a_round_of_renames(g);
  CHECK(g.count_in_log("stop ignored (--drop-watch-stops)") > 0);
  CHECK(g.count_in_log("that no stop reported: asked now") > 0);
}

TEST_CASE("an unhook kvmi-qemu asks for leaves the real guest running without breakpoints until it hooks again") {
  auto& g = guest();
  INFO("kvmi-qemu: " << g.log() << "\nkvmid: " << g.kvmid.log());
  uint64_t at = g.gpa("__x64_sys_reboot");
  uint8_t original = g.plant_idle_breakpoint();
  size_t clean_ends = g.count_in_log("0 breakpoints left planted");
  REQUIRE(::kill(g.kq, SIGUSR1) == 0); // as QEMU's unhook request
  REQUIRE(wait_until([&] { return g.count_in_log("0 breakpoints left planted") > clean_ends; },
                     "the UNHOOK to end the session with no breakpoint left"));
  CHECK(g.log().find("UNHOOK sent") != std::string::npos);
  CHECK_FALSE(g.connected());
  long p = g.progress();
  REQUIRE(wait_until([&] { return g.progress() > p + 2; }, "progress while unhooked"));
  REQUIRE(::kill(g.kq, SIGUSR2) == 0);
  REQUIRE(wait_until([&] { return g.connected(); }, "the guest hooked again",
                     std::chrono::seconds(60)));
  CHECK(g.byte_at(at) == original);
}

// QEMU's pid, from kvmi-qemu's log; 0 until it says.
pid_t qemu_pid(const std::string& log) {
  auto at = log.find("QEMU pid ");
  return at == std::string::npos ? 0 : pid_t(std::atoi(log.c_str() + at + 9));
}

// Gone, or a zombie its new parent has not reaped yet.
bool process_gone(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto close = stat.rfind(')');
  return !f || close == std::string::npos || stat.compare(close + 2, 1, "Z") == 0;
}

TEST_CASE("QEMU ends with kvmi-qemu whether it is stopped or killed"
          * doctest::skip(only_in(dialect::v5, "no session: the same in both dialects"))) {
  for (int sig : {SIGTERM, SIGKILL}) {
    CAPTURE(sig);
    temp_dir tmp("qemu-exit");
    std::filesystem::create_directories(tmp.path() / "vm");
    tmp.write("cookie", std::string(32, 'c'));
    pid_t kq = spawn({KVMI_QEMU_BIN, "--unix", (tmp.path() / "nobody.sock").string(),
                      "--cookie-file", (tmp.path() / "cookie").string(), "--work-dir",
                      (tmp.path() / "vm").string(), "--guest-dir", kvmi::qemu::default_guest_dir(), "--hook-when", ""},
                     (tmp.path() / "out").string(), (tmp.path() / "err").string());
    REQUIRE(kq > 0);
    auto err = [&] { return slurp(tmp.path() / "err"); };
    INFO("kvmi-qemu: " << err());
    REQUIRE(wait_until([&] { return qemu_pid(err()) > 0; }, "kvmi-qemu to start QEMU"));
    pid_t qemu = qemu_pid(err());
    CHECK_FALSE(process_gone(qemu));
    ::kill(kq, sig);
    ::waitpid(kq, nullptr, 0);
    CHECK(wait_until([&] { return process_gone(qemu); }, "QEMU to end"));
  }
}

#else

TEST_CASE("kvmi-qemu needs an x86-64 host"
          * doctest::skip(only_in(dialect::v5, "listed once"))) {
  MESSAGE("skipped: kvmi-qemu boots an x86-64 guest kernel and maps x86-64 registers");
}

#endif

} // namespace
