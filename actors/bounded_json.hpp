// JSON from outside kvmid (API bodies, the config file, state files, the
// server's answers to kvmictl) is parsed only through parse_bounded_json:
// it refuses input nested deeper than max_json_depth before nlohmann builds
// anything. nlohmann parses iteratively, but dump(), comparison and copies
// of a value recurse once per level, so a 100,000-deep array would overflow
// the stack of whichever thread touches it next. Nothing kvmid reads
// legitimately nests more than a handful of levels.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace kvmid {

inline constexpr size_t max_json_depth = 64;

// "JSON nested deeper than 64 levels" when `text` opens more than `max`
// arrays/objects at once, else empty. One pass, no recursion; brackets
// inside strings and comments do not count. On invalid JSON the count may
// be off, but then the parse that follows refuses it anyway.
inline std::string json_nesting_error(std::string_view text, size_t max = max_json_depth) {
  size_t depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '"') {
      for (++i; i < text.size() && text[i] != '"'; ++i)
        if (text[i] == '\\')
          ++i;
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
      i = text.find('\n', i);
      if (i == std::string_view::npos)
        break;
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      i = text.find("*/", i + 2);
      if (i == std::string_view::npos)
        break;
      ++i;
    } else if (c == '[' || c == '{') {
      if (++depth > max)
        return "JSON nested deeper than " + std::to_string(max) + " levels";
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return {};
}

// The parsed value, or a discarded value with `err` saying why: the nesting
// error above, or nlohmann's parse error without the input it quotes.
// Never throws.
inline nlohmann::json parse_bounded_json(std::string_view text, std::string& err,
                                         bool ignore_comments = false) {
  err = json_nesting_error(text);
  if (!err.empty())
    return nlohmann::json(nlohmann::json::value_t::discarded);
  try {
    return nlohmann::json::parse(text, nullptr, true, ignore_comments);
  } catch (const nlohmann::json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9:
    // syntax error while parsing value - invalid literal; last read: '...'"
    std::string what = e.what();
    if (auto p = what.find("] "); p != std::string::npos)
      what.erase(0, p + 2);
    if (auto p = what.find("; last read"); p != std::string::npos)
      what.erase(p);
    err = what;
    return nlohmann::json(nlohmann::json::value_t::discarded);
  } catch (const nlohmann::json::exception&) {
    // out_of_range.406 for a number beyond double, which quotes the number.
    err = "number out of range";
    return nlohmann::json(nlohmann::json::value_t::discarded);
  }
}

} // namespace kvmid
