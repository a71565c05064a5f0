// Sample KVMI messages with non-trivial field values, built generically over
// inspect(), for the proto tests, the splitter tests and the fuzz corpus.
// Every sample passes check(): tests that want a failure break one field.
#pragma once

#include "proto/codec.hpp"
#include "proto/messages.hpp"

#include <cstring>
#include <random>
#include <span>
#include <vector>

namespace kvmi::testing {

// Fills every non-padding integral field with pseudo-random bits and leaves
// padding zero; with mark_padding, sets padding to all-ones and data to zero
// instead (a mask of where the padding bytes are).
struct filler {
  std::mt19937_64* rng = nullptr;
  bool mark_padding = false;
  template <class... Ts>
  void operator()(Ts&&... xs) {
    (apply(xs), ...);
  }
  template <class T>
  void apply(pad_ref<T> p) {
    if (mark_padding)
      std::memset(&p.value, 0xff, sizeof(T));
  }
  template <class T>
  void apply(T& x) {
    if constexpr (std::is_integral_v<T>) {
      if (!mark_padding)
        x = static_cast<T>((*rng)());
    } else if constexpr (std::is_array_v<T>) {
      for (auto& e : x)
        apply(e);
    } else {
      inspect(*this, x);
    }
  }
};

template <class T>
T filled(std::mt19937_64& rng) {
  T x{};
  filler f{&rng, false};
  f.apply(x);
  return x;
}

// Byte mask of T's KVMI padding fields (0xff where padding).
template <class T>
std::vector<uint8_t> padding_mask() {
  T x{};
  filler f{nullptr, true};
  f.apply(x);
  std::vector<uint8_t> m(sizeof(T));
  std::memcpy(m.data(), &x, sizeof(T));
  return m;
}

template <class T>
std::span<const uint8_t> bytes_of(const T& x) {
  return {reinterpret_cast<const uint8_t*>(&x), sizeof(T)};
}
template <class T>
bool same_bytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// One valid command of every kind (18, CONTROL_VE included), seeded.
inline std::vector<command> sample_commands(uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::vector<command> cs;
  cs.push_back(get_version{});
  get_guest_info gi{};
  cs.push_back(gi); // vcpu must be 0
  get_registers_cmd gr{};
  gr.req.vcpu = 3;
  gr.msrs_idx = {0x174, 0xc0000080, 0x10, 0xc0000102};
  gr.req.nmsrs = static_cast<uint16_t>(gr.msrs_idx.size());
  cs.push_back(gr);
  auto sr = filled<set_registers>(rng);
  sr.vcpu = 2;
  cs.push_back(sr);
  get_page_access_cmd gpa{};
  gpa.req.vcpu = 1;
  gpa.gpa = {0x1000, 0x7ffff000, 0xfee00000, 0x123456789000};
  gpa.req.count = static_cast<uint16_t>(gpa.gpa.size());
  cs.push_back(gpa);
  set_page_access_cmd spa{};
  spa.req.vcpu = 7;
  for (uint8_t a = 0; a <= page_access_rwx; ++a)
    spa.entries.push_back({0x100000ull * (a + 1), a, {}});
  spa.req.count = static_cast<uint16_t>(spa.entries.size());
  cs.push_back(spa);
  cs.push_back(inject_exception{1, 14, 1, 0x2, 0, 0xffff888012345678});
  cs.push_back(read_physical{0x12345010, 0x80});
  write_physical_cmd wp{};
  wp.req = {0x7ff0, 16};
  for (int i = 0; i < 16; ++i)
    wp.data.push_back(static_cast<uint8_t>(0xc0 + i));
  cs.push_back(wp);
  cs.push_back(get_map_token{});
  cs.push_back(control_events{4, 0, known_vcpu_events & ~flag(event_id::trap)});
  cs.push_back(control_cr{2, 1, 0, 4});
  cs.push_back(control_msr{2, 1, 0, 0xc0000080});
  cs.push_back(get_cpuid{1, {}, 0x80000001, 3});
  cs.push_back(get_xsave{5, {}});
  cs.push_back(pause_all_vcpus{});
  cs.push_back(control_vm_events{known_vm_events, 0});
  control_ve_cmd ve{};
  ve.req.vcpu = 9;
  ve.req.enable = 1;
  ve.gpa = {0xabc000, 0xdef000};
  ve.req.count = static_cast<uint16_t>(ve.gpa.size());
  cs.push_back(ve);
  return cs;
}

// The event-specific data of each kind, filled.
inline event_data sample_event_data(event_id e, std::mt19937_64& rng) {
  switch (e) {
    case event_id::cr: {
      auto d = filled<event_cr>(rng);
      d.cr = 4;
      return d;
    }
    case event_id::msr: return filled<event_msr>(rng);
    case event_id::breakpoint: return filled<event_breakpoint>(rng);
    case event_id::pf: {
      auto d = filled<event_pf>(rng);
      d.mode = page_access_w | page_access_x;
      return d;
    }
    case event_id::trap: return filled<event_trap>(rng);
    case event_id::descriptor: {
      auto d = filled<event_descriptor>(rng);
      d.descriptor = desc_gdtr;
      d.write = 1;
      return d;
    }
    default: return std::monostate{};
  }
}

inline event_msg sample_event(event_id e, uint64_t seed = 2) {
  std::mt19937_64 rng(seed + static_cast<uint32_t>(e));
  event_msg m;
  m.seq = 0x10000 + static_cast<uint32_t>(e);
  m.common = filled<event>(rng);
  m.common.event = static_cast<uint32_t>(e);
  m.common.vcpu = static_cast<uint16_t>(e) + 1;
  m.common.mode = 8;
  m.data = sample_event_data(e, rng);
  return m;
}

// A valid reply to event e (not UNHOOK: it takes none), with its extra part.
inline event_reply_msg sample_event_reply(event_id e, uint64_t seed = 3) {
  std::mt19937_64 rng(seed + static_cast<uint32_t>(e));
  event_reply_msg r;
  r.seq = 0x10000 + static_cast<uint32_t>(e);
  r.common.event = static_cast<uint32_t>(e);
  r.common.action = static_cast<uint32_t>(
    (allowed_actions(e) & flag(action::retry)) ? action::retry : action::continue_);
  if (e == event_id::cr)
    r.extra = event_cr_reply{rng()};
  else if (e == event_id::msr)
    r.extra = event_msr_reply{rng()};
  else if (e == event_id::pf) {
    event_pf_reply pf{};
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
      auto v = filled<get_version_reply>(rng);
      v.version = kvmi::version;
      r.data = v;
      break;
    }
    case msg_id::get_guest_info: r.data = filled<get_guest_info_reply>(rng); break;
    case msg_id::pause_all_vcpus: r.data = filled<pause_all_vcpus_reply>(rng); break;
    case msg_id::get_cpuid: r.data = filled<get_cpuid_reply>(rng); break;
    case msg_id::get_map_token: r.data = filled<get_map_token_reply>(rng); break;
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

// Every sample as encoded frames: commands, all events, all event replies and
// a reply to each command, in the given byte order.
inline std::vector<std::vector<uint8_t>> sample_frames(byte_order order = byte_order::native,
                                                       uint64_t seed = 1) {
  std::vector<std::vector<uint8_t>> out;
  std::vector<uint8_t> buf;
  uint32_t seq = 100;
  for (auto& c : sample_commands(seed)) {
    encode(buf, command_msg{seq, c}, order);
    out.push_back(buf);
    encode(buf, sample_reply(c, seq, seed), order);
    out.push_back(buf);
    ++seq;
  }
  for (uint32_t e = 0; e < num_events; ++e) {
    encode(buf, sample_event(static_cast<event_id>(e), seed), order);
    out.push_back(buf);
    if (e != static_cast<uint32_t>(event_id::unhook)) {
      encode(buf, sample_event_reply(static_cast<event_id>(e), seed), order);
      out.push_back(buf);
    }
  }
  return out;
}

} // namespace kvmi::testing
