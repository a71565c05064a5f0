// kvmi-qemu: a KVMI host end backed by a real Linux guest under QEMU
// (TCG): boots Debian's cloud kernel with a busybox initramfs, attaches to
// QEMU's gdbstub and serves kvmid over the v5 or the v7 wire (README.md).
#include "kvmid_version.hpp"
#include "kernel-patches/qemu/guest_image.hpp"
#include "kernel-patches/qemu/kvmi_host.hpp"
#include "kernel-patches/qemu/qemu_process.hpp"
#include "kernel-patches/sim/cookie_file.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <string>

namespace {

kvmi::qemu::host_requests* requests = nullptr;

void on_signal(int sig) {
  if (!requests)
    return;
  if (sig == SIGUSR1)
    requests->unhook.store(true);
  else if (sig == SIGUSR2)
    requests->hook.store(true);
  else
    requests->stop.store(true);
}

void usage() {
  std::fputs(
    "usage: kvmi-qemu --unix PATH --cookie-file PATH [options]\n"
    "  --guest-dir DIR      where scripts/deps.sh unpacked the kernel\n"
    "                       ($KVMID_GUEST_DIR, else ~/.cache/kvmid/guest)\n"
    "  --kernel FILE        the bzImage (default: the newest cloud kernel in --guest-dir)\n"
    "  --initrd FILE        the initramfs (default: one built with --busybox)\n"
    "  --busybox FILE       busybox-static (/bin/busybox)\n"
    "  --symbols A,B        kernel symbols the guest prints from /proc/kallsyms at boot\n"
    "  --work-dir DIR       sockets, the console log and QEMU's log (default: a new temp dir)\n"
    "  --serial-log FILE    the guest's console (default: WORK/serial.log)\n"
    "  --hook-when TEXT     connect to kvmid once the console shows TEXT (workload-start,\n"
    "                       the line /init prints after boot); \"\" connects at once\n"
    "  --name NAME          the VM's name in the handshake (qemu-guest)\n"
    "  --protocol v5|v7     the KVMI dialect (v5); v7: QEMU's handshake with an E820 map\n"
    "  --vcpus N --memory MiB (1, 256)  --no-reconnect  --version\n"
    "  --drop-watch-stops N ignore every Nth write watchpoint stop, as if lost (tests)\n"
    "SIGUSR1 asks for an unhook (UNHOOK event), SIGUSR2 for a new session after one;\n"
    "SIGTERM/SIGINT stop QEMU and exit.\n",
    stderr);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    auto end = s.find(',', at);
    if (end == std::string::npos)
      end = s.size();
    if (end > at)
      out.push_back(s.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

int fail(const std::string& why) {
  std::fprintf(stderr, "kvmi-qemu: %s\n", why.c_str());
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  if (kvmid::version_requested(argc, argv, "kvmi-qemu"))
    return 0;
  namespace q = kvmi::qemu;
  q::host_options host;
  q::qemu_options vm;
  std::string cookie_file, guest_dir, busybox = "/bin/busybox";
  std::string hook_when = "workload-start";
  std::string symbols = "_stext,_etext,__x64_sys_newuname,init_uts_ns";
  guest_dir = q::default_guest_dir();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvmi-qemu: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--unix") host.socket = value();
    else if (a == "--cookie-file") cookie_file = value();
    else if (a == "--guest-dir") guest_dir = value();
    else if (a == "--kernel") vm.kernel = value();
    else if (a == "--initrd") vm.initrd = value();
    else if (a == "--busybox") busybox = value();
    else if (a == "--symbols") symbols = value();
    else if (a == "--work-dir") vm.dir = value();
    else if (a == "--serial-log") vm.serial_log = value();
    else if (a == "--name") host.name = value();
    else if (a == "--hook-when") hook_when = value();
    else if (a == "--vcpus") vm.vcpus = unsigned(std::atoi(value().c_str()));
    else if (a == "--memory") vm.memory_mib = unsigned(std::atoi(value().c_str()));
    else if (a == "--no-reconnect") host.reconnect = false;
    else if (a == "--drop-watch-stops") host.drop_watch_stops = unsigned(std::atoi(value().c_str()));
    else if (a == "--protocol") {
      auto p = value();
      if (p != "v5" && p != "v7")
        return fail("--protocol: v5 or v7, not " + p);
      host.protocol = p == "v7" ? q::dialect::v7 : q::dialect::v5;
    }
    else return usage(), 2;
  }
  if (host.socket.empty() || cookie_file.empty())
    return usage(), 2;
  if (vm.vcpus < 1 || vm.vcpus > 8 || vm.memory_mib < 64)
    return fail("--vcpus 1..8 and --memory >= 64 MiB");
  auto cookie = kvmi::sim::read_cookie_file(cookie_file);
  if (!cookie.error.empty())
    return fail(cookie.error);
  host.cookie = std::move(cookie.bytes);
  host.vcpus = vm.vcpus;
  host.ram_bytes = uint64_t(vm.memory_mib) << 20;
  auto n = kvmi::hs::random_nonce();
  std::copy_n(n.begin(), host.uuid.size(), host.uuid.begin());

  if (vm.dir.empty()) {
    char tmpl[] = "/tmp/kvmi-qemu.XXXXXX";
    if (!::mkdtemp(tmpl))
      return fail(std::string("mkdtemp: ") + std::strerror(errno));
    vm.dir = tmpl;
  }
  if (vm.serial_log.empty())
    vm.serial_log = vm.dir + "/serial.log";
  if (vm.kernel.empty())
    vm.kernel = q::find_kernel(guest_dir);
  if (vm.kernel.empty())
    return fail("no vmlinuz-*-cloud-amd64 under " + guest_dir + " (run scripts/deps.sh)");
  if (vm.initrd.empty()) {
    vm.initrd = vm.dir + "/initrd.cpio";
    if (auto why = q::write_initramfs(vm.initrd, busybox, q::init_script(split(symbols)));
        !why.empty())
      return fail(why);
  }

  q::host_requests req;
  requests = &req;
  struct sigaction sa{};
  sa.sa_handler = on_signal; // no SA_RESTART: poll() returns at once
  for (int s : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2})
    ::sigaction(s, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  q::qemu_process qemu(vm);
  auto t0 = std::chrono::steady_clock::now();
  if (auto why = qemu.start(); !why.empty())
    return fail("cannot start QEMU: " + why);
  q::gdb_remote gdb;
  if (auto why = gdb.connect(qemu.gdb_socket(), std::chrono::seconds(20)); !why.empty())
    return fail(why + " (QEMU's log: " + vm.dir + "/qemu.log)");
  if (!gdb.request("qSupported:xmlRegisters=i386"))
    return fail("gdbstub: " + gdb.error());
  // p/P and the full register file need target.xml read first (QEMU 7.2).
  q::register_layout layout;
  auto target = gdb.read_feature("target.xml");
  if (!target)
    return fail("gdbstub: " + gdb.error());
  for (auto& annex : q::included_features(*target)) {
    auto f = gdb.read_feature(annex);
    if (!f)
      return fail("gdbstub: " + gdb.error());
    layout.add_feature(*f);
  }
  if (!layout.find("rip") || !layout.find("cr3"))
    return fail("gdbstub: no x86-64 register file in target.xml");
  while (gdb.take_stop()) {
  } // the stop QEMU reports when the gdbstub connects
  std::fprintf(stderr, "kvmi-qemu: QEMU pid %d, %u vCPU(s), gdbstub ready in %lld ms, console %s\n",
               int(qemu.pid()), vm.vcpus,
               (long long)std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - t0).count(),
               vm.serial_log.c_str());
  if (!hook_when.empty()) {
    // The guest runs meanwhile; a VM hooked before its kernel is in memory
    // would have kvmid plant breakpoints over firmware.
    if (!gdb.send("c"))
      return fail("gdbstub: " + gdb.error());
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!req.stop.load()) {
      std::ifstream f(vm.serial_log);
      std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (text.find(hook_when) != std::string::npos)
        break;
      if (std::chrono::steady_clock::now() > until || !qemu.running())
        return fail("the console never showed \"" + hook_when + "\" (" + vm.serial_log + ")");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!gdb.interrupt() || !gdb.stop(std::chrono::seconds(10)))
      return fail("gdbstub: " + gdb.error());
  }
  std::fprintf(stderr, "kvmi-qemu: guest up in %lld ms\n",
               (long long)std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - t0).count());
  int rc;
  {
    q::kvmi_host h(host, gdb, layout);
    rc = h.run(req);
  }
  qemu.stop();
  std::fprintf(stderr, "kvmi-qemu: exit %d\n", rc);
  return rc;
}
