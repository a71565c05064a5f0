#include "server/kvmictl/format.hpp"

#include "actors/bounded_json.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>

namespace kvmictl {

using nlohmann::json;

namespace {

std::string str(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key))
    return "-";
  auto& v = j[key];
  if (v.is_string())
    return v.get<std::string>().empty() ? "-" : v.get<std::string>();
  if (v.is_boolean())
    return v.get<bool>() ? "yes" : "no";
  if (v.is_null())
    return "-";
  return v.dump();
}

// Column-aligned table: the header row then the rows, two spaces apart.
std::string table(const std::vector<std::string>& head,
                  const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(head.size());
  for (size_t i = 0; i < head.size(); ++i)
    w[i] = head[i].size();
  for (auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i)
      w[i] = std::max(w[i], r[i].size());
  std::string out;
  auto put = [&](const std::vector<std::string>& r) {
    std::string line;
    for (size_t i = 0; i < w.size(); ++i) {
      std::string cell = i < r.size() ? r[i] : "";
      line += cell;
      if (i + 1 < w.size())
        line += std::string(w[i] - cell.size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out += line + "\n";
  };
  put(head);
  for (auto& r : rows)
    put(r);
  return out;
}

std::string counter(const json& vm, const char* key) {
  if (vm.contains("counters") && vm["counters"].contains(key))
    return vm["counters"][key].dump();
  return "-";
}

// connected_since (unix seconds) in ISO 8601, "-" when unknown.
std::string since(const json& v) {
  if (!v.contains("connected_since") || !v["connected_since"].is_number_integer()
      || v["connected_since"].get<int64_t>() <= 0)
    return "-";
  auto s = iso8601(v["connected_since"].get<int64_t>() * 1000000000);
  return s.substr(0, 19) + "Z"; // whole seconds
}

std::string list(const json& a) {
  if (!a.is_array() || a.empty())
    return "-";
  std::string s;
  for (auto& e : a) {
    if (!s.empty())
      s += ",";
    s += e.is_string() ? e.get<std::string>() : e.dump();
  }
  return s;
}

} // namespace

std::string format_vms(const json& body) {
  std::vector<std::vector<std::string>> rows;
  if (body.contains("vms"))
    for (auto& v : body["vms"])
      rows.push_back({str(v, "uuid"), str(v, "name"), str(v, "vcpus"), str(v, "state"),
                      since(v), counter(v, "events"), counter(v, "alerts"),
                      counter(v, "protocol_errors")});
  return table({"UUID", "NAME", "VCPUS", "STATE", "CONNECTED", "EVENTS", "ALERTS", "PROTO_ERRS"},
               rows);
}

std::string format_vcpus(const json& body) {
  std::vector<std::vector<std::string>> rows;
  const json& vs = body.contains("vcpus") && body["vcpus"].is_array() ? body["vcpus"]
                   : body.contains("vcpu_list")                       ? body["vcpu_list"]
                                                                      : json::array();
  for (auto& v : vs)
    rows.push_back({str(v, "index"), str(v, "state"), str(v, "event"),
                    list(v.value("enabled_events", json::array())), counter(v, "events"),
                    counter(v, "alerts")});
  return table({"VCPU", "STATE", "EVENT", "ENABLED", "EVENTS", "ALERTS"}, rows);
}

std::string format_vm(const json& vm) {
  std::string out;
  if (vm.contains("connected_since"))
    out += "connected_since: " + since(vm) + "\n";
  for (auto* k : {"uuid", "name", "state", "connected", "peer", "sessions", "start_time",
                  "byte_order", "vcpus", "paused", "setup", "policy", "commands_mask", "events_mask"})
    if (vm.contains(k)) {
      std::string key = k;
      out += key + ":" + std::string(key.size() < 14 ? 14 - key.size() : 1, ' ') + str(vm, k)
             + "\n";
    }
  out += "counters:       events=" + counter(vm, "events") + " alerts=" + counter(vm, "alerts")
         + " protocol_errors=" + counter(vm, "protocol_errors") + "\n";
  if (vm.contains("memory_map")) {
    out += "\nmemory map:\n";
    std::vector<std::vector<std::string>> rows;
    for (auto& r : vm["memory_map"])
      rows.push_back({str(r, "gpa"), str(r, "size"), str(r, "type"), str(r, "online")});
    out += table({"GPA", "SIZE", "TYPE", "ONLINE"}, rows);
  }
  if (vm.contains("vcpu_list")) {
    out += "\n";
    out += format_vcpus(vm);
  }
  return out;
}

std::string format_regs(const json& body) {
  std::string out;
  if (body.contains("vcpu"))
    out += "vcpu " + str(body, "vcpu") + "  mode " + str(body, "mode") + "\n";
  static const char* order[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15",
                                "rip", "rflags"};
  if (body.contains("regs")) {
    int n = 0;
    for (auto* r : order) {
      if (!body["regs"].contains(r))
        continue;
      char cell[48];
      std::snprintf(cell, sizeof cell, "%-6s %-18s", r, str(body["regs"], r).c_str());
      out += cell;
      out += (++n % 4 == 0) ? "\n" : "  ";
    }
    if (n % 4)
      out += "\n";
  }
  if (body.contains("sregs")) {
    auto& s = body["sregs"];
    out += "cr0 " + str(s, "cr0") + "  cr2 " + str(s, "cr2") + "  cr3 " + str(s, "cr3")
           + "  cr4 " + str(s, "cr4") + "  efer " + str(s, "efer") + "\n";
    if (s.contains("cs"))
      out += "cs " + str(s["cs"], "selector") + " base " + str(s["cs"], "base") + " l "
             + str(s["cs"], "l") + "\n";
  }
  if (body.contains("msrs"))
    for (auto& m : body["msrs"])
      out += "msr " + str(m, "index") + " = " + str(m, "value") + "\n";
  return out;
}

std::string iso8601(int64_t time_ns) {
  time_t secs = time_t(time_ns / 1000000000);
  struct tm t {};
  gmtime_r(&secs, &t);
  char b[96]; // as wide as GCC assumes each int can be
  std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                int(time_ns / 1000000 % 1000));
  return b;
}

std::string format_event(std::string_view event, const json& d) {
  std::string out;
  if (d.is_object() && d.contains("time_ns") && d["time_ns"].is_number_integer())
    out = iso8601(d["time_ns"].get<int64_t>()) + " ";
  out += event;
  if (!d.is_object())
    return out + " " + d.dump();
  if (d.contains("dropped"))
    return out + " " + d["dropped"].dump() + " records lost";
  out += " vm=" + (d.contains("vm_name") && d["vm_name"].is_string()
                       && !d["vm_name"].get<std::string>().empty()
                     ? d["vm_name"].get<std::string>()
                     : str(d, "vm"));
  if (d.contains("vcpu"))
    out += " vcpu=" + str(d, "vcpu");
  if (d.contains("fields") && d["fields"].is_object())
    for (auto& [k, v] : d["fields"].items())
      out += " " + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  std::string msg = str(d, "message");
  if (msg != "-")
    out += " : " + msg;
  return out;
}

std::string format_page_ranges(const json& body) {
  std::vector<std::vector<std::string>> rows;
  if (body.contains("ranges"))
    for (auto& r : body["ranges"])
      rows.push_back({str(r, "gpa"), str(r, "len"), str(r, "pages"), str(r, "access")});
  return table({"GPA", "LEN", "PAGES", "ACCESS"}, rows);
}

std::string format_breakpoints(const json& body) {
  std::vector<std::vector<std::string>> rows;
  if (body.contains("breakpoints"))
    for (auto& b : body["breakpoints"])
      rows.push_back({str(b, "gpa"), str(b, "original"), str(b, "planted"), str(b, "hits")});
  return table({"GPA", "ORIGINAL", "PLANTED", "HITS"}, rows);
}

std::string format_breakpoint(const json& b) {
  return "breakpoint " + str(b, "gpa") + " original " + str(b, "original") + " planted "
         + str(b, "planted") + " hits " + str(b, "hits") + "\n";
}

std::string format_enabled(const json& body) {
  return "vcpu " + str(body, "vcpu") + " events "
         + list(body.value("enabled_events", json::array())) + "\n";
}

std::string hexdump(uint64_t gpa, const std::vector<uint8_t>& bytes) {
  std::string out;
  char buf[32];
  for (size_t off = 0; off < bytes.size(); off += 16) {
    std::snprintf(buf, sizeof buf, "%016llx  ", static_cast<unsigned long long>(gpa + off));
    out += buf;
    std::string ascii;
    for (size_t i = 0; i < 16; ++i) {
      if (off + i < bytes.size()) {
        uint8_t b = bytes[off + i];
        std::snprintf(buf, sizeof buf, "%02x ", b);
        out += buf;
        ascii += (b >= 0x20 && b < 0x7f) ? static_cast<char>(b) : '.';
      } else {
        out += "   ";
      }
      if (i == 7)
        out += ' ';
    }
    out += " |" + ascii + "|\n";
  }
  return out;
}

std::string format_error(long status, std::string_view body) {
  std::string err;
  json j = kvmid::parse_bounded_json(body, err);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_object())
    return "HTTP " + std::to_string(status) + " " + str(j["error"], "code") + ": "
           + str(j["error"], "message");
  return "HTTP " + std::to_string(status) + ": " + std::string(body.substr(0, 200));
}

void sse_parser::feed(std::string_view bytes) {
  buf_.append(bytes);
  size_t start = 0;
  for (;;) {
    size_t nl = buf_.find('\n', start);
    if (nl == std::string::npos)
      break;
    std::string_view l(buf_.data() + start, nl - start);
    if (!l.empty() && l.back() == '\r')
      l.remove_suffix(1);
    line(l);
    start = nl + 1;
  }
  buf_.erase(0, start);
}

void sse_parser::line(std::string_view l) {
  if (l.empty()) { // dispatch
    if (has_data_)
      on_event_(event_.empty() ? "message" : event_, data_);
    event_.clear();
    data_.clear();
    has_data_ = false;
    return;
  }
  if (l.front() == ':')
    return; // comment (heartbeat)
  auto colon = l.find(':');
  std::string_view field = l.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? std::string_view{} : l.substr(colon + 1);
  if (!value.empty() && value.front() == ' ')
    value.remove_prefix(1);
  if (field == "event") {
    event_ = value;
  } else if (field == "id") {
    last_id_ = value;
  } else if (field == "data") {
    if (has_data_)
      data_ += '\n';
    data_ += value;
    has_data_ = true;
  }
}

// "server: kvmid 0.1 (Release), API v1, KVMI 1, dialects kvmi, qemu-v5"
std::string format_version(const nlohmann::json& j) {
  auto str = [&](const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string("?");
  };
  std::string out = "server: kvmid " + str("version") + " (" + str("build_type") + "), API "
                    + str("api");
  if (j.contains("protocol") && j["protocol"].is_object()) {
    auto& p = j["protocol"];
    if (p.contains("kvmi_version"))
      out += ", KVMI " + p["kvmi_version"].dump();
    if (p.contains("dialects") && p["dialects"].is_array()) {
      out += ", dialects";
      std::string sep = " ";
      for (auto& d : p["dialects"]) {
        out += sep;
        out += d.is_string() ? d.get<std::string>() : d.dump();
        sep = ", ";
      }
    }
  }
  return out + "\n";
}

} // namespace kvmictl
