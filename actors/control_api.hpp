// Operator requests to the registry, VM and vCPU actors, without CAF in the
// caller; the control plane builds on them, so change them additively. Every call returns at once; the callback runs later on an actor
// thread (never on the caller's stack, never on the ring thread), exactly
// once, with a value or a typed api_error. Callbacks must not block: hand the
// answer back with reactor::post / post_send.
//
// VMs are named by uuid ("8-4-4-4-12" lowercase) or by VM name. vCPU-scoped
// commands (registers, page access, event enables) need that vCPU stopped in
// an event (paused); otherwise api_errc::conflict.
#pragma once

#include "actors/policy.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <linux/kvm.h>

namespace kvmid {

enum class api_errc : uint8_t {
  not_found,     // 404: no such VM / vCPU / breakpoint
  conflict,      // 409: vCPU not paused, VM disconnected, already exists
  unsafe_region, // 422: gpa in mmio / nvlink2-atsd / offline GPU RAM, or outside the map
  invalid,       // 400: bad argument (range, access bits, event name ...)
  timeout,       // 504: the kernel did not answer in time
  kernel,        // 502: the kernel answered with -KVM_E*
  internal,      // 500
};
std::string_view name(api_errc e);
int http_status(api_errc e);

struct api_error {
  api_errc code = api_errc::internal;
  std::string message;
};

template <class T>
class api_result {
public:
  api_result(T v) : v_(std::move(v)) {}
  api_result(api_error e) : v_(std::move(e)) {}
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  const api_error& error() const { return std::get<1>(v_); }

private:
  std::variant<T, api_error> v_;
};

struct done {}; // success without data

template <class T>
using api_callback = std::function<void(api_result<T>)>;

enum class vcpu_state : uint8_t {
  running,  // in the guest
  in_event, // stopped in an event kvmid is deciding / has not answered yet
  paused,   // held in a PAUSE_VCPU event by an operator pause
  disconnected, // the VM's session is gone: kvmid does not know
};
std::string_view name(vcpu_state s);

struct region_info {
  uint64_t gpa = 0, size = 0;
  std::string type; // "ram", "mmio", "nvlink2-gpu-ram", "nvlink2-atsd"
  bool online = false;
  uint64_t tgt = 0;
};

struct vcpu_info {
  uint16_t index = 0;
  vcpu_state state = vcpu_state::running;
  std::string event;        // kind of the event it waits in, "" when running
  uint32_t enabled_events = 0; // CONTROL_EVENTS mask kvmid set
  uint64_t events = 0;      // events handled
  uint64_t alerts = 0;
};

// How often one rule of the VM's policy fired, over the VM's record.
struct rule_hit_info {
  std::string kind; // the alert family ("page-protection", ...) or "breakpoint"
  std::string name;
  uint64_t hits = 0;
};

struct vm_info {
  std::string uuid, name;
  bool connected = false;
  std::string peer;
  uint64_t sessions = 0;    // connections so far (reconnects keep the history)
  int64_t connected_since = 0; // unix seconds of the current session's handshake
  int64_t start_time = 0;   // from the handshake
  std::string byte_order;   // "native" | "swapped"
  std::string protocol;     // "v5" | "v7": the session's KVMI dialect
  uint32_t vcpu_count = 0;
  bool paused = false;      // operator pause in force
  // The session's set-up (docs/lifecycle.md): "waiting" its turn (nothing
  // enabled yet), "running", or "done" (every vCPU configured, or given up).
  std::string setup;
  uint32_t commands_mask = 0, events_mask = 0; // GET_VERSION
  uint64_t events = 0, alerts = 0, protocol_errors = 0;
  std::string policy;       // name of the policy that applies
  std::shared_ptr<const vm_policy> policy_rules; // its rules (get_vm only; may be null)
  std::vector<rule_hit_info> rule_hits; // one per rule of policy_rules (get_vm only)
  std::vector<region_info> regions;
  std::vector<vcpu_info> vcpus; // filled by get_vm / list_vcpus, empty in list_vms
};

struct registers_info {
  uint32_t mode = 0;
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::vector<std::pair<uint32_t, uint64_t>> msrs; // index, value
};

struct breakpoint_info {
  uint64_t gpa = 0;
  uint8_t original = 0; // the byte INT3 replaced
  bool planted = false; // INT3 currently in guest memory
  uint64_t hits = 0;
};

struct page_access_info {
  uint64_t gpa = 0;   // page aligned
  uint8_t access = 7; // rwx bits kvmid has set (7 = unrestricted)
};

class core; // the running actor system, registry and bus (actors/core.hpp)

class control_api {
public:
  explicit control_api(core& c) : core_(c) {}

  void list_vms(api_callback<std::vector<vm_info>> cb);
  void get_vm(std::string vm, api_callback<vm_info> cb);
  void list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb);

  void pause_vm(std::string vm, api_callback<done> cb);  // done once every vCPU is held
  void resume_vm(std::string vm, api_callback<done> cb);

  void get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                     api_callback<registers_info> cb);

  // Reads/writes may span pages (split into page-bounded commands), at most
  // 64 KiB per call; every page must be safe RAM.
  void read_physical(std::string vm, uint64_t gpa, uint64_t size,
                     api_callback<std::vector<uint8_t>> cb);
  void write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                      api_callback<done> cb);

  // kvmid's page-access table (what kvmid restricted), and changing it.
  void get_page_access(std::string vm, api_callback<std::vector<page_access_info>> cb);
  void set_page_access(std::string vm, uint64_t gpa, uint8_t access, api_callback<done> cb);

  void list_breakpoints(std::string vm, api_callback<std::vector<breakpoint_info>> cb);
  void add_breakpoint(std::string vm, uint64_t gpa, api_callback<breakpoint_info> cb);
  void remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb);

  // Replaces the vCPU's CONTROL_EVENTS mask (bits of kvmi::event_id).
  void set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask, api_callback<done> cb);

  // Removes what kvmid planted and closes the VM's socket.
  // Unhooks and holds the VM off until admit(): its device manager
  // reconnecting does not hook it again.
  void unhook(std::string vm, api_callback<done> cb);
  void admit(std::string vm, api_callback<done> cb);
  // Drops a disconnected VM and its history (409 while it is connected or
  // kvmid's INT3s are still recorded in its guest).
  void forget(std::string vm, api_callback<done> cb);

  // Re-reads the policies (from the config file kvmid started with) and
  // applies them to every connected VM.
  void reload_policies(api_callback<done> cb);

private:
  core& core_;
};

} // namespace kvmid
