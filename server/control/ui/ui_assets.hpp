// The dashboard's static files (server/control/ui/*.html, .js, .css), built
// into kvmid by embed.cmake.
#pragma once

#include <span>
#include <string_view>

namespace kvmid::control {

struct ui_asset {
  std::string_view name;         // "index.html", "app.js": the file's name in the folder
  std::string_view content_type; // "text/javascript; charset=utf-8"
  std::string_view body;
};

// Every file, as it was when kvmid was built.
std::span<const ui_asset> ui_assets();

} // namespace kvmid::control
