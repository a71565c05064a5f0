// API errors: an HTTP status, a stable machine-readable code and a message,
// rendered as {"error": {"code": "...", "message": "..."}}.
#pragma once

#include "server/control/http.hpp"

#include <string>
#include <string_view>

namespace kvmid::control {

struct http_error {
  int status = 500;
  std::string code;
  std::string message;
};

// The statuses of issue 5, by meaning.
inline http_error bad_request(std::string msg) { return {400, "bad_request", std::move(msg)}; }
inline http_error unauthorized(std::string msg) { return {401, "unauthorized", std::move(msg)}; }
inline http_error forbidden(std::string msg) { return {403, "forbidden", std::move(msg)}; }
inline http_error not_found(std::string code, std::string msg) {
  return {404, std::move(code), std::move(msg)};
}
inline http_error conflict(std::string code, std::string msg) {
  return {409, std::move(code), std::move(msg)};
}
inline http_error unprocessable(std::string code, std::string msg) {
  return {422, std::move(code), std::move(msg)};
}
inline http_error kernel_timeout(std::string msg) {
  return {503, "kernel_timeout", std::move(msg)};
}

std::string error_body(std::string_view code, std::string_view message);
response error_response(const http_error& e);

} // namespace kvmid::control
