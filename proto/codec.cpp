#include "proto/codec.hpp"

#include "proto/decode_parts.hpp"
#include "proto/overloaded.hpp"

#include <algorithm>

namespace kvmi {

namespace {

using detail::reader;
using detail::writer;

using detail::bad_padding;
using detail::bad_size;
using detail::truncated;

// Fixed-size commands: their wire struct is the whole payload.
template <class T>
result<tool_msg> fixed_command(uint32_t seq, const frame& f, byte_order order) {
  if (f.payload.size() != sizeof(T))
    return bad_size;
  T x;
  reader r(f.payload, order);
  r.get(x);
  if (!padding_zero(x))
    return bad_padding;
  return tool_msg{command_msg{seq, x}};
}

template <class T>
result<tool_msg> empty_command(uint32_t seq, const frame& f) {
  if (!f.payload.empty())
    return bad_size;
  return tool_msg{command_msg{seq, T{}}};
}

// Variable commands: fixed part, then count elements of E.
template <class Cmd, class E, class CountFn>
result<tool_msg> variable_command(uint32_t seq, const frame& f, byte_order order,
                                  CountFn count_of, std::vector<E> Cmd::*array) {
  Cmd c;
  reader r(f.payload, order);
  if (!r.get(c.req))
    return f.payload.size() < sizeof(c.req) ? bad_size : truncated;
  uint64_t n = count_of(c.req);
  if (n * sizeof(E) != r.left())
    return bad_size;
  r.get_array(c.*array, n);
  if (!padding_zero(c.req))
    return bad_padding;
  if constexpr (std::is_class_v<E>) {
    for (auto& e : c.*array)
      if (!padding_zero(e))
        return bad_padding;
  }
  return tool_msg{command_msg{seq, std::move(c)}};
}

} // namespace

// --- names ----------------------------------------------------------------

bool is_known(msg_id id) {
  return std::find(std::begin(all_msg_ids), std::end(all_msg_ids), id) != std::end(all_msg_ids);
}

std::string_view name(msg_id id) {
  switch (id) {
    case msg_id::get_version: return "get_version";
    case msg_id::get_guest_info: return "get_guest_info";
    case msg_id::get_registers: return "get_registers";
    case msg_id::set_registers: return "set_registers";
    case msg_id::get_page_access: return "get_page_access";
    case msg_id::set_page_access: return "set_page_access";
    case msg_id::inject_exception: return "inject_exception";
    case msg_id::read_physical: return "read_physical";
    case msg_id::write_physical: return "write_physical";
    case msg_id::get_map_token: return "get_map_token";
    case msg_id::control_events: return "control_events";
    case msg_id::control_cr: return "control_cr";
    case msg_id::control_msr: return "control_msr";
    case msg_id::event: return "event";
    case msg_id::event_reply: return "event_reply";
    case msg_id::get_cpuid: return "get_cpuid";
    case msg_id::get_xsave: return "get_xsave";
    case msg_id::pause_all_vcpus: return "pause_all_vcpus";
    case msg_id::control_vm_events: return "control_vm_events";
    case msg_id::control_ve: return "control_ve";
  }
  return "unknown";
}

std::string_view name(event_id e) {
  switch (e) {
    case event_id::unhook: return "unhook";
    case event_id::cr: return "cr";
    case event_id::msr: return "msr";
    case event_id::xsetbv: return "xsetbv";
    case event_id::breakpoint: return "breakpoint";
    case event_id::hypercall: return "hypercall";
    case event_id::pf: return "pf";
    case event_id::trap: return "trap";
    case event_id::descriptor: return "descriptor";
    case event_id::create_vcpu: return "create_vcpu";
    case event_id::pause_vcpu: return "pause_vcpu";
    case event_id::singlestep: return "singlestep";
  }
  return "unknown";
}

std::string_view name(action a) {
  switch (a) {
    case action::continue_: return "continue";
    case action::retry: return "retry";
    case action::crash: return "crash";
  }
  return "unknown";
}

std::string_view access_name(uint8_t access) {
  static constexpr std::string_view names[] = {"---", "r--", "-w-", "rw-",
                                               "--x", "r-x", "-wx", "rwx"};
  return names[access & page_access_rwx];
}

std::string_view kvm_error_name(int32_t err) {
  // Widened first: -INT32_MIN (a peer may send it) would overflow.
  switch (-static_cast<int64_t>(err)) {
    case 0: return "OK";
    case kvm_enosys: return "ENOSYS";
    case kvm_efault: return "EFAULT";
    case kvm_einval: return "EINVAL";
    case kvm_e2big: return "E2BIG";
    case kvm_eperm: return "EPERM";
    case kvm_eopnotsupp: return "EOPNOTSUPP";
    case kvm_eagain: return "EAGAIN";
    case kvm_ebusy: return "EBUSY";
    case kvm_enoent: return "ENOENT";
    case kvm_enomem: return "ENOMEM";
    case kvm_eacces: return "EACCES";
  }
  return "E?";
}

std::string_view name(errc e) {
  switch (e) {
    case errc::ok: return "ok";
    case errc::truncated: return "truncated";
    case errc::oversize: return "oversize";
    case errc::unknown_id: return "unknown_id";
    case errc::bad_padding: return "bad_padding";
    case errc::bad_size: return "bad_size";
    case errc::bad_vcpu: return "bad_vcpu";
    case errc::bad_view: return "bad_view";
    case errc::bad_range: return "bad_range";
    case errc::bad_cr: return "bad_cr";
    case errc::bad_msr: return "bad_msr";
    case errc::unknown_event_bits: return "unknown_event_bits";
    case errc::unknown_access_bits: return "unknown_access_bits";
    case errc::unknown_event: return "unknown_event";
    case errc::bad_action: return "bad_action";
    case errc::bad_value: return "bad_value";
  }
  return "unknown";
}

// --- commands -------------------------------------------------------------

namespace {
template <class T> constexpr msg_id id_for = msg_id::get_version;
template <> constexpr msg_id id_for<get_guest_info> = msg_id::get_guest_info;
template <> constexpr msg_id id_for<get_registers_cmd> = msg_id::get_registers;
template <> constexpr msg_id id_for<set_registers> = msg_id::set_registers;
template <> constexpr msg_id id_for<get_page_access_cmd> = msg_id::get_page_access;
template <> constexpr msg_id id_for<set_page_access_cmd> = msg_id::set_page_access;
template <> constexpr msg_id id_for<inject_exception> = msg_id::inject_exception;
template <> constexpr msg_id id_for<read_physical> = msg_id::read_physical;
template <> constexpr msg_id id_for<write_physical_cmd> = msg_id::write_physical;
template <> constexpr msg_id id_for<get_map_token> = msg_id::get_map_token;
template <> constexpr msg_id id_for<control_events> = msg_id::control_events;
template <> constexpr msg_id id_for<control_cr> = msg_id::control_cr;
template <> constexpr msg_id id_for<control_msr> = msg_id::control_msr;
template <> constexpr msg_id id_for<get_cpuid> = msg_id::get_cpuid;
template <> constexpr msg_id id_for<get_xsave> = msg_id::get_xsave;
template <> constexpr msg_id id_for<pause_all_vcpus> = msg_id::pause_all_vcpus;
template <> constexpr msg_id id_for<control_vm_events> = msg_id::control_vm_events;
template <> constexpr msg_id id_for<control_ve_cmd> = msg_id::control_ve;
} // namespace

msg_id id_of(const command& c) {
  return std::visit([](const auto& x) { return id_for<std::decay_t<decltype(x)>>; }, c);
}

std::optional<uint16_t> vcpu_of(const command& c) {
  return std::visit(overloaded{
                      [](const get_version&) -> std::optional<uint16_t> { return {}; },
                      [](const pause_all_vcpus&) -> std::optional<uint16_t> { return {}; },
                      [](const get_map_token&) -> std::optional<uint16_t> { return {}; },
                      [](const read_physical&) -> std::optional<uint16_t> { return {}; },
                      [](const write_physical_cmd&) -> std::optional<uint16_t> { return {}; },
                      [](const control_vm_events&) -> std::optional<uint16_t> { return {}; },
                      [](const auto& x) -> std::optional<uint16_t> {
                        if constexpr (requires { x.req.vcpu; })
                          return x.req.vcpu;
                        else
                          return x.vcpu;
                      },
                    },
                    c);
}

reply_shape expected_reply(const command& c) {
  reply_shape s{id_of(c), 0, false};
  std::visit(overloaded{
               [&](const get_version&) { s.size = sizeof(get_version_reply); },
               [&](const get_guest_info&) { s.size = sizeof(get_guest_info_reply); },
               [&](const pause_all_vcpus&) { s.size = sizeof(pause_all_vcpus_reply); },
               [&](const get_registers_cmd& x) {
                 s.size = sizeof(get_registers_reply) + sizeof(kvm_msr_entry) * x.req.nmsrs;
               },
               [&](const get_cpuid&) { s.size = sizeof(get_cpuid_reply); },
               [&](const get_page_access_cmd& x) { s.size = x.req.count; },
               [&](const read_physical& x) {
                 s.size = x.size <= page_size ? static_cast<uint32_t>(x.size) : 0;
               },
               [&](const get_map_token&) { s.size = sizeof(get_map_token_reply); },
               [&](const get_xsave&) {
                 s.size = xsave_size;
                 s.variable = true;
               },
               [&](const auto&) {},
             },
             c);
  return s;
}

// --- check ----------------------------------------------------------------

namespace {
error pad_ok(const auto& x) { return padding_zero(x) ? no_error : bad_padding; }

// A variable command whose request or reply payload exceeds max_payload
// cannot be framed (hdr.size is 16 bits, and the splitter refuses more).
constexpr error too_big{errc::oversize, "request or its reply exceeds the largest KVMI frame"};
bool fits(size_t fixed, size_t count, size_t element) {
  return count <= (max_payload - fixed) / element;
}
} // namespace

namespace {
// 1 when a successful reply to id carries data after kvmi_error_code.
int expected_data(msg_id id) {
  switch (id) {
    case msg_id::get_version:
    case msg_id::get_guest_info:
    case msg_id::pause_all_vcpus:
    case msg_id::get_cpuid:
    case msg_id::get_map_token:
    case msg_id::get_registers:
    case msg_id::get_page_access:
    case msg_id::read_physical:
    case msg_id::get_xsave:
      return 1;
    default:
      return 0;
  }
}
} // namespace

error check_physical_range(uint64_t gpa, uint64_t size) {
  if (size == 0 || size > page_size)
    return {errc::bad_range, "physical access size must be 1..4096 bytes"};
  if ((gpa & (page_size - 1)) + size > page_size)
    return {errc::bad_range, "physical access must not cross a page"};
  return no_error;
}

bool valid_control_msr(uint32_t msr) {
  return msr <= 0x1fff || (msr >= 0xc0000000 && msr <= 0xc0001fff);
}

error check(const get_version&) { return no_error; }
error check(const pause_all_vcpus&) { return no_error; }
error check(const get_map_token&) { return no_error; }
error check(const get_guest_info& x) {
  if (x.vcpu != 0)
    return {errc::bad_vcpu, "GET_GUEST_INFO must name vcpu 0"};
  return pad_ok(x);
}
error check(const get_registers_cmd& x) {
  if (x.msrs_idx.size() != x.req.nmsrs)
    return {errc::bad_size, "nmsrs does not match the msrs_idx array"};
  if (!fits(sizeof(error_code) + sizeof(get_registers_reply), x.req.nmsrs, sizeof(kvm_msr_entry)))
    return too_big;
  return pad_ok(x.req);
}
error check(const set_registers& x) { return pad_ok(x); }
error check(const get_cpuid& x) { return pad_ok(x); }
error check(const get_page_access_cmd& x) {
  if (x.gpa.size() != x.req.count)
    return {errc::bad_size, "count does not match the gpa array"};
  if (!fits(sizeof(x.req), x.req.count, sizeof(uint64_t)))
    return too_big;
  if (x.req.view != 0)
    return {errc::bad_view, "v5 supports page-access view 0 only"};
  return pad_ok(x.req);
}
error check(const set_page_access_cmd& x) {
  if (x.entries.size() != x.req.count)
    return {errc::bad_size, "count does not match the entries array"};
  if (!fits(sizeof(x.req), x.req.count, sizeof(page_access_entry)))
    return too_big;
  if (x.req.view != 0)
    return {errc::bad_view, "v5 supports page-access view 0 only"};
  for (auto& e : x.entries) {
    if (e.access & ~page_access_rwx)
      return {errc::unknown_access_bits, "page access has bits other than r, w, x"};
    if (!padding_zero(e))
      return bad_padding;
  }
  return pad_ok(x.req);
}
error check(const inject_exception& x) {
  if (x.nr >= 32)
    return {errc::bad_value, "exception vector must be below 32"};
  if (x.has_error > 1)
    return {errc::bad_value, "has_error must be 0 or 1"};
  return pad_ok(x);
}
error check(const read_physical& x) { return check_physical_range(x.gpa, x.size); }
error check(const write_physical_cmd& x) {
  if (auto e = check_physical_range(x.req.gpa, x.req.size))
    return e;
  if (x.data.size() != x.req.size)
    return {errc::bad_size, "size does not match the data"};
  return no_error;
}
error check(const control_events& x) {
  if (x.events & ~known_vcpu_events)
    return {errc::unknown_event_bits, "event mask has bits that are not vCPU events"};
  return pad_ok(x);
}
error check(const control_cr& x) {
  if (x.cr != 0 && x.cr != 3 && x.cr != 4)
    return {errc::bad_cr, "CONTROL_CR cr must be 0, 3 or 4"};
  if (x.enable > 1)
    return {errc::bad_value, "enable must be 0 or 1"};
  return pad_ok(x);
}
error check(const control_msr& x) {
  if (!valid_control_msr(x.msr))
    return {errc::bad_msr, "CONTROL_MSR msr outside 0..0x1fff and 0xc0000000..0xc0001fff"};
  if (x.enable > 1)
    return {errc::bad_value, "enable must be 0 or 1"};
  return pad_ok(x);
}
error check(const control_ve_cmd& x) {
  if (x.gpa.size() != x.req.count)
    return {errc::bad_size, "count does not match the gpa array"};
  if (!fits(sizeof(x.req), x.req.count, sizeof(uint64_t)))
    return too_big;
  if (x.req.enable > 1)
    return {errc::bad_value, "enable must be 0 or 1"};
  return pad_ok(x.req);
}
error check(const control_vm_events& x) {
  if (x.events & ~known_vm_events)
    return {errc::unknown_event_bits, "event mask has bits that are not VM events"};
  return pad_ok(x);
}
error check(const get_xsave& x) { return pad_ok(x); }

error check(const command& c) {
  return std::visit([](const auto& x) { return check(x); }, c);
}

uint16_t event_reply_size(event_id e) {
  switch (e) {
    case event_id::cr:
    case event_id::msr:
      return sizeof(event_reply) + 8;
    case event_id::pf:
      return sizeof(event_reply) + sizeof(event_pf_reply);
    default:
      return sizeof(event_reply);
  }
}

error check(const event_reply_msg& m) {
  if (m.common.event >= num_events && m.common.event != uint32_t(event_id::singlestep))
    return {errc::unknown_event, "reply names an unknown event"};
  auto e = static_cast<event_id>(m.common.event);
  if (e == event_id::unhook)
    return {errc::unknown_event, "UNHOOK takes no reply"};
  if (m.common.action > 2 || !(allowed_actions(e) & (1u << m.common.action)))
    return {errc::bad_action, "action not allowed for this event"};
  bool extra_ok = std::visit(overloaded{
                               [&](std::monostate) { return event_reply_size(e) == 8; },
                               [&](const event_cr_reply&) { return e == event_id::cr; },
                               [&](const event_msr_reply&) { return e == event_id::msr; },
                               [&](const event_pf_reply&) { return e == event_id::pf; },
                             },
                             m.extra);
  if (!extra_ok)
    return {errc::bad_size, "reply data does not match the event kind"};
  if (auto* pf = std::get_if<event_pf_reply>(&m.extra)) {
    if (pf->ctx_size > pf_ctx_max)
      return {errc::bad_value, "PF reply ctx_size beyond 256"};
    if (!padding_zero(*pf))
      return bad_padding;
  }
  return no_error;
}

uint16_t event_size(event_id e) {
  switch (e) {
    case event_id::cr: return sizeof(event) + sizeof(event_cr);
    case event_id::msr: return sizeof(event) + sizeof(event_msr);
    case event_id::breakpoint: return sizeof(event) + sizeof(event_breakpoint);
    case event_id::pf: return sizeof(event) + sizeof(event_pf);
    case event_id::trap: return sizeof(event) + sizeof(event_trap);
    case event_id::descriptor: return sizeof(event) + sizeof(event_descriptor);
    default: return sizeof(event);
  }
}

error check(const event_msg& m) {
  if (m.common.event >= num_events)
    return {errc::unknown_event, "unknown event id"};
  auto e = m.kind();
  if (e != event_id::unhook && m.common.mode != 2 && m.common.mode != 4 && m.common.mode != 8)
    return {errc::bad_value, "vCPU mode must be 2, 4 or 8"};
  if (!padding_zero(m.common))
    return bad_padding;
  bool data_ok = std::visit(overloaded{
                              [&](std::monostate) { return event_size(e) == sizeof(event); },
                              [&](const event_cr&) { return e == event_id::cr; },
                              [&](const event_msr&) { return e == event_id::msr; },
                              [&](const event_breakpoint&) { return e == event_id::breakpoint; },
                              [&](const event_pf&) { return e == event_id::pf; },
                              [&](const event_trap&) { return e == event_id::trap; },
                              [&](const event_descriptor&) { return e == event_id::descriptor; },
                            },
                            m.data);
  if (!data_ok)
    return {errc::bad_size, "event data does not match the event kind"};
  // Set padding in the data is bad_padding, as decode_event says too.
  if (!std::visit([](const auto& d) {
        if constexpr (std::is_same_v<std::decay_t<decltype(d)>, std::monostate>)
          return true;
        else
          return padding_zero(d);
      },
      m.data))
    return bad_padding;
  if (auto* pf = std::get_if<event_pf>(&m.data); pf && (pf->mode & ~page_access_rwx))
    return {errc::unknown_access_bits, "PF mode has bits other than r, w, x"};
  if (auto* d = std::get_if<event_descriptor>(&m.data);
      d && (d->descriptor < desc_idtr || d->descriptor > desc_tr || d->write > 1))
    return {errc::bad_value, "unknown descriptor kind"};
  return no_error;
}

error check(const reply_msg& m) {
  if (m.err > 0)
    return {errc::bad_value, "error codes are negative"};
  if (m.err != 0) {
    if (m.data.index() != 0)
      return {errc::bad_size, "a failed reply carries no data"};
    return no_error;
  }
  // A successful reply carries the data its command's reply has, and fits
  // one frame: the tool decodes it against that shape (decode_reply).
  constexpr error wrong{errc::bad_size, "reply data does not match its command"};
  size_t size = 0;
  bool matches = std::visit(
    overloaded{
      [&](std::monostate) { return expected_data(m.id) == 0; },
      [&](const get_version_reply&) { return m.id == msg_id::get_version; },
      [&](const get_guest_info_reply&) { return m.id == msg_id::get_guest_info; },
      [&](const pause_all_vcpus_reply&) { return m.id == msg_id::pause_all_vcpus; },
      [&](const get_cpuid_reply&) { return m.id == msg_id::get_cpuid; },
      [&](const get_map_token_reply&) { return m.id == msg_id::get_map_token; },
      [&](const registers_reply& x) {
        size = sizeof(get_registers_reply) + x.msrs.size() * sizeof(kvm_msr_entry);
        return m.id == msg_id::get_registers && x.fixed.msrs.nmsrs == x.msrs.size()
               && padding_zero(x.fixed);
      },
      [&](const page_access_reply& x) {
        size = x.access.size();
        return m.id == msg_id::get_page_access;
      },
      [&](const physical_data& x) {
        size = x.data.size();
        return m.id == msg_id::read_physical && !x.data.empty() && x.data.size() <= page_size;
      },
      [&](const xsave_reply& x) {
        size = x.region.size();
        return m.id == msg_id::get_xsave && !x.region.empty() && x.region.size() <= xsave_size
               && x.region.size() % 4 == 0;
      },
    },
    m.data);
  if (!matches)
    return wrong;
  if (sizeof(error_code) + size > max_payload)
    return {errc::oversize, "reply exceeds the largest KVMI frame"};
  if (auto* pa = std::get_if<page_access_reply>(&m.data))
    for (auto a : pa->access)
      if (a & ~page_access_rwx)
        return {errc::unknown_access_bits, "page access has bits other than r, w, x"};
  return std::visit(
    [](const auto& x) -> error {
      if constexpr (std::is_trivially_copyable_v<std::decay_t<decltype(x)>>
                    && !std::is_same_v<std::decay_t<decltype(x)>, std::monostate>)
        return padding_zero(x) ? no_error : bad_padding;
      else
        return no_error;
    },
    m.data);
}

// --- decode ---------------------------------------------------------------

result<frame> parse_frame(std::span<const uint8_t> bytes, byte_order order, uint32_t bound) {
  if (bytes.size() < sizeof(msg_hdr))
    return error{errc::truncated, "shorter than a message header"};
  msg_hdr h;
  std::memcpy(&h, bytes.data(), sizeof h);
  to_order(h, order);
  if (h.size > bound)
    return error{errc::oversize, "frame size beyond the largest KVMI message"};
  if (bytes.size() < sizeof(msg_hdr) + h.size)
    return truncated;
  if (bytes.size() > sizeof(msg_hdr) + h.size)
    return error{errc::bad_size, "bytes after the message"};
  return frame{h, bytes.subspan(sizeof(msg_hdr), h.size)};
}

result<tool_msg> decode_from_tool(const frame& f, byte_order order) {
  uint32_t seq = f.hdr.seq;
  switch (static_cast<msg_id>(f.hdr.id)) {
    case msg_id::get_version: return empty_command<get_version>(seq, f);
    case msg_id::pause_all_vcpus: return empty_command<pause_all_vcpus>(seq, f);
    case msg_id::get_map_token: return empty_command<get_map_token>(seq, f);
    case msg_id::get_guest_info: return fixed_command<get_guest_info>(seq, f, order);
    case msg_id::set_registers: return fixed_command<set_registers>(seq, f, order);
    case msg_id::get_cpuid: return fixed_command<get_cpuid>(seq, f, order);
    case msg_id::inject_exception: return fixed_command<inject_exception>(seq, f, order);
    case msg_id::read_physical: return fixed_command<read_physical>(seq, f, order);
    case msg_id::control_events: return fixed_command<control_events>(seq, f, order);
    case msg_id::control_cr: return fixed_command<control_cr>(seq, f, order);
    case msg_id::control_msr: return fixed_command<control_msr>(seq, f, order);
    case msg_id::control_vm_events: return fixed_command<control_vm_events>(seq, f, order);
    case msg_id::get_xsave: return fixed_command<get_xsave>(seq, f, order);
    case msg_id::get_registers:
      return variable_command(
        seq, f, order, [](const get_registers& r) { return r.nmsrs; },
        &get_registers_cmd::msrs_idx);
    case msg_id::get_page_access:
      return variable_command(
        seq, f, order, [](const get_page_access& r) { return r.count; },
        &get_page_access_cmd::gpa);
    case msg_id::set_page_access:
      return variable_command(
        seq, f, order, [](const set_page_access& r) { return r.count; },
        &set_page_access_cmd::entries);
    case msg_id::control_ve:
      return variable_command(
        seq, f, order, [](const control_ve& r) { return r.count; }, &control_ve_cmd::gpa);
    case msg_id::write_physical: {
      write_physical_cmd c;
      reader r(f.payload, order);
      if (!r.get(c.req))
        return bad_size;
      if (c.req.size > page_size)
        return error{errc::oversize, "WRITE_PHYSICAL beyond one page"};
      if (c.req.size != r.left())
        return bad_size;
      r.get_array(c.data, c.req.size);
      return tool_msg{command_msg{seq, std::move(c)}};
    }
    case msg_id::event_reply: {
      event_reply_msg m;
      m.seq = seq;
      reader r(f.payload, order);
      if (!r.get(m.common))
        return bad_size;
      if (m.common.event >= num_events)
        return error{errc::unknown_event, "reply names an unknown event"};
      auto e = static_cast<event_id>(m.common.event);
      // The kernel sizes a reply by its own event field: a mismatch closes.
      if (f.payload.size() != event_reply_size(e))
        return bad_size;
      if (e == event_id::cr || e == event_id::msr) {
        uint64_t v = 0;
        r.get(v);
        if (e == event_id::cr)
          m.extra = event_cr_reply{v};
        else
          m.extra = event_msr_reply{v};
      } else if (e == event_id::pf) {
        event_pf_reply pf;
        r.get(pf);
        if (!padding_zero(pf))
          return bad_padding;
        m.extra = pf;
      }
      return tool_msg{m};
    }
    case msg_id::event:
      break;
  }
  return error{errc::unknown_id, "no command with this id"};
}

result<tool_msg> decode_from_tool(std::span<const uint8_t> bytes, byte_order order) {
  auto f = parse_frame(bytes, order);
  if (!f)
    return f.err();
  return decode_from_tool(*f, order);
}

result<event_msg> decode_event(const frame& f, byte_order order) {
  if (f.hdr.id != static_cast<uint16_t>(msg_id::event))
    return error{errc::unknown_id, "not an event"};
  event_msg m;
  m.seq = f.hdr.seq;
  reader r(f.payload, order);
  if (!r.get(m.common))
    return bad_size;
  if (m.common.event >= num_events)
    return error{errc::unknown_event, "unknown event id"};
  auto e = m.kind();
  if (f.payload.size() != event_size(e))
    return bad_size;
  if (!padding_zero(m.common))
    return bad_padding;
  auto take = [&](auto x) { return detail::take_checked<decltype(x)>(r, m.data); };
  error err;
  switch (e) {
    case event_id::cr: err = take(event_cr{}); break;
    case event_id::msr: err = take(event_msr{}); break;
    case event_id::breakpoint: err = take(event_breakpoint{}); break;
    case event_id::pf: err = take(event_pf{}); break;
    case event_id::trap: err = take(event_trap{}); break;
    case event_id::descriptor: err = take(event_descriptor{}); break;
    default: break;
  }
  if (err)
    return err;
  return m;
}

result<reply_msg> decode_reply(const frame& f, const reply_shape& shape, byte_order order) {
  if (f.hdr.id != static_cast<uint16_t>(shape.id))
    return error{errc::unknown_id, "reply id differs from its command's"};
  reply_msg m;
  m.id = shape.id;
  m.seq = f.hdr.seq;
  reader r(f.payload, order);
  if (auto e = detail::read_error_code(r, m.err))
    return e;
  if (m.err != 0)
    return m;
  size_t n = r.left();
  if (shape.variable ? (n == 0 || n > shape.size || n % 4 != 0) : n != shape.size)
    return bad_size;
  auto fixed = [&](auto x) -> result<reply_msg> {
    if (auto e = detail::take_checked<decltype(x)>(r, m.data))
      return e;
    return m;
  };
  auto bytes = [&](auto x) -> result<reply_msg> {
    auto& v = [&]() -> std::vector<uint8_t>& {
      if constexpr (requires { x.access; })
        return x.access;
      else if constexpr (requires { x.data; })
        return x.data;
      else
        return x.region;
    }();
    r.get_array(v, n);
    m.data = std::move(x);
    return m;
  };
  switch (shape.id) {
    case msg_id::get_version: return fixed(get_version_reply{});
    case msg_id::get_guest_info: return fixed(get_guest_info_reply{});
    case msg_id::pause_all_vcpus: return fixed(pause_all_vcpus_reply{});
    case msg_id::get_cpuid: return fixed(get_cpuid_reply{});
    case msg_id::get_map_token: return fixed(get_map_token_reply{});
    case msg_id::get_page_access: return bytes(page_access_reply{});
    case msg_id::read_physical: return bytes(physical_data{});
    case msg_id::get_xsave: return bytes(xsave_reply{});
    case msg_id::get_registers: {
      registers_reply rr;
      if (auto e = detail::read_registers_reply(r, rr))
        return e;
      m.data = std::move(rr);
      return m;
    }
    default:
      return m; // commands whose reply is kvmi_error_code alone
  }
}

// --- encode ---------------------------------------------------------------

void encode(std::vector<uint8_t>& out, const command_msg& m, byte_order order) {
  writer w(out, order, static_cast<uint16_t>(id_of(m.body)), m.seq);
  std::visit(overloaded{
               [](const get_version&) {},
               [](const pause_all_vcpus&) {},
               [](const get_map_token&) {},
               [&](const get_registers_cmd& x) {
                 w.put(x.req);
                 w.put_array(x.msrs_idx);
               },
               [&](const get_page_access_cmd& x) {
                 w.put(x.req);
                 w.put_array(x.gpa);
               },
               [&](const set_page_access_cmd& x) {
                 w.put(x.req);
                 w.put_array(x.entries);
               },
               [&](const write_physical_cmd& x) {
                 w.put(x.req);
                 w.put_array(x.data);
               },
               [&](const control_ve_cmd& x) {
                 w.put(x.req);
                 w.put_array(x.gpa);
               },
               [&](const auto& x) { w.put(x); },
             },
             m.body);
}

void encode(std::vector<uint8_t>& out, const event_reply_msg& m, byte_order order) {
  writer w(out, order, static_cast<uint16_t>(msg_id::event_reply), m.seq);
  w.put(m.common);
  std::visit(overloaded{[](std::monostate) {}, [&](const auto& x) { w.put(x); }}, m.extra);
}

void encode(std::vector<uint8_t>& out, const event_msg& m, byte_order order) {
  writer w(out, order, static_cast<uint16_t>(msg_id::event), m.seq);
  w.put(m.common);
  std::visit(overloaded{[](std::monostate) {}, [&](const auto& x) { w.put(x); }}, m.data);
}

void encode(std::vector<uint8_t>& out, const reply_msg& m, byte_order order) {
  writer w(out, order, static_cast<uint16_t>(m.id), m.seq);
  w.put(error_code{m.err, 0});
  if (m.err != 0)
    return;
  std::visit(overloaded{
               [](std::monostate) {},
               [&](const registers_reply& x) {
                 w.put(x.fixed);
                 w.put_array(x.msrs);
               },
               [&](const page_access_reply& x) { w.put_array(x.access); },
               [&](const physical_data& x) { w.put_array(x.data); },
               [&](const xsave_reply& x) { w.put_array(x.region); },
               [&](const auto& x) { w.put(x); },
             },
             m.data);
}

} // namespace kvmi
