// Fakes for driving the control plane's connection handler without a
// reactor or a core: a conn_ctx that records what is sent, a poster that
// queues ring-thread work until the test runs it, and a scripted backend.
#pragma once

#include "server/control/api.hpp"

#include <deque>
#include <map>
#include <mutex>
#include <string>

namespace kvmid::test {

struct fake_ctx final : net::conn_ctx {
  net::conn_id cid = 1;
  std::string peer_name = "tcp:127.0.0.1:5555";
  std::string out;
  bool closed = false;
  std::map<uint64_t, std::chrono::milliseconds> timers;
  size_t queued_msgs = 0;
  size_t sends = 0;

  net::conn_id id() const override { return cid; }
  const std::string& peer() const override { return peer_name; }
  bool send(std::span<const uint8_t> b) override {
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    ++sends;
    return true;
  }
  bool send(std::vector<uint8_t>&& b) override { return send(std::span<const uint8_t>(b)); }
  void close(bool) override { closed = true; }
  void set_timer(std::chrono::milliseconds after, uint64_t token) override {
    timers[token] = after;
  }
  void cancel_timer(uint64_t token) override { timers.erase(token); }
  size_t queued() const override { return queued_msgs; }

  std::string take() { return std::exchange(out, {}); }
};

// Ring-thread work posted by callbacks; run() delivers it like the reactor.
struct fake_ring {
  std::mutex mu;
  std::deque<std::pair<net::conn_id,
                       std::function<void(net::conn_ctx&, net::connection_handler&)>>> q;

  control::poster poster() {
    return [this](net::conn_id c, auto fn) {
      std::lock_guard lk(mu);
      q.emplace_back(c, std::move(fn));
    };
  }
  // Runs queued work for this connection (and what that work posts).
  size_t run(net::conn_ctx& ctx, net::connection_handler& h) {
    size_t n = 0;
    for (;;) {
      std::pair<net::conn_id, std::function<void(net::conn_ctx&, net::connection_handler&)>> job;
      {
        std::lock_guard lk(mu);
        if (q.empty())
          return n;
        job = std::move(q.front());
        q.pop_front();
      }
      if (job.first == ctx.id()) {
        job.second(ctx, h);
        ++n;
      }
    }
  }
};

// Answers from a small in-memory fleet; `hold` keeps callbacks pending.
struct fake_backend final : control::backend {
  metrics_registry reg;
  event_bus bus{&reg.get_counter("kvmid_bus_dropped_total", "Dropped bus records.")};
  std::vector<vm_info> vms;
  std::map<uint64_t, uint8_t> memory; // gpa -> byte
  uint32_t last_mask = 0;
  std::vector<std::string> calls;
  std::optional<api_error> fail; // every call fails with this when set
  bool hold = false;
  std::vector<std::function<void()>> held;

  fake_backend() {
    vm_info a;
    a.uuid = "2b7c4e1a-0000-4000-8000-000000000001";
    a.name = "web1";
    a.connected = true;
    a.vcpu_count = 2;
    a.regions = {{0, 0x100000, "ram", true, 0}, {0xfe000000, 0x1000, "mmio", false, 0}};
    a.connected_since = 1700000000;
    a.setup = "done";
    a.policy = "linux";
    auto pol = std::make_shared<vm_policy>();
    pol->name = "linux";
    pol->pages.push_back({"kernel-text", 0x100000, 0x2000, 5, pf_action::allow_once});
    pol->msrs.push_back({"lstar", 0xc0000082});
    pol->crs.push_back(*parse_cr_pin("cr0.wp"));
    pol->breakpoints.push_back({"probe", 0x1000});
    a.policy_rules = pol;
    for (uint16_t i = 0; i < 2; ++i) {
      vcpu_info v;
      v.index = i;
      v.enabled_events = 1u << 6; // pf
      a.vcpus.push_back(v);
    }
    vms.push_back(a);
  }

  template <class T>
  void answer(api_callback<T>& cb, std::function<api_result<T>()> make) {
    auto run = [cb, make] { cb(make()); };
    if (hold)
      held.push_back(run);
    else
      run();
  }
  template <class T>
  bool failed(api_callback<T>& cb) {
    if (!fail)
      return false;
    auto e = *fail;
    answer<T>(cb, [e] { return api_result<T>(e); });
    return true;
  }
  const vm_info* find(const std::string& vm) const {
    for (auto& v : vms)
      if (v.uuid == vm || v.name == vm)
        return &v;
    return nullptr;
  }
  template <class T>
  bool missing(const std::string& vm, api_callback<T>& cb) {
    if (find(vm))
      return false;
    answer<T>(cb, [vm] { return api_result<T>(api_error{api_errc::not_found, "no VM " + vm}); });
    return true;
  }

  void list_vms(api_callback<std::vector<vm_info>> cb) override {
    calls.push_back("list_vms");
    if (failed(cb))
      return;
    auto copy = vms;
    for (auto& v : copy)
      v.vcpus.clear();
    answer<std::vector<vm_info>>(cb, [copy] { return copy; });
  }
  void get_vm(std::string vm, api_callback<vm_info> cb) override {
    calls.push_back("get_vm " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    auto v = *find(vm);
    answer<vm_info>(cb, [v] { return v; });
  }
  void list_vcpus(std::string vm, api_callback<std::vector<vcpu_info>> cb) override {
    calls.push_back("list_vcpus " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    auto v = find(vm)->vcpus;
    answer<std::vector<vcpu_info>>(cb, [v] { return v; });
  }
  void pause_vm(std::string vm, api_callback<done> cb) override {
    calls.push_back("pause_vm " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void resume_vm(std::string vm, api_callback<done> cb) override {
    calls.push_back("resume_vm " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void get_registers(std::string vm, uint16_t vcpu, std::vector<uint32_t> msrs,
                     api_callback<registers_info> cb) override {
    calls.push_back("get_registers " + vm + " " + std::to_string(vcpu) + " msrs="
                    + std::to_string(msrs.size()));
    if (failed(cb) || missing(vm, cb))
      return;
    registers_info r;
    r.mode = 8;
    r.regs.rip = 0xffffffff81000000ull;
    r.regs.rax = vcpu;
    r.sregs.cr3 = 0x1000;
    for (auto m : msrs)
      r.msrs.emplace_back(m, 0xd01);
    answer<registers_info>(cb, [r] { return r; });
  }
  void read_physical(std::string vm, uint64_t gpa, uint64_t size,
                     api_callback<std::vector<uint8_t>> cb) override {
    calls.push_back("read_physical " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    std::vector<uint8_t> d(size);
    for (uint64_t i = 0; i < size; ++i)
      d[i] = memory.count(gpa + i) ? memory[gpa + i] : static_cast<uint8_t>(i);
    answer<std::vector<uint8_t>>(cb, [d] { return d; });
  }
  void write_physical(std::string vm, uint64_t gpa, std::vector<uint8_t> data,
                      api_callback<done> cb) override {
    calls.push_back("write_physical " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    for (size_t i = 0; i < data.size(); ++i)
      memory[gpa + i] = data[i];
    answer<done>(cb, [] { return done{}; });
  }
  void get_page_access(std::string vm, api_callback<std::vector<page_access_info>> cb) override {
    if (failed(cb) || missing(vm, cb))
      return;
    answer<std::vector<page_access_info>>(cb, [] {
      return std::vector<page_access_info>{{0x2000, 5}};
    });
  }
  void set_page_access(std::string vm, uint64_t gpa, uint8_t access,
                       api_callback<done> cb) override {
    calls.push_back("set_page_access " + vm + " " + std::to_string(gpa) + " "
                    + std::to_string(access));
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void list_breakpoints(std::string vm, api_callback<std::vector<breakpoint_info>> cb) override {
    if (failed(cb) || missing(vm, cb))
      return;
    answer<std::vector<breakpoint_info>>(cb, [] {
      return std::vector<breakpoint_info>{{0x1234, 0x55, true, 2}};
    });
  }
  void add_breakpoint(std::string vm, uint64_t gpa, api_callback<breakpoint_info> cb) override {
    calls.push_back("add_breakpoint " + vm + " " + std::to_string(gpa));
    if (failed(cb) || missing(vm, cb))
      return;
    answer<breakpoint_info>(cb, [gpa] { return breakpoint_info{gpa, 0x90, true, 0}; });
  }
  void remove_breakpoint(std::string vm, uint64_t gpa, api_callback<done> cb) override {
    calls.push_back("remove_breakpoint " + vm + " " + std::to_string(gpa));
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void set_vcpu_events(std::string vm, uint16_t vcpu, uint32_t mask,
                       api_callback<done> cb) override {
    calls.push_back("set_vcpu_events " + vm + " " + std::to_string(vcpu));
    if (failed(cb) || missing(vm, cb))
      return;
    last_mask = mask;
    answer<done>(cb, [] { return done{}; });
  }
  void unhook(std::string vm, api_callback<done> cb) override {
    calls.push_back("unhook " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void admit(std::string vm, api_callback<done> cb) override {
    calls.push_back("admit " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void forget(std::string vm, api_callback<done> cb) override {
    calls.push_back("forget " + vm);
    if (failed(cb) || missing(vm, cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  void reload_policies(api_callback<done> cb) override {
    calls.push_back("reload_policies");
    if (failed(cb))
      return;
    answer<done>(cb, [] { return done{}; });
  }
  std::shared_ptr<subscription> subscribe(bus_filter f, size_t capacity,
                                          std::optional<bus_cursor> from) override {
    return bus.subscribe(std::move(f), capacity, std::move(from));
  }
  std::string bus_boot() override {
    return bus.boot();
  }
  void publish(bus_record r) override { bus.publish(std::move(r)); }
  metrics_registry& metrics() override { return reg; }
};

} // namespace kvmid::test
