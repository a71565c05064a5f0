// Throwaway certificates made with the openssl CLI (OPENSSL_BIN comes from
// the build): a CA, and leaves it signs with the extensions a test asks
// for. P-256 keys: quick to make. Files are <dir>/<name>.pem and .key.
#pragma once

#include "tests/support/child_process.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <vector>

namespace kvmid::test {

inline void openssl(std::vector<std::string> args) {
  args.insert(args.begin(), OPENSSL_BIN);
  auto r = run(args);
  INFO("openssl " << args[1] << ": " << r.err);
  REQUIRE(r.status == 0);
}

inline void make_test_ca(const std::filesystem::path& dir, const std::string& name) {
  openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", dir / (name + ".key"), "-out", dir / (name + ".pem"), "-days", "2", "-subj",
           "/CN=kvmid test " + name, "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
           "keyUsage=critical,keyCertSign"});
}

// `ext`: the leaf's extensions, e.g. "subjectAltName=IP:127.0.0.1\n".
inline void make_test_leaf(const std::filesystem::path& dir, const std::string& name,
                           const std::string& ca, const std::string& ext) {
  openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
           dir / (name + ".key"), "-out", dir / (name + ".csr"), "-subj", "/CN=kvmid test " + name});
  std::ofstream(dir / (name + ".ext"), std::ios::binary) << ext;
  openssl({"x509", "-req", "-in", dir / (name + ".csr"), "-CA", dir / (ca + ".pem"), "-CAkey",
           dir / (ca + ".key"), "-set_serial", "1", "-days", "2", "-extfile", dir / (name + ".ext"),
           "-out", dir / (name + ".pem")});
  ::chmod((dir / (name + ".key")).c_str(), 0600);
}

// The extensions of a server certificate for 127.0.0.1 and of a client's.
inline const char* const loopback_server_ext =
  "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
inline const char* const client_ext = "extendedKeyUsage=clientAuth\n";

} // namespace kvmid::test
