// The control plane: the /v1 JSON API, GET /v1/events (SSE) and GET /metrics
// as a connection handler on kvmid's io_uring reactor.
//
//   auto opts = std::get<control::api_options>(control::parse_api_options(cfg.api));
//   control::core_backend be(core);
//   control::http_api api(be, control::api_access(full_token, read_token), opts,
//                         control::reactor_poster(reactor));
//   for (auto& l : opts.listen) reactor.add_listener(l, api.factory(l));
//   ...
//   reactor.stop();  // before api and be go away
//
// Everything a connection does runs on the ring thread; backend answers
// arrive on actor threads and come back through the poster, so neither a
// slow client nor a slow kernel holds the ring.
#pragma once

#include "actors/control_api.hpp"
#include "actors/event_bus.hpp"
#include "actors/metrics.hpp"
#include "server/control/auth.hpp"
#include "server/control/errors.hpp"
#include "server/control/http.hpp"
#include "server/control/roles.hpp"
#include "server/control/router.hpp"
#include "server/control/tls_context.hpp"
#include "server/reactor.hpp"

#include <nlohmann/json_fwd.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kvmid {
class core;
}

namespace kvmid::control {

// What the control plane needs from the core. core_backend forwards to a
// running kvmid::core; tests substitute fakes. Callbacks run exactly once,
// on any thread.
class backend {
public:
  virtual ~backend() = default;
  virtual void list_vms(api_callback<std::vector<vm_info>> cb) = 0;
  virtual void get_vm(std::string vm, api_callback<vm_info> cb) = 0;
  virtual void list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb) = 0;
  virtual void pause_vm(std::string vm, api_callback<done> cb) = 0;
  virtual void resume_vm(std::string vm, api_callback<done> cb) = 0;
  virtual void get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                             api_callback<registers_info> cb) = 0;
  virtual void read_physical(std::string vm, uint64_t gpa, uint64_t size,
                             api_callback<std::vector<uint8_t>> cb) = 0;
  virtual void write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                              api_callback<done> cb) = 0;
  virtual void get_page_access(std::string vm,
                               api_callback<std::vector<page_access_info>> cb) = 0;
  virtual void set_page_access(std::string vm, uint64_t gpa, uint8_t access,
                               api_callback<done> cb) = 0;
  virtual void list_breakpoints(std::string vm,
                                api_callback<std::vector<breakpoint_info>> cb) = 0;
  virtual void add_breakpoint(std::string vm, uint64_t gpa,
                              api_callback<breakpoint_info> cb) = 0;
  virtual void remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb) = 0;
  virtual void set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask,
                               api_callback<done> cb) = 0;
  virtual void unhook(std::string vm, api_callback<done> cb) = 0;
  virtual void admit(std::string vm, api_callback<done> cb) = 0;
  virtual void forget(std::string vm, api_callback<done> cb) = 0;
  virtual void reload_policies(api_callback<done> cb) = 0;

  // from: resume after this cursor (Last-Event-ID), replaying the bus's ring.
  virtual std::shared_ptr<subscription> subscribe(bus_filter f, size_t capacity,
                                                  std::optional<bus_cursor> from) = 0;
  virtual std::string bus_boot() = 0; // the prefix of this run's stream ids
  virtual void publish(bus_record r) = 0; // audit records and override alerts
  virtual metrics_registry& metrics() = 0;
};

class core_backend final : public backend {
public:
  explicit core_backend(core& c) : core_(c) {}
  void list_vms(api_callback<std::vector<vm_info>> cb) override;
  void get_vm(std::string vm, api_callback<vm_info> cb) override;
  void list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb) override;
  void pause_vm(std::string vm, api_callback<done> cb) override;
  void resume_vm(std::string vm, api_callback<done> cb) override;
  void get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                     api_callback<registers_info> cb) override;
  void read_physical(std::string vm, uint64_t gpa, uint64_t size,
                     api_callback<std::vector<uint8_t>> cb) override;
  void write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                      api_callback<done> cb) override;
  void get_page_access(std::string vm, api_callback<std::vector<page_access_info>> cb) override;
  void set_page_access(std::string vm, uint64_t gpa, uint8_t access,
                       api_callback<done> cb) override;
  void list_breakpoints(std::string vm, api_callback<std::vector<breakpoint_info>> cb) override;
  void add_breakpoint(std::string vm, uint64_t gpa, api_callback<breakpoint_info> cb) override;
  void remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb) override;
  void set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask,
                       api_callback<done> cb) override;
  void unhook(std::string vm, api_callback<done> cb) override;
  void admit(std::string vm, api_callback<done> cb) override;
  void forget(std::string vm, api_callback<done> cb) override;
  void reload_policies(api_callback<done> cb) override;
  std::shared_ptr<subscription> subscribe(bus_filter f, size_t capacity,
                                          std::optional<bus_cursor> from) override;
  std::string bus_boot() override;
  void publish(bus_record r) override;
  metrics_registry& metrics() override;

private:
  core& core_;
};

// The config's "api" section.
struct api_options {
  std::vector<net::listen_spec> listen; // default: unix socket only
  std::string token_file;               // required
  std::string read_token_file;          // optional: the read-only role's token
  limits http;
  size_t max_connections = 256;
  size_t stream_queue = 1024;   // bus records buffered per SSE subscriber
  size_t stream_backlog = 64;   // socket sends queued before a stream drops records
  std::chrono::milliseconds heartbeat{15'000}; // SSE comment line while quiet
  std::optional<tls_options> tls; // set: every TCP listener speaks HTTPS only
};

// Parses and validates {"listen": [...], "token_file": ..., ...} (see
// config/kvmid.json). TCP listeners must be loopback unless
// "allow_remote": true, and a non-loopback one needs "tls" too (remote
// access is HTTPS only). Returns the options or a message naming the field.
// The files are read by http_api.
std::variant<api_options, std::string> parse_api_options(const nlohmann::json& j);

// Runs fn on the ring thread for connection c (dropped if c is gone).
using poster =
  std::function<void(net::conn_id, std::function<void(net::conn_ctx&, net::connection_handler&)>)>;
poster reactor_poster(net::reactor& r);

// kvmid::api_error -> HTTP: 404 not_found, 409 conflict, 422 unsafe_region
// and invalid, 503 kernel timeout, 502 kernel error, 500 internal.
http_error to_http(const api_error& e);

// Who sent a request, for the audit trail and override alerts.
struct api_caller {
  role who = role::full;
  std::string peer;
};

class http_api {
public:
  // Throws std::runtime_error naming the field when api.tls's files are
  // unusable.
  http_api(backend& be, api_access access, api_options opts, poster post);
  ~http_api();
  http_api(const http_api&) = delete;
  http_api& operator=(const http_api&) = delete;

  // One connection handler per accepted connection on `on`: HTTPS when
  // api.tls is set and `on` is TCP, plain HTTP otherwise.
  net::handler_factory factory(const net::listen_spec& on);
  // Plain HTTP handlers (tests). Throws std::logic_error when api.tls is
  // set, so no listener can end up plain by mistake.
  net::handler_factory factory();

  // An authorised, routed request other than /v1/events; `reply` runs once,
  // on any thread. Mutating routes are audited. Exposed for tests.
  void dispatch(const route_match& m, const request& r, std::function<void(response)> reply,
                api_caller from = {});

  // A request that came by another transport (NATS request-reply), from a
  // caller whose role that transport decided: routed, refused (404, 405,
  // 403) and answered exactly as an HTTP connection would. The event stream
  // is not served this way (400). `reply` runs once, on any thread.
  void serve(const request& r, api_caller from, std::function<void(response)> reply);

  // Prometheus text of the backend's registry plus the API's own series.
  std::string render_metrics();

  struct shared; // state every connection of this API shares

private:
  std::shared_ptr<shared> st_;
  std::shared_ptr<const tls_context> tls_; // api.tls loaded, or null
  counter* tls_failures_ = nullptr;
};

} // namespace kvmid::control
