#include "server/dialect/v7_translate.hpp"

#include "proto/overloaded.hpp"

#include <algorithm>
#include <cstring>

namespace kvmid::v7x {

namespace v5 = kvmi;
namespace v7 = kvmi::v7;
using kvmi::overloaded;

namespace {

v7::command_msg vcpu_cmd(uint32_t seq, uint16_t vcpu, v7::command c) {
  return v7::command_msg{seq, vcpu, std::move(c)};
}
v7::command_msg vm_cmd(uint32_t seq, v7::command c) { return v7::command_msg{seq, 0, std::move(c)}; }

// CONTROL_CMD_RESPONSE{off} + body + CONTROL_CMD_RESPONSE{on}: only the
// last message is answered, so the batch's reply carries the v5 seq.
plan batch(uint32_t seq, uint32_t& inner, std::vector<v7::command_msg> body) {
  plan p;
  p.msgs.push_back(vm_cmd(inner++, v7::control_cmd_response{0, 1, 0, 0}));
  for (auto& m : body) {
    m.seq = inner++;
    p.msgs.push_back(std::move(m));
  }
  v7::command last = v7::control_cmd_response{1, 1, 0, 0};
  p.shape = v7::expected_reply(last);
  p.msgs.push_back(vm_cmd(seq, std::move(last)));
  return p;
}

// One enable or disable per id of `ids`, as the v5 mask says.
template <class Control>
std::vector<v7::command_msg> per_id(uint16_t vcpu, uint32_t ids, uint32_t mask) {
  std::vector<v7::command_msg> out;
  for (uint32_t e = 0; e < v5::num_events; ++e)
    if (ids & (1u << e))
      out.push_back(vcpu_cmd(0, vcpu,
                             Control{static_cast<uint16_t>(e), uint8_t((mask >> e) & 1), 0, 0}));
  return out;
}

plan single(uint32_t seq, uint16_t vcpu, v7::command c) {
  plan p;
  p.shape = v7::expected_reply(c);
  p.msgs.push_back(vcpu_cmd(seq, vcpu, std::move(c)));
  return p;
}

plan refused(std::string_view why) {
  plan p;
  p.refused = why;
  return p;
}

} // namespace

uint32_t translated_commands() {
  return v5::known_commands; // every v5 command has a v7 form; CONTROL_VE has none
}

plan to_v7(const v5::command_msg& m, uint32_t vcpu_count, uint32_t& inner) {
  uint32_t seq = m.seq;
  return std::visit(
    overloaded{
      [&](const v5::get_version&) { return single(seq, 0, v7::get_version{}); },
      [&](const v5::get_guest_info&) { return single(seq, 0, v7::get_guest_info{}); },
      [&](const v5::get_registers_cmd& c) {
        v7::get_registers_cmd r{};
        r.req.nmsrs = c.req.nmsrs;
        r.msrs_idx = c.msrs_idx;
        return single(seq, c.req.vcpu, std::move(r));
      },
      [&](const v5::set_registers& c) { return single(seq, c.vcpu, v7::set_registers{c.regs}); },
      [&](const v5::get_page_access_cmd& c) {
        v7::get_page_access_cmd r{};
        r.req.view = c.req.view;
        r.req.count = c.req.count;
        r.gpa = c.gpa;
        return single(seq, 0, std::move(r));
      },
      [&](const v5::set_page_access_cmd& c) {
        // A VM command in v7, on the default view.
        v7::set_page_access_cmd r{};
        r.req.view = 0;
        r.req.count = c.req.count;
        for (auto& e : c.entries)
          r.entries.push_back(v7::page_access_entry{e.gpa, e.access, 0, 0, 0});
        return single(seq, 0, std::move(r));
      },
      [&](const v5::inject_exception& c) {
        v7::inject_exception r{};
        r.nr = c.nr;
        r.error_code = c.has_error ? c.error_code : 0;
        r.address = c.address;
        return single(seq, c.vcpu, r);
      },
      [&](const v5::read_physical& c) { return single(seq, 0, c); },
      [&](const v5::write_physical_cmd& c) {
        v7::write_physical_cmd r{};
        r.req = c.req;
        r.data = c.data;
        return single(seq, 0, std::move(r));
      },
      [&](const v5::get_map_token&) { return single(seq, 0, v7::get_map_token{}); },
      [&](const v5::control_events& c) {
        return batch(seq, inner,
                     per_id<v7::control_events>(c.vcpu, v5::known_vcpu_events, c.events));
      },
      [&](const v5::control_cr& c) {
        return single(seq, c.vcpu, v7::control_cr{c.enable, 0, 0, c.cr});
      },
      [&](const v5::control_msr& c) {
        return single(seq, c.vcpu, v7::control_msr{c.enable, 0, 0, c.msr});
      },
      [&](const v5::get_cpuid& c) {
        return single(seq, c.vcpu, v7::get_cpuid{c.function, c.index});
      },
      [&](const v5::get_xsave& c) { return single(seq, c.vcpu, v7::get_xsave{}); },
      [&](const v5::pause_all_vcpus&) {
        if (vcpu_count == 0) {
          plan p; // nothing to pause: answered locally with a count of 0
          p.kind = reply_kind::paused;
          return p;
        }
        std::vector<v7::command_msg> body;
        for (uint32_t i = 0; i < vcpu_count; ++i)
          body.push_back(vcpu_cmd(0, static_cast<uint16_t>(i), v7::pause_vcpu{1, 0, 0, 0}));
        auto p = batch(seq, inner, std::move(body));
        p.kind = reply_kind::paused;
        p.paused = vcpu_count;
        return p;
      },
      [&](const v5::control_vm_events& c) {
        auto body = per_id<v7::control_vm_events>(0, v5::known_vm_events, c.events);
        for (auto& b : body)
          b.vcpu = 0;
        return batch(seq, inner, std::move(body));
      },
      [&](const v5::control_ve_cmd&) { return refused("CONTROL_VE has no v7 form kvmid sends"); },
    },
    m.body);
}

std::vector<v7::command_msg> singlestep(uint16_t vcpu, bool enable, uint32_t& inner) {
  std::vector<v7::command_msg> body;
  if (enable)
    body.push_back(vcpu_cmd(0, vcpu, v7::control_events{uint16_t(v7::event_id::singlestep), 1, 0, 0}));
  body.push_back(vcpu_cmd(0, vcpu, v7::vcpu_control_singlestep{uint8_t(enable), {}}));
  // Replies off for the batch; the last message turns them on after itself.
  std::vector<v7::command_msg> out;
  out.push_back(vm_cmd(inner++, v7::control_cmd_response{0, 1, 0, 0}));
  for (auto& m : body) {
    m.seq = inner++;
    out.push_back(std::move(m));
  }
  out.push_back(vm_cmd(inner++, v7::control_cmd_response{1, 0, 0, 0}));
  return out;
}

v5::reply_msg to_v5(v5::msg_id id, const plan& p, v7::reply_msg&& r) {
  v5::reply_msg out;
  out.id = id;
  out.seq = r.seq;
  out.err = r.err;
  if (r.err != 0)
    return out;
  if (p.kind == reply_kind::paused) {
    out.data = v5::pause_all_vcpus_reply{p.paused, 0};
    return out;
  }
  std::visit(overloaded{
               [&](v7::version_reply& v) {
                 out.data = v5::get_version_reply{v.fixed.version, translated_commands(),
                                                  v5::known_events, 0};
               },
               [&](v7::get_guest_info_reply& g) {
                 out.data = v5::get_guest_info_reply{g.vcpu_count, 0, 0};
               },
               [&](v7::registers_reply& x) {
                 out.data = v5::registers_reply{x.fixed, std::move(x.msrs)};
               },
               [&](v7::get_cpuid_reply& x) { out.data = x; },
               [&](v7::xsave_reply& x) { out.data = v5::xsave_reply{std::move(x.region)}; },
               [&](v7::physical_data& x) { out.data = v5::physical_data{std::move(x.data)}; },
               [&](v7::page_access_reply& x) {
                 out.data = v5::page_access_reply{std::move(x.access)};
               },
               [&](v7::get_map_token_reply& x) { out.data = x; },
               [&](auto&) {},
             },
             r.data);
  return out;
}

kvmi::result<v5::event_msg> to_v5(const v7::event_msg& e) {
  v5::event_msg out;
  out.seq = e.seq;
  out.common.event = e.common.event;
  out.common.vcpu = e.common.vcpu;
  out.common.mode = e.common.arch.mode;
  out.common.regs = e.common.arch.regs;
  out.common.sregs = e.common.arch.sregs;
  out.common.msrs = e.common.arch.msrs;
  bool known = true;
  std::visit(overloaded{
               [&](const std::monostate&) {},
               [&](const v5::event_cr& x) { out.data = x; },
               [&](const v5::event_msr& x) { out.data = x; },
               [&](const v7::event_breakpoint& x) { out.data = v5::event_breakpoint{x.gpa}; },
               [&](const v7::event_pf& x) {
                 out.data = v5::event_pf{x.gva, x.gpa, x.access, 0};
               },
               [&](const v7::event_trap& x) {
                 out.data = v5::event_trap{x.vector, 0, x.error_code, 0, x.cr2};
               },
               [&](const v7::event_descriptor& x) {
                 v5::event_descriptor d{};
                 d.descriptor = x.descriptor;
                 d.write = x.write;
                 out.data = d;
               },
               [&](const v7::event_singlestep&) {}, // no data kvmid reads
               [&](const auto&) { known = false; },
             },
             e.data);
  bool singlestep = e.kind() == v7::event_id::singlestep;
  if (!known || (e.common.event >= v5::num_events && !singlestep))
    return kvmi::error{kvmi::errc::unknown_event, "an event kvmid never enables (CPUID)"};
  return out;
}

v7::event_reply_msg to_v7(const v5::event_reply_msg& r, uint16_t vcpu) {
  v7::event_reply_msg out;
  out.seq = r.seq;
  out.vcpu = vcpu;
  out.common.action = static_cast<uint8_t>(r.common.action);
  out.common.event = static_cast<uint8_t>(r.common.event);
  std::visit(overloaded{
               [&](const std::monostate&) {},
               [&](const v5::event_cr_reply& x) { out.extra = x; },
               [&](const v5::event_msr_reply& x) { out.extra = x; },
               [&](const v5::event_pf_reply& x) {
                 v7::event_pf_reply p{};
                 p.ctx_size = x.ctx_size;
                 p.singlestep = x.singlestep;
                 p.rep_complete = x.rep_complete;
                 std::memcpy(p.ctx_data, x.ctx_data, sizeof p.ctx_data);
                 out.extra = p;
               },
             },
             r.extra);
  return out;
}

} // namespace kvmid::v7x
