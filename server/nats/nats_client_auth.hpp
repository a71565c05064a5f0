// How a NATS client proves who it is and which servers it trusts:
// user/password, an nkey seed or a creds file, and TLS files. kvmid's link
// (from the config's "nats" section) and kvmictl --nats (from its flags)
// set up their connections alike, and name the config field or the flag
// at fault in an error.
#pragma once

#include "server/nats/nats_options.hpp"

#include <string>

struct __natsOptions;

namespace kvmid {

struct nats_client_auth {
  std::string user, password;   // the password's text, not its file
  std::string nkey_seed_file, creds_file;
  bool tls = false;             // TLS even without files (tls:// URLs ask for it too)
  nats_tls_files tls_files;
};

// What each field is called where it came from ("/nats/user", "--nats-user").
struct nats_auth_names {
  std::string user, password, nkey_seed_file, creds_file, ca_file, cert_file;
};

// A password in a secret file (secret_file.hpp): its text without trailing
// newlines. An error names the file and why.
struct nats_password {
  std::string text, error;
};
nats_password read_nats_password(const std::string& file);

// A failed call's status and, when it says more, the client's last error
// without its source location: "Authentication Violation (Authorization
// Violation)".
std::string nats_error_text(int status);

// Sets `a` on the client's options; "" or why not, after the field's name.
// Secret files are checked as kvmid checks its own (owner-only).
std::string apply_nats_auth(__natsOptions* no, const nats_client_auth& a,
                            const nats_auth_names& names);

} // namespace kvmid
