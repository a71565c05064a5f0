// A fresh directory under the system temp dir, removed with everything in
// it when the test ends (also when it fails).
#pragma once

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>

namespace kvmid::test {

class temp_dir {
public:
  // /tmp/kvmid-<name>-XXXXXX
  explicit temp_dir(const std::string& name = "test") {
    std::string t =
      (std::filesystem::temp_directory_path() / ("kvmid-" + name + "-XXXXXX")).string();
    if (!::mkdtemp(t.data()))
      throw std::runtime_error("mkdtemp " + t + ": " + std::strerror(errno));
    path_ = t;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  // Writes a file (owner-only by default: cookies and tokens must be).
  std::filesystem::path write(const std::string& name, const std::string& text,
                              mode_t mode = 0600) const {
    auto p = path_ / name;
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
    ::chmod(p.c_str(), mode);
    return p;
  }
  std::string read(const std::string& name) const {
    std::ifstream in(path_ / name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

private:
  std::filesystem::path path_;
};

} // namespace kvmid::test
