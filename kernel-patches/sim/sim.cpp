// kvmi-sim: event loops (io_uring), the device-manager handshake and the v5
// kernel's behaviour for each VM. Every VM belongs to one shard; a shard's
// thread owns its ring and touches its VMs only under the shard mutex, which
// the public API takes too (actions and inspection are cheap).
#include "kernel-patches/sim/model.hpp"

#include <liburing.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <queue>
#include <thread>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kvmi::sim {

using namespace detail;

namespace detail {
std::string_view name(violation v) {
  switch (v) {
    case violation::reply_unknown_seq: return "reply_unknown_seq";
    case violation::reply_bad_size: return "reply_bad_size";
    case violation::reply_event_mismatch: return "reply_event_mismatch";
    case violation::reply_bad_action: return "reply_bad_action";
    case violation::reply_with_event_id: return "reply_with_event_id";
    case violation::pf_ctx_oversize: return "pf_ctx_oversize";
    case violation::bad_padding: return "bad_padding";
    case violation::unknown_id: return "unknown_id";
    case violation::bad_size: return "bad_size";
    case violation::physical_range: return "physical_range";
    case violation::invalid_command: return "invalid_command";
    case violation::unhook_timeout: return "unhook_timeout";
    case violation::count_: break;
  }
  return "unknown";
}
} // namespace detail

uint64_t counters::violation_count() const {
  uint64_t n = 0;
  for (auto& [k, v] : violations)
    n += v;
  return n;
}

// --- memory map ---------------------------------------------------------------

namespace {
constexpr uint64_t ram_hole = 3ull << 30, four_gib = 4ull << 30;
constexpr uint64_t gpu_ram_base = 0x200000000000ull, gpu_ram_stride = 0x2000000000ull; // 128 GiB
constexpr uint64_t atsd_base = 0x300000000000ull, atsd_size = 64 << 10;
constexpr uint64_t gpu_tgt_base = 0x0004000000000000ull;
} // namespace

std::vector<hs::region> memory_map(const memory_spec& m) {
  std::vector<hs::region> r;
  uint64_t low = std::min(m.ram_size, ram_hole);
  r.push_back({0, low, uint32_t(hs::region_type::ram), 0, 0});
  r.push_back({ram_hole, four_gib - ram_hole, uint32_t(hs::region_type::mmio), 0, 0});
  if (m.ram_size > ram_hole)
    r.push_back({four_gib, m.ram_size - ram_hole, uint32_t(hs::region_type::ram), 0, 0});
  for (size_t i = 0; i < m.gpus.size(); ++i) {
    r.push_back({gpu_ram_base + i * gpu_ram_stride, m.gpus[i].ram_size,
                 uint32_t(hs::region_type::nvlink2_gpu_ram), 0, gpu_tgt_base + i * gpu_ram_stride});
    r.push_back({atsd_base + i * atsd_size, atsd_size, uint32_t(hs::region_type::nvlink2_atsd), 0,
                 0});
  }
  return r;
}

// --- the shard: one io_uring loop and its VMs -------------------------------------

namespace {

enum op : uint8_t { op_connect = 1, op_recv, op_send, op_wake };

uint64_t ud(op o, uint32_t gen, uint32_t local) {
  return (uint64_t(o) << 56) | (uint64_t(gen & 0xffffff) << 32) | local;
}

enum class timer_kind : uint8_t { connect, workload, unhook_timeout, torn_resume, slow_send,
                                  gpu_online, reconnect_storm, hotplug_storm, handshake_timeout };

// Each handshake step must arrive within 10 s (docs/architecture.md).
constexpr ms handshake_step_timeout{10000};

struct timer {
  time_point at;
  timer_kind kind;
  uint32_t vm, vcpu, gen;
  uint64_t seq; // FIFO among equal times
  bool operator>(const timer& o) const { return at != o.at ? at > o.at : seq > o.seq; }
};

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

outcome rejected(std::string why) {
  outcome o;
  o.ok = false;
  o.error = std::move(why);
  return o;
}

template <class T>
void put_bytes(std::vector<uint8_t>& out, std::span<const T> in) {
  auto p = reinterpret_cast<const uint8_t*>(in.data());
  out.insert(out.end(), p, p + in.size_bytes());
}

} // namespace

struct shard;

struct host::impl {
  options o;
  std::vector<std::unique_ptr<shard>> shards;
  std::atomic<bool> stopping{false};
  std::atomic<bool> quiesced{false}; // quiesce(): no workload, storms or random faults
  bool started = false;
  time_point t0;
  std::mutex changed_mu;
  std::condition_variable changed_cv;
  uint64_t changed_gen = 0;
  std::thread progress;
  std::mutex progress_mu;
  std::condition_variable progress_cv;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;

  shard& shard_of(uint32_t vm);
  uint32_t local_of(uint32_t vm) const { return vm / static_cast<uint32_t>(shards.size()); }
  void notify() {
    {
      std::lock_guard<std::mutex> l(changed_mu);
      ++changed_gen;
    }
    changed_cv.notify_all();
  }
};

struct shard {
  host::impl* h;
  const options& o;
  unsigned id;
  io_uring ring{};
  int wake_fd = -1;
  uint64_t wake_buf = 0;
  bool wake_armed = false;
  std::mutex mu;
  std::vector<std::unique_ptr<vm>> vms;
  std::priority_queue<timer, std::vector<timer>, std::greater<>> timers;
  uint64_t timer_seq = 0;
  std::vector<uint32_t> dirty;
  histogram lat;
  std::thread th;
  std::mt19937_64 rng;
  // Slow replies and torn-frame tails wait here (fault paths only).
  struct slow_reply {
    uint32_t vm_local;
    uint64_t gen; // the session it answers: never sent on a later one
    std::vector<uint8_t> bytes;
    detail::vm::waiter injected; // inject_fault("slow_reply"), or null
  };
  std::deque<slow_reply> slow;
  std::vector<double> mix_cdf;

  shard(host::impl* hi, unsigned i) : h(hi), o(hi->o), id(i), rng(hi->o.seed * 7919 + i) {
    if (int e = io_uring_queue_init(4096, &ring, 0); e < 0)
      throw std::runtime_error(std::string("io_uring_queue_init: ") + strerror(-e));
    wake_fd = eventfd(0, EFD_CLOEXEC);
    auto& m = o.workload.mix;
    double acc = 0;
    for (double w : {m.msr, m.cr, m.access, m.execute, m.breakpoint, m.hypercall, m.descriptor,
                     m.xsetbv})
      mix_cdf.push_back(acc += std::max(0.0, w));
  }
  ~shard() {
    for (auto& v : vms)
      if (v->fd >= 0)
        ::close(v->fd);
    io_uring_queue_exit(&ring);
    if (wake_fd >= 0)
      ::close(wake_fd);
  }

  void wake() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd, &one, sizeof one);
  }

  io_uring_sqe* sqe() {
    auto* s = io_uring_get_sqe(&ring);
    if (!s) {
      io_uring_submit(&ring);
      s = io_uring_get_sqe(&ring);
    }
    return s;
  }

  void add_timer(time_point at, timer_kind k, uint32_t vm_local, uint32_t vcpu = 0,
                 uint32_t gen = 0) {
    timers.push(timer{at, k, vm_local, vcpu, gen, ++timer_seq});
  }

  // ---- guest model -----------------------------------------------------------

  void init_vcpu(vm& v, vcpu& c) {
    auto& r = c.regs;
    r.rip = 0xffffffff81000000ull + (v.rng() & 0xffff0);
    r.rsp = 0xffffc90000000000ull + (uint64_t(c.index) << 14) + 0x3f00;
    r.rbp = r.rsp + 0x80;
    r.rflags = 0x246;
    r.rax = v.rng() & 0xffff;
    r.rcx = c.index;
    auto& s = c.sregs;
    s.cs = kvm_segment{0, 0xffffffff, 0x10, 11, 1, 0, 0, 1, 1, 1, 0, 0, 0};
    s.ds = s.es = s.ss = kvm_segment{0, 0xffffffff, 0x18, 3, 1, 0, 1, 1, 0, 1, 0, 0, 0};
    s.fs = s.ds;
    s.gs = s.ds;
    s.gs.base = 0xffff888000000000ull + (uint64_t(c.index) << 20);
    s.tr = kvm_segment{0xfffffe0000003000ull + (uint64_t(c.index) << 16), 0x4087, 0x40, 11, 1,
                       0, 0, 0, 0, 0, 0, 0, 0};
    s.ldt = kvm_segment{};
    s.ldt.unusable = 1;
    s.gdt = kvm_dtable{0xfffffe0000001000ull + (uint64_t(c.index) << 16), 0x7f, {}};
    s.idt = kvm_dtable{0xfffffe0000000000ull, 0xfff, {}};
    s.cr0 = 0x80050033;                       // PG WP NE ET MP PE
    s.cr3 = 0x1000000 + (v.rng() & 0xff) * 0x1000;
    s.cr4 = 0x3606f0 | (1u << 20) | (1u << 21); // incl. SMEP SMAP
    s.efer = 0xd01;                           // SCE LME LMA NXE
    s.apic_base = 0xfee00000 | (c.index == 0 ? 0x900 : 0x800);
    c.msrs = {{msr::tsc, 0x100000 * (c.index + 1)},
              {msr::apic_base, s.apic_base},
              {msr::sysenter_cs, 0x10},
              {msr::sysenter_esp, 0xfffffe0000005000ull + (uint64_t(c.index) << 16)},
              {msr::sysenter_eip, 0xffffffff81a01560ull},
              {msr::misc_enable, 0x850089},
              {msr::pat, 0x0407050600070106ull},
              {msr::efer, s.efer},
              {msr::star, 0x0023001000000000ull},
              {msr::lstar, 0xffffffff81a00010ull},
              {msr::cstar, 0xffffffff81a01530ull},
              {msr::fmask, 0x47700},
              {msr::fs_base, 0x7f0000001000ull},
              {msr::gs_base, s.gs.base},
              {msr::kernel_gs_base, 0},
              {msr::tsc_aux, c.index}};
    std::sort(c.msrs.begin(), c.msrs.end());
  }

  static uint64_t* find_msr(vcpu& c, uint32_t idx) {
    auto it = std::lower_bound(c.msrs.begin(), c.msrs.end(), std::pair<uint32_t, uint64_t>{idx, 0},
                               [](auto& a, auto& b) { return a.first < b.first; });
    return it != c.msrs.end() && it->first == idx ? &it->second : nullptr;
  }
  static uint64_t get_msr(vcpu& c, uint32_t idx) {
    auto* p = find_msr(c, idx);
    return p ? *p : 0;
  }
  static void set_msr(vcpu& c, uint32_t idx, uint64_t val) {
    if (auto* p = find_msr(c, idx))
      *p = val;
    else {
      c.msrs.emplace_back(idx, val);
      std::sort(c.msrs.begin(), c.msrs.end());
    }
    if (idx == msr::efer)
      c.sregs.efer = val;
    if (idx == msr::apic_base)
      c.sregs.apic_base = val;
  }
  static uint64_t* cr_ref(vcpu& c, uint32_t cr) {
    switch (cr) {
      case 0: return reinterpret_cast<uint64_t*>(&c.sregs.cr0);
      case 3: return reinterpret_cast<uint64_t*>(&c.sregs.cr3);
      case 4: return reinterpret_cast<uint64_t*>(&c.sregs.cr4);
    }
    return nullptr;
  }
  static uint8_t cr_bit(uint32_t cr) { return cr == 0 ? 1 : cr == 3 ? 2 : cr == 4 ? 4 : 0; }

  void add_vcpu(vm& v) {
    v.vcpus.emplace_back();
    auto& c = v.vcpus.back();
    c.index = static_cast<uint16_t>(v.vcpus.size() - 1);
    init_vcpu(v, c);
    if (o.workload.rate_per_vcpu > 0)
      schedule_workload(v, c);
  }

  // Region of a gpa, or nullptr.
  const hs::region* region_of(vm& v, uint64_t gpa, size_t* gpu_index = nullptr) {
    size_t g = 0;
    for (auto& r : v.regions) {
      if (gpa >= r.gpa && gpa - r.gpa < r.size) {
        if (gpu_index)
          *gpu_index = g;
        return &r;
      }
      if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram))
        ++g;
    }
    return nullptr;
  }
  enum class touch { ok, hmi, none };
  // What an introspection access to gpa does: unsafe regions count an HMI.
  touch introspect_touch(vm& v, uint64_t gpa) {
    size_t g = 0;
    auto* r = region_of(v, gpa, &g);
    if (!r)
      return touch::none;
    switch (static_cast<hs::region_type>(r->type)) {
      case hs::region_type::ram: return touch::ok;
      case hs::region_type::nvlink2_gpu_ram:
        if (g < v.gpu_online.size() && v.gpu_online[g])
          return touch::ok;
        [[fallthrough]];
      default:
        ++v.c.hmis;
        return touch::hmi;
    }
  }
  uint8_t read_byte(vm& v, uint64_t gpa) {
    auto it = v.memory.find(gpa >> 12);
    return it == v.memory.end() ? 0 : it->second->bytes[gpa & 4095];
  }
  page& page_for_write(vm& v, uint64_t gpa) {
    auto& p = v.memory[gpa >> 12];
    if (!p) {
      p = std::make_unique<page>();
      std::memset(p->bytes, 0, sizeof p->bytes);
    }
    return *p;
  }
  uint8_t access_of(vm& v, uint64_t gpa) {
    auto it = v.access.find(gpa >> 12);
    return it == v.access.end() ? page_access_rwx : it->second;
  }

  // ---- sending ---------------------------------------------------------------

  void mark_dirty(vm& v) {
    if (!v.dirty) {
      v.dirty = true;
      dirty.push_back(v.local);
    }
  }

  bool chance(vm& v, double p) {
    return p > 0 && std::uniform_real_distribution<double>(0, 1)(v.rng) < p;
  }
  // A random fault of this VM's fault_spec strikes (never once quiesced).
  bool fault(vm& v, double p) { return !h->quiesced && chance(v, p); }

  // The promise resolves once every byte queued so far has been sent.
  void await_sent(vm& v, vm::waiter w) {
    if (!w)
      return;
    size_t unsent = v.send_inflight ? v.inflight.size() - v.inflight_off : 0;
    v.sent_waiters.emplace_back(v.sent_bytes + unsent + v.out.size(), std::move(w));
  }
  void resolve_sent(vm& v) {
    std::erase_if(v.sent_waiters, [&](auto& w) {
      if (w.first > v.sent_bytes)
        return false;
      w.second->set_value(outcome{});
      return true;
    });
  }
  // The session ended: injected faults not yet out never will be.
  void reject_waiters(vm& v) {
    auto no = [](vm::waiter& w) { w->set_value(rejected("the session ended before the fault went out")); };
    for (auto& [at, w] : v.sent_waiters)
      no(w);
    v.sent_waiters.clear();
    for (auto* q : {&v.deferred_waiters})
      for (auto& w : *q)
        no(w);
    v.deferred_waiters.clear();
    for (auto* q : {&v.torn_waiters, &v.dup_waiters, &v.slow_waiters}) {
      for (auto& w : *q)
        no(w);
      q->clear();
    }
    for (auto& r : slow)
      if (r.vm_local == v.local && r.injected)
        no(r.injected);
    std::erase_if(slow, [&](auto& r) { return r.vm_local == v.local; });
    v.sent_bytes = 0;
  }

  // Appends one whole frame to the send queue, with the frame faults.
  void send_frame(vm& v, std::span<const uint8_t> f) {
    if (v.fd < 0 || !v.connected || v.close_after_send)
      return; // after a frame cut mid-way nothing more goes out
    auto& fl = *v.faults;
    if (fault(v, fl.garbage)) {
      ++v.c.faults_injected;
      // A header with an id no kernel sends, then random bytes: the tool must close.
      uint8_t g[40];
      for (auto& b : g)
        b = static_cast<uint8_t>(v.rng());
      msg_hdr hd{0xbeef, 32, static_cast<uint32_t>(v.rng())};
      to_order(hd, o.order);
      std::memcpy(g, &hd, sizeof hd);
      put_bytes(v.out, std::span<const uint8_t>(g, sizeof g));
    } else if (fault(v, fl.drop_mid_frame)) {
      ++v.c.faults_injected;
      put_bytes(v.out, f.subspan(0, std::max<size_t>(1, f.size() / 2)));
      v.close_after_send = true;
    } else if (!v.split_at && (!v.torn_waiters.empty() || fault(v, fl.torn_frames))) {
      vm::waiter injected;
      if (!v.torn_waiters.empty()) {
        injected = std::move(v.torn_waiters.front());
        v.torn_waiters.pop_front();
      } else {
        ++v.c.faults_injected;
      }
      put_bytes(v.out, f.subspan(0, f.size() / 2));
      v.split_at = v.out.size();
      put_bytes(v.out, f.subspan(f.size() / 2));
      await_sent(v, std::move(injected));
    } else {
      put_bytes(v.out, f);
    }
    mark_dirty(v);
  }

  void flush(vm& v) {
    v.dirty = false;
    if (v.fd < 0 || !v.connected || v.send_inflight || v.held || v.out.empty())
      return;
    if (v.split_at) {
      if (v.split_at > 0 && v.split_at <= v.out.size()) {
        v.inflight.assign(v.out.begin(), v.out.begin() + static_cast<long>(v.split_at));
        v.out.erase(v.out.begin(), v.out.begin() + static_cast<long>(v.split_at));
      }
      v.split_at = 0;
      v.held = true; // the tail waits for torn_pause
      add_timer(clock::now() + v.faults->torn_pause, timer_kind::torn_resume, v.local, 0, v.gen);
    } else {
      v.inflight.clear();
      std::swap(v.inflight, v.out);
    }
    v.inflight_off = 0;
    submit_send(v);
  }

  void submit_send(vm& v) {
    auto* s = sqe();
    io_uring_prep_send(s, v.fd, v.inflight.data() + v.inflight_off,
                       v.inflight.size() - v.inflight_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, ud(op_send, v.gen, v.local));
    v.send_inflight = true;
  }

  void submit_recv(vm& v) {
    auto* s = sqe();
    io_uring_prep_recv(s, v.fd, v.rbuf.data(), v.rbuf.size(), 0);
    io_uring_sqe_set_data64(s, ud(op_recv, v.gen, v.local));
    v.recv_inflight = true;
  }

  // A command reply; vCPU replies are deferred to the end of the batch, as
  // the kernel sends them from the vCPU thread after the VM thread's.
  void reply(vm& v, const reply_msg& r, bool from_vcpu) {
    if (r.err < 0)
      ++v.c.errors[vm_counts::error_slot(r.err)];
    encode(v.scratch, r, o.order);
    auto& fl = *v.faults;
    auto armed = [](std::deque<vm::waiter>& q) {
      vm::waiter w;
      if (!q.empty()) {
        w = std::move(q.front());
        q.pop_front();
      }
      return w;
    };
    auto injected = armed(v.slow_waiters);
    if (injected || fault(v, fl.slow_reply_fraction)) {
      if (!injected)
        ++v.c.faults_injected;
      slow.push_back(slow_reply{v.local, v.gen, v.scratch, std::move(injected)});
      add_timer(clock::now() + fl.slow_reply_delay, timer_kind::slow_send, v.local, 0, v.gen);
      return;
    }
    auto emit = [&](std::span<const uint8_t> f) {
      if (from_vcpu)
        put_bytes(v.deferred, f);
      else
        send_frame(v, f);
    };
    emit(v.scratch);
    injected = armed(v.dup_waiters);
    if (injected || fault(v, fl.duplicate_reply)) {
      if (!injected)
        ++v.c.faults_injected;
      emit(v.scratch);
      if (from_vcpu && injected)
        v.deferred_waiters.push_back(std::move(injected));
      else
        await_sent(v, std::move(injected));
    }
    if (fault(v, fl.unknown_seq_reply)) {
      ++v.c.faults_injected;
      msg_hdr hd;
      std::memcpy(&hd, v.scratch.data(), sizeof hd);
      to_order(hd, o.order);
      hd.seq ^= 0x5a5a0000u; // a seq the tool never used
      to_order(hd, o.order);
      std::memcpy(v.scratch.data(), &hd, sizeof hd);
      emit(v.scratch);
    }
  }
  void reply_err(vm& v, msg_id id, uint32_t seq, int32_t kvm_e, bool from_vcpu) {
    reply_msg r;
    r.id = id;
    r.seq = seq;
    r.err = -kvm_e;
    reply(v, r, from_vcpu);
  }
  void flush_deferred(vm& v) {
    if (v.deferred.empty())
      return;
    // Deferred replies are already whole frames; send them as such.
    std::span<const uint8_t> rest(v.deferred);
    while (rest.size() >= sizeof(msg_hdr)) {
      msg_hdr hd;
      std::memcpy(&hd, rest.data(), sizeof hd);
      to_order(hd, o.order);
      size_t n = std::min(rest.size(), sizeof(msg_hdr) + hd.size);
      send_frame(v, rest.subspan(0, n));
      rest = rest.subspan(n);
    }
    v.deferred.clear();
    for (auto& w : v.deferred_waiters)
      await_sent(v, std::move(w));
    v.deferred_waiters.clear();
  }

  // ---- events ------------------------------------------------------------------

  void fill_common(vcpu& c, event& e) {
    e.vcpu = c.index;
    e.mode = 8;
    e.regs = c.regs;
    e.sregs = c.sregs;
    e.msrs = event_msrs{get_msr(c, msr::sysenter_cs), get_msr(c, msr::sysenter_esp),
                        get_msr(c, msr::sysenter_eip), get_msr(c, msr::efer),
                        get_msr(c, msr::star), get_msr(c, msr::lstar), get_msr(c, msr::cstar),
                        get_msr(c, msr::pat), get_msr(c, msr::kernel_gs_base)};
  }

  void send_event(vm& v, vcpu& c, event_id kind, const event_data& data, bool for_action) {
    event_msg m;
    m.seq = ++v.ev_seq;
    m.common.event = static_cast<uint32_t>(kind);
    fill_common(c, m.common);
    m.data = data;
    encode(v.scratch, m, o.order);
    c.waiting = true;
    c.ev = kind;
    c.ev_seq = m.seq;
    c.ev_sent = clock::now();
    c.ev_for_action = for_action;
    v.pending[m.seq] = c.index;
    ++v.c.events[static_cast<size_t>(kind)];
    send_frame(v, v.scratch);
  }

  bool event_on(vm& v, vcpu& c, event_id e) {
    return v.hooked && (c.events & flag(e)) && allowed_vcpu_event(e, o.allowed_events);
  }

  // ---- guest actions -------------------------------------------------------------

  void complete(vm& v, vcpu& c) {
    auto a = std::move(c.current);
    c.has_current = false;
    c.current = guest_action{};
    if (a.done)
      a.done->set_value(a.out);
    if (a.workload)
      schedule_workload(v, c);
  }

  void schedule_workload(vm& v, vcpu& c) {
    double rate = o.workload.rate_per_vcpu;
    if (rate <= 0 || h->stopping || h->quiesced)
      return;
    double dt = std::exponential_distribution<double>(rate)(v.rng);
    add_timer(clock::now() + std::chrono::nanoseconds(static_cast<int64_t>(dt * 1e9)),
              timer_kind::workload, v.local, c.index);
  }

  guest_action workload_action(vm& v, vcpu& c) {
    guest_action a;
    a.workload = true;
    double total = mix_cdf.empty() ? 0 : mix_cdf.back();
    double x = std::uniform_real_distribution<double>(0, total > 0 ? total : 1)(v.rng);
    size_t k = 0;
    while (k + 1 < mix_cdf.size() && x >= mix_cdf[k])
      ++k;
    auto& w = o.workload;
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

  // Runs the current action until it needs an event (true) or is done.
  bool run(vm& v, vcpu& c) {
    auto& a = c.current;
    switch (a.k) {
      case guest_action::msr: {
        uint64_t old = get_msr(c, a.a);
        bool watched = std::find(c.msr_watch.begin(), c.msr_watch.end(), a.a) != c.msr_watch.end();
        if (old != a.x && watched && event_on(v, c, event_id::msr)) {
          c.ev_new = a.x;
          send_event(v, c, event_id::msr, event_msr{a.a, 0, old, a.x}, true);
          return true;
        }
        set_msr(c, a.a, a.x);
        a.out.value = a.x;
        return false;
      }
      case guest_action::cr: {
        uint64_t* p = cr_ref(c, a.a);
        if (!p) {
          a.out.ok = false;
          a.out.error = "cr must be 0, 3 or 4";
          return false;
        }
        if (*p != a.x && (c.cr_watch & cr_bit(a.a)) && event_on(v, c, event_id::cr)) {
          c.ev_new = a.x;
          send_event(v, c, event_id::cr, event_cr{uint16_t(a.a), {}, *p, a.x}, true);
          return true;
        }
        *p = a.x;
        a.out.value = a.x;
        return false;
      }
      case guest_action::access:
      case guest_action::execute: {
        uint8_t mode = a.k == guest_action::execute ? page_access_x : uint8_t(a.a);
        if (a.phase == 0) {
          uint8_t allowed = access_of(v, a.x);
          if (v.hooked && (mode & ~allowed)) {
            if (event_on(v, c, event_id::pf)) {
              uint64_t gva = 0xffff888000000000ull + a.x;
              send_event(v, c, event_id::pf, event_pf{gva, a.x, mode, 0}, true);
              return true;
            }
            ++v.c.pf_unreported;
          }
          do_access(v, a);
          if (a.k == guest_action::access)
            return false;
          a.phase = 1;
        }
        // INT3 check at the fetched byte.
        if (read_byte(v, a.x) == 0xcc) {
          ++v.c.breakpoint_hits;
          if (event_on(v, c, event_id::breakpoint)) {
            send_event(v, c, event_id::breakpoint, event_breakpoint{a.x}, true);
            return true;
          }
          a.out.guest_exception = true; // #BP delivered to the guest
        }
        return false;
      }
      case guest_action::hypercall: {
        c.regs.rax = kvm_hc_xen_hvm_op;
        c.regs.rdi = xen_hvm_op_guest_request_vm_event;
        c.regs.rsi = 0;
        if (event_on(v, c, event_id::hypercall)) {
          send_event(v, c, event_id::hypercall, std::monostate{}, true);
          return true;
        }
        return false;
      }
      case guest_action::descriptor: {
        if (event_on(v, c, event_id::descriptor)) {
          event_descriptor d{};
          d.instr_info = 0x100 * a.a;
          d.exit_qualification = 0;
          d.descriptor = static_cast<uint8_t>(a.a);
          d.write = static_cast<uint8_t>(a.y);
          send_event(v, c, event_id::descriptor, d, true);
          return true;
        }
        return false;
      }
      case guest_action::xsetbv: {
        if (c.xcr0 != a.x && event_on(v, c, event_id::xsetbv)) {
          send_event(v, c, event_id::xsetbv, std::monostate{}, true);
          return true;
        }
        c.xcr0 = a.x;
        a.out.value = a.x;
        return false;
      }
    }
    return false;
  }

  void do_access(vm& v, guest_action& a) {
    a.out.allowed = true;
    if (a.k == guest_action::access && (a.a & page_access_w))
      page_for_write(v, a.x).bytes[a.x & 4095] = static_cast<uint8_t>(a.y);
  }

  // The vCPU runs whatever it has: injections, queued jobs, guest actions.
  void step(vm& v, vcpu& c) {
    while (!c.waiting && !v.crashed) {
      if (c.inject) {
        auto in = *c.inject;
        c.inject.reset();
        // The injected exception may collide with one the guest raises.
        if (chance(v, o.workload.mix.trap) && event_on(v, c, event_id::trap)) {
          event_trap t{in.nr, 3, in.has_error ? in.error_code : 0u, 0, in.address};
          send_event(v, c, event_id::trap, t, false);
          return;
        }
        continue;
      }
      if (c.create_pending && v.hooked && (v.vm_events & flag(event_id::create_vcpu)) &&
          allowed_vm_event(event_id::create_vcpu, o.allowed_events)) {
        c.create_pending = false;
        send_event(v, c, event_id::create_vcpu, std::monostate{}, false);
        return;
      }
      if (c.pauses && v.hooked) {
        --c.pauses;
        send_event(v, c, event_id::pause_vcpu, std::monostate{}, false);
        return;
      }
      if (c.has_current) {
        if (run(v, c))
          return;
        complete(v, c);
        continue;
      }
      if (!c.queue.empty()) {
        c.current = std::move(c.queue.front());
        c.queue.pop_front();
        c.has_current = true;
        continue;
      }
      if (c.workload_due) {
        c.workload_due = false;
        c.current = workload_action(v, c);
        c.has_current = true;
        continue;
      }
      break;
    }
  }

  void step_all(vm& v) {
    for (auto& c : v.vcpus)
      step(v, c);
  }

  // The reply (or its absence) decided: apply it and let the vCPU go on.
  void finish_event(vm& v, vcpu& c, action act, std::optional<uint64_t> new_val, bool aborted) {
    c.waiting = false;
    v.pending.erase(c.ev_seq);
    if (c.set_regs && !aborted)
      c.regs = *c.set_regs;
    c.set_regs.reset();
    if (!c.ev_for_action)
      return;
    auto& a = c.current;
    ++a.out.events;
    a.out.event = c.ev;
    a.out.aborted = aborted;
    if (!aborted)
      a.out.reply = act;
    if (act == action::crash) {
      a.out.crashed = true;
      return complete(v, c);
    }
    switch (c.ev) {
      case event_id::msr:
        set_msr(c, a.a, new_val.value_or(c.ev_new));
        a.out.value = new_val.value_or(c.ev_new);
        complete(v, c);
        break;
      case event_id::cr:
        *cr_ref(c, a.a) = new_val.value_or(c.ev_new);
        a.out.value = new_val.value_or(c.ev_new);
        complete(v, c);
        break;
      case event_id::xsetbv:
        c.xcr0 = a.x;
        a.out.value = a.x;
        complete(v, c);
        break;
      case event_id::pf:
        if (act == action::retry) {
          ++v.c.pf_retried;
          a.out.allowed = false;
          break; // re-executes: run() again from step()
        }
        ++v.c.pf_allowed;
        do_access(v, a); // emulated
        if (a.k == guest_action::execute)
          a.phase = 1;
        else
          complete(v, c);
        break;
      case event_id::breakpoint:
        if (act == action::retry)
          break; // the tool moved RIP or restored the byte: fetch again
        a.out.guest_exception = true; // CONTINUE re-injects #BP
        complete(v, c);
        break;
      default:
        complete(v, c);
        break;
    }
  }

  // ---- session lifecycle -----------------------------------------------------------

  hs::guest_info guest_info(vm& v) {
    hs::guest_info g;
    g.id = v.uuid;
    g.vcpu_count = static_cast<uint32_t>(v.vcpus.size());
    g.start_time = 1700000000 + v.index;
    g.name = v.name;
    g.regions = v.regions;
    size_t gi = 0;
    for (auto& r : g.regions)
      if (r.type == uint32_t(hs::region_type::nvlink2_gpu_ram)) {
        if (gi < v.gpu_online.size() && v.gpu_online[gi])
          r.flags |= hs::region_online;
        ++gi;
      }
    g.order = o.order;
    return g;
  }

  void start_connect(vm& v) {
    if (h->stopping || v.crashed || v.unhooked || v.fd >= 0)
      return;
    if (v.recv_inflight || v.send_inflight || v.connect_inflight) {
      add_timer(clock::now() + ms{5}, timer_kind::connect, v.local);
      return;
    }
    int fd = ::socket(h->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      add_timer(clock::now() + o.reconnect_delay, timer_kind::connect, v.local);
      return;
    }
    if (h->addr.ss_family == AF_INET) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    v.fd = fd;
    ++v.gen;
    v.connecting = true;
    v.connect_inflight = true;
    auto* s = sqe();
    io_uring_prep_connect(s, fd, reinterpret_cast<sockaddr*>(&h->addr), h->addr_len);
    io_uring_sqe_set_data64(s, ud(op_connect, v.gen, v.local));
  }

  void on_connected(vm& v) {
    v.connecting = false;
    v.connected = true;
    if (v.ever_hooked || v.c.handshake_failures)
      ++v.c.reconnects;
    auto cookie = o.cookie;
    if (fault(v, v.faults->bad_mac)) {
      ++v.c.faults_injected;
      cookie.push_back(0x5a); // a device manager with the wrong secret
    }
    v.dm = std::make_unique<hs::dm_side>(std::move(cookie), guest_info(v), o.handshake);
    put_bytes(v.out, std::span<const uint8_t>(v.dm->out()));
    v.dm->out().clear();
    mark_dirty(v);
    submit_recv(v);
    add_timer(clock::now() + handshake_step_timeout, timer_kind::handshake_timeout, v.local, 0,
              v.gen);
  }

  void hook(vm& v) {
    v.hooked = true;
    v.ever_hooked = true;
    ++v.c.sessions;
    v.splitter = std::make_unique<frame_splitter>(o.order);
    for (auto& c : v.vcpus)
      c.create_pending = true; // sent once the tool enables CREATE_VCPU
  }

  // The socket is gone (tool closed, error, fault, crash, unhook): the
  // kernel's kvmi_end_introspection. by_tool: the tool closed the socket
  // (the host did not end the session itself).
  void end_session(vm& v, bool by_tool = false) {
    if (v.fd < 0)
      return;
    reject_waiters(v);
    ::shutdown(v.fd, SHUT_RDWR);
    ::close(v.fd);
    v.fd = -1;
    ++v.gen; // completions of this connection are stale from now on
    bool was_hooked = v.hooked;
    // A connection that ends before the handshake completed (the
    // introspector refused the MAC and closed, or a step timed out) is a
    // failed handshake; the host stopping is not.
    if (v.dm && !was_hooked && !h->stopping)
      ++v.c.handshake_failures;
    v.connected = v.connecting = v.hooked = false;
    v.out.clear();
    v.deferred.clear();
    v.split_at = 0;
    v.held = false;
    v.close_after_send = false;
    v.dm.reset();
    // The splitter stays: end_session may run inside its feed(); hook() replaces it.
    if (was_hooked) {
      for (auto& c : v.vcpus) {
        if (c.waiting) {
          ++v.c.unanswered_at_close;
          if (by_tool)
            ++v.c.aborted_by_tool;
          finish_event(v, c, action::continue_, std::nullopt, true); // waits aborted
        }
        c.events = 0;
        c.cr_watch = 0;
        c.msr_watch.clear();
        c.pauses = 0;
        c.create_pending = false;
        c.set_regs.reset();
        c.inject.reset();
      }
      // What the tool left behind, seen before the kernel undoes its part.
      v.c.restricted_at_close += v.access.size();
      std::erase_if(v.tool_int3, [&](uint64_t gpa) { return read_byte(v, gpa) != 0xcc; });
      v.c.int3_at_close += v.tool_int3.size();
      v.access.clear(); // full rwx on every tracked page
      v.vm_events = 0;
      v.tokens = 0;
      v.pending.clear();
      v.unhook_sent = false;
    }
    if (v.unhook_requested) {
      v.unhook_requested = false;
      v.unhooked = true;
      for (auto& w : v.unhook_waiters)
        w->set_value(outcome{});
      v.unhook_waiters.clear();
    }
    if (!v.crashed && !v.unhooked && o.reconnect && !h->stopping)
      add_timer(clock::now() + o.reconnect_delay, timer_kind::connect, v.local);
    if (!v.crashed)
      step_all(v); // vCPUs resume, now without introspection
  }

  void crash_vm(vm& v) {
    if (v.crashed)
      return;
    v.crashed = true;
    for (auto& c : v.vcpus) {
      if (c.waiting) {
        c.waiting = false; // the vCPU threads get SIGTERM: nothing resumes
        v.pending.erase(c.ev_seq);
        if (c.ev_for_action && c.has_current) {
          c.current.out.events++;
          c.current.out.event = c.ev;
          c.current.out.aborted = true;
        }
      }
      auto fail = [](guest_action& a) {
        if (a.done) {
          a.out.crashed = true;
          a.done->set_value(a.out);
        }
      };
      if (c.has_current) {
        fail(c.current);
        c.has_current = false;
        c.current = guest_action{};
      }
      for (auto& a : c.queue)
        fail(a);
      c.queue.clear();
    }
    end_session(v);
    v.unhook_requested = false;
    for (auto& w : v.unhook_waiters)
      w->set_value(rejected("vm crashed"));
    v.unhook_waiters.clear();
  }

  void violate(vm& v, violation k) { ++v.c.violations[static_cast<size_t>(k)]; }

  // ---- receiving ---------------------------------------------------------------

  void on_bytes(vm& v, std::span<const uint8_t> in) {
    if (v.dm && v.dm->state() == hs::status::in_progress) {
      auto st = v.dm->feed(in);
      if (!v.dm->out().empty()) {
        put_bytes(v.out, std::span<const uint8_t>(v.dm->out()));
        v.dm->out().clear();
        mark_dirty(v);
      }
      if (st == hs::status::failed) {
        end_session(v); // counts the failure
        return;
      }
      if (st != hs::status::done)
        return;
      hook(v);
    }
    if (!v.splitter || !v.hooked)
      return;
    uint32_t gen = v.gen;
    auto err = v.splitter->feed(in, [&](const frame& f) {
      if (v.gen == gen && v.hooked)
        on_frame(v, f);
    });
    if (v.gen != gen)
      return;
    if (err) {
      violate(v, violation::bad_size);
      end_session(v);
      return;
    }
    flush_deferred(v);
  }

  void on_frame(vm& v, const frame& f) {
    uint16_t id = f.hdr.id;
    if (id >= num_v5_messages) {
      violate(v, violation::unknown_id); // v5 closes on id >= 29
      return end_session(v);
    }
    auto m = decode_from_tool(f, o.order);
    if (!m) {
      auto e = m.err().code;
      if (id == uint16_t(msg_id::event)) {
        violate(v, violation::reply_with_event_id);
        return end_session(v);
      }
      if (e == errc::unknown_id) {
        if (f.payload.empty())
          return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_enosys, false);
        violate(v, violation::unknown_id);
        return end_session(v);
      }
      if (id == uint16_t(msg_id::event_reply)) {
        violate(v, e == errc::bad_padding ? violation::bad_padding : violation::reply_bad_size);
        return end_session(v);
      }
      if (e == errc::bad_padding) {
        violate(v, violation::bad_padding);
        return reply_err(v, static_cast<msg_id>(id), f.hdr.seq, kvm_einval, false);
      }
      if (e == errc::oversize) {
        violate(v, violation::physical_range);
        return end_session(v);
      }
      violate(v, violation::bad_size);
      return end_session(v);
    }
    if (auto* r = std::get_if<event_reply_msg>(&*m))
      return on_event_reply(v, *r);
    auto& cm = std::get<command_msg>(*m);
    on_command(v, cm, static_cast<msg_id>(id));
  }

  void on_event_reply(vm& v, const event_reply_msg& r) {
    auto it = v.pending.find(r.seq);
    if (it == v.pending.end()) {
      violate(v, violation::reply_unknown_seq);
      return end_session(v);
    }
    auto& c = v.vcpus[it->second];
    lat.add(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - c.ev_sent).count()));
    if (auto* pf = std::get_if<event_pf_reply>(&r.extra); pf && pf->ctx_size > pf_ctx_max) {
      violate(v, violation::pf_ctx_oversize);
      return end_session(v);
    }
    if (r.common.event != static_cast<uint32_t>(c.ev)) {
      violate(v, violation::reply_event_mismatch); // not applied: the vCPU continues
      finish_event(v, c, action::continue_, std::nullopt, false);
      return step(v, c);
    }
    auto act = static_cast<action>(r.common.action);
    if (auto e = check(r)) {
      violate(v, e.code == errc::bad_padding ? violation::bad_padding : violation::reply_bad_action);
      act = action::continue_;
    } else {
      ++v.c.replies[r.common.action];
    }
    if (act == action::crash) {
      if (c.ev == event_id::pf)
        ++v.c.pf_crashed;
      finish_event(v, c, act, std::nullopt, false);
      return crash_vm(v);
    }
    std::optional<uint64_t> nv;
    if (auto* x = std::get_if<event_cr_reply>(&r.extra))
      nv = x->new_val;
    if (auto* x = std::get_if<event_msr_reply>(&r.extra))
      nv = x->new_val;
    finish_event(v, c, act, nv, false);
    step(v, c);
  }

  // ---- commands ------------------------------------------------------------------

  template <class F>
  void with_vcpu(vm& v, msg_id id, uint32_t seq, uint16_t idx, F&& f) {
    if (idx >= v.vcpus.size())
      return reply_err(v, id, seq, kvm_einval, false);
    auto& c = v.vcpus[idx];
    if (!c.waiting)
      return reply_err(v, id, seq, kvm_eagain, false);
    f(c);
  }

  void ok(vm& v, msg_id id, uint32_t seq, reply_data d, bool from_vcpu) {
    reply_msg r;
    r.id = id;
    r.seq = seq;
    r.data = std::move(d);
    reply(v, r, from_vcpu);
  }

  static get_cpuid_reply cpuid(uint32_t fn, uint32_t idx, bool& found) {
    found = true;
    switch (fn) {
      case 0: return {0xd, 0x756e6547, 0x6c65746e, 0x49656e69}; // GenuineIntel
      case 1: return {0x000906ea, 0x00100800, 0xfffa3223, 0x0f8bfbff};
      case 7:
        if (idx == 0)
          return {0, 0x009c27ab, 0x00000004, 0xbc000400};
        break;
      case 0xd:
        if (idx == 0)
          return {0x7, 0x340, 0x340, 0};
        if (idx == 1)
          return {0xf, 0x340, 0, 0};
        break;
      case 0x80000000: return {0x80000008, 0, 0, 0};
      case 0x80000001: return {0, 0, 0x121, 0x2c100800};
      case 0x80000008: return {0x3027, 0, 0, 0};
    }
    found = false;
    return {};
  }

  void on_command(vm& v, command_msg& cm, msg_id id) {
    ++v.c.commands[static_cast<size_t>(id)];
    uint32_t seq = cm.seq;
    if (!allowed_command(id, o.allowed_commands) && id != msg_id::get_version)
      return reply_err(v, id, seq, kvm_eacces, false);
    if (auto e = check(cm.body)) {
      if (e.code == errc::bad_range) {
        violate(v, violation::physical_range); // v5 ends the receive loop
        return end_session(v);
      }
      violate(v, e.code == errc::bad_padding ? violation::bad_padding : violation::invalid_command);
      return reply_err(v, id, seq, kvm_einval, vcpu_of(cm.body).has_value());
    }
    std::visit([&](auto& x) { exec(v, seq, x); }, cm.body);
  }

  void exec(vm& v, uint32_t seq, get_version&) {
    ok(v, msg_id::get_version, seq,
       get_version_reply{kvmi::version, (o.allowed_commands & known_commands) | flag(msg_id::get_version),
                         o.allowed_events & known_events, 0},
       false);
  }
  void exec(vm& v, uint32_t seq, pause_all_vcpus&) {
    ok(v, msg_id::pause_all_vcpus, seq, pause_all_vcpus_reply{uint32_t(v.vcpus.size()), 0}, false);
    for (auto& c : v.vcpus) {
      ++c.pauses;
      step(v, c);
    }
  }
  void exec(vm& v, uint32_t seq, get_map_token&) {
    if (v.tokens >= o.max_tokens)
      return reply_err(v, msg_id::get_map_token, seq, kvm_eagain, false);
    ++v.tokens;
    get_map_token_reply t{};
    for (auto& w : t.token.token)
      w = v.rng();
    ok(v, msg_id::get_map_token, seq, t, false);
  }
  void exec(vm& v, uint32_t seq, get_guest_info& x) {
    with_vcpu(v, msg_id::get_guest_info, seq, x.vcpu, [&](vcpu&) {
      ok(v, msg_id::get_guest_info, seq, get_guest_info_reply{uint32_t(v.vcpus.size()), 0, 0}, true);
    });
  }
  void exec(vm& v, uint32_t seq, get_registers_cmd& x) {
    with_vcpu(v, msg_id::get_registers, seq, x.req.vcpu, [&](vcpu& c) {
      registers_reply r{};
      r.fixed.mode = 8;
      r.fixed.regs = c.regs;
      r.fixed.sregs = c.sregs;
      r.fixed.msrs.nmsrs = x.req.nmsrs;
      for (uint32_t idx : x.msrs_idx) {
        auto* p = find_msr(c, idx);
        if (!p)
          return reply_err(v, msg_id::get_registers, seq, kvm_einval, true);
        r.msrs.push_back(kvm_msr_entry{idx, 0, *p});
      }
      ok(v, msg_id::get_registers, seq, std::move(r), true);
    });
  }
  void exec(vm& v, uint32_t seq, set_registers& x) {
    with_vcpu(v, msg_id::set_registers, seq, x.vcpu, [&](vcpu& c) {
      c.set_regs = x.regs; // applied when the event reply arrives
      ok(v, msg_id::set_registers, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, get_cpuid& x) {
    with_vcpu(v, msg_id::get_cpuid, seq, x.vcpu, [&](vcpu&) {
      bool found = false;
      auto r = cpuid(x.function, x.index, found);
      if (!found)
        return reply_err(v, msg_id::get_cpuid, seq, kvm_enoent, true);
      ok(v, msg_id::get_cpuid, seq, r, true);
    });
  }
  void exec(vm& v, uint32_t seq, get_page_access_cmd& x) {
    with_vcpu(v, msg_id::get_page_access, seq, x.req.vcpu, [&](vcpu&) {
      page_access_reply r;
      for (uint64_t gpa : x.gpa) {
        if (introspect_touch(v, gpa) == touch::none)
          return reply_err(v, msg_id::get_page_access, seq, kvm_einval, true);
        r.access.push_back(access_of(v, gpa));
      }
      ok(v, msg_id::get_page_access, seq, std::move(r), true);
    });
  }
  void exec(vm& v, uint32_t seq, set_page_access_cmd& x) {
    with_vcpu(v, msg_id::set_page_access, seq, x.req.vcpu, [&](vcpu&) {
      // v5 applies entries in order and stops at the first error.
      for (auto& e : x.entries) {
        if (introspect_touch(v, e.gpa) == touch::none)
          return reply_err(v, msg_id::set_page_access, seq, kvm_einval, true);
        if (e.access == page_access_rwx)
          v.access.erase(e.gpa >> 12);
        else
          v.access[e.gpa >> 12] = e.access;
      }
      ok(v, msg_id::set_page_access, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, inject_exception& x) {
    with_vcpu(v, msg_id::inject_exception, seq, x.vcpu, [&](vcpu& c) {
      c.inject = injection{x.nr, x.has_error != 0, x.error_code, x.address};
      ok(v, msg_id::inject_exception, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, read_physical& x) {
    if (introspect_touch(v, x.gpa) == touch::none)
      return reply_err(v, msg_id::read_physical, seq, kvm_einval, false);
    physical_data d;
    d.data.resize(x.size);
    auto it = v.memory.find(x.gpa >> 12);
    if (it != v.memory.end())
      std::memcpy(d.data.data(), it->second->bytes + (x.gpa & 4095), x.size);
    ok(v, msg_id::read_physical, seq, std::move(d), false);
  }
  void exec(vm& v, uint32_t seq, write_physical_cmd& x) {
    if (introspect_touch(v, x.req.gpa) == touch::none)
      return reply_err(v, msg_id::write_physical, seq, kvm_einval, false);
    std::memcpy(page_for_write(v, x.req.gpa).bytes + (x.req.gpa & 4095), x.data.data(),
                x.data.size());
    for (size_t k = 0; k < x.data.size(); ++k)
      if (x.data[k] == 0xcc)
        v.tool_int3.insert(x.req.gpa + k);
    ok(v, msg_id::write_physical, seq, std::monostate{}, false);
  }
  void exec(vm& v, uint32_t seq, control_events& x) {
    with_vcpu(v, msg_id::control_events, seq, x.vcpu, [&](vcpu& c) {
      if (x.events & ~(o.allowed_events & known_vcpu_events))
        return reply_err(v, msg_id::control_events, seq, kvm_eperm, true);
      c.events = x.events;
      ok(v, msg_id::control_events, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, control_cr& x) {
    with_vcpu(v, msg_id::control_cr, seq, x.vcpu, [&](vcpu& c) {
      if (x.enable)
        c.cr_watch |= cr_bit(x.cr);
      else
        c.cr_watch &= static_cast<uint8_t>(~cr_bit(x.cr));
      ok(v, msg_id::control_cr, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, control_msr& x) {
    with_vcpu(v, msg_id::control_msr, seq, x.vcpu, [&](vcpu& c) {
      auto it = std::find(c.msr_watch.begin(), c.msr_watch.end(), x.msr);
      if (x.enable && it == c.msr_watch.end())
        c.msr_watch.push_back(x.msr);
      if (!x.enable && it != c.msr_watch.end())
        c.msr_watch.erase(it);
      ok(v, msg_id::control_msr, seq, std::monostate{}, true);
    });
  }
  void exec(vm& v, uint32_t seq, control_vm_events& x) {
    if (x.events & ~(o.allowed_events & known_vm_events))
      return reply_err(v, msg_id::control_vm_events, seq, kvm_eperm, false);
    v.vm_events = x.events;
    ok(v, msg_id::control_vm_events, seq, std::monostate{}, false);
    if (x.events & flag(event_id::create_vcpu))
      step_all(v);
  }
  void exec(vm& v, uint32_t seq, get_xsave& x) {
    with_vcpu(v, msg_id::get_xsave, seq, x.vcpu, [&](vcpu& c) {
      xsave_reply r;
      r.region.assign(xsave_size, 0);
      uint16_t fcw = 0x37f;
      uint32_t mxcsr = 0x1f80;
      std::memcpy(r.region.data(), &fcw, 2);
      std::memcpy(r.region.data() + 24, &mxcsr, 4);
      std::memcpy(r.region.data() + 512, &c.xcr0, 8); // XSTATE_BV
      ok(v, msg_id::get_xsave, seq, std::move(r), true);
    });
  }
  void exec(vm& v, uint32_t seq, control_ve_cmd&) {
    // Unreachable for a v5 host (id 29 closes before decoding); kept total.
    reply_err(v, msg_id::control_ve, seq, kvm_enosys, false);
  }

  // ---- the loop ------------------------------------------------------------------

  void on_cqe(io_uring_cqe* cqe) {
    uint64_t d = io_uring_cqe_get_data64(cqe);
    auto o_ = static_cast<op>(d >> 56);
    uint32_t gen = (d >> 32) & 0xffffff;
    uint32_t local = d & 0xffffffff;
    int res = cqe->res;
    if (o_ == op_wake) {
      wake_armed = false;
      return;
    }
    if (local >= vms.size())
      return;
    auto& v = *vms[local];
    bool current = (v.gen & 0xffffff) == gen;
    switch (o_) {
      case op_connect:
        v.connect_inflight = false;
        if (!current)
          return;
        if (res < 0) {
          ::close(v.fd);
          v.fd = -1;
          ++v.gen;
          v.connecting = false;
          add_timer(clock::now() + o.reconnect_delay, timer_kind::connect, v.local);
          return;
        }
        on_connected(v);
        return;
      case op_recv:
        v.recv_inflight = false;
        if (!current || v.fd < 0)
          return;
        if (res <= 0) {
          if (res == -EINTR || res == -EAGAIN)
            return submit_recv(v);
          return end_session(v, true); // the tool closed (or the socket failed)
        }
        on_bytes(v, std::span<const uint8_t>(v.rbuf.data(), static_cast<size_t>(res)));
        if (current && (v.gen & 0xffffff) == gen && v.fd >= 0 && !v.recv_inflight)
          submit_recv(v);
        return;
      case op_send:
        v.send_inflight = false;
        if (!current || v.fd < 0)
          return;
        if (res < 0)
          return end_session(v, true);
        v.inflight_off += static_cast<size_t>(res);
        v.sent_bytes += static_cast<size_t>(res);
        resolve_sent(v);
        if (v.inflight_off < v.inflight.size())
          return submit_send(v);
        flush(v);
        // A frame cut mid-way: drop the connection once its first half is out.
        if (v.close_after_send && !v.send_inflight && v.out.empty())
          end_session(v);
        return;
      default:
        return;
    }
  }

  void on_timer(const timer& t) {
    auto now = clock::now();
    switch (t.kind) {
      case timer_kind::reconnect_storm:
        if (h->quiesced)
          return;
        for (auto& v : vms)
          if (v->hooked) {
            ++v->c.faults_injected;
            end_session(*v);
          }
        add_timer(now + o.faults.reconnect_storm_every, t.kind, 0);
        return;
      case timer_kind::hotplug_storm: {
        if (h->quiesced)
          return;
        uint32_t cap = o.faults.hotplug_max_vcpus ? o.faults.hotplug_max_vcpus
                                                  : o.vcpus_per_vm * 2;
        for (auto& v : vms)
          if (v->hooked && v->vcpus.size() < std::min<uint32_t>(cap, 65535)) {
            ++v->c.faults_injected;
            hotplug(*v);
          }
        add_timer(now + o.faults.hotplug_storm_every, t.kind, 0);
        return;
      }
      default: break;
    }
    if (t.vm >= vms.size())
      return;
    auto& v = *vms[t.vm];
    switch (t.kind) {
      case timer_kind::connect: start_connect(v); return;
      case timer_kind::workload:
        if (t.vcpu < v.vcpus.size() && !v.crashed && !h->quiesced) {
          v.vcpus[t.vcpu].workload_due = true;
          step(v, v.vcpus[t.vcpu]);
        }
        return;
      case timer_kind::unhook_timeout:
        if (t.gen == v.unhook_gen && v.unhook_requested && v.fd >= 0) {
          violate(v, violation::unhook_timeout);
          end_session(v);
        }
        return;
      case timer_kind::torn_resume:
        if (t.gen == v.gen) {
          v.held = false;
          if (!v.send_inflight)
            flush(v);
        }
        return;
      case timer_kind::slow_send:
        if (t.gen == v.gen)
          for (auto it = slow.begin(); it != slow.end(); ++it)
            if (it->vm_local == v.local && it->gen == t.gen) {
              auto r = std::move(*it);
              slow.erase(it);
              send_frame(v, r.bytes);
              await_sent(v, std::move(r.injected));
              break;
            }
        return;
      case timer_kind::handshake_timeout:
        if (t.gen == v.gen && v.fd >= 0 && !v.hooked)
          end_session(v); // the introspector never finished its part: a failure
        return;
      case timer_kind::gpu_online:
        if (t.vcpu < v.gpu_online.size())
          v.gpu_online[t.vcpu] = true;
        return;
      default: return;
    }
  }

  outcome hotplug(vm& v) {
    outcome out;
    if (v.vcpus.size() >= 65535)
      return rejected("too many vCPUs");
    add_vcpu(v);
    auto& c = v.vcpus.back();
    out.vcpu = c.index;
    if (v.hooked)
      c.create_pending = true; // CREATE_VCPU before it runs, if enabled
    step(v, c);
    return out;
  }

  void request_unhook(vm& v, std::shared_ptr<std::promise<outcome>> p) {
    if (v.crashed)
      return p->set_value(rejected("vm crashed"));
    if (!v.hooked) {
      // Nothing to unhook: QEMU proceeds at once and stops reconnecting.
      v.unhooked = true;
      if (v.fd >= 0)
        end_session(v);
      return p->set_value(outcome{});
    }
    v.unhook_waiters.push_back(std::move(p));
    if (v.unhook_requested)
      return;
    v.unhook_requested = true;
    if ((v.vm_events & flag(event_id::unhook)) &&
        allowed_vm_event(event_id::unhook, o.allowed_events)) {
      // Sent without waiting; the tool removes its hooks and closes.
      event_msg m;
      m.seq = ++v.ev_seq;
      m.common.event = static_cast<uint32_t>(event_id::unhook);
      encode(v.scratch, m, o.order);
      ++v.c.events[static_cast<size_t>(event_id::unhook)];
      v.unhook_sent = true;
      send_frame(v, v.scratch);
      add_timer(clock::now() + o.unhook_timeout, timer_kind::unhook_timeout, v.local, 0,
                ++v.unhook_gen);
    } else {
      end_session(v); // no UNHOOK event: QEMU just closes
    }
  }

  void loop() {
    auto* s = sqe();
    io_uring_prep_read(s, wake_fd, &wake_buf, sizeof wake_buf, 0);
    io_uring_sqe_set_data64(s, ud(op_wake, 0, 0));
    wake_armed = true;
    while (true) {
      __kernel_timespec ts{0, 50'000'000};
      {
        std::lock_guard<std::mutex> l(mu);
        if (!timers.empty()) {
          auto d = timers.top().at - clock::now();
          auto ns = std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
          ns = std::min<int64_t>(ns, 50'000'000);
          ts = {0, static_cast<long long>(ns)};
        }
      }
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, nullptr);
      std::unique_lock<std::mutex> l(mu);
      unsigned head, n = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        on_cqe(cqe);
        ++n;
      }
      io_uring_cq_advance(&ring, n);
      if (h->stopping)
        break;
      if (!wake_armed) {
        auto* w = sqe();
        io_uring_prep_read(w, wake_fd, &wake_buf, sizeof wake_buf, 0);
        io_uring_sqe_set_data64(w, ud(op_wake, 0, 0));
        wake_armed = true;
      }
      auto now = clock::now();
      while (!timers.empty() && timers.top().at <= now) {
        auto t = timers.top();
        timers.pop();
        on_timer(t);
      }
      service();
      l.unlock();
      h->notify();
    }
    // Shutdown: close every session; waiters learn the VM is gone.
    for (auto& v : vms) {
      for (auto& c : v->vcpus) {
        auto fail = [](guest_action& a) {
          if (a.done) {
            a.out.aborted = true;
            a.done->set_value(a.out);
          }
        };
        if (c.has_current)
          fail(c.current);
        c.has_current = false;
        for (auto& a : c.queue)
          fail(a);
        c.queue.clear();
      }
      end_session(*v);
      for (auto& w : v->unhook_waiters)
        w->set_value(rejected("host stopped"));
      v->unhook_waiters.clear();
    }
  }

  // After every batch: send what is queued.
  void service() {
    for (size_t i = 0; i < dirty.size(); ++i) {
      auto& v = *vms[dirty[i]];
      flush_deferred(v);
      flush(v);
    }
    dirty.clear();
  }
};

shard& host::impl::shard_of(uint32_t vm) { return *shards[vm % shards.size()]; }

namespace {
const memory_spec& memory_of(const options& o, uint32_t vm) {
  auto it = o.memory_per_vm.find(vm);
  return it != o.memory_per_vm.end() ? it->second : o.memory;
}
} // namespace

// --- host -----------------------------------------------------------------------

host::host(options o) : p_(std::make_unique<impl>()) {
  p_->o = std::move(o);
  auto& op = p_->o;
  if (op.threads == 0)
    op.threads = 1;
  if (op.vcpus_per_vm == 0 || op.vcpus_per_vm > 65535)
    throw std::invalid_argument("vcpus_per_vm must be 1..65535");
  if (op.handshake == hs::mode::qemu_v5 && op.order != byte_order::native)
    throw std::invalid_argument("the qemu-v5 handshake has no byte-order marker");
  if (!op.unix_path.empty()) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (op.unix_path.size() >= sizeof a.sun_path)
      throw std::invalid_argument("unix socket path too long");
    std::memcpy(a.sun_path, op.unix_path.c_str(), op.unix_path.size() + 1);
    std::memcpy(&p_->addr, &a, sizeof a);
    p_->addr_len = sizeof a;
  } else {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    auto port = std::to_string(op.tcp_port);
    if (getaddrinfo(op.tcp_host.c_str(), port.c_str(), &hints, &res) != 0 || !res)
      throw std::invalid_argument("cannot resolve " + op.tcp_host);
    std::memcpy(&p_->addr, res->ai_addr, res->ai_addrlen);
    p_->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
  }
  unsigned nthreads = std::min<unsigned>(op.threads, std::max<uint32_t>(1, op.vms));
  for (unsigned i = 0; i < nthreads; ++i)
    p_->shards.push_back(std::make_unique<shard>(p_.get(), i));
  uint64_t sm = op.seed;
  for (uint32_t i = 0; i < op.vms; ++i) {
    auto& s = p_->shard_of(i);
    auto v = std::make_unique<detail::vm>();
    v->index = i;
    v->local = static_cast<uint32_t>(s.vms.size());
    v->rng.seed(splitmix(sm));
    for (auto& b : v->uuid)
      b = static_cast<uint8_t>(v->rng());
    v->uuid[6] = static_cast<uint8_t>((v->uuid[6] & 0x0f) | 0x40); // version 4
    v->uuid[8] = static_cast<uint8_t>((v->uuid[8] & 0x3f) | 0x80);
    v->name = op.name_prefix + std::to_string(i);
    if (v->name.size() > 31)
      v->name.resize(31);
    auto& mem = memory_of(op, i);
    auto fl = op.faults_per_vm.find(i);
    v->faults = fl != op.faults_per_vm.end() ? &fl->second : &op.faults;
    v->regions = memory_map(mem);
    v->gpu_online.assign(mem.gpus.size(), false);
    v->rbuf.resize(64 << 10);
    v->pending.reserve(op.vcpus_per_vm * 2);
    for (uint32_t c = 0; c < op.vcpus_per_vm; ++c)
      s.add_vcpu(*v);
    s.vms.push_back(std::move(v));
  }
}

host::~host() { stop(); }

const options& host::opts() const { return p_->o; }

void host::start() {
  if (p_->started)
    return;
  p_->started = true;
  p_->t0 = clock::now();
  auto& o = p_->o;
  for (auto& s : p_->shards) {
    std::lock_guard<std::mutex> l(s->mu);
    for (auto& v : s->vms) {
      s->add_timer(p_->t0, timer_kind::connect, v->local);
      auto& mem = memory_of(o, v->index);
      for (size_t g = 0; g < mem.gpus.size(); ++g) {
        auto& on = mem.gpus[g].online_after;
        if (on && on->count() <= 0)
          v->gpu_online[g] = true;
        else if (on)
          s->add_timer(p_->t0 + *on, timer_kind::gpu_online, v->local, static_cast<uint32_t>(g));
      }
    }
    if (o.faults.reconnect_storm_every.count() > 0)
      s->add_timer(p_->t0 + o.faults.reconnect_storm_every, timer_kind::reconnect_storm, 0);
    if (o.faults.hotplug_storm_every.count() > 0)
      s->add_timer(p_->t0 + o.faults.hotplug_storm_every, timer_kind::hotplug_storm, 0);
  }
  for (auto& s : p_->shards)
    s->th = std::thread([sp = s.get()] { sp->loop(); });
  if (o.progress_every.count() > 0)
    p_->progress = std::thread([this] {
      std::unique_lock<std::mutex> l(p_->progress_mu);
      while (!p_->stopping) {
        p_->progress_cv.wait_for(l, p_->o.progress_every);
        if (p_->stopping)
          break;
        auto r = make_report();
        uint64_t ev = 0;
        for (auto x : r.total.events)
          ev += x;
        std::fprintf(stderr,
                     "kvmi-sim: %.1fs events=%llu replies=%llu p99=%.1fus violations=%llu hmis=%llu "
                     "reconnects=%llu\n",
                     r.seconds, (unsigned long long)ev,
                     (unsigned long long)(r.total.replies[0] + r.total.replies[1] + r.total.replies[2]),
                     r.event_latency.p99_us, (unsigned long long)r.total.violation_count(),
                     (unsigned long long)r.total.hmis, (unsigned long long)r.total.reconnects);
      }
    });
}

void host::quiesce() {
  p_->quiesced = true;
  for (auto& s : p_->shards)
    s->wake();
}

void host::stop() {
  if (!p_ || !p_->started || p_->stopping.exchange(true))
    return;
  {
    std::lock_guard<std::mutex> l(p_->progress_mu);
  }
  p_->progress_cv.notify_all();
  for (auto& s : p_->shards)
    s->wake();
  for (auto& s : p_->shards)
    if (s->th.joinable())
      s->th.join();
  if (p_->progress.joinable())
    p_->progress.join();
  p_->notify();
}

bool host::wait_until(const std::function<bool()>& pred, ms timeout) {
  auto deadline = clock::now() + timeout;
  while (true) {
    uint64_t g;
    {
      std::lock_guard<std::mutex> l(p_->changed_mu);
      g = p_->changed_gen;
    }
    auto t = clock::now();
    if (pred())
      return true;
    auto now = clock::now();
    if (now >= deadline)
      return pred();
    auto took = now - t;
    std::unique_lock<std::mutex> l(p_->changed_mu);
    p_->changed_cv.wait_until(l, std::min(deadline, now + ms{20}),
                              [&] { return p_->changed_gen != g; });
    // A predicate that takes every shard's lock must not starve the event
    // loops: it gets at most ~10% of the time.
    l.unlock();
    std::this_thread::sleep_for(std::max<clock::duration>(us{500}, took * 10));
  }
}

namespace {

counters to_counters(const vm_counts& c) {
  counters r;
  r.events = c.events;
  r.replies = c.replies;
  for (size_t i = 0; i < c.commands.size(); ++i)
    if (c.commands[i])
      r.commands[std::string(name(static_cast<msg_id>(i)))] += c.commands[i];
  for (size_t i = 0; i < c.errors.size(); ++i)
    if (c.errors[i])
      r.errors[std::string(kvm_error_name(i == 63 ? -kvm_enosys : -static_cast<int32_t>(i)))] +=
        c.errors[i];
  for (size_t i = 0; i < c.violations.size(); ++i)
    if (c.violations[i])
      r.violations[std::string(name(static_cast<violation>(i)))] += c.violations[i];
  r.breakpoint_hits = c.breakpoint_hits;
  r.pf_allowed = c.pf_allowed;
  r.pf_retried = c.pf_retried;
  r.pf_crashed = c.pf_crashed;
  r.pf_unreported = c.pf_unreported;
  r.hmis = c.hmis;
  r.sessions = c.sessions;
  r.reconnects = c.reconnects;
  r.handshake_failures = c.handshake_failures;
  r.unanswered_at_close = c.unanswered_at_close;
  r.restricted_at_close = c.restricted_at_close;
  r.int3_at_close = c.int3_at_close;
  r.aborted_by_tool = c.aborted_by_tool;
  r.faults_injected = c.faults_injected;
  return r;
}

bool held_kind(event_id e) { return e == event_id::pause_vcpu || e == event_id::create_vcpu; }

vcpu_view view_of(const vcpu& c, time_point now) {
  vcpu_view w;
  if (c.waiting)
    w.wait_ms = std::chrono::duration<double, std::milli>(now - c.ev_sent).count();
  w.state = !c.waiting ? vcpu_state::running
            : c.ev == event_id::pause_vcpu ? vcpu_state::paused
                                           : vcpu_state::in_event;
  if (c.waiting)
    w.event = c.ev;
  w.pending_pauses = c.pauses;
  w.enabled_events = c.events;
  w.regs = c.regs;
  w.sregs = c.sregs;
  w.xcr0 = c.xcr0;
  return w;
}

} // namespace

uint32_t host::vm_count() const { return p_->o.vms; }

#define KVMI_SIM_WITH_VM(vmi, fallback)                                                 \
  if ((vmi) >= p_->o.vms)                                                               \
    return fallback;                                                                    \
  auto& s_ = p_->shard_of(vmi);                                                         \
  std::lock_guard<std::mutex> lock_(s_.mu);                                             \
  auto& v_ = *s_.vms[p_->local_of(vmi)];

vm_view host::vm(uint32_t i) const {
  KVMI_SIM_WITH_VM(i, vm_view{})
  vm_view w;
  w.index = v_.index;
  w.uuid = v_.uuid;
  w.name = v_.name;
  w.connected = v_.connected;
  w.hooked = v_.hooked;
  w.crashed = v_.crashed;
  w.unhooked = v_.unhooked;
  w.regions = s_.guest_info(v_).regions;
  auto now = clock::now();
  for (auto& c : v_.vcpus)
    w.vcpus.push_back(view_of(c, now));
  w.c = to_counters(v_.c);
  return w;
}

std::optional<vcpu_view> host::vcpu(uint32_t i, uint32_t c) const {
  KVMI_SIM_WITH_VM(i, std::nullopt)
  if (c >= v_.vcpus.size())
    return std::nullopt;
  return view_of(v_.vcpus[c], clock::now());
}

std::optional<uint64_t> host::msr(uint32_t i, uint32_t c, uint32_t m) const {
  KVMI_SIM_WITH_VM(i, std::nullopt)
  if (c >= v_.vcpus.size())
    return std::nullopt;
  auto* p = shard::find_msr(v_.vcpus[c], m);
  return p ? std::optional<uint64_t>(*p) : std::nullopt;
}

std::optional<uint64_t> host::cr(uint32_t i, uint32_t c, uint32_t n) const {
  KVMI_SIM_WITH_VM(i, std::nullopt)
  if (c >= v_.vcpus.size())
    return std::nullopt;
  auto* p = shard::cr_ref(v_.vcpus[c], n);
  return p ? std::optional<uint64_t>(*p) : std::nullopt;
}

uint8_t host::page_access(uint32_t i, uint64_t gpa) const {
  KVMI_SIM_WITH_VM(i, page_access_rwx)
  return s_.access_of(v_, gpa);
}

std::vector<uint8_t> host::memory(uint32_t i, uint64_t gpa, size_t n) const {
  KVMI_SIM_WITH_VM(i, {})
  std::vector<uint8_t> out(n);
  for (size_t k = 0; k < n; ++k)
    out[k] = s_.read_byte(v_, gpa + k);
  return out;
}

counters host::vm_counters(uint32_t i) const {
  KVMI_SIM_WITH_VM(i, counters{})
  return to_counters(v_.c);
}

bool host::hooked(uint32_t i) const {
  KVMI_SIM_WITH_VM(i, false)
  return v_.hooked;
}

void host::guest_write(uint32_t i, uint64_t gpa, std::vector<uint8_t> bytes) {
  KVMI_SIM_WITH_VM(i, )
  for (size_t k = 0; k < bytes.size(); ++k)
    s_.page_for_write(v_, gpa + k).bytes[(gpa + k) & 4095] = bytes[k];
}

report host::make_report() const {
  report r;
  r.vms = p_->o.vms;
  r.seconds = p_->started
                ? std::chrono::duration<double>(clock::now() - p_->t0).count()
                : 0;
  histogram lat;
  vm_counts sum;
  for (auto& s : p_->shards) {
    std::lock_guard<std::mutex> l(s->mu);
    lat.merge(s->lat);
    auto now = clock::now();
    for (auto& v : s->vms) {
      r.vcpus += static_cast<uint32_t>(v->vcpus.size());
      sum += v->c;
      for (auto& c : v->vcpus) {
        if (!c.waiting)
          continue;
        ++r.waiting;
        if (held_kind(c.ev))
          ++r.waiting_held;
        else
          r.oldest_pending_ms = std::max(
            r.oldest_pending_ms, std::chrono::duration<double, std::milli>(now - c.ev_sent).count());
      }
    }
  }
  r.total = to_counters(sum);
  r.event_latency.count = lat.n;
  r.event_latency.p50_us = double(lat.quantile(0.5)) / 1e3;
  r.event_latency.p99_us = double(lat.quantile(0.99)) / 1e3;
  r.event_latency.p999_us = double(lat.quantile(0.999)) / 1e3;
  r.event_latency.max_us = double(lat.max) / 1e3;
  return r;
}

nlohmann::json to_json(const report& r) {
  using nlohmann::json;
  json ev = json::object(), rep = json::object();
  uint64_t ev_total = 0;
  for (size_t i = 0; i < r.total.events.size(); ++i) {
    ev[std::string(name(static_cast<event_id>(i)))] = r.total.events[i];
    ev_total += r.total.events[i];
  }
  for (size_t i = 0; i < r.total.replies.size(); ++i)
    rep[std::string(name(static_cast<action>(i)))] = r.total.replies[i];
  auto& t = r.total;
  return json{
    {"ok", r.ok()},
    {"vms", r.vms},
    {"vcpus", r.vcpus},
    {"seconds", r.seconds},
    {"events", ev},
    {"events_total", ev_total},
    {"replies", rep},
    {"replies_total", t.replies[0] + t.replies[1] + t.replies[2]},
    {"commands", t.commands},
    {"errors", t.errors},
    {"latency_us",
     {{"count", r.event_latency.count},
      {"p50", r.event_latency.p50_us},
      {"p99", r.event_latency.p99_us},
      {"p999", r.event_latency.p999_us},
      {"max", r.event_latency.max_us}}},
    {"violations", t.violations},
    {"violations_total", t.violation_count()},
    {"hmis", t.hmis},
    {"breakpoint_hits", t.breakpoint_hits},
    {"pf", {{"allowed", t.pf_allowed}, {"retried", t.pf_retried}, {"crashed", t.pf_crashed},
            {"unreported", t.pf_unreported}}},
    {"sessions", t.sessions},
    {"reconnects", t.reconnects},
    {"handshake_failures", t.handshake_failures},
    {"unanswered_at_close", t.unanswered_at_close},
    {"restricted_at_close", t.restricted_at_close},
    {"int3_at_close", t.int3_at_close},
    {"aborted_by_tool", t.aborted_by_tool},
    {"waiting", {{"vcpus", r.waiting}, {"held", r.waiting_held},
                 {"oldest_pending_ms", r.oldest_pending_ms}}},
    {"faults_injected", t.faults_injected},
  };
}

// --- scripted actions -----------------------------------------------------------

namespace {
std::future<outcome> ready(outcome o) {
  std::promise<outcome> p;
  p.set_value(std::move(o));
  return p.get_future();
}
} // namespace

#define KVMI_SIM_ACTION(vmi, vcpui, fill)                                              \
  if ((vmi) >= p_->o.vms)                                                              \
    return ready(rejected("no such vm"));                                        \
  auto& s_ = p_->shard_of(vmi);                                                        \
  std::lock_guard<std::mutex> lock_(s_.mu);                                            \
  auto& v_ = *s_.vms[p_->local_of(vmi)];                                               \
  if ((vcpui) >= v_.vcpus.size())                                                      \
    return ready(rejected("no such vcpu"));                                      \
  if (v_.crashed)                                                                      \
    return ready(rejected("vm crashed"));                                        \
  if (p_->stopping)                                                                    \
    return ready(rejected("host stopped"));                                      \
  guest_action a_;                                                                     \
  fill;                                                                                \
  a_.done = std::make_shared<std::promise<outcome>>();                                 \
  auto f_ = a_.done->get_future();                                                     \
  auto& c_ = v_.vcpus[vcpui];                                                          \
  c_.queue.push_back(std::move(a_));                                                   \
  s_.step(v_, c_);                                                                     \
  s_.wake();                                                                           \
  return f_;

std::future<outcome> host::write_msr(uint32_t vm, uint32_t vcpu, uint32_t m, uint64_t value) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::msr, a_.a = m, a_.x = value))
}
std::future<outcome> host::write_cr(uint32_t vm, uint32_t vcpu, uint32_t n, uint64_t value) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::cr, a_.a = n, a_.x = value))
}
std::future<outcome> host::access(uint32_t vm, uint32_t vcpu, uint64_t gpa, uint8_t rwx) {
  KVMI_SIM_ACTION(vm, vcpu,
                  (a_.k = guest_action::access, a_.a = rwx & page_access_rwx, a_.x = gpa,
                   a_.y = 0x90))
}
std::future<outcome> host::execute(uint32_t vm, uint32_t vcpu, uint64_t gpa) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::execute, a_.x = gpa))
}
std::future<outcome> host::hypercall(uint32_t vm, uint32_t vcpu) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::hypercall))
}
std::future<outcome> host::descriptor(uint32_t vm, uint32_t vcpu, uint8_t desc, bool write) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::descriptor, a_.a = desc, a_.y = write ? 1 : 0))
}
std::future<outcome> host::xsetbv(uint32_t vm, uint32_t vcpu, uint64_t xcr0) {
  KVMI_SIM_ACTION(vm, vcpu, (a_.k = guest_action::xsetbv, a_.x = xcr0))
}

std::future<outcome> host::hotplug(uint32_t vmi) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  if (v_.crashed)
    return ready(rejected("vm crashed"));
  auto out = s_.hotplug(v_);
  s_.wake();
  return ready(out);
}

std::future<outcome> host::request_unhook(uint32_t vmi) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  auto p = std::make_shared<std::promise<outcome>>();
  auto f = p->get_future();
  s_.request_unhook(v_, std::move(p));
  s_.wake();
  return f;
}

std::future<outcome> host::crash(uint32_t vmi) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  s_.crash_vm(v_);
  s_.wake();
  return ready(outcome{});
}

std::future<outcome> host::inject_fault(uint32_t vmi, const std::string& fault) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  if (!v_.hooked)
    return ready(rejected("vm not hooked"));
  auto w = std::make_shared<std::promise<outcome>>();
  auto f = w->get_future();
  // Frames are built by hand here: these are what a broken kernel would send.
  event_msg m;
  m.seq = ++v_.ev_seq;
  m.common.event = static_cast<uint32_t>(event_id::pause_vcpu);
  s_.fill_common(v_.vcpus[0], m.common);
  encode(v_.scratch, m, p_->o.order);
  if (fault == "drop_mid_frame") {
    put_bytes(v_.out, std::span<const uint8_t>(v_.scratch).subspan(0, v_.scratch.size() / 2));
    v_.close_after_send = true;
    s_.await_sent(v_, std::move(w));
  } else if (fault == "garbage") {
    uint8_t g[40];
    for (auto& b : g)
      b = static_cast<uint8_t>(v_.rng());
    msg_hdr hd{0xbeef, 32, 1};
    to_order(hd, p_->o.order);
    std::memcpy(g, &hd, sizeof hd);
    put_bytes(v_.out, std::span<const uint8_t>(g, sizeof g));
    s_.await_sent(v_, std::move(w));
  } else if (fault == "unknown_seq_reply") {
    reply_msg r;
    r.id = msg_id::get_version;
    r.seq = 0xdead0000u | (v_.rng() & 0xffff);
    r.data = get_version_reply{kvmi::version, p_->o.allowed_commands, p_->o.allowed_events, 0};
    encode(v_.scratch, r, p_->o.order);
    put_bytes(v_.out, std::span<const uint8_t>(v_.scratch));
    s_.await_sent(v_, std::move(w));
  } else if (fault == "torn") {
    v_.torn_waiters.push_back(std::move(w));
  } else if (fault == "duplicate_reply") {
    v_.dup_waiters.push_back(std::move(w));
  } else if (fault == "slow_reply") {
    v_.slow_waiters.push_back(std::move(w));
  } else if (fault == "disconnect") {
    s_.end_session(v_);
    w->set_value(outcome{});
  } else {
    return ready(rejected("unknown fault: " + fault));
  }
  ++v_.c.faults_injected;
  s_.mark_dirty(v_);
  s_.wake();
  return f;
}

// --- scenarios ------------------------------------------------------------------

nlohmann::json host::run_scenario(const nlohmann::json& scenario) {
  using nlohmann::json;
  json results = json::array();
  if (!scenario.contains("steps") || !scenario["steps"].is_array())
    return json::array({json{{"failed", true}, {"error", "scenario needs a steps array"}}});
  for (auto& st : scenario["steps"]) {
    json r{{"op", st.value("op", "")}};
    std::string op = st.value("op", "");
    uint32_t vm = st.value("vm", 0u), vcpu = st.value("vcpu", 0u);
    auto timeout = ms{st.value("timeout_ms", 5000)};
    std::optional<std::future<outcome>> f;
    if (op == "sleep") {
      std::this_thread::sleep_for(ms{st.value("ms", 0)});
    } else if (op == "wait_hooked") {
      bool okh = wait_until([&] { return hooked(vm); }, timeout);
      r["hooked"] = okh;
      if (!okh)
        r["failed"] = true;
    } else if (op == "write_msr") {
      f = write_msr(vm, vcpu, st.at("msr").get<uint32_t>(), st.at("value").get<uint64_t>());
    } else if (op == "write_cr") {
      f = write_cr(vm, vcpu, st.at("cr").get<uint32_t>(), st.at("value").get<uint64_t>());
    } else if (op == "access") {
      std::string mode = st.value("mode", "r");
      uint8_t m = 0;
      for (char ch : mode)
        m |= ch == 'r' ? page_access_r : ch == 'w' ? page_access_w : ch == 'x' ? page_access_x : 0;
      f = access(vm, vcpu, st.at("gpa").get<uint64_t>(), m);
    } else if (op == "execute") {
      f = execute(vm, vcpu, st.at("gpa").get<uint64_t>());
    } else if (op == "hypercall") {
      f = hypercall(vm, vcpu);
    } else if (op == "descriptor") {
      f = descriptor(vm, vcpu, st.value("descriptor", uint8_t(desc_idtr)), st.value("write", false));
    } else if (op == "xsetbv") {
      f = xsetbv(vm, vcpu, st.at("value").get<uint64_t>());
    } else if (op == "hotplug") {
      f = hotplug(vm);
    } else if (op == "unhook") {
      f = request_unhook(vm);
    } else if (op == "crash") {
      f = crash(vm);
    } else if (op == "fault") {
      f = inject_fault(vm, st.value("fault", ""));
    } else if (op == "guest_write") {
      guest_write(vm, st.at("gpa").get<uint64_t>(), st.at("bytes").get<std::vector<uint8_t>>());
    } else {
      r["failed"] = true;
      r["error"] = "unknown op";
    }
    if (f) {
      if (f->wait_for(timeout) != std::future_status::ready) {
        r["failed"] = true;
        r["error"] = "timeout";
      } else {
        auto out = f->get();
        r["ok"] = out.ok;
        if (!out.error.empty())
          r["error"] = out.error;
        r["events"] = out.events;
        if (out.event)
          r["event"] = std::string(name(*out.event));
        if (out.reply)
          r["reply"] = std::string(name(*out.reply));
        r["aborted"] = out.aborted;
        r["crashed"] = out.crashed;
        r["allowed"] = out.allowed;
        r["guest_exception"] = out.guest_exception;
        r["value"] = out.value;
        r["vcpu"] = out.vcpu;
        if (!out.ok)
          r["failed"] = true;
      }
    }
    if (st.contains("expect"))
      for (auto& [k, want] : st["expect"].items())
        if (!r.contains(k) || r[k] != want) {
          r["failed"] = true;
          r["expect_failed"][k] = want;
        }
    results.push_back(std::move(r));
  }
  return results;
}

} // namespace kvmi::sim
