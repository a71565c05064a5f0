// The bounded on-disk spool of records NATS has not acknowledged: one file
// per record in <state_dir>/nats-spool, named by an increasing number, so
// what a kvmid run could not deliver is sent by the next one, oldest first
// and with its original Nats-Msg-Id (a copy the stream already holds is
// dropped there). Written with write+rename: a crash leaves a whole record
// or none. Not thread-safe: one publisher thread owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kvmid {

struct jetstream_message {
  std::string subject;
  std::string msg_id;
  std::string body;
};

class spool {
public:
  // Creates the directory if needed and indexes what an earlier run left
  // (half-written files are removed). An error names the path.
  static std::variant<spool, std::string> open(const std::filesystem::path& dir, size_t capacity);

  enum class append_result : uint8_t { stored, full, io_error };
  append_result append(const jetstream_message& m, std::string* error = nullptr);

  // Up to n of the oldest records with their keys, oldest first. A file
  // that cannot be read or parsed is removed (and named in `lost`).
  std::vector<std::pair<uint64_t, jetstream_message>> oldest(size_t n,
                                                             std::vector<std::string>* lost = nullptr);
  void remove(uint64_t key);

  size_t size() const { return keys_.size(); }
  bool empty() const { return keys_.empty(); }
  size_t capacity() const { return capacity_; }
  const std::filesystem::path& dir() const { return dir_; }

private:
  spool(std::filesystem::path dir, size_t capacity) : dir_(std::move(dir)), capacity_(capacity) {}
  std::filesystem::path file(uint64_t key) const;

  std::filesystem::path dir_;
  size_t capacity_;
  std::deque<uint64_t> keys_; // sorted, oldest first
  uint64_t next_ = 1;
};

} // namespace kvmid
