// A file holding a secret kvmid was given (a KVMI cookie, the API token).
// Like ssh with a private key, kvmid refuses one that group or others may
// access: whoever can read it can impersonate kvmid or its peer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvmid {

struct secret_read {
  std::vector<uint8_t> bytes; // the file's bytes exactly
  std::string error;          // empty: read; else "<path>: why not"
};

// A regular file, mode without group/other bits, at most `max` bytes.
secret_read read_secret_file(const std::string& path, size_t max);

} // namespace kvmid
