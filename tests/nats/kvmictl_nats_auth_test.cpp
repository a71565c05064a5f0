// kvmictl --nats against a nats-server that wants a user and password over
// TLS with client certificates (throwaway certificates from the openssl
// CLI): kvmid connects with its config's credentials, kvmictl with its
// flags; a wrong password, an untrusted server or a missing client
// certificate is a clear error and exit 3; flags that do not fit together
// are a usage error before any connection.
#include "tests/support/kvmid_process.hpp"
#include "tests/support/nats_server.hpp"
#include "tests/support/test_pki.hpp"

#include <doctest/doctest.h>

using namespace kvmid;
using namespace kvmid::test;

namespace {

constexpr const char* user = "monitor";
constexpr const char* password = "s3cret pass";

struct secured_nats {
  temp_dir dir{"nats-auth"};
  std::unique_ptr<nats_server> server;

  secured_nats() {
    make_test_ca(dir.path(), "ca");
    make_test_ca(dir.path(), "rogue");
    make_test_leaf(dir.path(), "server", "ca", loopback_server_ext);
    make_test_leaf(dir.path(), "client", "ca", client_ext);
    dir.write("password", std::string(password) + "\n");
    dir.write("wrong", "not the password\n");
    dir.write("shared", std::string(password) + "\n", 0644);
    server = std::make_unique<nats_server>(std::vector<std::string>{
      "--user", user, "--pass", password, "--tlsverify", "--tlscert", file("server.pem"),
      "--tlskey", file("server.key"), "--tlscacert", file("ca.pem")});
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

secured_nats& secured() {
  static secured_nats s; // one server and one set of certificates per binary
  return s;
}

// kvmictl --nats tls://... with the client's certificate and `more` flags.
run_result fleet_ctl(std::vector<std::string> more, std::vector<std::string> env = {}) {
  auto& s = secured();
  std::vector<std::string> a = {"/usr/bin/env"};
  a.insert(a.end(), env.begin(), env.end());
  a.insert(a.end(), {KVMICTL_BIN, "--nats", s.server->url("tls"), "--nats-prefix", "sec",
                     "--gather-ms", "1500"});
  a.insert(a.end(), more.begin(), more.end());
  return run(a);
}

std::vector<std::string> tls_files() {
  auto& s = secured();
  return {"--nats-ca", s.file("ca.pem"), "--nats-cert", s.file("client.pem"), "--nats-key",
          s.file("client.key")};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

} // namespace

TEST_CASE("kvmictl --nats lists a fleet behind a NATS user password and TLS") {
  auto& s = secured();
  kvmid_process_options o;
  o.vms = 1;
  o.vcpus = 1;
  o.extra = {{"nats",
              {{"enabled", true},
               {"urls", json::array({s.server->url("tls")})},
               {"host", "sec-host"},
               {"subject_prefix", "sec"},
               {"stream", "E2E_sec"},
               {"user", user},
               {"password_file", s.file("password")},
               {"tls",
                {{"ca_file", s.file("ca.pem")},
                 {"cert_file", s.file("client.pem")},
                 {"key_file", s.file("client.key")}}}}}};
  kvmid_process k(o);
  auto vms = fleet_ctl(with({"--nats-user", user, "--nats-password-file", s.file("password")},
                            with(tls_files(), {"vms"})));
  INFO(vms.err);
  INFO(s.server->log());
  CHECK(vms.status == 0);
  CHECK(vms.out.find("host sec-host:") != std::string::npos);
  CHECK(vms.out.find(k.uuid(0)) != std::string::npos);

  // The password from the environment, for scripts that hold no file.
  auto env = fleet_ctl(with({"--nats-user", user}, with(tls_files(), {"vms"})),
                       {std::string("KVMID_NATS_PASSWORD=") + password});
  INFO(env.err);
  CHECK(env.status == 0);
  CHECK(env.out.find(k.uuid(0)) != std::string::npos);
}

TEST_CASE("kvmictl --nats with a wrong password says the server refused it and exits 3") {
  auto r = fleet_ctl(with({"--nats-user", user, "--nats-password-file", secured().file("wrong")},
                          with(tls_files(), {"vms"})));
  CHECK(r.status == 3);
  CHECK(r.out.empty());
  CHECK(r.err.find("cannot reach NATS at tls://127.0.0.1:") != std::string::npos);
  CHECK(r.err.find("Authorization Violation") != std::string::npos);
}

TEST_CASE("kvmictl --nats refuses a server its CA does not vouch for and needs its certificate") {
  auto& s = secured();
  auto login = std::vector<std::string>{"--nats-user", user, "--nats-password-file",
                                        s.file("password")};
  // The system's CAs do not know the test's CA.
  auto untrusted = fleet_ctl(with(login, {"--nats-cert", s.file("client.pem"), "--nats-key",
                                          s.file("client.key"), "vms"}));
  CHECK(untrusted.status == 3);
  CHECK(untrusted.err.find("cannot reach NATS") != std::string::npos);
  auto rogue = fleet_ctl(with(login, {"--nats-ca", s.file("rogue.pem"), "--nats-cert",
                                      s.file("client.pem"), "--nats-key", s.file("client.key"),
                                      "vms"}));
  CHECK(rogue.status == 3);
  CHECK(rogue.err.find("cannot reach NATS") != std::string::npos);
  // The server verifies clients: no certificate, no connection.
  auto anonymous = fleet_ctl(with(login, {"--nats-ca", s.file("ca.pem"), "vms"}));
  CHECK(anonymous.status == 3);
  CHECK(anonymous.err.find("cannot reach NATS") != std::string::npos);
}

TEST_CASE("kvmictl --nats credentials that do not fit together are a usage error") {
  auto& s = secured();
  struct bad {
    std::vector<std::string> args;
    std::string says;
  };
  const bad cases[] = {
    {{"--nats-password-file", s.file("password"), "vms"}, "--nats-password-file needs --nats-user"},
    {{"--nats-user", user, "vms"}, "--nats-user needs a password"},
    {{"--nats-user", user, "--nats-password-file", s.file("shared"), "vms"},
     "--nats-password-file: " + s.file("shared")},
    {{"--nats-user", user, "--nats-password-file", s.file("missing"), "vms"},
     "--nats-password-file: " + s.file("missing") + ": cannot open"},
    {{"--nats-user", user, "--nats-password-file", s.file("password"), "--nats-creds",
      s.file("password"), "vms"},
     "not both"},
    {{"--nats-cert", s.file("client.pem"), "vms"}, "--nats-cert and --nats-key go together"},
  };
  for (auto& c : cases) {
    auto r = fleet_ctl(c.args);
    CAPTURE(c.says);
    INFO(r.err);
    CHECK(r.status == 2);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
  // A CA file that is not one names the flag.
  auto r = fleet_ctl(with(tls_files(), {"--nats-ca", s.file("password"), "vms"}));
  INFO(r.err);
  CHECK(r.status == 3);
  CHECK(r.err.find("--nats-ca: " + s.file("password")) != std::string::npos);
}
