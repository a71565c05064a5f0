#include "bench/guest.hpp"

#include "kernel-patches/qemu/gdb_remote.hpp"
#include "kernel-patches/qemu/guest_image.hpp"
#include "kernel-patches/qemu/qemu_process.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/temp_dir.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <regex>
#include <stdexcept>
#include <thread>

namespace bench {

namespace {

namespace fs = std::filesystem;
namespace q = kvmi::qemu;
using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

constexpr uint64_t start_kernel_map = 0xffffffff80000000ull; // with nokaslr
constexpr uint64_t page = 4096, chunk = 1024;                 // bytes per m/M packet
const std::vector<std::string> symbols = {"__x64_sys_newuname", "init_uts_ns"};
// Every round: the newuname syscall (the breakpoint) and a rename (the
// write into init_uts_ns's nodename the watchpoint and kvmid's rule meet).
const std::string loop = "  uname -n >/dev/null\n  hostname evil\n  hostname kvmi-guest";

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%" PRIx64, v);
  return b;
}

std::string join(const std::vector<std::string>& parts) {
  std::string all;
  for (auto& p : parts)
    all += p;
  return all;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct guest_files {
  std::string kernel, initrd;
};

guest_files prepare(const fs::path& dir) {
  guest_files g;
  g.kernel = q::find_kernel(q::default_guest_dir());
  if (g.kernel.empty())
    throw std::runtime_error("no guest kernel under " + q::default_guest_dir()
                             + " (scripts/deps.sh puts it there)");
  g.initrd = (dir / "initrd.cpio").string();
  if (auto why = q::write_initramfs(g.initrd, "/bin/busybox", q::init_script(symbols, loop));
      !why.empty())
    throw std::runtime_error(why);
  return g;
}

// The console's kallsyms lines for both symbols, within two minutes.
std::map<std::string, uint64_t> wait_kallsyms(const fs::path& serial_log) {
  auto until = clock::now() + 120s;
  while (clock::now() < until) {
    auto syms = q::kallsyms_from_console(slurp(serial_log));
    if (syms.size() == symbols.size())
      return syms;
    std::this_thread::sleep_for(50ms);
  }
  throw std::runtime_error("the guest never printed its kallsyms lines (" + serial_log.string()
                           + ")");
}

void must(const std::optional<std::string>& r, const std::string& what, q::gdb_remote& gdb,
          const char* want = "OK") {
  if (!r || (want && *r != want))
    throw std::runtime_error("gdbstub: " + what + ": " + (r ? *r : gdb.error()));
}

// The gdbstub alone: the same breakpoint and write watchpoint, stepped over
// and put back by hand.
void bare(guest_run& out, size_t hits) {
  kvmid::test::temp_dir dir("bench-bare");
  auto files = prepare(dir.path());
  q::qemu_options o;
  o.kernel = files.kernel;
  o.initrd = files.initrd;
  o.dir = dir.path().string();
  o.serial_log = (dir.path() / "serial.log").string();
  q::qemu_process qemu(o);
  if (auto why = qemu.start(); !why.empty())
    throw std::runtime_error("cannot start QEMU: " + why);
  q::gdb_remote gdb;
  if (auto why = gdb.connect(qemu.gdb_socket(), 20s); !why.empty())
    throw std::runtime_error(why);
  must(gdb.request("qSupported:xmlRegisters=i386"), "qSupported", gdb, nullptr);
  while (gdb.take_stop()) {
  }
  if (!gdb.send("c"))
    throw std::runtime_error(gdb.error());
  auto syms = wait_kallsyms(o.serial_log);
  if (!gdb.interrupt() || !gdb.stop(10s))
    throw std::runtime_error("gdbstub: " + gdb.error());
  must(gdb.request("Qqemu.PhyMemMode:1"), "physical memory mode", gdb);
  uint64_t bp = syms.at("__x64_sys_newuname");
  uint64_t uts_page = syms.at("init_uts_ns") & ~(page - 1);
  uint64_t uts_gpa = uts_page - start_kernel_map;
  uint64_t nodename_off = syms.at("init_uts_ns") + 65 - uts_page; // after sysname[65]
  must(gdb.request("Z0," + hex(bp) + ",1"), "Z0", gdb);
  must(gdb.request("Z2," + hex(uts_page) + ",1000"), "Z2", gdb);
  std::vector<std::string> copy; // the page as hex, one m/M packet's worth each
  for (uint64_t at = 0; at < page; at += chunk) {
    auto r = gdb.request("m" + hex(uts_gpa + at) + "," + hex(chunk));
    must(r, "m", gdb, nullptr);
    copy.push_back(*r);
  }
  auto until = clock::now() + 60s;
  while ((out.bare_bp.size() < hits || out.bare_pf.size() < hits) && clock::now() < until) {
    if (!gdb.send("c"))
      throw std::runtime_error(gdb.error());
    auto s = gdb.stop(10s);
    if (!s)
      throw std::runtime_error("the guest did not stop within 10 s: " + gdb.error());
    uint64_t t0 = now_ns();
    if (s->watch) {
      // What a denial needs: the page read, and its bytes put back when the
      // write went into nodename; writes elsewhere on the page stand.
      std::vector<std::string> now;
      for (uint64_t at = 0; at < page; at += chunk) {
        auto r = gdb.request("m" + hex(uts_gpa + at) + "," + hex(chunk));
        must(r, "m", gdb, nullptr);
        now.push_back(*r);
      }
      std::string was = join(copy), is = join(now);
      auto diff = std::mismatch(was.begin(), was.end(), is.begin()).first - was.begin();
      uint64_t off = uint64_t(diff) / 2; // hex: two digits a byte
      if (off >= nodename_off && off < nodename_off + 65) {
        for (uint64_t at = 0; at < page; at += chunk)
          must(gdb.request("M" + hex(uts_gpa + at) + "," + hex(chunk) + ":" + copy[at / chunk]),
               "M", gdb);
        out.bare_pf.push_back(now_ns() - t0);
      } else {
        copy = std::move(now);
      }
    } else if (s->signal == 5) {
      // What a breakpoint that fires again needs: out, one step, back in.
      must(gdb.request("z0," + hex(bp) + ",1"), "z0", gdb);
      must(gdb.request("Hc" + hex(uint64_t(s->thread > 0 ? s->thread : 1))), "Hc", gdb);
      if (!gdb.send("s") || !gdb.stop(10s))
        throw std::runtime_error("gdbstub: step: " + gdb.error());
      must(gdb.request("Z0," + hex(bp) + ",1"), "Z0", gdb);
      out.bare_bp.push_back(now_ns() - t0);
    }
  }
  qemu.stop();
}

// kvmi-qemu's "held N us by KIND (REPLY)" lines: every breakpoint hit, the
// denied writes (a write elsewhere on the page is let through).
void parse_held(const std::string& log, guest_run& out) {
  static const std::regex line("held ([0-9]+) us by (breakpoint|pf) \\((\\w+)\\)");
  for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it) {
    uint64_t ns = std::stoull((*it)[1]) * 1000;
    if ((*it)[2] == "breakpoint")
      out.kvmid_bp.push_back(ns);
    else if ((*it)[3] == "retry")
      out.kvmid_pf.push_back(ns);
  }
}

// kvmid (a v7 listener) with a policy breakpoint on newuname and a deny
// rule over nodename, kvmi-qemu in v7 in front of the same guest.
void through_kvmid(guest_run& out, const std::string& kvmid_bin,
                   const std::string& kvmi_qemu_bin, size_t hits) {
  kvmid::test::temp_dir dir("bench-guest");
  auto files = prepare(dir.path());
  fs::create_directories(dir.path() / "vm");
  dir.write("cookie", std::string(32, 'g'));
  fs::permissions(dir.path() / "cookie", fs::perms::owner_read | fs::perms::owner_write);
  auto sock = (dir.path() / "kvmi.sock").string();
  auto kq_err = dir.path() / "kvmi-qemu.err";
  pid_t kq = kvmid::test::spawn({kvmi_qemu_bin, "--unix", sock, "--cookie-file",
                                 (dir.path() / "cookie").string(), "--work-dir",
                                 (dir.path() / "vm").string(), "--kernel", files.kernel,
                                 "--initrd", files.initrd, "--protocol", "v7", "--name",
                                 "bench-guest"},
                                (dir.path() / "kvmi-qemu.out").string(), kq_err.string());
  pid_t kd = -1;
  struct reaper {
    pid_t *a, *b;
    ~reaper() {
      kvmid::test::stop(*b);
      kvmid::test::stop(*a);
    }
  } reap{&kq, &kd};
  if (kq <= 0)
    throw std::runtime_error("cannot start " + kvmi_qemu_bin);
  auto syms = wait_kallsyms(dir.path() / "vm" / "serial.log");
  uint64_t nodename = syms.at("init_uts_ns") - start_kernel_map + 65; // after sysname[65]
  uint64_t bp = syms.at("__x64_sys_newuname") - start_kernel_map;
  using nlohmann::json;
  json cfg = {
    {"log_level", "warn"},
    {"cookie_file", (dir.path() / "cookie").string()},
    {"state_dir", (dir.path() / "state").string()},
    {"listeners",
     json::array({{{"type", "unix"}, {"path", sock}, {"protocol", "v7"}, {"qemu_layout", "e820"}}})},
    {"policies",
     json::array({{{"name", "bench"},
                   {"match", json::array({"*"})},
                   {"hypercalls", false}, // kvmi-qemu has no HYPERCALL event
                   {"breakpoints", json::array({{{"name", "newuname"}, {"gpa", "0x" + hex(bp)}}})},
                   {"page_protection",
                    json::array({{{"name", "hostname"},
                                  {"gpa", "0x" + hex(nodename & ~(page - 1))},
                                  {"size", "0x1000"},
                                  {"access", "r-x"},
                                  {"on_violation", "deny"},
                                  {"deny_range", {{"gpa", "0x" + hex(nodename)}, {"size", 65}}}}})}}})}};
  dir.write("kvmid.json", cfg.dump(2));
  kd = kvmid::test::spawn({kvmid_bin, "--config", (dir.path() / "kvmid.json").string()},
                          (dir.path() / "kvmid.out").string(),
                          (dir.path() / "kvmid.err").string());
  if (kd <= 0)
    throw std::runtime_error("cannot start " + kvmid_bin);
  auto until = clock::now() + 90s;
  while (clock::now() < until) {
    guest_run seen;
    parse_held(slurp(kq_err), seen);
    if (seen.kvmid_bp.size() >= hits && seen.kvmid_pf.size() >= hits)
      break;
    if (kvmid::test::try_reap(kq) != -2 || kvmid::test::try_reap(kd) != -2)
      throw std::runtime_error("kvmi-qemu or kvmid ended early: " + slurp(kq_err).substr(0, 2000)
                               + slurp(dir.path() / "kvmid.err").substr(0, 2000));
    std::this_thread::sleep_for(200ms);
  }
  parse_held(slurp(kq_err), out);
  if (out.kvmid_bp.empty() || out.kvmid_pf.empty())
    throw std::runtime_error("no hit through kvmid within 90 s; kvmi-qemu: "
                             + slurp(kq_err).substr(0, 3000));
}

} // namespace

guest_run measure_guest(const std::string& kvmid_bin, const std::string& kvmi_qemu_bin,
                        size_t hits) {
  guest_run out;
#if !defined(__x86_64__)
  out.error = "not an x86-64 machine: the guest is x86-64 Linux";
  return out;
#else
  try {
    bare(out, hits);
    through_kvmid(out, kvmid_bin, kvmi_qemu_bin, hits);
    out.ok = !out.bare_bp.empty() && !out.bare_pf.empty();
    if (!out.ok)
      out.error = "the gdbstub alone saw no breakpoint or no watchpoint hit within a minute";
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
#endif
}

} // namespace bench
