// kvmid's clean shutdown (SIGTERM, SIGINT, the end of --duration): every VM
// is unhooked within a bound before the reactor stops, so no INT3 of
// kvmid's and no page restriction stays in a guest with no introspector.
#pragma once

#include "actors/core.hpp"

#include <chrono>

namespace kvmid {

// Unhooks every VM (core::unhook_all) within `bound` and logs one line per
// VM that did not finish or left something in its guest. True when every VM
// was unhooked cleanly (also when there was none).
bool unhook_for_shutdown(core& c, std::chrono::milliseconds bound);

} // namespace kvmid
