// HTTPS on the control API: a throwaway CA, server and client certificates
// made with the openssl CLI, http_api on a real reactor on 127.0.0.1 (and
// kvmid itself for the config path), and curl as the client.
#include "api_fakes.hpp"
#include "proc.hpp"
#include "tests/support/test_pki.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

using namespace kvmid;
using namespace kvmid::control;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* token = "tls-t0ken";
constexpr const char* vm1 = "2b7c4e1a-0000-4000-8000-000000000001";

// A directory removed when the test binary exits.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "kvmid-tls-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
  }
};

// CA "ca" signing a server cert for 127.0.0.1/localhost and a client cert;
// CA "rogue" signing another client cert.
struct pki {
  temp_dir dir;

  pki() {
    test::make_test_ca(dir.path, "ca");
    test::make_test_ca(dir.path, "rogue");
    test::make_test_leaf(dir.path, "server", "ca", test::loopback_server_ext);
    test::make_test_leaf(dir.path, "client", "ca", test::client_ext);
    test::make_test_leaf(dir.path, "stranger", "rogue", test::client_ext);
  }

  tls_options server(bool mtls = false) const {
    tls_options t;
    t.cert_file = dir / "server.pem";
    t.key_file = dir / "server.key";
    if (mtls)
      t.client_ca_file = dir / "ca.pem";
    return t;
  }
};

const pki& certs() {
  static pki p; // made once per test binary
  return p;
}

struct reply {
  int exit = -1; // curl's exit code
  int status = 0;
  std::string body, err;
  json j() const { return json::parse(body, nullptr, false); }
};

// curl URL with the test CA; `client` names a cert/key pair in the pki dir.
reply curl(const std::string& url, const std::string& client = "", bool auth = true) {
  auto& d = certs().dir;
  std::vector<std::string> a = {CURL_BIN, "-sS", "--max-time", "15", "--cacert", d / "ca.pem",
                                "-w", "\n%{http_code}"};
  if (auth)
    a.insert(a.end(), {"-H", std::string("Authorization: Bearer ") + token});
  if (!client.empty())
    a.insert(a.end(), {"--cert", d / (client + ".pem"), "--key", d / (client + ".key")});
  a.push_back(url);
  auto r = test::run(a);
  reply out;
  out.exit = r.status;
  out.err = r.err;
  auto nl = r.out.rfind('\n');
  if (nl != std::string::npos) {
    out.status = std::atoi(r.out.c_str() + nl + 1);
    out.body = r.out.substr(0, nl);
  }
  return out;
}

// http_api over a real reactor, HTTPS on 127.0.0.1 (port picked by the kernel).
struct https_api {
  test::fake_backend be;
  net::reactor r;
  std::unique_ptr<http_api> api;
  uint16_t port = 0;

  explicit https_api(tls_options t, std::chrono::milliseconds header_timeout = std::chrono::seconds(10)) {
    api_options o;
    net::listen_spec l;
    l.type = net::listen_spec::kind::tcp;
    l.host = "127.0.0.1";
    o.listen.push_back(l);
    o.http.header_timeout = header_timeout;
    o.tls = std::move(t);
    api = std::make_unique<http_api>(be, token_auth(token), o, reactor_poster(r));
    port = r.bound_port(r.add_listener(l, api->factory(l)));
    r.start();
  }
  ~https_api() { r.stop(); } // before the handlers' api goes

  std::string url(const std::string& scheme, const std::string& path) const {
    return scheme + "://127.0.0.1:" + std::to_string(port) + path;
  }
  uint64_t failures() {
    for (auto& f : be.metrics().snapshot())
      if (f.name == "kvmid_api_tls_failures_total" && !f.samples.empty())
        return uint64_t(f.samples[0].value);
    return 0;
  }
  // Handshake failures are counted on the ring thread after curl has gone.
  void wait_failures(uint64_t n) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (failures() < n && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    INFO("waited 15 s for kvmid_api_tls_failures_total to reach " << n);
    REQUIRE(failures() == n);
  }
};

// A raw TCP client that connects and reads until the server closes:
// "closed", or what happened instead.
std::string closed_by_server(uint16_t port, std::string_view first_bytes) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  REQUIRE(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  if (!first_bytes.empty())
    REQUIRE(::send(s, first_bytes.data(), first_bytes.size(), MSG_NOSIGNAL) > 0);
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  std::string what = "still open after 15 s";
  while (std::chrono::steady_clock::now() < until) {
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0)
      continue; // a signal or nothing yet
    char buf[512];
    ssize_t n = ::recv(s, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      what = "closed";
      break;
    }
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      what = std::string("recv: ") + std::strerror(errno);
      break;
    }
  }
  ::close(s);
  return what;
}

} // namespace

TEST_SUITE("control") {

TEST_CASE("tls: GET /v1/vms over https with the token") {
  https_api s(certs().server());
  auto r = curl(s.url("https", "/v1/vms"));
  INFO(r.err);
  REQUIRE(r.exit == 0);
  CHECK(r.status == 200);
  auto j = r.j();
  REQUIRE(j.contains("vms"));
  REQUIRE(j["vms"].size() == 1);
  CHECK(j["vms"][0]["uuid"] == vm1);
  // The token is still required inside the tunnel.
  auto anon = curl(s.url("https", "/v1/vms"), "", false);
  CHECK(anon.status == 401);
  // A reply spanning many TLS records (64 KiB as hex).
  auto mem = curl(s.url("https", std::string("/v1/vms/") + vm1 + "/memory?gpa=0&len=65536"));
  REQUIRE(mem.status == 200);
  CHECK(mem.j()["data"].get<std::string>().size() == 2 * 65536);
  CHECK(s.failures() == 0);
}

TEST_CASE("tls: plain http to the https port fails and is counted") {
  https_api s(certs().server());
  auto r = curl(s.url("http", "/v1/vms"));
  CHECK(r.status != 200);
  CHECK(r.body.find(vm1) == std::string::npos);
  s.wait_failures(1);
  // The listener still serves HTTPS afterwards.
  CHECK(curl(s.url("https", "/v1/vms")).status == 200);
}

TEST_CASE("tls: with client_ca_file only clients with a cert from that CA get in") {
  https_api s(certs().server(true));
  auto none = curl(s.url("https", "/v1/vms"));
  CHECK(none.exit != 0);
  CHECK(none.status != 200);
  auto stranger = curl(s.url("https", "/v1/vms"), "stranger");
  CHECK(stranger.exit != 0);
  CHECK(stranger.status != 200);
  s.wait_failures(2);
  auto ok = curl(s.url("https", "/v1/vms"), "client");
  INFO(ok.err);
  CHECK(ok.status == 200);
  CHECK(ok.j()["vms"][0]["uuid"] == vm1);
}

TEST_CASE("tls: a handshake that does not finish in time is closed and counted") {
  https_api s(certs().server(), std::chrono::milliseconds(200));
  CHECK(closed_by_server(s.port, "") == "closed");             // says nothing
  CHECK(closed_by_server(s.port, "\x16\x03\x01") == "closed"); // starts a ClientHello, stops
  s.wait_failures(2);
}

TEST_CASE("tls: api config demands tls for remote listeners") {
  auto remote = json::parse(R"({"token_file":"/t","listen":["tcp:0.0.0.0:8700"],"allow_remote":true})");
  auto r = parse_api_options(remote);
  REQUIRE(std::holds_alternative<std::string>(r));
  CHECK(std::get<std::string>(r).starts_with("api.tls:"));

  remote["tls"] = {{"cert_file", "/etc/kvmid/api.pem"}, {"key_file", "/etc/kvmid/api.key"}};
  auto ok = parse_api_options(remote);
  REQUIRE(std::holds_alternative<api_options>(ok));
  REQUIRE(std::get<api_options>(ok).tls);
  CHECK(std::get<api_options>(ok).tls->key_file == "/etc/kvmid/api.key");
  CHECK(std::get<api_options>(ok).tls->client_ca_file.empty());

  struct bad_case {
    json tls;
    const char* mentions;
  } bad[] = {
    {json::array(), "api.tls:"},
    {{{"cert_file", "/c"}}, "api.tls.key_file"},
    {{{"key_file", "/k"}}, "api.tls.cert_file"},
    {{{"cert_file", "/c"}, {"key_file", 1}}, "api.tls.key_file"},
    {{{"cert_file", "/c"}, {"key_file", "/k"}, {"client_ca", "/x"}}, "api.tls.client_ca"},
  };
  for (auto& b : bad) {
    remote["tls"] = b.tls;
    CAPTURE(remote.dump());
    auto e = parse_api_options(remote);
    REQUIRE(std::holds_alternative<std::string>(e));
    CHECK(std::get<std::string>(e).find(b.mentions) != std::string::npos);
  }
}

TEST_CASE("tls: a key file group or others can read is refused") {
  temp_dir d;
  auto t = certs().server();
  auto key = d / "open.key";
  fs::copy_file(t.key_file, key);
  ::chmod(key.c_str(), 0644);
  t.key_file = key;
  auto r = tls_context::load(t);
  REQUIRE(std::holds_alternative<std::string>(r));
  CHECK(std::get<std::string>(r).starts_with("api.tls.key_file: " + key));
  CHECK(std::get<std::string>(r).find("group or others") != std::string::npos);
  // http_api refuses to start with it.
  test::fake_backend be;
  test::fake_ring ring;
  api_options o;
  o.tls = t;
  CHECK_THROWS_WITH_AS(http_api(be, token_auth(token), o, ring.poster()),
                       doctest::Contains("api.tls.key_file"), std::runtime_error);
  ::chmod(key.c_str(), 0600);
  CHECK(std::holds_alternative<std::shared_ptr<tls_context>>(tls_context::load(t)));
}

TEST_CASE("tls: unusable certificate files are named") {
  auto t = certs().server();
  t.cert_file = certs().dir / "missing.pem";
  auto r = tls_context::load(t);
  REQUIRE(std::holds_alternative<std::string>(r));
  CHECK(std::get<std::string>(r).starts_with("api.tls.cert_file: "));
  // A key that belongs to another certificate.
  t = certs().server();
  t.key_file = certs().dir / "client.key";
  r = tls_context::load(t);
  REQUIRE(std::holds_alternative<std::string>(r));
  CHECK(std::get<std::string>(r).find("does not match") != std::string::npos);
  t = certs().server(true);
  t.client_ca_file = certs().dir / "server.ext";
  r = tls_context::load(t);
  REQUIRE(std::holds_alternative<std::string>(r));
  CHECK(std::get<std::string>(r).starts_with("api.tls.client_ca_file: "));
}

}

#ifdef KVMID_BIN
namespace {

// kvmid with a config in `d`, stderr to d/kvmid.err, killed if this test
// process dies first.
struct kvmid_process {
  pid_t pid = -1;
  std::string err_file;

  kvmid_process(const temp_dir& d, const json& cfg) : err_file(d / "kvmid.err") {
    d.write("kvmid.json", cfg.dump(2));
    std::string conf = d / "kvmid.json";
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int fd = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      ::dup2(fd, 2);
      int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
      ::dup2(null, 1); // the summary line each second
      ::execl(KVMID_BIN, KVMID_BIN, "--config", conf.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~kvmid_process() { test::stop(pid); }

  std::string log() const {
    std::ifstream in(err_file);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // Waits for `what` on stderr; empty if kvmid exited or 15 s passed first.
  std::string wait_log(const std::string& what) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < end) {
      auto l = log();
      if (l.find(what) != std::string::npos)
        return l;
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        return {};
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return {};
  }
};

json kvmid_config(const temp_dir& d, json api) {
  std::string cookie(32, 'c');
  d.write("cookie", cookie);
  d.write("token", std::string(token) + "\n");
  ::chmod((d / "cookie").c_str(), 0600);
  ::chmod((d / "token").c_str(), 0600);
  api["token_file"] = d / "token";
  return {{"cookie_file", d / "cookie"},
          {"state_dir", d / "state"},
          {"listeners", json::array({{{"type", "unix"}, {"path", d / "kvmi.sock"}}})},
          {"api", api}};
}

// Runs kvmid to its exit; returns its stderr.
test::run_result kvmid_run(const temp_dir& d, const json& cfg) {
  d.write("kvmid.json", cfg.dump(2));
  return test::run({KVMID_BIN, "--config", d / "kvmid.json"});
}

json tls_json(const tls_options& t) {
  return {{"cert_file", t.cert_file}, {"key_file", t.key_file}};
}

} // namespace

TEST_SUITE("control") {

TEST_CASE("tls: kvmid serves its API listener over https") {
  temp_dir d;
  auto cfg = kvmid_config(d, {{"listen", json::array({"tcp:127.0.0.1:0"})},
                              {"tls", tls_json(certs().server())}});
  kvmid_process k(d, cfg);
  std::string log = k.wait_log("(HTTPS)");
  INFO("kvmid stderr: " << k.log());
  REQUIRE(!log.empty());
  auto at = log.find("API listening on tcp:127.0.0.1:");
  REQUIRE(at != std::string::npos);
  int port = std::atoi(log.c_str() + at + std::strlen("API listening on tcp:127.0.0.1:"));
  REQUIRE(port > 0);
  std::string base = "://127.0.0.1:" + std::to_string(port) + "/v1/vms";
  auto r = curl("https" + base);
  INFO(r.err);
  CHECK(r.status == 200);
  CHECK(r.j()["vms"] == json::array());
  CHECK(curl("http" + base).status != 200);
  CHECK(test::stop(k.pid) == 0);
  k.pid = -1;
}

TEST_CASE("tls: kvmid refuses a remote API listener without tls") {
  temp_dir d;
  auto r = kvmid_run(d, kvmid_config(d, {{"listen", json::array({"tcp:0.0.0.0:0"})},
                                         {"allow_remote", true}}));
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("/api: api.tls: required") != std::string::npos);
}

TEST_CASE("tls: kvmid refuses a key file group or others can read") {
  temp_dir d;
  auto t = certs().server();
  t.key_file = d / "server.key";
  fs::copy_file(certs().server().key_file, t.key_file);
  ::chmod(t.key_file.c_str(), 0644);
  auto r = kvmid_run(d, kvmid_config(d, {{"listen", json::array({"tcp:127.0.0.1:0"})},
                                         {"tls", tls_json(t)}}));
  INFO(r.err);
  CHECK(r.status == 1);
  CHECK(r.err.find("api.tls.key_file: " + t.key_file + ": readable by group or others")
        != std::string::npos);
}

}
#endif
