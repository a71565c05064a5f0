// Typed KVMI messages, their check(), decode() and encode(), and the frame
// splitter. Pure: bytes in, bytes out; no I/O.
#pragma once

#include "proto/ids.hpp"
#include "proto/visit.hpp"
#include "proto/wire.hpp"

#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

namespace kvmi {

// --- errors ---------------------------------------------------------------

enum class errc : uint8_t {
  ok,
  truncated,           // fewer bytes than the header or size says
  oversize,            // size beyond the largest legal message
  unknown_id,          // no such message id
  bad_padding,         // a padding field is not zero
  bad_size,            // hdr.size does not match what the id/counts require
  bad_vcpu,            // vcpu index not allowed for this command
  bad_view,            // page-access view other than 0 (v5)
  bad_range,           // READ/WRITE_PHYSICAL not 1..4096 or crossing a page
  bad_cr,              // CONTROL_CR cr not in {0, 3, 4}
  bad_msr,             // CONTROL_MSR msr outside both ranges
  unknown_event_bits,  // event mask has bits this protocol does not know
  unknown_access_bits, // page access has bits other than rwx
  unknown_event,       // event id >= KVMI_NUM_EVENTS
  bad_action,          // action not allowed for the replied event
  bad_value,           // some other field out of its domain
};

std::string_view name(errc e);

struct error {
  errc code = errc::ok;
  std::string_view reason; // a literal: never allocates

  explicit operator bool() const { return code != errc::ok; }
  bool ok() const { return code == errc::ok; }
  friend bool operator==(const error& a, const error& b) { return a.code == b.code; }
};

inline constexpr error no_error{};

template <class T>
class result {
public:
  result(T x) : v_(std::move(x)) {}
  result(error e) : v_(e) {}
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  error err() const { return ok() ? no_error : std::get<1>(v_); }

private:
  std::variant<T, error> v_;
};

// --- frames ---------------------------------------------------------------

struct frame {
  msg_hdr hdr; // already in our byte order
  std::span<const uint8_t> payload;
};

// Parse exactly one whole frame from bytes (no trailing bytes allowed).
// bound: the dialect's largest payload (v5 max_payload, v7 v7::max_payload).
result<frame> parse_frame(std::span<const uint8_t> bytes, byte_order order,
                          uint32_t bound = max_payload);

// Splits a byte stream into whole frames whose payload is at most bound
// (the dialect's largest). Frames that arrive whole are handed out in place;
// only a partial tail is copied into the splitter's own buffer, which is
// sized once.
class frame_splitter {
public:
  explicit frame_splitter(byte_order order = byte_order::native, uint32_t bound = max_payload)
    : order_(order), bound_(bound) {
    buf_.resize(sizeof(msg_hdr) + bound);
  }
  uint32_t bound() const { return bound_; }
  void set_order(byte_order o) { order_ = o; }
  byte_order order() const { return order_; }
  size_t buffered() const { return have_; }

  // Calls on_frame(const frame&) for every whole frame in bytes. On an
  // oversize header it stops and returns the error: the stream cannot be
  // resynchronised, so the connection must close.
  template <class F>
  error feed(std::span<const uint8_t> bytes, F&& on_frame) {
    if (failed_)
      return failed_;
    while (!bytes.empty()) {
      if (have_ > 0) {
        // Complete the buffered frame first: header, then payload.
        size_t want = have_ < sizeof(msg_hdr) ? sizeof(msg_hdr) : frame_size();
        size_t n = std::min(want - have_, bytes.size());
        std::memcpy(buf_.data() + have_, bytes.data(), n);
        have_ += n;
        bytes = bytes.subspan(n);
        if (have_ == sizeof(msg_hdr) && (failed_ = check_header()))
          return failed_;
        if (have_ >= sizeof(msg_hdr) && have_ == frame_size()) {
          frame f{header(), std::span<const uint8_t>(buf_.data() + sizeof(msg_hdr),
                                                     have_ - sizeof(msg_hdr))};
          have_ = 0;
          on_frame(f);
        }
        continue;
      }
      if (bytes.size() < sizeof(msg_hdr)) {
        stash(bytes);
        break;
      }
      msg_hdr h;
      std::memcpy(&h, bytes.data(), sizeof h);
      to_order(h, order_);
      if (h.size > bound_)
        return failed_ = error{errc::oversize, "frame size beyond the largest KVMI message"};
      size_t total = sizeof(msg_hdr) + h.size;
      if (bytes.size() < total) {
        stash(bytes);
        break;
      }
      on_frame(frame{h, bytes.subspan(sizeof(msg_hdr), h.size)});
      bytes = bytes.subspan(total);
    }
    return no_error;
  }

private:
  void stash(std::span<const uint8_t> bytes) {
    std::memcpy(buf_.data(), bytes.data(), bytes.size());
    have_ = bytes.size();
    if (have_ >= sizeof(msg_hdr))
      failed_ = check_header();
  }
  msg_hdr header() const {
    msg_hdr h;
    std::memcpy(&h, buf_.data(), sizeof h);
    to_order(h, order_);
    return h;
  }
  size_t frame_size() const { return sizeof(msg_hdr) + header().size; }
  error check_header() const {
    if (header().size > bound_)
      return error{errc::oversize, "frame size beyond the largest KVMI message"};
    return no_error;
  }

  byte_order order_;
  uint32_t bound_;
  std::vector<uint8_t> buf_;
  size_t have_ = 0;
  error failed_;
};

// --- commands (tool -> kernel) --------------------------------------------

// Commands without parameters.
struct get_version {};
struct pause_all_vcpus {};
struct get_map_token {};

// Commands with a variable part, as the fixed struct plus its array.
struct get_registers_cmd {
  get_registers req;
  std::vector<uint32_t> msrs_idx;
};
struct get_page_access_cmd {
  get_page_access req;
  std::vector<uint64_t> gpa;
};
struct set_page_access_cmd {
  set_page_access req;
  std::vector<page_access_entry> entries;
};
struct write_physical_cmd {
  write_physical req;
  std::vector<uint8_t> data;
};
struct control_ve_cmd {
  control_ve req;
  std::vector<uint64_t> gpa;
};

using command =
  std::variant<get_version, get_guest_info, get_registers_cmd, set_registers,
               get_page_access_cmd, set_page_access_cmd, inject_exception, read_physical,
               write_physical_cmd, get_map_token, control_events, control_cr, control_msr,
               get_cpuid, get_xsave, pause_all_vcpus, control_vm_events, control_ve_cmd>;

msg_id id_of(const command& c);

// The vCPU a command is addressed to, or nullopt for VM commands.
std::optional<uint16_t> vcpu_of(const command& c);

struct command_msg {
  uint32_t seq = 0;
  command body;
};

// --- event replies (tool -> kernel) ---------------------------------------

struct event_reply_msg {
  uint32_t seq = 0;
  event_reply common{};
  std::variant<std::monostate, event_cr_reply, event_msr_reply, event_pf_reply> extra;
};

// The exact reply size the kernel expects for an event kind (hdr.size).
uint16_t event_reply_size(event_id e);

using tool_msg = std::variant<command_msg, event_reply_msg>;

// --- events (kernel -> tool) ----------------------------------------------

using event_data = std::variant<std::monostate, event_cr, event_msr, event_breakpoint, event_pf,
                                event_trap, event_descriptor>;

struct event_msg {
  uint32_t seq = 0;
  event common{};
  event_data data;
  event_id kind() const { return static_cast<event_id>(common.event); }
};

// Payload size of an event message of this kind (kvmi_event + its data).
uint16_t event_size(event_id e);

// --- command replies (kernel -> tool) -------------------------------------

struct registers_reply {
  get_registers_reply fixed;
  std::vector<kvm_msr_entry> msrs;
};
struct page_access_reply {
  std::vector<uint8_t> access;
};
struct physical_data {
  std::vector<uint8_t> data;
};
struct xsave_reply {
  std::vector<uint8_t> region;
};

using reply_data =
  std::variant<std::monostate, get_version_reply, get_guest_info_reply, pause_all_vcpus_reply,
               registers_reply, get_cpuid_reply, page_access_reply, physical_data,
               get_map_token_reply, xsave_reply>;

struct reply_msg {
  msg_id id{};
  uint32_t seq = 0;
  int32_t err = 0; // 0 or -KVM_E*
  reply_data data;
};

// What a successful reply to a command must look like: the tool records
// this with the seq when it sends, and decodes the reply against it.
struct reply_shape {
  msg_id id{};
  uint32_t size = 0;     // data bytes after kvmi_error_code
  bool variable = false; // GET_XSAVE: any multiple of 4 up to 4096
};
reply_shape expected_reply(const command& c);

// --- check(): the protocol rules of each message --------------------------

error check(const get_version&);
error check(const pause_all_vcpus&);
error check(const get_map_token&);
error check(const get_guest_info&);
error check(const get_registers_cmd&);
error check(const set_registers&);
error check(const get_cpuid&);
error check(const get_page_access_cmd&);
error check(const set_page_access_cmd&);
error check(const inject_exception&);
error check(const read_physical&);
error check(const write_physical_cmd&);
error check(const control_events&);
error check(const control_cr&);
error check(const control_msr&);
error check(const control_ve_cmd&);
error check(const control_vm_events&);
error check(const get_xsave&);
error check(const command&);
error check(const event_reply_msg&);
error check(const event_msg&);
error check(const reply_msg&);

// Helpers the checks are made of, for callers that validate before building.
error check_physical_range(uint64_t gpa, uint64_t size);
bool valid_control_msr(uint32_t msr);

// --- decode ---------------------------------------------------------------

// Kernel side: a frame from the tool is a command or an event reply.
// Structural errors (size, padding, unknown id) only; semantic rules are in
// check(), so a kernel can answer -KVM_EINVAL where it would.
result<tool_msg> decode_from_tool(const frame& f, byte_order order = byte_order::native);
result<tool_msg> decode_from_tool(std::span<const uint8_t> bytes,
                                  byte_order order = byte_order::native);

// Tool side: events are self-describing; replies need the shape recorded
// with their command's seq.
result<event_msg> decode_event(const frame& f, byte_order order = byte_order::native);
result<reply_msg> decode_reply(const frame& f, const reply_shape& shape,
                               byte_order order = byte_order::native);

// --- encode ---------------------------------------------------------------
// Each writes header and payload into out (cleared first, capacity kept),
// ready for one send.

void encode(std::vector<uint8_t>& out, const command_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const event_reply_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const event_msg& m,
            byte_order order = byte_order::native);
void encode(std::vector<uint8_t>& out, const reply_msg& m,
            byte_order order = byte_order::native);

} // namespace kvmi
