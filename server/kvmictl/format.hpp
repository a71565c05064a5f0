// kvmictl's output: readable tables of the API's JSON, a hexdump for guest
// memory, and the SSE parser behind `watch`. Pure, so it is unit tested.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvmictl {

std::string format_vms(const nlohmann::json& body);      // GET /v1/vms
std::string format_vm(const nlohmann::json& vm);         // GET /v1/vms/{vm}
std::string format_vcpus(const nlohmann::json& body);    // GET .../vcpus
std::string format_regs(const nlohmann::json& body);     // GET .../registers
std::string format_version(const nlohmann::json& body);  // GET /v1/version
// One line, led by the record's time in ISO 8601 (UTC) when it has one.
std::string format_event(std::string_view event, const nlohmann::json& data);
std::string iso8601(int64_t time_ns); // "2026-11-29T10:15:02.123Z"
std::string format_page_ranges(const nlohmann::json& body); // GET .../page-access
std::string format_breakpoints(const nlohmann::json& body); // GET .../breakpoints
std::string format_breakpoint(const nlohmann::json& bp);    // one
std::string format_enabled(const nlohmann::json& body);     // PUT .../events, a vCPU
// 16 bytes a line: address, hex, printable ASCII.
std::string hexdump(uint64_t gpa, const std::vector<uint8_t>& bytes);
// The first line of an error body, "code: message", or the raw text.
std::string format_error(long status, std::string_view body);

// Incremental text/event-stream parser: feed() bytes as they arrive; each
// complete event (blank-line terminated) calls on_event(event, data).
class sse_parser {
public:
  using handler = std::function<void(const std::string& event, const std::string& data)>;
  explicit sse_parser(handler h) : on_event_(std::move(h)) {}
  void feed(std::string_view bytes);
  // The last `id:` the stream gave (for Last-Event-ID on a reconnect).
  const std::string& last_id() const { return last_id_; }

private:
  void line(std::string_view l);
  handler on_event_;
  std::string buf_, event_, data_, last_id_;
  bool has_data_ = false;
};

} // namespace kvmictl
