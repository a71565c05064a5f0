// The public API of kvmi-sim: building the shards, starting and stopping
// their loops, inspection and scripted guest actions (each under the owning
// shard's mutex).
#include "kernel-patches/sim/guest_memory.hpp"
#include "kernel-patches/sim/host_impl.hpp"
#include "kernel-patches/sim/report.hpp"
#include "kernel-patches/sim/vcpu_registers.hpp"

#include <cstdio>
#include <cstring>

#include <netdb.h>
#include <pthread.h>
#include <sys/un.h>

namespace kvmi::sim {

using namespace detail;

namespace {
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
std::string vm_name(const options& o, uint32_t i) {
  if (o.name_format.empty())
    return o.name_prefix + std::to_string(i);
  std::string name = o.name_format;
  if (auto at = name.find("%d"); at != std::string::npos)
    name.replace(at, 2, std::to_string(i));
  return name;
}
} // namespace

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
  if (op.dialect == protocol::v7 && op.order != byte_order::native)
    throw std::invalid_argument("the v7 QEMU handshake has no byte-order marker");
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
    v->name = vm_name(op, i);
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
      s.guest.add_vcpu(*v);
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
      s->net.add_timer(p_->t0, timer_kind::connect, v->local);
      auto& mem = memory_of(o, v->index);
      for (size_t g = 0; g < mem.gpus.size(); ++g) {
        auto& on = mem.gpus[g].online_after;
        if (on && on->count() <= 0)
          v->gpu_online[g] = true;
        else if (on)
          s->net.add_timer(p_->t0 + *on, timer_kind::gpu_online, v->local, static_cast<uint32_t>(g));
      }
    }
    if (o.faults.reconnect_storm_every.count() > 0)
      s->net.add_timer(p_->t0 + o.faults.reconnect_storm_every, timer_kind::reconnect_storm, 0);
    if (o.faults.hotplug_storm_every.count() > 0)
      s->net.add_timer(p_->t0 + o.faults.hotplug_storm_every, timer_kind::hotplug_storm, 0);
  }
  for (auto& s : p_->shards)
    s->th = std::thread([sp = s.get()] {
      // Named, so a process hosting the simulator beside kvmid (the bench)
      // can tell their CPU time apart.
      pthread_setname_np(pthread_self(), "kvmi-sim");
      sp->net.loop();
    });
  if (o.progress_every.count() > 0)
    p_->progress = std::thread([this] {
      std::unique_lock<std::mutex> l(p_->progress_mu);
      while (!p_->stopping) {
        p_->progress_cv.wait_for(l, p_->o.progress_every);
        if (p_->stopping)
          break;
        std::fputs(progress_line(make_report()).c_str(), stderr);
      }
    });
}

void host::quiesce() {
  p_->quiesced = true;
  for (auto& s : p_->shards)
    s->net.wake();
}

void host::stop() {
  if (!p_ || !p_->started || p_->stopping.exchange(true))
    return;
  {
    std::lock_guard<std::mutex> l(p_->progress_mu);
  }
  p_->progress_cv.notify_all();
  for (auto& s : p_->shards)
    s->net.wake();
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
  w.regions = s_.dm.guest_info(v_).regions;
  auto now = clock::now();
  for (auto& c : v_.vcpus)
    w.vcpus.push_back(view_of(c, now));
  w.c = to_counters(v_.c, p_->o.dialect);
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
  auto* p = find_msr(v_.vcpus[c], m);
  return p ? std::optional<uint64_t>(*p) : std::nullopt;
}

std::optional<uint64_t> host::cr(uint32_t i, uint32_t c, uint32_t n) const {
  KVMI_SIM_WITH_VM(i, std::nullopt)
  if (c >= v_.vcpus.size())
    return std::nullopt;
  auto* p = cr_ref(v_.vcpus[c], n);
  return p ? std::optional<uint64_t>(*p) : std::nullopt;
}

uint8_t host::page_access(uint32_t i, uint64_t gpa) const {
  KVMI_SIM_WITH_VM(i, page_access_rwx)
  return access_of(v_, gpa);
}

std::vector<uint8_t> host::memory(uint32_t i, uint64_t gpa, size_t n) const {
  KVMI_SIM_WITH_VM(i, {})
  std::vector<uint8_t> out(n);
  for (size_t k = 0; k < n; ++k)
    out[k] = read_byte(v_, gpa + k);
  return out;
}

counters host::vm_counters(uint32_t i) const {
  KVMI_SIM_WITH_VM(i, counters{})
  return to_counters(v_.c, p_->o.dialect);
}

bool host::hooked(uint32_t i) const {
  KVMI_SIM_WITH_VM(i, false)
  return v_.hooked;
}

void host::guest_write(uint32_t i, uint64_t gpa, std::vector<uint8_t> bytes) {
  KVMI_SIM_WITH_VM(i, )
  for (size_t k = 0; k < bytes.size(); ++k)
    page_for_write(v_, gpa + k).bytes[(gpa + k) & 4095] = bytes[k];
}

// --- scripted actions -----------------------------------------------------------

namespace {
std::future<outcome> ready(outcome o) {
  std::promise<outcome> p;
  p.set_value(std::move(o));
  return p.get_future();
}
} // namespace

#define KVMI_SIM_ACTION(vmi, vcpui, fill)                                               \
  if ((vmi) >= p_->o.vms)                                                               \
    return ready(rejected("no such vm"));                                               \
  auto& s_ = p_->shard_of(vmi);                                                         \
  std::lock_guard<std::mutex> lock_(s_.mu);                                             \
  auto& v_ = *s_.vms[p_->local_of(vmi)];                                                \
  if ((vcpui) >= v_.vcpus.size())                                                       \
    return ready(rejected("no such vcpu"));                                             \
  if (v_.crashed)                                                                       \
    return ready(rejected("vm crashed"));                                               \
  if (p_->stopping)                                                                     \
    return ready(rejected("host stopped"));                                             \
  guest_action a_;                                                                      \
  fill;                                                                                 \
  a_.done = std::make_shared<std::promise<outcome>>();                                  \
  auto f_ = a_.done->get_future();                                                      \
  auto& c_ = v_.vcpus[vcpui];                                                           \
  c_.queue.push_back(std::move(a_));                                                    \
  s_.guest.step(v_, c_);                                                                \
  s_.net.wake();                                                                        \
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
  auto out = s_.guest.hotplug(v_);
  s_.net.wake();
  return ready(out);
}

std::future<outcome> host::request_unhook(uint32_t vmi) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  auto p = std::make_shared<std::promise<outcome>>();
  auto f = p->get_future();
  s_.dm.request_unhook(v_, std::move(p));
  s_.net.wake();
  return f;
}

std::future<outcome> host::crash(uint32_t vmi) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  s_.guest.crash(v_);
  s_.net.wake();
  return ready(outcome{});
}

std::future<outcome> host::inject_fault(uint32_t vmi, const std::string& fault) {
  KVMI_SIM_WITH_VM(vmi, ready(rejected("no such vm")))
  auto f = s_.faults.inject(v_, fault);
  s_.net.wake();
  return f;
}

} // namespace kvmi::sim
