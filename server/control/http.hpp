// HTTP/1.1 for the control plane: an incremental request parser over
// http-parser with hard bounds (header bytes 431, body bytes 413), the
// per-connection read deadlines a slow client cannot stretch, and response
// serialisation. Pure: bytes in, bytes out, time passed in; no I/O.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct http_parser; // <http_parser.h>, kept out of this header

namespace kvmid::control {

using clock = std::chrono::steady_clock;

struct limits {
  size_t max_header_bytes = 16 * 1024;  // request line + all header fields
  size_t max_body_bytes = 1024 * 1024;  // 413 beyond this
  std::chrono::milliseconds header_timeout{10'000}; // first byte -> end of headers
  std::chrono::milliseconds body_timeout{30'000};   // end of headers -> end of body
  std::chrono::milliseconds idle_timeout{60'000};   // keep-alive wait for the next request
};

struct request {
  std::string method; // "GET", "POST", ...
  std::string target; // as sent: path and query
  std::string path;   // percent-decoded
  std::string query;  // raw, without '?'
  std::vector<std::pair<std::string, std::string>> headers; // names lower-cased
  std::string body;
  bool keep_alive = true;

  // The first header with this (lower-case) name, or nullopt.
  std::optional<std::string_view> header(std::string_view lower_name) const;
  // The decoded value of a query parameter, or nullopt.
  std::optional<std::string> query_param(std::string_view name) const;
};

// Why parsing stopped with an error: the status to answer before closing.
struct parse_failure {
  int status = 400; // 400 malformed, 413 body too large, 431 headers too large
  std::string code;
  std::string message;
};

class request_parser {
public:
  enum class phase : uint8_t {
    idle,    // between requests, nothing of the next one seen
    headers, // request line / headers arriving
    head,    // headers done, body not read yet: vet them, then read_body()
    body,    // body arriving
    ready,   // a whole request is waiting in take()
    failed,  // see failure(); the connection must answer and close
  };

  // With stop_after_headers the parser halts in phase::head so the caller
  // can refuse a request (auth, route) before any of its body is read.
  explicit request_parser(limits l = {}, bool stop_after_headers = false);
  ~request_parser();
  request_parser(const request_parser&) = delete;
  request_parser& operator=(const request_parser&) = delete;

  // Consumes bytes up to the end of one request; returns how many were
  // consumed. Bytes past a complete request (pipelining) are left for the
  // next feed() after take(). Does nothing while ready or failed.
  size_t feed(std::span<const char> bytes, clock::time_point now);

  phase state() const { return phase_; }
  const parse_failure& failure() const { return failure_; }
  request take(); // only when ready; returns to idle
  // In phase::head: go on with the body (413 now if its declared length is
  // over the limit).
  void read_body();
  // From phase::head on: the request declares a body (length > 0 or chunked).
  bool body_expected() const { return body_expected_; }
  // The request being assembled (headers are complete from phase::head on).
  const request& current() const { return cur_; }

  // When the current phase times out (nullopt while ready/failed: the
  // server, not the client, is the one to act then). `idle_since` is when
  // the previous response was sent or the connection was accepted.
  std::optional<clock::time_point> deadline(clock::time_point idle_since) const;

private:
  friend struct parser_callbacks;
  void fail(int status, std::string code, std::string message);
  void reset();
  bool begin_body(); // head -> body, or 413 from Content-Length

  limits limits_;
  std::unique_ptr<http_parser> parser_;
  phase phase_ = phase::idle;
  parse_failure failure_;
  request cur_;
  std::string field_; // header name being assembled
  bool in_value_ = false;
  bool stop_after_headers_ = false;
  bool body_expected_ = false;
  uint64_t declared_length_ = 0; // Content-Length, 0 when absent
  size_t header_bytes_ = 0;
  clock::time_point headers_start_{};
  clock::time_point body_start_{};
};

struct response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers; // extra headers
};

std::string_view reason_phrase(int status);

// Status line, Content-Length, Connection and the extra headers, then body.
std::string serialize(const response& r, bool keep_alive);

// Headers that open a text/event-stream response (no Content-Length; the
// connection stays for the stream only).
std::string serialize_stream_head(int status, std::string_view content_type);

std::string percent_decode(std::string_view s, bool plus_is_space);

} // namespace kvmid::control
