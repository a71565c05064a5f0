// Runs `promtool check metrics` on an exposition; nullopt when promtool is
// not installed (callers skip with a one-line message).
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unistd.h>

namespace kvmid::test {

struct promtool_result {
  int status = -1;
  std::string output;
};

inline std::optional<promtool_result> promtool_check(const std::string& exposition) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0)
    return std::nullopt;
  std::string tmpl = (std::filesystem::temp_directory_path() / "kvmid-prom-XXXXXX").string();
  int fd = mkstemp(tmpl.data());
  if (fd < 0)
    return promtool_result{-1, "mkstemp failed"};
  ::close(fd);
  std::ofstream(tmpl, std::ios::binary) << exposition;
  std::string cmd = "promtool check metrics < '" + tmpl + "' 2>&1";
  promtool_result r;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    std::array<char, 512> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
      r.output.append(buf.data(), n);
    int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  std::filesystem::remove(tmpl);
  return r;
}

} // namespace kvmid::test
