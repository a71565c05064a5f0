// Alertmanager's webhook receiver, inside the test: an HTTP/1.1 server on
// 127.0.0.1 of the calling thread's network namespace that keeps every
// POSTed notification's JSON and answers 200. One thread, one request per
// connection (it answers Connection: close).
#pragma once

#include "tests/support/socket.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <mutex>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace kvmid::test {

class alert_webhook {
public:
  explicit alert_webhook(uint16_t port) : port_(port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~alert_webhook() {
    ::shutdown(fd_, SHUT_RDWR); // wakes accept()
    thread_.join();
    ::close(fd_);
  }
  alert_webhook(const alert_webhook&) = delete;
  alert_webhook& operator=(const alert_webhook&) = delete;

  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  // Every alert of every notification so far, in arrival order.
  std::vector<nlohmann::json> alerts() const {
    std::lock_guard lk(mu_);
    std::vector<nlohmann::json> out;
    for (auto& n : notifications_)
      for (auto& a : n.value("alerts", nlohmann::json::array()))
        out.push_back(a);
    return out;
  }
  // Whether an alert named `name` with label instance=`instance` arrived
  // with status `status`.
  bool received(const std::string& name, const std::string& instance,
                const std::string& status = "firing") const {
    for (auto& a : alerts())
      if (a.value("status", "") == status && a["labels"].value("alertname", "") == name
          && a["labels"].value("instance", "") == instance)
        return true;
    return false;
  }

private:
  void serve() {
    while (true) {
      int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0)
        return;
      timeval tv{5, 0}; // a stalled client cannot hold the receiver
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      std::string in, body;
      if (read_request(c, in, body)) {
        auto j = nlohmann::json::parse(body, nullptr, false);
        if (!j.is_discarded()) {
          std::lock_guard lk(mu_);
          notifications_.push_back(std::move(j));
        }
        send_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      }
      ::close(c);
    }
  }
  // Headers, then Content-Length bytes of body.
  static bool read_request(int c, std::string& in, std::string& body) {
    char buf[4096];
    size_t end = std::string::npos, want = 0;
    while (true) {
      if (end == std::string::npos && (end = in.find("\r\n\r\n")) != std::string::npos) {
        auto at = lowercase(in.substr(0, end)).find("content-length:");
        want = at == std::string::npos ? 0 : size_t(std::atol(in.c_str() + at + 15));
      }
      if (end != std::string::npos && in.size() >= end + 4 + want) {
        body = in.substr(end + 4, want);
        return true;
      }
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n <= 0)
        return false;
      in.append(buf, size_t(n));
    }
  }
  static std::string lowercase(std::string s) {
    for (auto& ch : s)
      ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return s;
  }

  uint16_t port_;
  int fd_ = -1;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<nlohmann::json> notifications_;
};

} // namespace kvmid::test
