#include "actors/bp_store.hpp"

#include "actors/bounded_json.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace kvmid {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* prefix = "breakpoints-";
constexpr const char* suffix = ".json";

// A uuid becomes part of a file name: hex digits and dashes only.
bool valid_uuid(const std::string& u) {
  if (u.empty() || u.size() > 64)
    return false;
  for (char ch : u)
    if (!(std::isxdigit(static_cast<unsigned char>(ch)) || ch == '-'))
      return false;
  return true;
}

[[noreturn]] void bad(const std::string& file, const std::string& field, const std::string& why) {
  throw state_error(file + ": " + (field.empty() ? "" : field + ": ") + why);
}

} // namespace

planted_map load_planted(const std::string& dir) {
  planted_map out;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw state_error(dir + ": cannot create the state directory: " + ec.message());
  for (auto& de : fs::directory_iterator(dir, ec)) {
    auto name = de.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || name.size() <= std::strlen(prefix) + std::strlen(suffix)
        || name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) != 0)
      continue; // temp files of an interrupted write, and anything else
    std::string file = de.path().string();
    // A directory opens as a stream and throws from its first read.
    if (!de.is_regular_file(ec))
      bad(file, "", "not a regular file");
    std::ifstream in(file, std::ios::binary);
    if (!in)
      bad(file, "", "cannot read");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string err;
    json j = parse_bounded_json(text, err);
    if (j.is_discarded())
      bad(file, "", "not valid JSON: " + err);
    if (!j.is_object())
      bad(file, "", "must be an object");
    if (!j.contains("uuid") || !j["uuid"].is_string() || !valid_uuid(j["uuid"].get<std::string>()))
      bad(file, "/uuid", "must be a VM uuid string");
    auto uuid = j["uuid"].get<std::string>();
    if (name != prefix + uuid + suffix)
      bad(file, "/uuid", "does not match the file name");
    if (!j.contains("breakpoints") || !j["breakpoints"].is_array())
      bad(file, "/breakpoints", "must be an array");
    auto& m = out[uuid];
    for (size_t i = 0; i < j["breakpoints"].size(); ++i) {
      auto& b = j["breakpoints"][i];
      std::string at = "/breakpoints/" + std::to_string(i);
      if (!b.is_object())
        bad(file, at, "must be an object");
      if (!b.contains("gpa") || !b["gpa"].is_number_unsigned())
        bad(file, at + "/gpa", "must be an unsigned integer");
      if (!b.contains("original") || !b["original"].is_number_unsigned()
          || b["original"].get<uint64_t>() > 0xff)
        bad(file, at + "/original", "must be a byte (0..255)");
      if (b["original"].get<uint64_t>() == 0xCC)
        bad(file, at + "/original", "an INT3 cannot be the byte under kvmid's INT3");
      m[b["gpa"].get<uint64_t>()] = static_cast<uint8_t>(b["original"].get<uint64_t>());
    }
    if (m.empty())
      out.erase(uuid);
  }
  if (ec)
    throw state_error(dir + ": cannot list the state directory: " + ec.message());
  return out;
}

bool save_planted(const std::string& dir, const std::string& uuid,
                  const std::map<uint64_t, uint8_t>& bps, std::string& err) {
  if (!valid_uuid(uuid)) {
    err = "uuid not usable in a file name: " + uuid;
    return false;
  }
  std::string file = (fs::path(dir) / (prefix + uuid + suffix)).string();
  if (bps.empty()) {
    if (::unlink(file.c_str()) != 0 && errno != ENOENT) {
      err = file + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }
  json j;
  j["uuid"] = uuid;
  j["breakpoints"] = json::array();
  for (auto& [gpa, orig] : bps)
    j["breakpoints"].push_back({{"gpa", gpa}, {"original", orig}});
  std::string text = j.dump(1) + "\n";
  std::string tmp = file + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    err = tmp + ": " + std::strerror(errno);
    return false;
  }
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      err = tmp + ": " + std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return false;
    }
    off += size_t(n);
  }
  // The record must be on disk before the INT3 is in the guest.
  if (::fsync(fd) != 0) {
    err = tmp + ": fsync: " + std::strerror(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    return false;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    err = file + ": rename: " + std::strerror(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd); // the rename itself durable
    ::close(dfd);
  }
  return true;
}

} // namespace kvmid
