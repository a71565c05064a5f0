// kvmictl --nats URL: the fleet's kvmids over NATS instead of one kvmid's
// HTTP API.
//   vms                 every host's VMs: one request to <prefix>.api.all,
//                       the answers gathered for --gather-ms (default 1000)
//   pause|resume|unhook UUID
//                       asks every host for the VM (GET /v1/vms/UUID on
//                       <prefix>.api.all); the host that knows it gets the
//                       command on <prefix>.api.<host>
//   watch               alerts of the whole fleet as they arrive in the
//                       JetStream stream (an ephemeral consumer of
//                       <prefix>.bus.*.alert.>, or --kind K for another kind)
#pragma once

#include "server/nats/nats_client_auth.hpp"

#include <string>
#include <vector>

namespace kvmictl {

struct fleet_options {
  std::string url;              // nats://host:4222 (comma list for several)
  std::string prefix = "kvmi";  // the kvmids' "subject_prefix"
  // --nats-user with --nats-password-file or KVMID_NATS_PASSWORD,
  // --nats-creds, and --nats-ca/--nats-cert/--nats-key (TLS)
  kvmid::nats_client_auth auth;
  bool json_out = false;
  long timeout_s = 30;          // one command's answer
  long gather_ms = 1000;        // how long answers to <prefix>.api.all are collected
  std::string kind = "alert";   // watch: the record kind
  long count = -1;              // watch: stop after this many records
};

// Completes o.auth from the command line: the password from password_file
// (a secret file, owner-only) or else env_password (KVMID_NATS_PASSWORD);
// TLS for tls:// URLs or when TLS files are given. Why the options do not
// fit together or a file cannot be read, or "".
std::string complete_fleet_auth(fleet_options& o, const std::string& password_file,
                                const char* env_password);

// The commands --nats serves.
bool fleet_command(const std::string& cmd);

// Exit codes as kvmictl's: 0 ok, 1 an error answer (or no host knows the
// VM), 3 no answer.
int run_fleet(const fleet_options& o, const std::vector<std::string>& args);

} // namespace kvmictl
