#include "server/control/http.hpp"

#include "server/control/encoding.hpp"

#include <http_parser.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace kvmid::control {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The clock value of the feed() in progress: callbacks stamp phases with it.
thread_local clock::time_point feed_now;

} // namespace

std::string percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size()) {
      int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

std::optional<std::string_view> request::header(std::string_view lower_name) const {
  for (auto& [k, v] : headers)
    if (k == lower_name)
      return std::string_view(v);
  return std::nullopt;
}

std::optional<std::string> request::query_param(std::string_view name) const {
  std::string_view q = query;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view item = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
    auto eq = item.find('=');
    std::string key = percent_decode(item.substr(0, eq), true);
    if (key == name)
      return eq == std::string_view::npos ? std::string{}
                                          : percent_decode(item.substr(eq + 1), true);
  }
  return std::nullopt;
}

// http-parser's C callbacks, forwarding to the request_parser in p->data.
struct parser_callbacks {
  static request_parser& self(http_parser* p) { return *static_cast<request_parser*>(p->data); }

  static bool count(request_parser& s, size_t n) {
    s.header_bytes_ += n;
    if (s.header_bytes_ > s.limits_.max_header_bytes) {
      s.fail(431, "headers_too_large",
             "request line and headers exceed " + std::to_string(s.limits_.max_header_bytes)
               + " bytes");
      return false;
    }
    return true;
  }
  static int on_message_begin(http_parser* p) {
    auto& s = self(p);
    s.phase_ = request_parser::phase::headers;
    s.headers_start_ = feed_now;
    return 0;
  }
  static int on_url(http_parser* p, const char* at, size_t n) {
    auto& s = self(p);
    if (!count(s, n))
      return -1;
    s.cur_.target.append(at, n);
    return 0;
  }
  static int on_header_field(http_parser* p, const char* at, size_t n) {
    auto& s = self(p);
    if (!count(s, n + 4)) // ": " and CRLF
      return -1;
    if (s.in_value_) {
      s.field_.clear();
      s.in_value_ = false;
    }
    s.field_.append(at, n);
    return 0;
  }
  static int on_header_value(http_parser* p, const char* at, size_t n) {
    auto& s = self(p);
    if (!count(s, n))
      return -1;
    if (!s.in_value_) {
      s.cur_.headers.emplace_back(lower(s.field_), std::string{});
      s.in_value_ = true;
    }
    s.cur_.headers.back().second.append(at, n);
    return 0;
  }
  static int on_headers_complete(http_parser* p) {
    auto& s = self(p);
    s.cur_.method = http_method_str(static_cast<http_method>(p->method));
    std::string_view t = s.cur_.target;
    if (t.empty() || t.front() != '/') {
      s.fail(400, "bad_request", "request target must be an absolute path");
      return -1;
    }
    auto q = t.find('?');
    s.cur_.path = percent_decode(t.substr(0, q), false);
    s.cur_.query = q == std::string_view::npos ? std::string{} : std::string(t.substr(q + 1));
    bool has_length = (p->flags & F_CONTENTLENGTH) != 0;
    s.declared_length_ = has_length ? p->content_length : 0;
    s.body_expected_ = (p->flags & F_CHUNKED) || s.declared_length_ > 0;
    s.phase_ = request_parser::phase::head;
    s.body_start_ = feed_now;
    if (s.stop_after_headers_) {
      // execute() returns before the headers' final LF; feeding from there
      // after read_body() goes on with the body.
      http_parser_pause(p, 1);
      return 0;
    }
    return s.begin_body() ? 0 : -1;
  }
  static int on_body(http_parser* p, const char* at, size_t n) {
    auto& s = self(p);
    if (s.cur_.body.size() + n > s.limits_.max_body_bytes) {
      s.fail(413, "payload_too_large",
             "request body exceeds " + std::to_string(s.limits_.max_body_bytes) + " bytes");
      return -1;
    }
    s.cur_.body.append(at, n);
    return 0;
  }
  static int on_message_complete(http_parser* p) {
    auto& s = self(p);
    if (p->upgrade) { // Upgrade/CONNECT: this API speaks plain HTTP only
      s.fail(400, "bad_request", "protocol upgrade is not supported");
      return -1;
    }
    s.cur_.keep_alive = http_should_keep_alive(p) != 0;
    s.phase_ = request_parser::phase::ready;
    http_parser_pause(p, 1); // one request at a time: the rest waits for take()
    return 0;
  }

  static const http_parser_settings& settings() {
    static const http_parser_settings st = [] {
      http_parser_settings x;
      http_parser_settings_init(&x);
      x.on_message_begin = on_message_begin;
      x.on_url = on_url;
      x.on_header_field = on_header_field;
      x.on_header_value = on_header_value;
      x.on_headers_complete = on_headers_complete;
      x.on_body = on_body;
      x.on_message_complete = on_message_complete;
      return x;
    }();
    return st;
  }
};

request_parser::request_parser(limits l, bool stop_after_headers)
  : limits_(l), parser_(std::make_unique<http_parser>()), stop_after_headers_(stop_after_headers) {
  http_parser_init(parser_.get(), HTTP_REQUEST);
  parser_->data = this;
}

request_parser::~request_parser() = default;

void request_parser::fail(int status, std::string code, std::string message) {
  if (phase_ == phase::failed)
    return;
  phase_ = phase::failed;
  failure_ = {status, std::move(code), std::move(message)};
}

void request_parser::reset() {
  cur_ = request{};
  field_.clear();
  in_value_ = false;
  header_bytes_ = 0;
  body_expected_ = false;
  declared_length_ = 0;
}

bool request_parser::begin_body() {
  if (declared_length_ > limits_.max_body_bytes) {
    fail(413, "payload_too_large",
         "request body exceeds " + std::to_string(limits_.max_body_bytes) + " bytes");
    return false;
  }
  phase_ = phase::body;
  return true;
}

void request_parser::read_body() {
  if (phase_ != phase::head || !begin_body())
    return;
  http_parser_pause(parser_.get(), 0);
}

size_t request_parser::feed(std::span<const char> bytes, clock::time_point now) {
  if (phase_ == phase::ready || phase_ == phase::head || phase_ == phase::failed
      || bytes.empty())
    return 0;
  feed_now = now;
  size_t n = http_parser_execute(parser_.get(), &parser_callbacks::settings(), bytes.data(),
                                 bytes.size());
  auto err = HTTP_PARSER_ERRNO(parser_.get());
  if (phase_ == phase::failed)
    return n;
  if (err == HPE_PAUSED && (phase_ == phase::ready || phase_ == phase::head))
    return n;
  if (err == HPE_HEADER_OVERFLOW) {
    fail(431, "headers_too_large", "request headers too large");
  } else if (err != HPE_OK) {
    fail(400, "bad_request",
         std::string("malformed HTTP request: ") + http_errno_description(err));
  }
  return n;
}

request request_parser::take() {
  request r = std::move(cur_);
  reset();
  phase_ = phase::idle;
  http_parser_pause(parser_.get(), 0);
  return r;
}

std::optional<clock::time_point> request_parser::deadline(clock::time_point idle_since) const {
  switch (phase_) {
    case phase::idle:
      return idle_since + limits_.idle_timeout;
    case phase::headers:
      return headers_start_ + limits_.header_timeout;
    case phase::head:
    case phase::body:
      return body_start_ + limits_.body_timeout;
    default:
      return std::nullopt;
  }
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

std::string serialize(const response& r, bool keep_alive) {
  std::string out;
  out.reserve(128 + r.body.size());
  out += "HTTP/1.1 ";
  out += std::to_string(r.status);
  out += ' ';
  out += reason_phrase(r.status);
  out += "\r\nContent-Type: ";
  out += r.content_type;
  out += "\r\nContent-Length: ";
  out += std::to_string(r.body.size());
  out += keep_alive ? "\r\nConnection: keep-alive" : "\r\nConnection: close";
  out += "\r\nCache-Control: no-store";
  for (auto& [k, v] : r.headers) {
    out += "\r\n";
    out += k;
    out += ": ";
    out += v;
  }
  out += "\r\n\r\n";
  out += r.body;
  return out;
}

std::string serialize_stream_head(int status, std::string_view content_type) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " ";
  out += reason_phrase(status);
  out += "\r\nContent-Type: ";
  out += content_type;
  out += "\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\n";
  return out;
}

} // namespace kvmid::control
