#include "kernel-patches/qemu/guest_image.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kvmi::qemu {

namespace fs = std::filesystem;

std::string default_guest_dir() {
  if (const char* d = std::getenv("KVMID_GUEST_DIR"))
    return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/kvmid/guest";
}

std::string find_kernel(const std::string& dir) {
  std::vector<std::string> found;
  for (auto sub : {"boot", "root/boot"}) {
    std::error_code ec;
    for (auto& e : fs::directory_iterator(fs::path(dir) / sub, ec)) {
      auto name = e.path().filename().string();
      if (name.rfind("vmlinuz-", 0) == 0 && name.ends_with("-cloud-amd64"))
        found.push_back(e.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? std::string() : found.back();
}

std::string init_script(const std::vector<std::string>& symbols, const std::string& loop) {
  std::string s = "#!/bin/busybox sh\n"
                  "/bin/busybox --install -s /bin\n"
                  "mount -t proc proc /proc\n"
                  "hostname kvmi-guest\n";
  if (!symbols.empty()) {
    s += "grep -E ' (";
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i)
        s += "|";
      s += symbols[i];
    }
    s += ")$' /proc/kallsyms | sed 's/^/kallsyms /'\n";
  }
  s += "echo workload-start\n"
       "i=0\n"
       "while true; do\n"
       "  i=$((i+1))\n";
  if (!loop.empty())
    return s + loop + "\ndone\n";
  s += "  echo \"progress $i $(uname -n)\"\n"
       "  uname -a >/dev/null\n"
       // A write into init_uts_ns every ~2 s, for page protection to meet;
       // every other one a rename to "evil", each a change of name.
       "  if [ $((i % 80)) -eq 40 ]; then hostname evil\n"
       "  elif [ $((i % 80)) -eq 0 ]; then hostname kvmi-guest-$((i / 40)); fi\n"
       "  usleep 50000\n"
       "done\n";
  return s;
}

namespace {

// One cpio "newc" entry: a 110-byte ASCII header, the name, the data, each
// padded to 4 bytes.
void cpio_entry(std::string& out, const std::string& name, uint32_t mode, const std::string& data,
                uint32_t ino) {
  char hdr[111];
  std::snprintf(hdr, sizeof hdr, "070701%08x%08x%08x%08x%08x%08x%08zx%08x%08x%08x%08x%08zx%08x",
                ino, mode, 0u, 0u, 1u, 0u, data.size(), 0u, 0u, 0u, 0u, name.size() + 1, 0u);
  out.append(hdr, 110);
  out.append(name);
  out.push_back('\0');
  out.append((4 - out.size() % 4) % 4, '\0');
  out.append(data);
  out.append((4 - out.size() % 4) % 4, '\0');
}

} // namespace

std::string write_initramfs(const std::string& path, const std::string& busybox,
                            const std::string& init) {
  std::ifstream bb(busybox, std::ios::binary);
  if (!bb)
    return "cannot read " + busybox + " (apt-get install busybox-static)";
  std::stringstream bin;
  bin << bb.rdbuf();
  std::string out;
  uint32_t ino = 1;
  constexpr uint32_t dir = 0040755, exe = 0100755;
  for (auto d : {"bin", "proc", "dev", "sys", "tmp"})
    cpio_entry(out, d, dir, {}, ino++);
  cpio_entry(out, "bin/busybox", exe, bin.str(), ino++);
  cpio_entry(out, "init", exe, init, ino++);
  cpio_entry(out, "TRAILER!!!", 0, {}, 0);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(out.data(), std::streamsize(out.size()));
  if (!f)
    return "cannot write " + path;
  return {};
}

std::map<std::string, uint64_t> kallsyms_from_console(const std::string& log) {
  std::map<std::string, uint64_t> out;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    auto at = line.find("kallsyms ");
    if (at == std::string::npos)
      continue;
    std::istringstream l(line.substr(at + 9));
    std::string addr, type, name;
    if (l >> addr >> type >> name)
      out[name] = std::strtoull(addr.c_str(), nullptr, 16);
  }
  return out;
}

} // namespace kvmi::qemu
