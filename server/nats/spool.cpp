#include "server/nats/spool.hpp"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <optional>
#include <unistd.h>

namespace kvmid {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view magic = "kvmid-spool-1\n";
constexpr size_t max_record_bytes = 8u << 20;

std::optional<uint64_t> key_of(const fs::path& p) {
  auto stem = p.stem().string();
  if (p.extension() != ".rec" || stem.empty() || stem.size() > 20
      || !std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::strtoull(stem.c_str(), nullptr, 10);
}

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    s.remove_prefix(size_t(n));
  }
  return true;
}
} // namespace

std::variant<spool, std::string> spool::open(const fs::path& dir, size_t capacity) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return "spool directory " + dir.string() + ": " + ec.message();
  spool s(dir, std::max<size_t>(1, capacity));
  for (auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".tmp") {
      fs::remove(e.path(), ec);
      continue;
    }
    if (auto k = key_of(e.path()))
      s.keys_.push_back(*k);
  }
  if (ec)
    return "spool directory " + dir.string() + ": " + ec.message();
  std::sort(s.keys_.begin(), s.keys_.end());
  if (!s.keys_.empty())
    s.next_ = s.keys_.back() + 1;
  return s;
}

fs::path spool::file(uint64_t key) const {
  char b[32];
  std::snprintf(b, sizeof b, "%020" PRIu64 ".rec", key);
  return dir_ / b;
}

spool::append_result spool::append(const jetstream_message& m, std::string* error) {
  if (keys_.size() >= capacity_)
    return append_result::full;
  uint64_t key = next_++;
  auto final_path = file(key);
  auto tmp = final_path;
  tmp.replace_extension(".tmp");
  std::string text(magic);
  text += m.subject;
  text += '\n';
  text += m.msg_id;
  text += '\n';
  text += m.body;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && write_all(fd, text);
  int err = errno;
  if (fd >= 0)
    ::close(fd);
  if (ok && ::rename(tmp.c_str(), final_path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    if (error)
      *error = tmp.string() + ": " + std::strerror(err);
    return append_result::io_error;
  }
  keys_.push_back(key);
  return append_result::stored;
}

std::vector<std::pair<uint64_t, jetstream_message>> spool::oldest(size_t n,
                                                                  std::vector<std::string>* lost) {
  std::vector<std::pair<uint64_t, jetstream_message>> out;
  while (out.size() < n && out.size() < keys_.size()) {
    uint64_t key = keys_[out.size()];
    auto p = file(key);
    std::ifstream in(p, std::ios::binary);
    std::string text;
    if (in) {
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      if (text.size() > max_record_bytes)
        text.clear();
    }
    jetstream_message m;
    bool ok = text.rfind(magic, 0) == 0;
    if (ok) {
      auto a = text.find('\n', magic.size());
      auto b = a == std::string::npos ? a : text.find('\n', a + 1);
      ok = b != std::string::npos && a > magic.size() && b > a + 1;
      if (ok) {
        m.subject = text.substr(magic.size(), a - magic.size());
        m.msg_id = text.substr(a + 1, b - a - 1);
        m.body = text.substr(b + 1);
      }
    }
    if (!ok) {
      if (lost)
        lost->push_back(p.string());
      std::error_code ec;
      fs::remove(p, ec);
      keys_.erase(keys_.begin() + std::ptrdiff_t(out.size()));
      continue;
    }
    out.emplace_back(key, std::move(m));
  }
  return out;
}

void spool::remove(uint64_t key) {
  auto it = std::lower_bound(keys_.begin(), keys_.end(), key);
  if (it == keys_.end() || *it != key)
    return;
  keys_.erase(it);
  std::error_code ec;
  fs::remove(file(key), ec);
}

} // namespace kvmid
