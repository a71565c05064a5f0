#include "server/control/router.hpp"

#include "actors/excerpt.hpp"
#include "server/control/http.hpp"

namespace kvmid::control {

namespace {

constexpr route_entry table[] = {
  {"GET", "/v1/vms", route_id::list_vms},
  {"GET", "/v1/vms/{vm}", route_id::get_vm},
  {"GET", "/v1/vms/{vm}/vcpus", route_id::list_vcpus},
  {"POST", "/v1/vms/{vm}/pause", route_id::pause_vm},
  {"POST", "/v1/vms/{vm}/resume", route_id::resume_vm},
  {"POST", "/v1/vms/{vm}/unhook", route_id::unhook_vm},
  {"POST", "/v1/vms/{vm}/admit", route_id::admit_vm},
  {"DELETE", "/v1/vms/{vm}", route_id::forget_vm},
  {"GET", "/v1/vms/{vm}/vcpus/{vcpu}/registers", route_id::get_registers, "msrs"},
  {"PUT", "/v1/vms/{vm}/vcpus/{vcpu}/events", route_id::set_vcpu_events},
  {"GET", "/v1/vms/{vm}/memory", route_id::read_memory, "gpa,len,encoding"},
  {"PUT", "/v1/vms/{vm}/memory", route_id::write_memory},
  {"GET", "/v1/vms/{vm}/page-access", route_id::get_page_access, "from,limit"},
  {"PUT", "/v1/vms/{vm}/page-access", route_id::set_page_access},
  {"GET", "/v1/vms/{vm}/breakpoints", route_id::list_breakpoints},
  {"POST", "/v1/vms/{vm}/breakpoints", route_id::add_breakpoint},
  {"GET", "/v1/vms/{vm}/breakpoints/{gpa}", route_id::get_breakpoint},
  {"DELETE", "/v1/vms/{vm}/breakpoints/{gpa}", route_id::remove_breakpoint},
  {"POST", "/v1/policies/reload", route_id::reload_policies},
  {"GET", "/v1/events", route_id::events, "vm,kind"},
  {"GET", "/metrics", route_id::metrics},
  {"GET", "/v1/version", route_id::version},
  {"GET", "/healthz", route_id::healthz},
  {"GET", "/ui", route_id::ui_page},
  {"GET", "/ui/{asset}", route_id::ui_asset},
};

std::vector<std::string_view> split(std::string_view path) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    size_t j = path.find('/', i);
    if (j == std::string_view::npos)
      j = path.size();
    out.push_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

// Matches one pattern; fills params on success.
bool match(std::string_view pattern, const std::vector<std::string_view>& segs,
           std::vector<std::pair<std::string, std::string>>& params) {
  auto pat = split(pattern);
  if (pat.size() != segs.size())
    return false;
  params.clear();
  for (size_t i = 0; i < pat.size(); ++i) {
    if (pat[i].size() > 2 && pat[i].front() == '{' && pat[i].back() == '}') {
      if (segs[i].empty())
        return false;
      params.emplace_back(std::string(pat[i].substr(1, pat[i].size() - 2)),
                          std::string(segs[i]));
    } else if (pat[i] != segs[i]) {
      return false;
    }
  }
  return true;
}

} // namespace

std::span<const route_entry> routes() { return table; }

std::string_view name(route_id r) {
  for (auto& e : table)
    if (e.id == r)
      return e.pattern;
  return "?";
}

const route_entry* entry(route_id r) {
  for (auto& e : table)
    if (e.id == r)
      return &e;
  return nullptr;
}

std::optional<std::string> unknown_query_parameter(route_id r, std::string_view query) {
  auto* e = entry(r);
  std::string_view known = e ? e->query : std::string_view{};
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (item.empty())
      continue; // "a=1&&b=2", a trailing '?'
    std::string key = percent_decode(item.substr(0, item.find('=')), true);
    bool ok = false;
    for (std::string_view k = known; !k.empty() && !ok;) {
      auto comma = k.find(',');
      ok = k.substr(0, comma) == key;
      k = comma == std::string_view::npos ? std::string_view{} : k.substr(comma + 1);
    }
    if (!ok)
      return key;
  }
  return std::nullopt;
}

std::string unknown_query_message(route_id r, std::string_view key) {
  auto* e = entry(r);
  std::string takes;
  for (char c : e ? e->query : std::string_view{})
    takes += c == ',' ? std::string(", ") : std::string(1, c);
  std::string out = "unknown query parameter '";
  out += excerpt(key);
  out += "' (";
  out += name(r);
  out += takes.empty() ? " takes none)" : " takes " + takes + ")";
  return out;
}

std::string_view route_match::param(std::string_view n) const {
  for (auto& [k, v] : params)
    if (k == n)
      return v;
  return {};
}

route_result route(std::string_view method, std::string_view path) {
  route_result res;
  // A trailing slash or doubled slashes would otherwise match: paths are exact.
  if (path.empty() || path.front() != '/' || (path.size() > 1 && path.back() == '/')
      || path.find("//") != std::string_view::npos) {
    res.status = 404;
    return res;
  }
  auto segs = split(path);
  std::vector<std::pair<std::string, std::string>> params;
  for (auto& e : table) {
    if (!match(e.pattern, segs, params))
      continue;
    if (e.method == method) {
      res.match = route_match{e.id, std::move(params)};
      return res;
    }
    if (!res.allow.empty())
      res.allow += ", ";
    res.allow += e.method;
  }
  res.status = res.allow.empty() ? 404 : 405;
  return res;
}

} // namespace kvmid::control
