// A Prometheus server for a test: its config, data and log in a directory
// the test owns, its API queried with curl, stopped by pid when the test
// ends (and killed with it if it aborts: PR_SET_PDEATHSIG). Needs
// PROMETHEUS_BIN and CURL_BIN from the build.
#pragma once

#include "tests/support/child_process.hpp"
#include "tests/support/socket.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

namespace kvmid::test {

struct prometheus_server {
  std::filesystem::path dir;
  uint16_t port = free_loopback_port();
  pid_t pid = -1;

  prometheus_server(std::filesystem::path d, const std::string& config) : dir(std::move(d)) {
    std::ofstream(dir / "prometheus.yml") << config;
    pid = spawn({PROMETHEUS_BIN, "--config.file=" + (dir / "prometheus.yml").string(),
                 "--storage.tsdb.path=" + (dir / "prometheus-data").string(),
                 "--web.listen-address=127.0.0.1:" + std::to_string(port), "--log.level=warn"},
                (dir / "prometheus.out").string(), (dir / "prometheus.err").string());
    REQUIRE(pid > 0);
  }
  ~prometheus_server() { stop(); }
  prometheus_server(const prometheus_server&) = delete;
  prometheus_server& operator=(const prometheus_server&) = delete;

  void stop() {
    kvmid::test::stop(pid);
    pid = -1;
  }

  nlohmann::json get(const std::string& path, const std::string& query = {}) const {
    std::vector<std::string> args{CURL_BIN, "-sS", "--max-time", "5", "-G",
                                  "http://127.0.0.1:" + std::to_string(port) + path};
    if (!query.empty())
      args.insert(args.end(), {"--data-urlencode", "query=" + query});
    return nlohmann::json::parse(run(args).out, nullptr, false);
  }
  // The value of a query yielding one sample; -1 when there is none.
  double value_of(const std::string& query) const {
    auto j = get("/api/v1/query", query);
    if (!j.is_object() || j["data"]["result"].size() != 1)
      return -1;
    return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
  }
  std::string log() const {
    std::ifstream in(dir / "prometheus.err");
    return {std::istreambuf_iterator<char>(in), {}};
  }
};

} // namespace kvmid::test
