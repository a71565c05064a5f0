// One control-API connection on the fakes of api_fakes.hpp: raw request
// bytes in, the responses it sent split by Content-Length. Used by the JSON
// limit tests and by the API fuzz targets.
#pragma once

#include "tests/control/api_fakes.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid::test {

struct api_conn {
  static constexpr const char* token = "api-conn-token";
  fake_backend be;
  fake_ring ring;
  control::http_api api;
  std::unique_ptr<net::connection_handler> h;
  fake_ctx ctx;

  explicit api_conn(control::api_options o = {})
    : api(be, control::token_auth(token), std::move(o), ring.poster()), h(api.factory()()) {
    h->on_open(ctx);
  }
  ~api_conn() { h->on_close(ctx, net::close_reason::local); }

  void feed(std::string_view raw) {
    h->on_data(ctx, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()),
                                             raw.size()));
    ring.run(ctx, *h);
  }

  // An authorised request with a Content-Length body.
  static std::string request(const std::string& method, const std::string& target,
                             const std::string& body = "") {
    return method + " " + target + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
           + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  }
};

struct http_answer {
  int status = 0;
  std::string content_type;
  std::string body;
};

// Splits a connection's output into responses (interim 1xx ones included; an
// event stream's head ends the split). nullopt: not well-formed responses.
inline std::optional<std::vector<http_answer>> split_answers(std::string_view s) {
  std::vector<http_answer> out;
  while (!s.empty()) {
    auto end = s.find("\r\n\r\n");
    if (end == std::string_view::npos || !s.starts_with("HTTP/1.1 ") || end < 12)
      return std::nullopt;
    std::string_view head = s.substr(0, end);
    http_answer a;
    for (char c : head.substr(9, 3))
      if (c < '0' || c > '9')
        return std::nullopt;
    a.status = std::stoi(std::string(head.substr(9, 3)));
    std::optional<size_t> len;
    for (size_t pos = head.find("\r\n"); pos != std::string_view::npos;) {
      size_t next = head.find("\r\n", pos + 2);
      auto line = head.substr(pos + 2, next == std::string_view::npos ? next : next - pos - 2);
      if (line.starts_with("Content-Length: "))
        len = std::stoul(std::string(line.substr(16)));
      else if (line.starts_with("Content-Type: "))
        a.content_type = line.substr(14);
      pos = next;
    }
    s.remove_prefix(end + 4);
    if (a.status < 200) {
      out.push_back(std::move(a));
      continue;
    }
    if (!len) {
      if (a.content_type != "text/event-stream")
        return std::nullopt;
      out.push_back(std::move(a));
      break;
    }
    if (s.size() < *len)
      return std::nullopt;
    a.body = s.substr(0, *len);
    s.remove_prefix(*len);
    out.push_back(std::move(a));
  }
  return out;
}

} // namespace kvmid::test
