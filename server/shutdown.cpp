#include "server/shutdown.hpp"

#include <cstdio>

namespace kvmid {

bool unhook_for_shutdown(core& c, std::chrono::milliseconds bound) {
  auto results = c.unhook_all(std::chrono::steady_clock::now() + bound);
  size_t bad = 0;
  for (auto& r : results) {
    if (r.ok())
      continue;
    ++bad;
    std::string why = r.finished ? "" : "not finished";
    for (auto& p : r.problems)
      why += (why.empty() ? "" : "; ") + p;
    std::fprintf(stderr, "kvmid: shutdown: vm %s (%s) not cleanly unhooked: %s\n",
                 r.uuid.empty() ? "-" : r.uuid.c_str(), r.name.c_str(), why.c_str());
  }
  std::fprintf(stderr, "kvmid: shutdown: %zu of %zu VMs unhooked within %lld ms\n",
               results.size() - bad, results.size(), static_cast<long long>(bound.count()));
  return bad == 0;
}

} // namespace kvmid
