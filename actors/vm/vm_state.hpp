// The VM actor's state and the functions its parts share. One VM actor
// per KVMI session (vm_actor.cpp, its behavior); its parts, by concern:
// commands.cpp (the pending-command table: replies matched by seq),
// setup.cpp (the bootstrap and each vCPU's configuration), guest_hooks.cpp
// (page restrictions and kvmid's INT3s), unhook.cpp, operator_requests.cpp.
#pragma once

#include "actors/core_impl.hpp"
#include "actors/event_fields.hpp"
#include "actors/log.hpp"
#include "actors/ring_unit.hpp"
#include "actors/vcpu_actor.hpp"

#include <cstdio>
#include <ctime>
#include <deque>
#include <set>
#include <unordered_map>
#include <utility>

namespace kvmid::vm_impl {

inline constexpr uint16_t max_vcpus = 4096; // bound on a vCPU index from the wire
inline constexpr uint64_t max_api_bytes = 64 * 1024;

struct pending_cmd {
  kvmi::reply_shape shape;
  std::function<void(cmd_result)> done;
  int64_t deadline = 0; // now_ns() after which it times out
};

struct vm_st {
  static inline const char* name = "kvmid.vm";
  core* c = nullptr;
  // The registry, held from the start: the core drops its own handle when
  // it stops, while a VM past the shutdown bound may still be finishing.
  caf::actor registry;
  session_params p;
  std::string uuid;
  kvmi::byte_order order = kvmi::byte_order::native;
  policy_ptr policy;
  vm_state st;
  uint32_t next_seq = 1;
  std::unordered_map<uint32_t, pending_cmd> pending;
  std::set<uint32_t> timed_out; // late replies to these are legal
  // One sweep timer per VM, not one timer message per command: thousands
  // of vCPUs configuring at once would each keep several in CAF's clock.
  bool sweep_armed = false;
  std::vector<caf::actor> vcpus;
  // Shared with the vCPU actors: identity, counters, per-vCPU stats.
  vm_shared_ptr sh = std::make_shared<vm_shared>();
  // The last snapshot published, handed to new vCPUs (null: make one).
  state_ptr snap;
  kvmi::get_version_reply version{0, kvmi::known_commands | kvmi::flag(kvmi::msg_id::get_version),
                                  kvmi::known_events, 0};
  uint64_t tsc_speed = 0;
  bool setup_done = false, setup_running = false;
  std::vector<caf::response_promise> setup_waiters;
  // Its place at the setup gate (setup_gate.hpp): waited for, then held
  // from GET_VERSION until PAUSE_ALL_VCPUS was answered and every vCPU
  // configured in its first event, then given back.
  enum class gate_phase : uint8_t { waiting, holding, left };
  gate_phase gate = gate_phase::waiting;
  setup_gate::place_ptr place;
  bool paused_all = false;            // the set-up's PAUSE_ALL_VCPUS was answered
  std::vector<bool> configured_once;  // by vCPU, while the set-up runs
  std::set<uint16_t> held;
  std::vector<caf::response_promise> pause_waiters;
  // The CRs and MSRs each vCPU intercepts, so that a reloaded policy which
  // drops one also turns its interception off. By vCPU index; the vCPUs
  // of a VM nearly always share one set, so equal sets are one allocation
  // (a per-vCPU copy was about 150 bytes of every idle vCPU).
  struct intercepts {
    std::vector<uint32_t> crs, msrs;
    bool operator==(const intercepts&) const = default;
  };
  std::vector<std::shared_ptr<const intercepts>> intercepting;
  std::shared_ptr<const intercepts> last_intercepts;
  vm_history hist;
  uint64_t base_events = 0, base_alerts = 0, base_protocol_errors = 0;
  rule_counts base_rule_hits; // the registry's totals before this session
  uint64_t protocol_errors = 0; // this session's
  int64_t connected_since = 0;  // unix seconds of this session's handshake
  // The registry's history arrived (the VM-wide set-up waits for it, so it
  // knows which INT3s in the guest are kvmid's own).
  bool hist_ready = false, saw_history = false;
  uint16_t setup_vcpu = 0;
  // gpa -> original byte of INT3s kvmid planted in an earlier session (or
  // before a restart) and never restored: adopted when still 0xCC.
  std::map<uint64_t, uint8_t> inherited;
  // vCPU -> gpa of the breakpoint it is single-stepped past: its byte is
  // the original until the last such vCPU's SINGLESTEP puts the INT3 back.
  std::map<uint16_t, uint64_t> stepping;
  // UNHOOK (the kernel's event, an operator, shutdown), one at a time: how
  // far it got, who waits for the socket to close, what it could not undo.
  enum class unhook_phase : uint8_t { none, asked, stopping, undoing, releasing, closing };
  unhook_phase unhook = unhook_phase::none;
  int64_t unhook_deadline = 0; // now_ns(); 0: none
  std::vector<std::function<void(std::vector<std::string>)>> unhook_waiters;
  std::vector<std::string> unhook_problems;
  std::set<uint16_t> released; // vCPUs with no event waiting since the release
  // PAUSE_VCPU events each vCPU owes: the kernel sends one per vCPU for
  // every PAUSE_ALL_VCPUS, also after the vCPU was answered in another.
  std::vector<uint32_t> pauses_asked;
  bool closed = false, closing = false;
  std::vector<uint8_t> buf;
};

using vm_actor = caf::stateful_actor<vm_st, ring_actor>; // runs on the ring (ring_unit.hpp)
using done_fn = std::function<void()>;
using unhook_phase = vm_st::unhook_phase;
using gate_phase = vm_st::gate_phase;

// vm_state.cpp
vcpu_stats* stats_of(vm_st& s, size_t i);
api_response fail(api_errc c, std::string msg);
api_response okv(api_value v);
api_errc errc_of(const cmd_result& r);
std::string what(const cmd_result& r);
void log(vm_actor* self, const char* fmt, const std::string& a);
void publish(vm_actor* self, bus_kind k, std::string name, std::string msg);
void protocol_error(vm_actor* self, protocol_error_reason reason, const std::string& detail);

// commands.cpp
void send_pause_all(vm_actor* self, std::function<void(cmd_result)> done);
bool pauses_settled(vm_st& s);
void send_cmd(vm_actor* self, kvmi::command cmd, std::function<void(cmd_result)> done);
void sweep_commands(vm_actor* self);
void chain(std::shared_ptr<std::deque<std::function<void(done_fn)>>> q, done_fn last);
void publish_snapshot(vm_actor* self);
uint16_t any_stopped_vcpu(vm_actor* self, bool& found);
void on_reply_frame(vm_actor* self, raw_frame& rf);

// setup.cpp
void enter_setup_gate(vm_actor* self); // the set-up starts now, or once let in
void on_setup_place(vm_actor* self, setup_gate::place_ptr place);
void leave_gate(vm_actor* self);
void check_set_up(vm_actor* self);
void ensure_vcpu(vm_actor* self, uint16_t i);
std::vector<kvmi::command> vcpu_commands(vm_actor* self, uint16_t vcpu);
void after_setup(vm_actor* self, uint16_t vcpu, caf::response_promise rp);
void history_ready(vm_actor* self);

// guest_hooks.cpp
void set_access(vm_actor* self, uint16_t vcpu, std::vector<kvmi::page_access_entry> entries,
                std::function<void(bool, std::string)> done);
void drop_record(vm_actor* self, uint64_t gpa);
void plant_breakpoint(vm_actor* self, uint64_t gpa, std::string name,
                      std::function<void(bool, std::string)> done,
                      std::optional<uint8_t> recorded = std::nullopt);
void adopt_breakpoint(vm_actor* self, uint64_t gpa, uint8_t original, done_fn done);
bool stepped(const vm_st& s, uint64_t gpa);
void restore_breakpoint(vm_actor* self, uint64_t gpa, std::function<void(bool)> done,
                        bool keep_record = false);

// unhook.cpp
void request_unhook(vm_actor* self, int64_t deadline,
                    std::function<void(std::vector<std::string>)> done);
void start_unhook(vm_actor* self);
void undo_hooks(vm_actor* self);
void check_released(vm_actor* self);
void on_unhook_wait(vm_actor* self, uint8_t phase);
void finish_unhook(vm_actor* self);

// operator_requests.cpp
void check_paused(vm_actor* self);
vm_info make_info(vm_actor* self, bool with_vcpus);
void handle_api(vm_actor* self, api_request& req, caf::response_promise rp);

} // namespace kvmid::vm_impl
