#include "server/control/http.hpp"

#include <doctest/doctest.h>

#include <string>

using namespace kvmid::control;
using namespace std::chrono_literals;

namespace {
size_t feed(request_parser& p, std::string_view s, clock::time_point t = clock::time_point{}) {
  return p.feed(std::span<const char>(s.data(), s.size()), t);
}
} // namespace

TEST_SUITE("control") {

TEST_CASE("http: a GET with query and headers") {
  request_parser p;
  std::string raw =
    "GET /v1/vms/abc%2Fdef/memory?gpa=0x1000&len=16&encoding=base64&x=a+b HTTP/1.1\r\n"
    "Host: localhost\r\nAuthorization: Bearer t0k\r\nX-Multi: a\r\n\r\n";
  CHECK(feed(p, raw) == raw.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  request r = p.take();
  CHECK(r.method == "GET");
  CHECK(r.path == "/v1/vms/abc/def/memory");
  CHECK(r.query == "gpa=0x1000&len=16&encoding=base64&x=a+b");
  CHECK(r.query_param("gpa") == "0x1000");
  CHECK(r.query_param("encoding") == "base64");
  CHECK(r.query_param("x") == "a b");
  CHECK_FALSE(r.query_param("nope"));
  CHECK(r.header("authorization") == "Bearer t0k");
  CHECK(r.header("host") == "localhost");
  CHECK_FALSE(r.header("Host")); // lookups use lower-case names
  CHECK(r.keep_alive);
  CHECK(r.body.empty());
  CHECK(p.state() == request_parser::phase::idle);
}

TEST_CASE("http: keep-alive follows the version and Connection header") {
  request_parser p;
  feed(p, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK_FALSE(p.take().keep_alive);
  request_parser q;
  feed(q, "GET / HTTP/1.0\r\n\r\n");
  REQUIRE(q.state() == request_parser::phase::ready);
  CHECK_FALSE(q.take().keep_alive);
  request_parser k;
  feed(k, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  REQUIRE(k.state() == request_parser::phase::ready);
  CHECK(k.take().keep_alive);
}

TEST_CASE("http: pipelined requests come out one at a time / in order") {
  request_parser p;
  std::string a = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  std::string b = "GET /b HTTP/1.1\r\n\r\n";
  std::string both = a + b;
  size_t n = feed(p, both);
  CHECK(n == a.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  // Nothing more is consumed until the request is taken.
  CHECK(feed(p, std::string_view(both).substr(n)) == 0);
  request ra = p.take();
  CHECK(ra.path == "/a");
  CHECK(ra.body == "hello");
  CHECK(feed(p, std::string_view(both).substr(n)) == b.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK(p.take().path == "/b");
}

TEST_CASE("http: byte-at-a-time input gives the same request") {
  request_parser p;
  std::string raw = "PUT /v1/x HTTP/1.1\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
  size_t total = 0;
  for (char c : raw)
    total += p.feed(std::span<const char>(&c, 1), clock::time_point{});
  CHECK(total == raw.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  request r = p.take();
  CHECK(r.method == "PUT");
  CHECK(r.body == "{\"a\":1}");
  CHECK(r.header("content-type") == "application/json");
}

TEST_CASE("http: a declared body over the limit is refused before it arrives (413)") {
  limits l;
  l.max_body_bytes = 1024;
  request_parser p(l);
  feed(p, "PUT /v1/x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
  REQUIRE(p.state() == request_parser::phase::failed);
  CHECK(p.failure().status == 413);
  CHECK(p.failure().code == "payload_too_large");
  // A failed parser consumes nothing more.
  CHECK(feed(p, "more") == 0);
}

TEST_CASE("http: stopping after the headers reads no body byte until read_body") {
  limits l;
  l.max_body_bytes = 1024;
  request_parser p(l, true);
  std::string all = "PUT /v1/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  size_t n = feed(p, all);
  REQUIRE(p.state() == request_parser::phase::head);
  CHECK(n < all.size() - 5);
  CHECK(p.current().header("content-length") == "5");
  CHECK(p.current().path == "/v1/x");
  CHECK(p.body_expected());
  CHECK(feed(p, std::string_view(all).substr(n)) == 0); // nothing more while vetted
  CHECK(p.current().body.empty());
  p.read_body();
  REQUIRE(p.state() == request_parser::phase::body);
  n += feed(p, std::string_view(all).substr(n));
  CHECK(n == all.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK(p.take().body == "hello");

  // Without a body the rest of the request is the headers' last byte.
  std::string get = "GET /v1/vms HTTP/1.1\r\n\r\n";
  n = feed(p, get);
  REQUIRE(p.state() == request_parser::phase::head);
  CHECK_FALSE(p.body_expected());
  p.read_body();
  n += feed(p, std::string_view(get).substr(n));
  CHECK(n == get.size());
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK(p.take().path == "/v1/vms");
}

TEST_CASE("http: a declared body over the limit is refused when its headers are accepted") {
  limits l;
  l.max_body_bytes = 1024;
  request_parser p(l, true);
  feed(p, "PUT /v1/x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
  // The caller answers 401 before 413: the length is checked on read_body().
  REQUIRE(p.state() == request_parser::phase::head);
  p.read_body();
  REQUIRE(p.state() == request_parser::phase::failed);
  CHECK(p.failure().status == 413);
  request_parser chunked(l, true);
  feed(chunked, "PUT /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  REQUIRE(chunked.state() == request_parser::phase::head);
  CHECK(chunked.body_expected());
}

TEST_CASE("http: a chunked body growing over the limit is refused (413)") {
  limits l;
  l.max_body_bytes = 1024;
  request_parser p(l);
  feed(p, "PUT /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  CHECK(p.state() == request_parser::phase::body);
  std::string chunk = "200\r\n" + std::string(0x200, 'a') + "\r\n";
  feed(p, chunk);
  CHECK(p.state() == request_parser::phase::body);
  feed(p, chunk);
  CHECK(p.state() == request_parser::phase::body); // exactly 1024
  feed(p, "1\r\nb\r\n");
  REQUIRE(p.state() == request_parser::phase::failed);
  CHECK(p.failure().status == 413);
}

TEST_CASE("http: a body exactly at the limit is accepted") {
  limits l;
  l.max_body_bytes = 1024;
  request_parser p(l);
  feed(p, "PUT /v1/x HTTP/1.1\r\nContent-Length: 1024\r\n\r\n" + std::string(1024, 'z'));
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK(p.take().body.size() == 1024);
}

TEST_CASE("http: oversized headers are refused (431)") {
  limits l;
  l.max_header_bytes = 2048;
  request_parser p(l);
  feed(p, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 100 && p.state() != request_parser::phase::failed; ++i)
    feed(p, "X-Pad-" + std::to_string(i) + ": " + std::string(40, 'p') + "\r\n");
  REQUIRE(p.state() == request_parser::phase::failed);
  CHECK(p.failure().status == 431);
  request_parser q(l);
  feed(q, "GET /" + std::string(4096, 'u') + " HTTP/1.1\r\n\r\n");
  REQUIRE(q.state() == request_parser::phase::failed);
  CHECK(q.failure().status == 431);
}

TEST_CASE("http: malformed requests are 400") {
  const char* bad[] = {
    "GARBAGE\r\n\r\n",
    "GET / HTTP/9.x\r\n\r\n",
    "GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    "GET http://example.com/ HTTP/1.1\r\n\r\n", // absolute-form: not an API path
    "POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
  };
  for (auto* b : bad) {
    CAPTURE(b);
    request_parser p;
    feed(p, b);
    REQUIRE(p.state() == request_parser::phase::failed);
    CHECK(p.failure().status == 400);
    CHECK(p.failure().code == "bad_request");
    CHECK_FALSE(p.failure().message.empty());
  }
}

TEST_CASE("http: an upgrade request is refused") {
  request_parser p;
  feed(p, "GET /v1/events HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
  REQUIRE(p.state() == request_parser::phase::failed);
  CHECK(p.failure().status == 400);
}

TEST_CASE("http: deadlines per phase cannot be stretched by trickling bytes") {
  limits l;
  l.header_timeout = 1000ms;
  l.body_timeout = 3000ms;
  l.idle_timeout = 5000ms;
  request_parser p(l);
  clock::time_point t0{std::chrono::seconds(100)};
  // Idle: measured from when the connection became idle.
  CHECK(p.deadline(t0) == t0 + 5000ms);
  p.feed(std::span<const char>("G", 1), t0 + 10ms);
  CHECK(p.state() == request_parser::phase::headers);
  CHECK(p.deadline(t0) == t0 + 10ms + 1000ms);
  // One more byte much later does not move the header deadline (slowloris).
  p.feed(std::span<const char>("E", 1), t0 + 900ms);
  CHECK(p.deadline(t0) == t0 + 10ms + 1000ms);
  std::string rest = "T / HTTP/1.1\r\nContent-Length: 4\r\n\r\n";
  p.feed(std::span<const char>(rest.data(), rest.size()), t0 + 950ms);
  CHECK(p.state() == request_parser::phase::body);
  CHECK(p.deadline(t0) == t0 + 950ms + 3000ms);
  p.feed(std::span<const char>("ab", 2), t0 + 2000ms);
  CHECK(p.deadline(t0) == t0 + 950ms + 3000ms);
  p.feed(std::span<const char>("cd", 2), t0 + 2100ms);
  REQUIRE(p.state() == request_parser::phase::ready);
  CHECK_FALSE(p.deadline(t0)); // the server holds the turn now
  p.take();
  CHECK(p.deadline(t0 + 3000ms) == t0 + 3000ms + 5000ms);
}

TEST_CASE("http: responses carry length / connection and extra headers") {
  response r;
  r.status = 405;
  r.body = "{\"error\":{}}";
  r.headers.emplace_back("Allow", "GET, PUT");
  std::string s = serialize(r, true);
  CHECK(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
  CHECK(s.find("\r\nContent-Length: 12\r\n") != std::string::npos);
  CHECK(s.find("\r\nConnection: keep-alive\r\n") != std::string::npos);
  CHECK(s.find("\r\nAllow: GET, PUT\r\n") != std::string::npos);
  CHECK(s.ends_with("\r\n\r\n{\"error\":{}}"));
  CHECK(serialize(r, false).find("\r\nConnection: close\r\n") != std::string::npos);
  // What we send must parse as a response.
  std::string head = serialize_stream_head(200, "text/event-stream");
  CHECK(head.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(head.find("Content-Length") == std::string::npos);
  CHECK(head.ends_with("\r\n\r\n"));
}

TEST_CASE("http: percent decoding") {
  CHECK(percent_decode("a%20b%2Fc", false) == "a b/c");
  CHECK(percent_decode("a+b", false) == "a+b");
  CHECK(percent_decode("a+b", true) == "a b");
  CHECK(percent_decode("%zz%4", false) == "%zz%4"); // invalid escapes stay
  CHECK(percent_decode("%41%", false) == "A%");
}

}
