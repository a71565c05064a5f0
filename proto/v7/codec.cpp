#include "proto/v7/codec.hpp"

#include "proto/decode_parts.hpp"
#include "proto/overloaded.hpp"

#include <algorithm>
#include <array>

namespace kvmi::v7 {

namespace {

using detail::reader;
using detail::writer;

using detail::bad_padding;
using detail::bad_size;
using detail::truncated;

// --- command bodies: the payload after the vCPU header, if any ----------------

template <class T>
result<command> fixed_body(std::span<const uint8_t> p, byte_order order) {
  if (p.size() != sizeof(T))
    return bad_size;
  T x;
  reader r(p, order);
  r.get(x);
  if (!padding_zero(x))
    return bad_padding;
  return command{x};
}

template <class T>
result<command> empty_body(std::span<const uint8_t> p) {
  if (!p.empty())
    return bad_size;
  return command{T{}};
}

// The fixed part, then count elements of E filling the rest exactly.
template <class Cmd, class E, class CountFn>
result<command> variable_body(std::span<const uint8_t> p, byte_order order, CountFn count_of,
                              std::vector<E> Cmd::*array) {
  Cmd c;
  reader r(p, order);
  if (!r.get(c.req))
    return bad_size;
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
  return command{std::move(c)};
}

result<command> decode_body(msg_id id, std::span<const uint8_t> p, byte_order order) {
  auto count = [](const auto& req) { return req.count; };
  switch (id) {
    case msg_id::get_version: return empty_body<get_version>(p);
    case msg_id::get_guest_info: return empty_body<get_guest_info>(p);
    case msg_id::get_vcpu_info: return empty_body<get_vcpu_info>(p);
    case msg_id::get_xsave: return empty_body<get_xsave>(p);
    case msg_id::get_map_token: return empty_body<get_map_token>(p);
    case msg_id::get_max_gfn: return empty_body<get_max_gfn>(p);
    case msg_id::check_command: return fixed_body<check_command>(p, order);
    case msg_id::check_event: return fixed_body<check_event>(p, order);
    case msg_id::pause_vcpu: return fixed_body<pause_vcpu>(p, order);
    case msg_id::control_vm_events: return fixed_body<control_vm_events>(p, order);
    case msg_id::control_events: return fixed_body<control_events>(p, order);
    case msg_id::control_cr: return fixed_body<control_cr>(p, order);
    case msg_id::control_msr: return fixed_body<control_msr>(p, order);
    case msg_id::set_registers: return fixed_body<set_registers>(p, order);
    case msg_id::get_cpuid: return fixed_body<get_cpuid>(p, order);
    case msg_id::read_physical: return fixed_body<read_physical>(p, order);
    case msg_id::inject_exception: return fixed_body<inject_exception>(p, order);
    case msg_id::control_cmd_response: return fixed_body<control_cmd_response>(p, order);
    case msg_id::vcpu_control_singlestep: return fixed_body<vcpu_control_singlestep>(p, order);
    case msg_id::get_registers:
      return variable_body(
        p, order, [](const get_registers& r) { return r.nmsrs; }, &get_registers_cmd::msrs_idx);
    case msg_id::get_page_access:
      return variable_body(p, order, count, &get_page_access_cmd::gpa);
    case msg_id::set_page_access:
      return variable_body(p, order, count, &set_page_access_cmd::entries);
    case msg_id::write_physical: {
      write_physical_cmd c;
      reader r(p, order);
      if (!r.get(c.req))
        return bad_size;
      if (c.req.size > page_size)
        return error{errc::oversize, "WRITE_PHYSICAL beyond one page"};
      if (c.req.size != r.left())
        return bad_size;
      r.get_array(c.data, c.req.size);
      return command{std::move(c)};
    }
    default:
      return error{errc::unknown_id, "a v7 command this implementation does not support"};
  }
}

// The kernel zero-fills what a short event reply leaves out, then reads it
// in the peer's byte order.
template <class T>
T zero_filled(std::span<const uint8_t> got, byte_order order) {
  std::array<uint8_t, sizeof(T)> bytes{};
  std::copy_n(got.begin(), std::min(got.size(), bytes.size()), bytes.begin());
  T x;
  reader(bytes, order).get(x);
  return x;
}

result<tool_msg> decode_event_reply(const frame& f, byte_order order) {
  event_reply_msg m;
  m.seq = f.hdr.seq;
  reader r(f.payload, order);
  vcpu_hdr h;
  if (!r.get(h) || !r.get(m.common))
    return error{errc::bad_size, "event reply shorter than its vCPU header and common part"};
  if (!padding_zero(h) || !padding_zero(m.common))
    return bad_padding;
  m.vcpu = h.vcpu;
  auto e = static_cast<event_id>(m.common.event);
  if (!is_known(e))
    return error{errc::unknown_event, "reply names an unknown event"};
  uint16_t full = event_reply_size(e);
  // "Don't accept newer/bigger structures"; a smaller one is zero-filled.
  if (f.payload.size() > full)
    return error{errc::bad_size, "event reply larger than the kernel's struct"};
  if (f.payload.size() < full)
    m.wire_size = static_cast<uint16_t>(f.payload.size());
  auto rest = r.rest();
  if (e == event_id::cr)
    m.extra = zero_filled<event_cr_reply>(rest, order);
  else if (e == event_id::msr)
    m.extra = zero_filled<event_msr_reply>(rest, order);
  else if (e == event_id::pf) {
    auto pf = zero_filled<event_pf_reply>(rest, order);
    if (!padding_zero(pf))
      return bad_padding;
    m.extra = pf;
  }
  return tool_msg{m};
}

template <class T> constexpr msg_id id_for = msg_id::get_version;
template <> constexpr msg_id id_for<check_command> = msg_id::check_command;
template <> constexpr msg_id id_for<check_event> = msg_id::check_event;
template <> constexpr msg_id id_for<get_guest_info> = msg_id::get_guest_info;
template <> constexpr msg_id id_for<get_vcpu_info> = msg_id::get_vcpu_info;
template <> constexpr msg_id id_for<pause_vcpu> = msg_id::pause_vcpu;
template <> constexpr msg_id id_for<control_vm_events> = msg_id::control_vm_events;
template <> constexpr msg_id id_for<control_events> = msg_id::control_events;
template <> constexpr msg_id id_for<control_cr> = msg_id::control_cr;
template <> constexpr msg_id id_for<control_msr> = msg_id::control_msr;
template <> constexpr msg_id id_for<get_registers_cmd> = msg_id::get_registers;
template <> constexpr msg_id id_for<set_registers> = msg_id::set_registers;
template <> constexpr msg_id id_for<get_cpuid> = msg_id::get_cpuid;
template <> constexpr msg_id id_for<get_xsave> = msg_id::get_xsave;
template <> constexpr msg_id id_for<read_physical> = msg_id::read_physical;
template <> constexpr msg_id id_for<write_physical_cmd> = msg_id::write_physical;
template <> constexpr msg_id id_for<inject_exception> = msg_id::inject_exception;
template <> constexpr msg_id id_for<get_page_access_cmd> = msg_id::get_page_access;
template <> constexpr msg_id id_for<set_page_access_cmd> = msg_id::set_page_access;
template <> constexpr msg_id id_for<get_map_token> = msg_id::get_map_token;
template <> constexpr msg_id id_for<control_cmd_response> = msg_id::control_cmd_response;
template <> constexpr msg_id id_for<get_max_gfn> = msg_id::get_max_gfn;
template <> constexpr msg_id id_for<vcpu_control_singlestep> = msg_id::vcpu_control_singlestep;

// 1 when a successful reply to id carries data after kvmi_error_code.
bool reply_has_data(msg_id id) {
  switch (id) {
    case msg_id::get_version:
    case msg_id::get_guest_info:
    case msg_id::get_vcpu_info:
    case msg_id::get_registers:
    case msg_id::get_cpuid:
    case msg_id::get_xsave:
    case msg_id::read_physical:
    case msg_id::get_page_access:
    case msg_id::get_map_token:
    case msg_id::get_max_gfn:
      return true;
    default:
      return false;
  }
}

// A request or its reply that exceeds KVMI_MSG_SIZE cannot be framed.
constexpr error too_big{errc::oversize, "request or its reply exceeds KVMI_MSG_SIZE"};
bool fits(size_t fixed, size_t count, size_t element) {
  return count <= (max_payload - fixed) / element;
}

error pad_ok(const auto& x) { return padding_zero(x) ? no_error : bad_padding; }

bool same_zero(const features& f) { return f.spp == 0 && f.vmfunc == 0 && f.eptp == 0 && f.ve == 0; }

error bool_field(uint8_t v, std::string_view what) {
  return v > 1 ? error{errc::bad_value, what} : no_error;
}

error check_body(const get_version&) { return no_error; }
error check_body(const get_guest_info&) { return no_error; }
error check_body(const get_vcpu_info&) { return no_error; }
error check_body(const get_xsave&) { return no_error; }
error check_body(const get_map_token&) { return no_error; }
error check_body(const get_max_gfn&) { return no_error; }
error check_body(const check_command& x) { return pad_ok(x); }
error check_body(const check_event& x) { return pad_ok(x); }
error check_body(const pause_vcpu& x) {
  if (auto e = bool_field(x.wait, "wait must be 0 or 1"))
    return e;
  return pad_ok(x);
}
error check_body(const control_vm_events& x) {
  auto e = static_cast<event_id>(x.event_id);
  if (x.event_id > UINT8_MAX || !is_known(e) || !is_vm_event(e))
    return {errc::unknown_event, "CONTROL_VM_EVENTS names no VM event"};
  if (auto b = bool_field(x.enable, "enable must be 0 or 1"))
    return b;
  return pad_ok(x);
}
error check_body(const control_events& x) {
  auto e = static_cast<event_id>(x.event_id);
  if (x.event_id > UINT8_MAX || !is_known(e) || is_vm_event(e))
    return {errc::unknown_event, "CONTROL_EVENTS names no vCPU event"};
  if (auto b = bool_field(x.enable, "enable must be 0 or 1"))
    return b;
  return pad_ok(x);
}
error check_body(const control_cr& x) {
  if (x.cr != 0 && x.cr != 3 && x.cr != 4)
    return {errc::bad_cr, "CONTROL_CR cr must be 0, 3 or 4"};
  if (auto b = bool_field(x.enable, "enable must be 0 or 1"))
    return b;
  return pad_ok(x);
}
error check_body(const control_msr& x) {
  if (!valid_control_msr(x.msr))
    return {errc::bad_msr, "CONTROL_MSR msr outside 0..0x1fff and 0xc0000000..0xc0001fff"};
  if (auto b = bool_field(x.enable, "enable must be 0 or 1"))
    return b;
  return pad_ok(x);
}
error check_body(const get_registers_cmd& x) {
  if (x.msrs_idx.size() != x.req.nmsrs)
    return {errc::bad_size, "nmsrs does not match the msrs_idx array"};
  if (!fits(sizeof(vcpu_hdr) + sizeof(get_registers), x.req.nmsrs, sizeof(uint32_t))
      || !fits(sizeof(error_code) + sizeof(get_registers_reply), x.req.nmsrs,
               sizeof(kvm_msr_entry)))
    return too_big;
  return pad_ok(x.req);
}
error check_body(const set_registers&) { return no_error; }
error check_body(const get_cpuid&) { return no_error; }
error check_body(const read_physical& x) { return check_physical_range(x.gpa, x.size); }
error check_body(const write_physical_cmd& x) {
  if (auto e = check_physical_range(x.req.gpa, x.req.size))
    return e;
  if (x.data.size() != x.req.size)
    return {errc::bad_size, "size does not match the data"};
  return no_error;
}
error check_body(const inject_exception& x) {
  if (x.nr >= 32)
    return {errc::bad_value, "exception vector must be below 32"};
  return pad_ok(x);
}
error check_body(const get_page_access_cmd& x) {
  if (x.gpa.size() != x.req.count)
    return {errc::bad_size, "count does not match the gpa array"};
  if (!fits(sizeof(x.req), x.req.count, sizeof(uint64_t)))
    return too_big;
  return pad_ok(x.req);
}
error check_body(const set_page_access_cmd& x) {
  if (x.entries.size() != x.req.count)
    return {errc::bad_size, "count does not match the entries array"};
  if (!fits(sizeof(x.req), x.req.count, sizeof(page_access_entry)))
    return too_big;
  for (auto& e : x.entries) {
    if (e.access & ~page_access_rwx)
      return {errc::unknown_access_bits, "page access has bits other than r, w, x"};
    if (!padding_zero(e))
      return bad_padding;
  }
  return pad_ok(x.req);
}
error check_body(const control_cmd_response& x) {
  if (auto e = bool_field(x.enable, "enable must be 0 or 1"))
    return e;
  if (auto e = bool_field(x.now, "now must be 0 or 1"))
    return e;
  return pad_ok(x);
}
error check_body(const vcpu_control_singlestep& x) {
  if (auto e = bool_field(x.enable, "enable must be 0 or 1"))
    return e;
  return pad_ok(x);
}

} // namespace

// --- commands -----------------------------------------------------------------

msg_id id_of(const command& c) {
  return std::visit([](const auto& x) { return id_for<std::decay_t<decltype(x)>>; }, c);
}

reply_shape expected_reply(const command& c) {
  reply_shape s{id_of(c), 0, false};
  std::visit(overloaded{
               [&](const get_version&) { s.size = sizeof(get_version_reply); },
               [&](const get_guest_info&) { s.size = sizeof(get_guest_info_reply); },
               [&](const get_vcpu_info&) { s.size = sizeof(get_vcpu_info_reply); },
               [&](const get_registers_cmd& x) {
                 s.size = sizeof(get_registers_reply) + sizeof(kvm_msr_entry) * x.req.nmsrs;
               },
               [&](const get_cpuid&) { s.size = sizeof(get_cpuid_reply); },
               [&](const get_xsave&) {
                 s.size = xsave_size;
                 s.variable = true;
               },
               [&](const read_physical& x) {
                 s.size = x.size <= page_size ? static_cast<uint32_t>(x.size) : 0;
               },
               [&](const get_page_access_cmd& x) { s.size = x.req.count; },
               [&](const get_map_token&) { s.size = sizeof(get_map_token_reply); },
               [&](const get_max_gfn&) { s.size = sizeof(get_max_gfn_reply); },
               [&](const auto&) {},
             },
             c);
  return s;
}

error check(const command_msg& m) {
  if (scope_of(id_of(m.body)) != scope::vcpu && m.vcpu != 0)
    return {errc::bad_vcpu, "a VM command names a vCPU"};
  return std::visit([](const auto& x) { return check_body(x); }, m.body);
}

// --- event replies --------------------------------------------------------------

uint16_t event_reply_size(event_id e) {
  constexpr uint16_t common = sizeof(vcpu_hdr) + sizeof(event_reply);
  switch (e) {
    case event_id::cr: return common + sizeof(event_cr_reply);
    case event_id::msr: return common + sizeof(event_msr_reply);
    case event_id::pf: return common + sizeof(event_pf_reply);
    default: return common;
  }
}

error check(const event_reply_msg& m) {
  auto e = static_cast<event_id>(m.common.event);
  if (!is_known(e))
    return {errc::unknown_event, "reply names an unknown event"};
  if (m.common.action > 2 || !(allowed_actions(e) & (1u << m.common.action)))
    return {errc::bad_action, "action not allowed for this event"};
  bool extra_ok = std::visit(overloaded{
                               [&](std::monostate) {
                                 return event_reply_size(e)
                                        == sizeof(vcpu_hdr) + sizeof(event_reply);
                               },
                               [&](const event_cr_reply&) { return e == event_id::cr; },
                               [&](const event_msr_reply&) { return e == event_id::msr; },
                               [&](const event_pf_reply&) { return e == event_id::pf; },
                             },
                             m.extra);
  if (!extra_ok)
    return {errc::bad_size, "reply data does not match the event kind"};
  if (m.wire_size != 0
      && (m.wire_size < sizeof(vcpu_hdr) + sizeof(event_reply) || m.wire_size > event_reply_size(e)))
    return {errc::bad_size, "a short event reply still carries its headers, and none is longer"};
  if (auto* pf = std::get_if<event_pf_reply>(&m.extra)) {
    if (pf->ctx_size > pf_ctx_max)
      return {errc::bad_value, "PF reply ctx_size beyond 256"};
    if (pf->singlestep > 1 || pf->rep_complete > 1)
      return {errc::bad_value, "singlestep and rep_complete must be 0 or 1"};
    if (!padding_zero(*pf))
      return bad_padding;
  }
  return pad_ok(m.common);
}

// --- events ---------------------------------------------------------------------

uint16_t event_size(event_id e) {
  constexpr uint16_t common = sizeof(event);
  switch (e) {
    case event_id::cr: return common + sizeof(event_cr);
    case event_id::msr: return common + sizeof(event_msr);
    case event_id::breakpoint: return common + sizeof(event_breakpoint);
    case event_id::pf: return common + sizeof(event_pf);
    case event_id::trap: return common + sizeof(event_trap);
    case event_id::descriptor: return common + sizeof(event_descriptor);
    case event_id::singlestep: return common + sizeof(event_singlestep);
    case event_id::cpuid: return common + sizeof(event_cpuid);
    default: return common;
  }
}

namespace {
template <class T> constexpr int data_event = -1;
template <> constexpr int data_event<std::monostate> = -1;
template <> constexpr int data_event<event_cr> = static_cast<int>(event_id::cr);
template <> constexpr int data_event<event_msr> = static_cast<int>(event_id::msr);
template <> constexpr int data_event<event_breakpoint> = static_cast<int>(event_id::breakpoint);
template <> constexpr int data_event<event_pf> = static_cast<int>(event_id::pf);
template <> constexpr int data_event<event_trap> = static_cast<int>(event_id::trap);
template <> constexpr int data_event<event_descriptor> = static_cast<int>(event_id::descriptor);
template <> constexpr int data_event<event_singlestep> = static_cast<int>(event_id::singlestep);
template <> constexpr int data_event<event_cpuid> = static_cast<int>(event_id::cpuid);
} // namespace

error check(const event_msg& m) {
  auto e = m.kind();
  if (!is_known(e))
    return {errc::unknown_event, "unknown event id"};
  if (m.common.size != sizeof(event))
    return {errc::bad_size, "the event's common part must say 544 bytes"};
  auto mode = m.common.arch.mode;
  if (e != event_id::unhook && mode != 2 && mode != 4 && mode != 8)
    return {errc::bad_value, "vCPU mode must be 2, 4 or 8"};
  if (!padding_zero(m.common))
    return bad_padding;
  bool data_ok = std::visit(
    [&](const auto& d) {
      using T = std::decay_t<decltype(d)>;
      if constexpr (std::is_same_v<T, std::monostate>)
        return event_size(e) == sizeof(event);
      else
        return data_event<T> == static_cast<int>(e);
    },
    m.data);
  if (!data_ok)
    return {errc::bad_size, "event data does not match the event kind"};
  bool pads = std::visit(
    [](const auto& d) {
      if constexpr (std::is_same_v<std::decay_t<decltype(d)>, std::monostate>)
        return true;
      else
        return padding_zero(d);
    },
    m.data);
  if (!pads)
    return bad_padding;
  if (auto* pf = std::get_if<event_pf>(&m.data); pf && (pf->access & ~page_access_rwx))
    return {errc::unknown_access_bits, "PF access has bits other than r, w, x"};
  if (auto* d = std::get_if<event_descriptor>(&m.data);
      d && (d->descriptor < desc_idtr || d->descriptor > desc_tr || d->write > 1))
    return {errc::bad_value, "unknown descriptor kind"};
  if (auto* s = std::get_if<event_singlestep>(&m.data); s && s->failed > 1)
    return {errc::bad_value, "singlestep failed must be 0 or 1"};
  return no_error;
}

// --- command replies ------------------------------------------------------------

error check(const reply_msg& m) {
  if (m.err > 0)
    return {errc::bad_value, "error codes are negative"};
  if (m.err != 0)
    return m.data.index() == 0 ? no_error
                               : error{errc::bad_size, "a failed reply carries no data"};
  constexpr error wrong{errc::bad_size, "reply data does not match its command"};
  bool matches = std::visit(
    overloaded{
      [&](std::monostate) { return !reply_has_data(m.id); },
      [&](const version_reply& x) {
        return m.id == msg_id::get_version && (x.has_features || same_zero(x.fixed.features));
      },
      [&](const get_guest_info_reply&) { return m.id == msg_id::get_guest_info; },
      [&](const get_vcpu_info_reply&) { return m.id == msg_id::get_vcpu_info; },
      [&](const get_cpuid_reply&) { return m.id == msg_id::get_cpuid; },
      [&](const get_map_token_reply&) { return m.id == msg_id::get_map_token; },
      [&](const get_max_gfn_reply&) { return m.id == msg_id::get_max_gfn; },
      [&](const registers_reply& x) {
        return m.id == msg_id::get_registers && x.fixed.msrs.nmsrs == x.msrs.size()
               && fits(sizeof(error_code) + sizeof(get_registers_reply), x.msrs.size(),
                       sizeof(kvm_msr_entry));
      },
      [&](const page_access_reply& x) {
        return m.id == msg_id::get_page_access
               && x.access.size() <= max_payload - sizeof(error_code);
      },
      [&](const physical_data& x) {
        return m.id == msg_id::read_physical && !x.data.empty() && x.data.size() <= page_size;
      },
      [&](const xsave_reply& x) {
        return m.id == msg_id::get_xsave && !x.region.empty() && x.region.size() <= xsave_size
               && x.region.size() % 4 == 0;
      },
    },
    m.data);
  if (!matches)
    return wrong;
  if (auto* pa = std::get_if<page_access_reply>(&m.data))
    for (auto a : pa->access)
      if (a & ~page_access_rwx)
        return {errc::unknown_access_bits, "page access has bits other than r, w, x"};
  if (auto* v = std::get_if<version_reply>(&m.data))
    return pad_ok(v->fixed);
  if (auto* r = std::get_if<registers_reply>(&m.data))
    return pad_ok(r->fixed);
  return std::visit(
    [](const auto& x) -> error {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_trivially_copyable_v<T> && !std::is_same_v<T, std::monostate>
                    && !std::is_same_v<T, version_reply>)
        return pad_ok(x);
      else
        return no_error;
    },
    m.data);
}

// --- decode ---------------------------------------------------------------------

result<tool_msg> decode_from_tool(const frame& f, byte_order order) {
  if (f.hdr.size > max_payload)
    return error{errc::oversize, "frame size beyond KVMI_MSG_SIZE"};
  if (f.payload.size() != f.hdr.size)
    return truncated;
  auto id = static_cast<msg_id>(f.hdr.id);
  if (id == msg_id::event_reply)
    return decode_event_reply(f, order);
  if (!is_known(id) || id == msg_id::event)
    return error{errc::unknown_id, "no v7 command with this id"};
  command_msg m;
  m.seq = f.hdr.seq;
  reader r(f.payload, order);
  if (scope_of(id) == scope::vcpu) {
    vcpu_hdr h;
    if (!r.get(h))
      return error{errc::bad_size, "vCPU command shorter than its vCPU header"};
    if (!padding_zero(h))
      return bad_padding;
    m.vcpu = h.vcpu;
  }
  auto body = decode_body(id, r.rest(), order);
  if (!body)
    return body.err();
  m.body = std::move(*body);
  return tool_msg{std::move(m)};
}

result<tool_msg> decode_from_tool(std::span<const uint8_t> bytes, byte_order order) {
  auto f = parse_frame(bytes, order, max_payload);
  if (!f)
    return f.err();
  return v7::decode_from_tool(*f, order);
}

result<event_msg> decode_event(const frame& f, byte_order order) {
  if (f.hdr.id != static_cast<uint16_t>(msg_id::event))
    return error{errc::unknown_id, "not an event"};
  event_msg m;
  m.seq = f.hdr.seq;
  reader r(f.payload, order);
  if (!r.get(m.common))
    return error{errc::bad_size, "event shorter than its 544-byte common part"};
  if (m.common.event == kernel_only_cmd_error_event)
    return error{errc::unknown_event, "CMD_ERROR (12) exists only in the kernel branch"};
  auto e = m.kind();
  if (!is_known(e))
    return error{errc::unknown_event, "unknown event id"};
  if (m.common.size != sizeof(event))
    return error{errc::bad_size, "the event's common part must say 544 bytes"};
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
    case event_id::singlestep: err = take(event_singlestep{}); break;
    case event_id::cpuid: err = take(event_cpuid{}); break;
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
  if (shape.id == msg_id::get_version && n == get_version_reply_short) {
    version_reply v;
    v.has_features = false;
    r.get(v.fixed.version);
    r.get(v.fixed.padding);
    if (v.fixed.padding != 0)
      return bad_padding;
    m.data = v;
    return m;
  }
  if (shape.variable ? (n == 0 || n > shape.size || n % 4 != 0) : n != shape.size)
    return bad_size;
  auto fixed = [&](auto x) -> result<reply_msg> {
    if (auto e = detail::take_checked<decltype(x)>(r, m.data))
      return e;
    return m;
  };
  switch (shape.id) {
    case msg_id::get_version: {
      version_reply v;
      r.get(v.fixed);
      if (!padding_zero(v.fixed))
        return bad_padding;
      m.data = v;
      return m;
    }
    case msg_id::get_guest_info: return fixed(get_guest_info_reply{});
    case msg_id::get_vcpu_info: return fixed(get_vcpu_info_reply{});
    case msg_id::get_cpuid: return fixed(get_cpuid_reply{});
    case msg_id::get_map_token: return fixed(get_map_token_reply{});
    case msg_id::get_max_gfn: return fixed(get_max_gfn_reply{});
    case msg_id::get_page_access: {
      page_access_reply x;
      r.get_array(x.access, n);
      m.data = std::move(x);
      return m;
    }
    case msg_id::read_physical: {
      physical_data x;
      r.get_array(x.data, n);
      m.data = std::move(x);
      return m;
    }
    case msg_id::get_xsave: {
      xsave_reply x;
      r.get_array(x.region, n);
      m.data = std::move(x);
      return m;
    }
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

// --- encode ---------------------------------------------------------------------

void encode(std::vector<uint8_t>& out, const command_msg& m, byte_order order) {
  auto id = id_of(m.body);
  writer w(out, order, static_cast<uint16_t>(id), m.seq);
  if (scope_of(id) == scope::vcpu)
    w.put(vcpu_hdr{m.vcpu, 0, 0});
  std::visit(overloaded{
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
               [&](const auto& x) {
                 if constexpr (!std::is_empty_v<std::decay_t<decltype(x)>>)
                   w.put(x);
               },
             },
             m.body);
}

void encode(std::vector<uint8_t>& out, const event_reply_msg& m, byte_order order) {
  writer w(out, order, static_cast<uint16_t>(msg_id::event_reply), m.seq);
  w.put(vcpu_hdr{m.vcpu, 0, 0});
  w.put(m.common);
  std::visit(overloaded{[](std::monostate) {}, [&](const auto& x) { w.put(x); }}, m.extra);
  // A short reply: the writer sizes the header from what is left.
  if (m.wire_size != 0 && sizeof(msg_hdr) + m.wire_size < out.size())
    out.resize(sizeof(msg_hdr) + m.wire_size);
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
               [&](const version_reply& x) {
                 if (x.has_features) {
                   w.put(x.fixed);
                 } else {
                   w.put(x.fixed.version);
                   w.put(x.fixed.padding);
                 }
               },
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

} // namespace kvmi::v7
