// GET /ui and GET /ui/{asset}: the dashboard's files with the headers that
// keep a browser from running anything but them. No token: the files are
// the same for everyone and hold no secret; every call the page makes
// carries the bearer token.
#pragma once

#include "server/control/http.hpp"

#include <string_view>

namespace kvmid::control {

// The page's policy: scripts, styles and fetches from kvmid itself only, no
// inline script or style, no frames, no plugins, no form posts elsewhere.
inline constexpr std::string_view ui_content_security_policy =
  "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
  "frame-ancestors 'none'";

// The file named `asset` ("index.html" for GET /ui), or 404 not_found.
response ui_response(std::string_view asset);

} // namespace kvmid::control
