#include "kernel-patches/sim/workload.hpp"

#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/shard.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

namespace kvmi::sim::detail {

workload::workload(shard& s) : s_(s) {
  auto& m = s.o.workload.mix;
  double acc = 0;
  for (double w : {m.msr, m.cr, m.access, m.execute, m.breakpoint, m.hypercall, m.descriptor,
                   m.xsetbv})
    mix_cdf_.push_back(acc += std::max(0.0, w));
}

void workload::schedule(vm& v, vcpu& c) {
  double rate = s_.o.workload.rate_per_vcpu;
  if (rate <= 0 || s_.stopping() || s_.quiesced())
    return;
  double dt = std::exponential_distribution<double>(rate)(v.rng);
  s_.net.add_timer(clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(dt * 1e9)),
                   timer_kind::workload, v.local, c.index);
}

guest_action workload::draw(vm& v, vcpu& c) {
  guest_action a;
  a.workload = true;
  double total = mix_cdf_.empty() ? 0 : mix_cdf_.back();
  double x = std::uniform_real_distribution<double>(0, total > 0 ? total : 1)(v.rng);
  size_t k = 0;
  while (k + 1 < mix_cdf_.size() && x >= mix_cdf_[k])
    ++k;
  auto& w = s_.o.workload;
  uint64_t hot = w.hot_gpa + (v.rng() % std::max<uint32_t>(1, w.hot_pages)) * page_size +
                 (v.rng() % page_size);
  switch (k) {
    case 0: {
      static constexpr uint32_t ms[] = {msr::lstar, msr::sysenter_cs, msr::sysenter_esp,
                                        msr::sysenter_eip, msr::efer, msr::star, msr::cstar,
                                        msr::fmask, msr::kernel_gs_base};
      a.k = guest_action::msr;
      a.a = ms[v.rng() % std::size(ms)];
      uint64_t cur = get_msr(c, a.a);
      a.x = a.a == msr::efer ? cur ^ (1u << 11) : cur ^ (uint64_t{1} << (4 + v.rng() % 12));
      break;
    }
    case 1: {
      static constexpr uint32_t crs[] = {0, 3, 4};
      a.k = guest_action::cr;
      a.a = crs[v.rng() % 3];
      uint64_t cur = *cr_ref(c, a.a);
      a.x = a.a == 0   ? cur ^ (1u << 16)
            : a.a == 3 ? 0x1000000 + (v.rng() & 0xff) * 0x1000
                       : cur ^ (1u << (v.rng() % 2 ? 20 : 7));
      break;
    }
    case 2: {
      a.k = guest_action::access;
      a.x = hot;
      auto r = v.rng() % 20;
      a.a = r < 10 ? page_access_r : r < 17 ? page_access_w : page_access_x;
      a.y = v.rng() & 0xff;
      if (a.y == 0xcc)
        a.y = 0x90; // never plant INT3 by accident
      break;
    }
    case 3:
      a.k = guest_action::execute;
      a.x = hot;
      break;
    case 4: {
      // The guest's own INT3, on the page after the hot range.
      a.k = guest_action::execute;
      a.x = w.hot_gpa + uint64_t(w.hot_pages) * page_size + (v.rng() % page_size);
      page_for_write(v, a.x).bytes[a.x & 4095] = 0xcc;
      break;
    }
    case 5: a.k = guest_action::hypercall; break;
    case 6:
      a.k = guest_action::descriptor;
      a.a = static_cast<uint32_t>(desc_idtr + v.rng() % 4);
      a.y = v.rng() % 2;
      break;
    default:
      a.k = guest_action::xsetbv;
      a.x = c.xcr0 ^ 0x4;
      break;
  }
  return a;
}

} // namespace kvmi::sim::detail
