// The KVMI host end kvmi-qemu plays, in v5 or in the v7 dialect: the
// device manager's handshake (kvmi-sim's, kernel-patches/sim/dm_handshake),
// then the kernel's side of the session, with the guest behind QEMU's
// gdbstub instead of KVM:
//   a vCPU event        = the gdbstub stopped (all-stop: every vCPU stops);
//                         the guest runs on once no vCPU waits for a reply
//   PAUSE_VCPU          = ^C, one PAUSE_VCPU per vCPU
//   GET/SET_REGISTERS   = g / P on the vCPU's thread
//   READ/WRITE_PHYSICAL = m / M in QEMU's physical memory mode
//   INT3 kvmid plants   = a gdbstub breakpoint (Z0) at the kernel-text
//                         address of the gpa; reads show 0xCC, the guest's
//                         memory keeps its byte; a hit is a BREAKPOINT event
//   a page without w    = write watchpoints (Z2) over the page's kernel
//                         mappings; a hit (after the write) is a PF event
//   v7 SINGLESTEP       = `s` on the vCPU's thread instead of `c`
// The commands are served in v5's terms; v7_wire.cpp turns v7 frames into
// them and v5 replies and events into v7 ones.
// Single-threaded: one poll() loop over kvmid's socket and the gdbstub.
#pragma once

#include "kernel-patches/qemu/gdb_registers.hpp"
#include "kernel-patches/qemu/gdb_remote.hpp"
#include "kernel-patches/sim/dm_handshake.hpp"
#include "proto/codec.hpp"
#include "proto/handshake.hpp"
#include "proto/v7/codec.hpp"
#include "proto/x86_insn.hpp"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kvmi::qemu {

enum class dialect : uint8_t { v5, v7 };

struct host_options {
  std::string socket; // kvmid's KVMI UNIX socket
  dialect protocol = dialect::v5; // v7: QEMU's handshake (E820 layout), v7 messages
  std::vector<uint8_t> cookie;
  std::string name = "qemu-guest";
  hs::uuid uuid{};
  uint64_t ram_bytes = 256ull << 20;
  unsigned vcpus = 1;
  bool reconnect = true;
  // Tests: every Nth write watchpoint stop is ignored, as if the gdbstub
  // had lost it (0: none), so that the write lands unreported.
  unsigned drop_watch_stops = 0;
};

// Asked for from outside the loop (signal handlers).
struct host_requests {
  std::atomic<bool> stop{false};
  std::atomic<bool> unhook{false};
  std::atomic<bool> hook{false}; // connect again after an unhook
};

class kvmi_host {
public:
  kvmi_host(host_options o, gdb_remote& gdb, const register_layout& layout);
  ~kvmi_host();
  kvmi_host(const kvmi_host&) = delete;
  kvmi_host& operator=(const kvmi_host&) = delete;

  // Runs until asked to stop, the guest is gone or crashed by the
  // introspector; the process exit code.
  int run(host_requests& req);

  // The gdbstub breakpoints standing for kvmid's INT3s (gpa -> gva).
  size_t planted() const { return bps_.size(); }

private:
  struct vcpu {
    bool waiting = false;
    uint32_t ev_seq = 0;
    event_id ev{};
    uint32_t events = 0; // CONTROL_EVENTS
    uint32_t pauses = 0; // PAUSE_VCPU events owed
    bool create_pending = false;
    bool singlestep = false; // v7 VCPU_CONTROL_SINGLESTEP
    std::optional<kvm_regs> set_regs;
    std::chrono::steady_clock::time_point ev_sent;
    uint64_t pf_page = 0; // the protected page of the PF event waiting
    // The bytes of that page its write covered, as [pf_offset, pf_offset +
    // pf_size): from the instruction's operand, else the first change.
    uint16_t pf_offset = 0, pf_size = 0;
    // The PF's write was found in the page, not reported by a stop: the
    // vCPU is long past its instruction, so a SET_REGISTERS in reply (a
    // tool skipping "the" instruction) keeps RIP where it is.
    bool pf_unseen = false;
    uint64_t pf_rip = 0; // RIP when that PF was sent
    // A BREAKPOINT or PF stop, until the guest resumes (`c`; a v7 re-arm's
    // step in between included): the time an introspector costs the guest.
    std::optional<std::chrono::steady_clock::time_point> held_since;
    event_id held_by{};
    action held_reply{}; // its event's reply
  };
  // A page kvmid made non-writable: its bytes as the guest last had them
  // with kvmid's consent, and the watchpoints standing for the restriction.
  struct protected_page {
    uint8_t access = page_access_rwx;
    std::vector<uint8_t> bytes;
    std::vector<uint64_t> gvas;
  };
  struct breakpoint {
    uint64_t gva;
    uint8_t original;
  };

  // kvmid's socket and the session.
  void try_connect();
  void on_kvmid_bytes(std::span<const uint8_t> in);
  void end_session(const std::string& why);
  void send_frame(const std::vector<uint8_t>& bytes);
  void on_frame(const frame& f);
  void on_command(command_msg& m);
  void on_event_reply(uint32_t seq, uint32_t event, action act);
  void reply(msg_id id, uint32_t seq, reply_data d = std::monostate{});
  void reply_err(msg_id id, uint32_t seq, int32_t kvm_e);
  void send_reply(const reply_msg& r);
  void send_event(uint16_t vcpu, event_id kind, event_data data,
                  std::optional<uint64_t> rip = std::nullopt);
  void send_event_msg(const event_msg& m);

  // The v7 dialect (v7_wire.cpp).
  void start_handshake();
  void on_frame_v7(const frame& f);
  void on_command_v7(v7::command_msg& m);
  void reply_v7(v7::msg_id id, uint32_t seq, v7::reply_data d = std::monostate{});
  void reply_err_v7(v7::msg_id id, uint32_t seq, int32_t kvm_e);
  void encode_reply_v7(const reply_msg& r);
  void encode_event_v7(const event_msg& m);
  bool step(uint16_t vcpu);
  void send_due_events();
  void request_unhook();

  // The guest behind the gdbstub.
  bool ensure_stopped();
  void on_stop(const stop_reply& s);
  void maybe_resume();
  bool select_thread(uint16_t vcpu);
  std::optional<x86_state> read_state(uint16_t vcpu);
  bool write_regs(uint16_t vcpu, const kvm_regs& r);
  void step_over(uint16_t vcpu, uint64_t gva);
  void passed(uint16_t vcpu);
  std::optional<std::vector<uint8_t>> read_physical_raw(uint64_t gpa, uint64_t size);
  bool write_physical_raw(uint64_t gpa, std::span<const uint8_t> data);
  std::optional<uint64_t> text_gva(uint64_t gpa);
  int32_t write_physical(uint64_t gpa, std::vector<uint8_t> data);
  std::optional<uint64_t> mapped_gva(uint64_t page, uint64_t base);
  int32_t set_access(uint64_t page, uint8_t access);
  void unprotect_all();
  bool on_watch(uint16_t vcpu, uint64_t addr);
  struct writer {
    uint64_t rip;                       // the writing instruction
    std::optional<kvmi::x86_insn> insn; // nullopt: not found
  };
  writer find_writer(const x86_state& s);
  std::optional<std::vector<uint8_t>> finish_pf(uint16_t vcpu, action act);
  bool ask_unseen(uint16_t vcpu, std::vector<uint8_t> now);
  bool report_write(uint16_t vcpu, uint64_t page, protected_page& p, std::vector<uint8_t>& now,
                    uint16_t off, uint16_t size, uint64_t gva, std::optional<uint64_t> writer,
                    uint64_t rip, const std::string& how);
  void fatal(const std::string& why);

  host_options o_;
  gdb_remote& gdb_;
  const register_layout& layout_;
  std::vector<vcpu> vcpus_;
  std::map<uint64_t, breakpoint> bps_;    // gpa -> the gdbstub breakpoint
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> maps_; // verified (base, gpa page) -> gva
  std::map<uint64_t, protected_page> pages_;
  bool running_ = false;
  int fd_ = -1;
  std::unique_ptr<sim::detail::dm_handshake> dm_;
  std::unique_ptr<frame_splitter> splitter_;
  bool hooked_ = false, unhooked_ = false, unhook_sent_ = false;
  uint32_t vm_events_ = 0;
  uint32_t ev_seq_ = 0;
  uint64_t watch_stops_ = 0; // on our pages, for drop_watch_stops
  std::map<uint32_t, uint16_t> pending_; // event seq -> vCPU
  std::vector<uint8_t> scratch_;
  std::chrono::steady_clock::time_point next_connect_{};
  std::chrono::milliseconds backoff_{100};
  std::chrono::steady_clock::time_point unhook_deadline_{};
  // v7: CONTROL_CMD_RESPONSE's switch, whether the command being served is
  // answered, and the v7 id of a command served in v5's terms.
  bool cmd_replies_ = true, replying_ = true;
  v7::msg_id v7_id_{};
  std::optional<uint16_t> stepping_; // the vCPU an `s` was sent for
  // vCPU -> the gva of the breakpoint lifted while it steps past it; kept
  // across sessions (the step must finish before the breakpoint goes back).
  std::map<uint16_t, uint64_t> passing_;
  std::chrono::steady_clock::time_point stopped_at_{}; // the stop on_stop handles
  int exit_code_ = -1; // set: the loop ends
};

} // namespace kvmi::qemu
