// The dashboard's files as built into kvmid: each served with its type and
// the strict policy, and none relying on what that policy forbids.
#include "server/control/ui/ui_assets.hpp"
#include "server/control/ui/ui_response.hpp"

#include <doctest/doctest.h>

#include <regex>
#include <string>

using namespace kvmid::control;

namespace {
std::string header(const response& r, const std::string& name) {
  for (auto& [k, v] : r.headers)
    if (k == name)
      return v;
  return "(none)";
}
} // namespace

TEST_SUITE("ui") {

TEST_CASE("ui assets: index.html app.js and style.css are built in with their types") {
  auto type = [](std::string_view name) { return std::string(ui_response(name).content_type); };
  CHECK(type("index.html") == "text/html; charset=utf-8");
  CHECK(type("app.js") == "text/javascript; charset=utf-8");
  CHECK(type("style.css") == "text/css; charset=utf-8");
  for (auto& a : ui_assets()) {
    CAPTURE(a.name);
    auto r = ui_response(a.name);
    CHECK(r.status == 200);
    CHECK(r.body == a.body);
    CHECK_FALSE(r.body.empty());
    CHECK(header(r, "Content-Security-Policy") == std::string(ui_content_security_policy));
    CHECK(header(r, "X-Content-Type-Options") == "nosniff");
  }
}

TEST_CASE("ui assets: an unknown file is 404 naming it") {
  auto r = ui_response("secret.txt");
  CHECK(r.status == 404);
  CHECK(r.body.find("no dashboard file 'secret.txt'") != std::string::npos);
  CHECK(ui_response("../index.html").status == 404);
}

TEST_CASE("ui assets: the page needs no inline script or style the policy would block") {
  CHECK(std::string(ui_content_security_policy).starts_with("default-src 'self';"));
  std::string html(ui_response("index.html").body);
  // Every <script> loads a file; no style="" attribute; no on...= handler.
  CHECK_FALSE(std::regex_search(html, std::regex("<script(?![^>]*\\ssrc=)[^>]*>")));
  CHECK_FALSE(std::regex_search(html, std::regex("<style[\\s>]")));
  CHECK_FALSE(std::regex_search(html, std::regex("\\sstyle\\s*=")));
  CHECK_FALSE(std::regex_search(html, std::regex("\\son[a-z]+\\s*=", std::regex::icase)));
  // Nothing from another origin: every src and href is on kvmid or in the page.
  std::smatch m;
  for (auto it = html.cbegin();
       std::regex_search(it, html.cend(), m, std::regex("(?:src|href)=\"([^\"]*)\""));
       it = m.suffix().first) {
    CAPTURE(m[1].str());
    CHECK((m[1].str().starts_with("/ui/") || m[1].str().starts_with("#")));
  }
}

} // TEST_SUITE
