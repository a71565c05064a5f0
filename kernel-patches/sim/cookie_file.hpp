// How kvmi-sim, as a device manager, gets the VM's cookie: a file's bytes
// exactly (as QEMU reads `-object secret,file=...` and kvmid reads its
// cookie_file), or hex on the command line; both checked by
// kvmi::hs::check_cookie, so a cookie one end refuses the other refuses too.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvmi::sim {

struct cookie_read {
  std::vector<uint8_t> bytes;
  std::string error; // empty: a usable cookie
};

cookie_read read_cookie_file(const std::string& path);
cookie_read cookie_from_hex(std::string_view hex);

} // namespace kvmi::sim
