// kvmid's JSON config (config/kvmid.json, schema config/kvmid.schema.json):
// parsed and validated in C++; a bad file stops start-up with the file, the
// field (as a JSON pointer) and the reason.
#pragma once

#include "actors/policy.hpp"
#include "proto/handshake.hpp"
#include "server/dialect/dialect.hpp"
#include "server/nats/nats_options.hpp"
#include "server/reactor.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvmid {

struct config_error : std::runtime_error {
  config_error(std::string file, std::string field, std::string reason)
    : std::runtime_error(file + ": " + (field.empty() ? "" : field + ": ") + reason),
      file(std::move(file)), field(std::move(field)), reason(std::move(reason)) {}
  std::string file, field, reason;
};

struct kvmi_listener_config {
  net::listen_spec spec;
  std::string cookie_file; // empty: the default cookie
  protocol proto = protocol::v5;
  // v7: what QEMU appends to its handshake struct at byte 96.
  kvmi::v7::hs::layout v7_layout = kvmi::v7::hs::layout::max_gpa;
};

enum class log_level : uint8_t { error, warn, info, debug };
std::optional<log_level> parse_log_level(std::string_view s);

struct config {
  std::string file;
  log_level level = log_level::info;
  std::vector<kvmi_listener_config> listeners;
  std::string cookie_file;           // the default cookie
  kvmi::hs::mode handshake = kvmi::hs::mode::kvmi;
  std::chrono::milliseconds handshake_timeout{10000};
  size_t max_handshakes = 64; // KVMI handshakes pending at once, all listeners
  size_t max_setups = 8;      // VMs setting up at once (actors/setup_gate.hpp)
  std::chrono::milliseconds command_timeout{5000};
  // SIGTERM/SIGINT: how long unhooking every VM may take before kvmid gives
  // up on the rest, says which, and exits non-zero.
  std::chrono::milliseconds shutdown_timeout{5000};
  size_t send_queue_limit = 4096;
  size_t workers = 2;
  // io_uring threads serving KVMI sockets, each with its VMs' actors
  // (server/kvmi_rings.hpp); 0: one per two cores, 1..8.
  size_t rings = 0;
  // How long a ring thread polls for the next event after answering one,
  // before sleeping (net::reactor_options::spin); 0, the default, sleeps at
  // once.
  std::chrono::microseconds poll{0};
  // Where kvmid records the INT3s it planted (they outlive a crash in the
  // guest); $STATE_DIRECTORY (systemd) or /var/lib/kvmid when unset.
  std::string state_dir;
  policy_set policies;
  std::optional<nlohmann::json> api; // the control plane's section, validated there
  nats_options nats; // the "nats" section; off unless it says "enabled": true
};

// Where kvmid keeps its state when the config sets no state_dir:
// $STATE_DIRECTORY (its first entry; systemd) or /var/lib/kvmid.
std::string default_state_dir();

// Throws config_error.
config parse_config(const nlohmann::json& j, const std::string& file);
config load_config(const std::string& path);
policy_set parse_policies(const nlohmann::json& j, const std::string& file,
                          const std::string& at = "/policies");

// Reads a cookie file (its bytes exactly, proto/cookie.hpp; a secret file,
// server/secret_file.hpp); throws config_error naming the field that
// referred to it.
std::vector<uint8_t> read_cookie(const std::string& path, const std::string& file,
                                 const std::string& field);

} // namespace kvmid
