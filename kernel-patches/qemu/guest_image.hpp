// The guest kvmi-qemu boots: Debian's cloud kernel, unpacked by
// scripts/deps.sh into a cache directory, and an initramfs written here
// (cpio "newc") holding busybox-static and an /init that runs a small
// workload: a progress counter on the serial console, `uname` in a loop and
// a new hostname (kvmi-guest-N) every 40th round.
// Debian ships a placeholder System.map; with nokaslr the guest's
// /proc/kallsyms has the same addresses, so /init prints the lines of the
// symbols asked for ("kallsyms <addr> <type> <name>") before the workload.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kvmi::qemu {

// Where scripts/deps.sh unpacks the kernel: $KVMID_GUEST_DIR, else
// ~/.cache/kvmid/guest.
std::string default_guest_dir();

// The newest vmlinuz-*-cloud-amd64 under dir (its boot/ or root/boot/);
// empty if none.
std::string find_kernel(const std::string& dir);

// The /init script: kallsyms lines for `symbols`, then the workload; `loop`
// replaces the progress workload's loop body (a shell command list run
// forever, the round counter in $i).
std::string init_script(const std::vector<std::string>& symbols, const std::string& loop = {});

// Writes the initramfs to `path`; empty on success, else why not.
std::string write_initramfs(const std::string& path, const std::string& busybox,
                            const std::string& init);

// "kallsyms <addr> <type> <name>" lines of a console log: name -> address.
std::map<std::string, uint64_t> kallsyms_from_console(const std::string& log);

} // namespace kvmi::qemu
