// Policies and the decisions they make, as plain functions over (event, VM
// policy, VM state): no CAF, no I/O, unit-tested on their own. The vCPU
// actor calls decide() for every event and carries out the result.
#pragma once

#include "proto/codec.hpp"
#include "proto/handshake.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvmid {

// What to do when a protected page is accessed against its rule.
enum class pf_action : uint8_t {
  allow_once,          // CONTINUE: the kernel emulates this access, the page stays protected
  allow_and_unprotect, // SET_PAGE_ACCESS rwx, then RETRY
  crash,               // CRASH the VM
  deny,                // RIP past the instruction (SET_REGISTERS), then RETRY: the write never lands
};
std::string_view name(pf_action a);
std::optional<pf_action> parse_pf_action(std::string_view s);

struct page_rule {
  std::string name;       // alert label, e.g. "kernel-text"
  uint64_t gpa = 0;       // page aligned
  uint64_t size = 0;      // multiple of 4096
  uint8_t access = kvmi::page_access_r | kvmi::page_access_x; // what stays allowed
  pf_action on_violation = pf_action::allow_once;
  // deny only: the bytes denied, inside [gpa, gpa+size); a write elsewhere
  // on the pages is let through (CONTINUE, no alert). Size 0: all of it.
  uint64_t deny_gpa = 0, deny_size = 0;
};

struct msr_rule {
  std::string name; // e.g. "lstar"
  uint32_t msr = 0;
};

struct cr_pin {
  std::string name; // "cr0.wp", "cr4.smep", "cr4.smap"
  uint32_t cr = 0;  // 0 or 4 (3 has no pinnable bits)
  uint64_t bits = 0;
};
// The pins kvmid knows by name.
std::optional<cr_pin> parse_cr_pin(std::string_view s);

struct breakpoint_rule {
  std::string name;
  uint64_t gpa = 0;
};

struct vm_policy {
  std::string name = "default";
  std::vector<std::string> match; // globs over uuid or VM name ("*" = all)
  std::vector<page_rule> pages;
  std::vector<msr_rule> msrs;
  std::vector<cr_pin> crs;
  std::vector<breakpoint_rule> breakpoints;
  bool hypercalls = true; // enable the HYPERCALL event (guest agent reports)
  // CONTROL_EVENTS mask kvmid asks for on every vCPU (filtered by the
  // GET_VERSION allow mask); derived from the rules plus PAUSE_VCPU.
  uint32_t vcpu_events() const;
};

struct policy_set {
  std::vector<vm_policy> policies; // first match wins
  vm_policy fallback;              // when none matches (observe only)
  const vm_policy& select(std::string_view uuid, std::string_view name) const;
};

bool glob_match(std::string_view pattern, std::string_view s); // '*' and '?'

// --- the VM-wide state the decisions read ----------------------------------

struct breakpoint_state {
  std::string name;
  uint8_t original = 0;
  bool planted = false;
  uint64_t hits = 0;
  // Hit in this session and left out: the session's dialect cannot plant
  // it again behind its instruction (no single-stepping). The next session
  // plants it again.
  bool spent = false;
};

struct protected_page {
  uint8_t access = kvmi::page_access_rwx; // what kvmid set
  int rule = -1;                          // index into vm_policy::pages, -1: operator
  pf_action on_violation = pf_action::allow_once;
  std::string rule_name;
  uint64_t deny_gpa = 0, deny_size = 0; // from the rule
};

// The VM actor owns it; vCPU actors read immutable snapshots of it.
struct vm_state {
  std::map<uint64_t, breakpoint_state> breakpoints; // by gpa
  std::map<uint64_t, protected_page> pages;         // by page gpa
  bool paused = false;                              // operator pause in force
};

// --- decisions ----------------------------------------------------------

enum class follow_up : uint8_t {
  none,
  unprotect_page,     // SET_PAGE_ACCESS rwx for `gpa`, then send the reply
  restore_breakpoint, // WRITE_PHYSICAL the original byte at `gpa` (and single-step this
                      // vCPU past it where the dialect can), then send the reply
  rearm_breakpoint,   // the single-stepped instruction ran: the INT3 goes back, then the reply
  hold,               // do not reply: the VM is paused; reply CONTINUE on resume
  skip_instruction,   // SET_REGISTERS with RIP past the faulting instruction, then the reply
};

struct decision {
  kvmi::action act = kvmi::action::continue_;
  uint64_t new_val = 0;         // CR/MSR replies
  bool has_new_val = false;
  follow_up then = follow_up::none;
  uint64_t gpa = 0;             // for the follow-up
  bool alert = false;
  std::string_view rule;        // alert rule family: "page-protection", "msr-protection", "cr-pin"
  std::string_view rule_name;   // the configured rule's name
  bool breakpoint_hit = false;  // a kvmid-owned breakpoint: count it
  bool report = false;          // hypercall report
};

// Reads the event's seq, kind and data only, never its registers (a vCPU
// being configured keeps just those: vcpu_actor.cpp waiting_event).
decision decide(const kvmi::event_msg& ev, const vm_policy& p, const vm_state& st);

// The event reply for a decision (size per event kind, as the kernel checks).
kvmi::event_reply_msg make_reply(const kvmi::event_msg& ev, const decision& d);
// The same from the event's seq and id only (what a vCPU keeps while it waits).
kvmi::event_reply_msg make_reply(uint32_t seq, uint32_t event, const decision& d);

// --- memory map safety ----------------------------------------------------

// Empty when [gpa, gpa+size) lies wholly in RAM (or online GPU RAM);
// otherwise why not. With no map at all (qemu-v5 mode) every range is
// refused except when allow_unmapped.
std::string unsafe_reason(const std::vector<kvmi::hs::region>& map, uint64_t gpa,
                          uint64_t size, bool allow_unmapped = false);

} // namespace kvmid
