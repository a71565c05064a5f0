// Sample KVMI v7 dialect messages with non-trivial field values, for the v7
// proto tests and the fuzz seeds. Every sample passes check(): tests that
// want a failure break one field.
#pragma once

#include "proto/v7/codec.hpp"
#include "tests/support/kvmi_samples.hpp"

namespace kvmi::v7::testing {

using kvmi::testing::filled;

// One valid command of every supported kind (23), seeded; vCPU commands
// name vCPU 1 + their index.
inline std::vector<command_msg> sample_commands(uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::vector<command> cs;
  cs.push_back(get_version{});
  cs.push_back(check_command{static_cast<uint16_t>(msg_id::set_page_access), 0, 0});
  cs.push_back(check_event{static_cast<uint16_t>(event_id::cpuid), 0, 0});
  cs.push_back(get_guest_info{});
  cs.push_back(get_vcpu_info{});
  cs.push_back(pause_vcpu{1, 0, 0, 0});
  cs.push_back(control_vm_events{static_cast<uint16_t>(event_id::create_vcpu), 1, 0, 0});
  cs.push_back(control_events{static_cast<uint16_t>(event_id::singlestep), 1, 0, 0});
  cs.push_back(control_cr{1, 0, 0, 3});
  cs.push_back(control_msr{1, 0, 0, 0xc0000082});
  get_registers_cmd gr{};
  gr.msrs_idx = {0x174, 0xc0000080, 0x10, 0xc0000102};
  gr.req.nmsrs = static_cast<uint16_t>(gr.msrs_idx.size());
  cs.push_back(gr);
  cs.push_back(filled<set_registers>(rng));
  cs.push_back(get_cpuid{0x80000001, 3});
  cs.push_back(get_xsave{});
  cs.push_back(read_physical{0x12345010, 0x80});
  write_physical_cmd wp{};
  wp.req = {0x7ff0, 16};
  for (int i = 0; i < 16; ++i)
    wp.data.push_back(static_cast<uint8_t>(0xc0 + i));
  cs.push_back(wp);
  cs.push_back(inject_exception{14, 0, 0, 0x2, 0xffff888012345678});
  get_page_access_cmd gpa{};
  gpa.req.view = 2;
  gpa.gpa = {0x1000, 0x7ffff000, 0xfee00000, 0x123456789000};
  gpa.req.count = static_cast<uint16_t>(gpa.gpa.size());
  cs.push_back(gpa);
  set_page_access_cmd spa{};
  spa.req.view = 1;
  for (uint8_t a = 0; a <= page_access_rwx; ++a)
    spa.entries.push_back({0x100000ull * (a + 1), a, 0, 0, 0});
  spa.req.count = static_cast<uint16_t>(spa.entries.size());
  cs.push_back(spa);
  cs.push_back(get_map_token{});
  cs.push_back(control_cmd_response{0, 1, 0, 0});
  cs.push_back(get_max_gfn{});
  cs.push_back(vcpu_control_singlestep{1, {}});
  std::vector<command_msg> out;
  uint32_t seq = 100;
  for (auto& c : cs) {
    uint16_t vcpu =
      scope_of(id_of(c)) == scope::vcpu ? static_cast<uint16_t>(1 + out.size()) : 0;
    out.push_back(command_msg{seq++, vcpu, c});
  }
  return out;
}

inline event_data sample_event_data(event_id e, std::mt19937_64& rng) {
  switch (e) {
    case event_id::cr: {
      auto d = filled<event_cr>(rng);
      d.cr = 4;
      return d;
    }
    case event_id::msr: return filled<event_msr>(rng);
    case event_id::breakpoint: {
      auto d = filled<event_breakpoint>(rng);
      d.insn_len = 1;
      return d;
    }
    case event_id::pf: {
      auto d = filled<event_pf>(rng);
      d.access = page_access_w | page_access_x;
      return d;
    }
    case event_id::trap: return filled<event_trap>(rng);
    case event_id::descriptor: return event_descriptor{desc_gdtr, 1, {}};
    case event_id::singlestep: return event_singlestep{1, {}};
    case event_id::cpuid: {
      auto d = filled<event_cpuid>(rng);
      d.insn_length = 2;
      return d;
    }
    default: return std::monostate{};
  }
}

inline event_msg sample_event(event_id e, uint64_t seed = 2) {
  std::mt19937_64 rng(seed + static_cast<uint8_t>(e));
  event_msg m;
  m.seq = 0x10000 + static_cast<uint8_t>(e);
  m.common = filled<event>(rng);
  m.common.size = sizeof(event);
  m.common.event = static_cast<uint8_t>(e);
  m.common.vcpu = static_cast<uint16_t>(static_cast<uint8_t>(e) + 1);
  m.common.arch.mode = 8;
  m.data = sample_event_data(e, rng);
  return m;
}

// A full, valid reply to event e with its extra part.
inline event_reply_msg sample_event_reply(event_id e, uint64_t seed = 3) {
  std::mt19937_64 rng(seed + static_cast<uint8_t>(e));
  event_reply_msg r;
  r.seq = 0x10000 + static_cast<uint8_t>(e);
  r.vcpu = static_cast<uint16_t>(static_cast<uint8_t>(e) + 1);
  r.common.event = static_cast<uint8_t>(e);
  r.common.action = static_cast<uint8_t>(
    (allowed_actions(e) & flag(action::retry)) ? action::retry : action::continue_);
  if (e == event_id::cr)
    r.extra = event_cr_reply{rng()};
  else if (e == event_id::msr)
    r.extra = event_msr_reply{rng()};
  else if (e == event_id::pf) {
    event_pf_reply pf{};
    pf.ctx_addr = rng();
    pf.singlestep = 1;
    pf.rep_complete = 1;
    pf.ctx_size = 100;
    for (uint32_t i = 0; i < pf_ctx_max; ++i)
      pf.ctx_data[i] = static_cast<uint8_t>(rng());
    r.extra = pf;
  }
  return r;
}

// A successful reply to command c, shaped as expected_reply(c) says.
inline reply_msg sample_reply(const command& c, uint32_t seq, uint64_t seed = 4) {
  std::mt19937_64 rng(seed + static_cast<uint16_t>(id_of(c)));
  auto shape = expected_reply(c);
  reply_msg r;
  r.id = shape.id;
  r.seq = seq;
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v)
      b = static_cast<uint8_t>(rng());
    return v;
  };
  switch (shape.id) {
    case msg_id::get_version: {
      version_reply v{filled<get_version_reply>(rng), true};
      v.fixed.version = kvmi::version;
      r.data = v;
      break;
    }
    case msg_id::get_guest_info: r.data = filled<get_guest_info_reply>(rng); break;
    case msg_id::get_vcpu_info: r.data = filled<get_vcpu_info_reply>(rng); break;
    case msg_id::get_cpuid: r.data = filled<get_cpuid_reply>(rng); break;
    case msg_id::get_map_token: r.data = filled<get_map_token_reply>(rng); break;
    case msg_id::get_max_gfn: r.data = filled<get_max_gfn_reply>(rng); break;
    case msg_id::get_page_access: {
      page_access_reply p;
      for (size_t i = 0; i < shape.size; ++i)
        p.access.push_back(static_cast<uint8_t>(rng() & page_access_rwx));
      r.data = p;
      break;
    }
    case msg_id::read_physical: r.data = physical_data{bytes(shape.size)}; break;
    case msg_id::get_xsave: r.data = xsave_reply{bytes(shape.size)}; break;
    case msg_id::get_registers: {
      registers_reply rr;
      rr.fixed = filled<get_registers_reply>(rng);
      auto n = (shape.size - sizeof(get_registers_reply)) / sizeof(kvm_msr_entry);
      rr.fixed.msrs.nmsrs = static_cast<uint32_t>(n);
      for (size_t i = 0; i < n; ++i)
        rr.msrs.push_back(filled<kvm_msr_entry>(rng));
      r.data = rr;
      break;
    }
    default: break;
  }
  return r;
}

// Every sample as encoded frames: each command and its reply, every event
// and every event reply (one short one too), in the given byte order.
inline std::vector<std::vector<uint8_t>> sample_frames(byte_order order = byte_order::native,
                                                       uint64_t seed = 1) {
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint8_t> buf;
  for (auto& c : sample_commands(seed)) {
    encode(buf, c, order);
    out.push_back(buf);
    encode(buf, sample_reply(c.body, c.seq, seed), order);
    out.push_back(buf);
  }
  for (auto e : all_event_ids) {
    encode(buf, sample_event(e, seed), order);
    out.push_back(buf);
    encode(buf, sample_event_reply(e, seed), order);
    out.push_back(buf);
  }
  auto short_pf = sample_event_reply(event_id::pf, seed);
  short_pf.wire_size = 32;
  encode(buf, short_pf, order);
  out.push_back(buf);
  return out;
}

} // namespace kvmi::v7::testing
