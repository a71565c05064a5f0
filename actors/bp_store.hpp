// kvmid's durable record of the INT3 bytes it planted: the kernel does not
// remove them when a session or kvmid dies, so a restarted kvmid must know
// the byte under each one to restore it at UNHOOK. One JSON file per VM
// uuid in the state directory, written atomically (temp + fsync + rename).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

namespace kvmid {

// uuid -> gpa -> original byte
using planted_map = std::map<std::string, std::map<uint64_t, uint8_t>>;

struct state_error : std::runtime_error {
  using std::runtime_error::runtime_error; // "FILE: FIELD: reason"
};

// Creates dir if missing; throws state_error naming the file and field of
// the first bad record.
planted_map load_planted(const std::string& dir);

// Replaces the uuid's file (removes it when bps is empty). False + err on
// failure; never throws.
bool save_planted(const std::string& dir, const std::string& uuid,
                  const std::map<uint64_t, uint8_t>& bps, std::string& err);

} // namespace kvmid
