// kvmid --check-config FILE (as `nginx -t`): the config is read and
// validated as start-up would, and nothing is bound, locked or created.
#pragma once

#include "server/config.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

namespace kvmid {

// The config as kvmid would run it: every field with its default filled
// in, numbers and names normalised. The result is itself a valid config.
// `api` is the validated "api" section (null: none).
nlohmann::json effective_config(const config& cfg, const nlohmann::json& api);

// Prints the effective config on `out` and returns 0, or prints
// "kvmid: bad config FILE: FIELD: REASON" on `err` and returns 1. The files
// the config names (cookies, tokens, TLS) are read too; one that is missing
// or unsafe is a warning on `err`, not a failure: the check may run away
// from the host that holds the secrets.
int check_config(const std::string& path, FILE* out, FILE* err);

} // namespace kvmid
