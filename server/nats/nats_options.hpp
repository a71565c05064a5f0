// The config's "nats" section: where kvmid publishes its bus records
// (JetStream) and serves its API by request-reply, and how it
// authenticates. Parsed without the NATS client, so --check-config and the
// config tests see every error.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace kvmid {

struct nats_tls_files {
  std::string ca_file;   // trust these CAs (else the system's)
  std::string cert_file; // client certificate, with key_file
  std::string key_file;
};

struct nats_options {
  bool enabled = false;
  std::vector<std::string> urls{"nats://127.0.0.1:4222"};
  std::string host;                // subject token naming this kvmid; default: hostname
  std::string subject_prefix = "kvmi";
  std::string stream = "KVMI";
  bool create_stream = true;       // add the stream when it does not exist
  int stream_replicas = 1;         // copies of the stream in a JetStream cluster (odd: quorum)
  std::chrono::seconds duplicate_window{600}; // the stream's de-duplication window
  bool raw_events = false;         // every KVMI event too, not only lifecycle/alerts/reports
  size_t spool_records = 100000;   // bound of the on-disk spool
  std::chrono::milliseconds ack_timeout{2000};
  bool api = true;                 // serve <prefix>.api.<host>
  std::string api_role = "read";   // the role a NATS request gets: "read" or "full"
  std::string user, password_file; // user/password (the password in a secret file)
  std::string nkey_seed_file;
  std::string creds_file;
  bool tls = false;
  nats_tls_files tls_files;

  // <prefix>.bus.<host>.<kind>.<name>, <prefix>.api.<host>, <prefix>.api.all
  std::string record_subject_root() const { return subject_prefix + ".bus"; }
  std::string api_subject() const { return subject_prefix + ".api." + host; }
  std::string api_all_subject() const { return subject_prefix + ".api.all"; }
};

// This machine's name as a subject token: gethostname() up to its first
// dot ("node7.example.org" -> "node7").
std::string default_nats_host();

// A NATS subject token: non-empty, no '.', '*', '>' or white space.
bool valid_subject_token(std::string_view s);

// Throws config_error (server/config.hpp) naming `at` + the field.
nats_options parse_nats_options(const nlohmann::json& j, const std::string& file,
                                const std::string& at = "/nats");

} // namespace kvmid
