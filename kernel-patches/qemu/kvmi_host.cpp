#include "kernel-patches/qemu/kvmi_host.hpp"

#include "kernel-patches/qemu/served.hpp"
#include "proto/x86_insn.hpp"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <tuple>
#include <utility>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace kvmi::qemu {

namespace {

using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// With nokaslr the kernel image is mapped at __START_KERNEL_map + its
// physical address (phys_base 0).
constexpr uint64_t start_kernel_map = 0xffffffff80000000ull;
// and all of RAM at the direct map's base (page_offset_base, fixed then).
constexpr uint64_t direct_map = 0xffff888000000000ull;
constexpr uint32_t chunk = 1024; // bytes per m/M packet (PacketSize 0x1000, hex doubles)

void log(const char* fmt, auto... args) {
  std::fprintf(stderr, "kvmi-qemu: ");
  std::fprintf(stderr, fmt, args...);
  std::fputc('\n', stderr);
}

std::string hex_addr(uint64_t a) {
  char b[24];
  std::snprintf(b, sizeof b, "%" PRIx64, a);
  return b;
}

} // namespace

kvmi_host::kvmi_host(host_options o, gdb_remote& gdb, const register_layout& layout)
  : o_(std::move(o)), gdb_(gdb), layout_(layout), vcpus_(o_.vcpus) {}

kvmi_host::~kvmi_host() {
  if (fd_ >= 0)
    ::close(fd_);
}

void kvmi_host::fatal(const std::string& why) {
  log("%s", why.c_str());
  exit_code_ = 1;
}

// ---- kvmid's socket ---------------------------------------------------------

void kvmi_host::try_connect() {
  if (fd_ >= 0 || unhooked_ || clock::now() < next_connect_)
    return;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (o_.socket.size() >= sizeof a.sun_path)
    return fatal("socket path too long: " + o_.socket);
  std::memcpy(a.sun_path, o_.socket.c_str(), o_.socket.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0)
      ::close(fd);
    next_connect_ = clock::now() + backoff_;
    backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, 2s);
    return;
  }
  fd_ = fd;
  start_handshake();
  log("connected to %s", o_.socket.c_str());
}

void kvmi_host::send_frame(const std::vector<uint8_t>& bytes) {
  size_t off = 0;
  while (fd_ >= 0 && off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return end_session(std::string("send: ") + std::strerror(errno));
    off += size_t(n);
  }
}

void kvmi_host::on_kvmid_bytes(std::span<const uint8_t> in) {
  if (!hooked_) {
    auto st = dm_->feed(in);
    if (!dm_->out().empty()) {
      send_frame(dm_->out());
      dm_->out().clear();
    }
    if (st == hs::status::failed)
      return end_session(join({"handshake failed: ", dm_->reason()}));
    if (st != hs::status::done)
      return;
    hooked_ = true;
    backoff_ = 100ms;
    cmd_replies_ = replying_ = true;
    splitter_ = std::make_unique<frame_splitter>(
      byte_order::native, o_.protocol == dialect::v7 ? v7::max_payload : max_payload);
    for (auto& c : vcpus_)
      c.create_pending = true; // sent once kvmid enables CREATE_VCPU
    log("hooked as %s", o_.name.c_str());
  }
  auto err = splitter_->feed(in, [&](const frame& f) {
    if (hooked_)
      on_frame(f);
  });
  if (err && hooked_)
    end_session("frame beyond the largest KVMI message");
}

void kvmi_host::end_session(const std::string& why) {
  if (fd_ < 0)
    return;
  ::close(fd_);
  fd_ = -1;
  bool was_hooked = hooked_;
  hooked_ = false;
  dm_.reset();
  vm_events_ = 0;
  pending_.clear();
  for (auto& c : vcpus_)
    c = vcpu{}; // waits end as if answered CONTINUE; no vCPU single-steps
  stepping_.reset();
  unprotect_all(); // the kernel gives every page rwx back when a session ends
  if (unhook_sent_)
    unhooked_ = true;
  unhook_sent_ = false;
  // Like INT3 bytes in a real guest, the breakpoints outlive the session:
  // the next session finds 0xCC where kvmid left it.
  log("session ended (%s): %zu breakpoints left planted%s", why.c_str(), bps_.size(),
      was_hooked ? "" : " (never hooked)");
  if (!o_.reconnect)
    unhooked_ = true;
  // A refused handshake (wrong cookie, not admitted) is not hammered.
  next_connect_ = clock::now() + backoff_;
  backoff_ = was_hooked ? 100ms : std::min<std::chrono::milliseconds>(backoff_ * 2, 2s);
}

void kvmi_host::request_unhook() {
  if (unhook_sent_ || unhooked_)
    return;
  if (!hooked_ || !(vm_events_ & flag(event_id::unhook))) {
    unhooked_ = true;
    return end_session("unhook requested");
  }
  event_msg m;
  m.seq = ++ev_seq_;
  m.common.event = uint32_t(event_id::unhook);
  send_event_msg(m);
  unhook_sent_ = true;
  unhook_deadline_ = clock::now() + 30s;
  log("UNHOOK sent");
}

// ---- frames ----------------------------------------------------------------

void kvmi_host::reply(msg_id id, uint32_t seq, reply_data d) {
  reply_msg r;
  r.id = id;
  r.seq = seq;
  r.data = std::move(d);
  send_reply(r);
}

void kvmi_host::reply_err(msg_id id, uint32_t seq, int32_t kvm_e) {
  reply_msg r;
  r.id = id;
  r.seq = seq;
  r.err = -kvm_e;
  send_reply(r);
}

void kvmi_host::send_reply(const reply_msg& r) {
  if (o_.protocol == dialect::v7)
    return encode_reply_v7(r);
  encode(scratch_, r);
  send_frame(scratch_);
}

void kvmi_host::on_frame(const frame& f) {
  if (o_.protocol == dialect::v7)
    return on_frame_v7(f);
  if (f.hdr.id >= num_v5_messages)
    return end_session(join({"message id ", std::to_string(f.hdr.id), " (v5 closes on >= 29)"}));
  auto m = decode_from_tool(f);
  if (!m) {
    if (m.err().code == errc::bad_padding && f.hdr.id != uint16_t(msg_id::event_reply))
      return reply_err(msg_id(f.hdr.id), f.hdr.seq, kvm_einval);
    return end_session(join({"undecodable message: ", m.err().reason}));
  }
  if (auto* r = std::get_if<event_reply_msg>(&*m)) {
    auto act = static_cast<action>(r->common.action);
    return on_event_reply(r->seq, r->common.event, check(*r) ? action::continue_ : act);
  }
  on_command(std::get<command_msg>(*m));
}

void kvmi_host::on_command(command_msg& m) {
  auto id = id_of(m.body);
  uint32_t seq = m.seq;
  if (std::getenv("KVMI_QEMU_TRACE"))
    log("command %s seq %u", std::string(name(id)).c_str(), seq);
  if (!allowed_command(id, served_commands))
    return reply_err(id, seq, kvm_eacces);
  if (auto e = check(m.body)) {
    if (e.code == errc::bad_range)
      return end_session("READ/WRITE_PHYSICAL out of range"); // as v5 does
    return reply_err(id, seq, kvm_einval);
  }
  if (auto v = vcpu_of(m.body); v && *v >= vcpus_.size())
    return reply_err(id, seq, kvm_einval);
  std::visit(
    [&](auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, get_version>) {
        reply(id, seq, get_version_reply{kvmi::version, served_commands,
                                         served_vcpu_events | served_vm_events, 0});
      } else if constexpr (std::is_same_v<T, get_guest_info>) {
        reply(id, seq, get_guest_info_reply{o_.vcpus, 0, 0});
      } else if constexpr (std::is_same_v<T, pause_all_vcpus>) {
        reply(id, seq, pause_all_vcpus_reply{o_.vcpus, 0});
        for (auto& c : vcpus_)
          ++c.pauses;
      } else if constexpr (std::is_same_v<T, control_vm_events>) {
        if (x.events & ~served_vm_events)
          return reply_err(id, seq, kvm_eperm);
        vm_events_ = x.events;
        reply(id, seq);
      } else if constexpr (std::is_same_v<T, control_events>) {
        if (x.events & ~served_vcpu_events)
          return reply_err(id, seq, kvm_eperm);
        vcpus_[x.vcpu].events = x.events;
        reply(id, seq);
      } else if constexpr (std::is_same_v<T, get_registers_cmd>) {
        if (!ensure_stopped())
          return;
        auto s = read_state(x.req.vcpu);
        if (!s)
          return reply_err(id, seq, kvm_efault);
        registers_reply r{};
        r.fixed.mode = 8;
        r.fixed.regs = s->regs;
        r.fixed.sregs = s->sregs;
        r.fixed.msrs.nmsrs = x.req.nmsrs;
        for (uint32_t idx : x.msrs_idx) {
          auto v = msr_value(*s, idx);
          if (!v)
            return reply_err(id, seq, kvm_einval); // not in the gdbstub's register file
          r.msrs.push_back(kvm_msr_entry{idx, 0, *v});
        }
        reply(id, seq, std::move(r));
      } else if constexpr (std::is_same_v<T, set_registers>) {
        // Applied with the event reply; a running vCPU drops them (v5).
        if (vcpus_[x.vcpu].waiting)
          vcpus_[x.vcpu].set_regs = x.regs;
        reply(id, seq);
      } else if constexpr (std::is_same_v<T, get_page_access_cmd>) {
        page_access_reply r;
        for (uint64_t gpa : x.gpa) {
          auto it = pages_.find(gpa & ~uint64_t(0xfff));
          r.access.push_back(it == pages_.end() ? page_access_rwx : it->second.access);
        }
        reply(id, seq, std::move(r));
      } else if constexpr (std::is_same_v<T, set_page_access_cmd>) {
        if (!ensure_stopped())
          return;
        for (auto& e : x.entries) // in order, stopping at the first error (v5)
          if (int32_t err = set_access(e.gpa & ~uint64_t(0xfff), e.access))
            return reply_err(id, seq, err);
        reply(id, seq);
      } else if constexpr (std::is_same_v<T, read_physical>) {
        if (!ensure_stopped())
          return;
        auto d = read_physical_raw(x.gpa, x.size);
        if (!d)
          return reply_err(id, seq, kvm_efault);
        for (auto& [gpa, bp] : bps_) // kvmid's INT3s read back as 0xCC
          if (gpa >= x.gpa && gpa < x.gpa + x.size)
            (*d)[gpa - x.gpa] = 0xcc;
        reply(id, seq, physical_data{std::move(*d)});
      } else if constexpr (std::is_same_v<T, write_physical_cmd>) {
        if (!ensure_stopped())
          return;
        if (int32_t e = write_physical(x.req.gpa, std::move(x.data)))
          return reply_err(id, seq, e);
        reply(id, seq);
      } else {
        reply_err(id, seq, kvm_eacces);
      }
    },
    m.body);
}

// An event's reply, in either dialect; an ill-formed one counts as CONTINUE.
void kvmi_host::on_event_reply(uint32_t seq, uint32_t event, action act) {
  auto it = pending_.find(seq);
  if (it == pending_.end())
    return end_session(join({"reply to no event (seq ", std::to_string(seq), ")"}));
  uint16_t i = it->second;
  pending_.erase(it);
  auto& c = vcpus_[i];
  c.waiting = false;
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - c.ev_sent);
  if (c.set_regs && c.ev == event_id::pf && std::exchange(c.pf_unseen, false))
    c.set_regs->rip = c.pf_rip;
  if (c.set_regs && !write_regs(i, *c.set_regs))
    log("vcpu %u: SET_REGISTERS not applied: %s", unsigned(i), gdb_.error().c_str());
  c.set_regs.reset();
  if (event != uint32_t(c.ev))
    act = action::continue_;
  if (c.held_since && c.ev == c.held_by)
    c.held_reply = act;
  if (c.ev == event_id::breakpoint || c.ev == singlestep_event)
    log("vcpu %u: %s answered %s in %lld us", unsigned(i),
        c.ev == singlestep_event ? "SINGLESTEP" : "BREAKPOINT", std::string(name(act)).c_str(),
        (long long)us.count());
  if (act == action::crash) {
    if (c.ev == event_id::pf)
      (void)finish_pf(i, act);
    log("vcpu %u: CRASH asked for: the guest is stopped for good", unsigned(i));
    exit_code_ = 2;
    return;
  }
  if (c.ev == event_id::pf) {
    auto now = finish_pf(i, act);
    c.pf_unseen = false;
    if (now && exit_code_ < 0 && ask_unseen(i, std::move(*now)))
      return; // the guest stays stopped for that reply too
  }
  if (c.ev == event_id::breakpoint && act == action::continue_) {
    // v5 re-injects #BP; the gdbstub cannot inject, so the original
    // instruction runs instead (stepped over the breakpoint).
    auto s = read_state(i);
    for (auto& [gpa, bp] : bps_)
      if (s && bp.gva == s->regs.rip)
        step_over(i, bp.gva);
  }
  // RETRY: the vCPU re-runs the instruction at RIP; a breakpoint still
  // there stops it again, as an INT3 still in memory would.
}

// ---- events ----------------------------------------------------------------

void kvmi_host::send_event(uint16_t vcpu, event_id kind, event_data data,
                           std::optional<uint64_t> rip) {
  auto s = read_state(vcpu);
  if (!s)
    return fatal(join({"cannot read vcpu ", std::to_string(vcpu), "'s registers: ", gdb_.error()}));
  event_msg m;
  m.seq = ++ev_seq_;
  m.common.event = uint32_t(kind);
  m.common.vcpu = vcpu;
  m.common.mode = 8;
  m.common.regs = s->regs;
  if (rip)
    m.common.regs.rip = *rip;
  m.common.sregs = s->sregs;
  m.common.msrs = s->msrs;
  m.data = std::move(data);
  auto& c = vcpus_[vcpu];
  c.waiting = true;
  c.ev = kind;
  c.ev_seq = m.seq;
  c.ev_sent = clock::now();
  pending_[m.seq] = vcpu;
  send_event_msg(m);
}

void kvmi_host::send_event_msg(const event_msg& m) {
  if (o_.protocol == dialect::v7)
    encode_event_v7(m);
  else
    encode(scratch_, m);
  send_frame(scratch_);
}

void kvmi_host::send_due_events() {
  for (uint16_t i = 0; i < vcpus_.size() && hooked_ && !unhook_sent_; ++i) {
    auto& c = vcpus_[i];
    if (c.waiting)
      continue;
    bool create = c.create_pending && (vm_events_ & flag(event_id::create_vcpu));
    if (!create && !c.pauses)
      continue;
    if (!ensure_stopped() || c.waiting || !hooked_)
      continue; // the stop itself may have been this vCPU's event
    if (create) {
      c.create_pending = false;
      send_event(i, event_id::create_vcpu, std::monostate{});
    } else {
      --c.pauses;
      send_event(i, event_id::pause_vcpu, std::monostate{});
    }
  }
}

// ---- the guest -------------------------------------------------------------

bool kvmi_host::ensure_stopped() {
  if (!running_)
    return true;
  if (!gdb_.interrupt()) {
    fatal(gdb_.error());
    return false;
  }
  auto s = gdb_.stop(10s);
  if (!s) {
    fatal("the gdbstub did not stop the guest: " + gdb_.error());
    return false;
  }
  on_stop(*s);
  return exit_code_ < 0;
}

void kvmi_host::on_stop(const stop_reply& s) {
  running_ = false;
  stopped_at_ = clock::now();
  auto stepped = std::exchange(stepping_, std::nullopt); // else stepped again
  if (s.exited)
    return fatal("the guest is gone (" + s.raw + ")");
  if (s.signal != 5)
    return; // our ^C
  uint16_t i = uint16_t(s.thread > 0 ? s.thread - 1 : 0);
  if (i >= vcpus_.size())
    return;
  if (s.watch && on_watch(i, *s.watch))
    return;
  if (stepped == i && passing_.count(i)) {
    passed(i);
    return;
  }
  if (stepped == i) {
    // The instruction ran: v7's SINGLESTEP, before any breakpoint at the
    // next one (that one stops the vCPU when it runs on).
    auto& c = vcpus_[i];
    if (hooked_ && !unhook_sent_ && !c.waiting && c.singlestep
        && (c.events & flag(singlestep_event)))
      send_event(i, singlestep_event, std::monostate{});
    return;
  }
  auto st = read_state(i);
  if (!st)
    return fatal("cannot read registers after a stop: " + gdb_.error());
  for (auto& [gpa, bp] : bps_) {
    if (bp.gva != st->regs.rip)
      continue;
    auto& c = vcpus_[i];
    if (hooked_ && !unhook_sent_ && !c.waiting && (c.events & flag(event_id::breakpoint))) {
      send_event(i, event_id::breakpoint, event_breakpoint{gpa});
      c.held_since = stopped_at_;
      c.held_by = event_id::breakpoint;
    } else {
      // No introspector to hand the hit to: a real INT3 would reach the
      // guest's #BP handler; this one is passed over.
      log("breakpoint at gpa 0x%s hit with no session to report it: passed over",
          hex_addr(gpa).c_str());
      step_over(i, bp.gva);
    }
    return;
  }
}

void kvmi_host::maybe_resume() {
  if (running_ || exit_code_ >= 0)
    return;
  for (auto& c : vcpus_)
    if (c.waiting)
      return; // all-stop: one vCPU waiting holds them all
  if (!passing_.empty()) {
    if (!step(passing_.begin()->first))
      fatal(gdb_.error());
    return;
  }
  for (uint16_t i = 0; i < vcpus_.size(); ++i) {
    auto& c = vcpus_[i];
    if (hooked_ && c.singlestep && (c.events & flag(singlestep_event))) {
      if (!step(i))
        fatal(gdb_.error());
      return;
    }
  }
  if (!gdb_.send("c"))
    return fatal(gdb_.error());
  running_ = true;
  auto now = clock::now();
  for (uint16_t i = 0; i < vcpus_.size(); ++i)
    if (auto since = std::exchange(vcpus_[i].held_since, std::nullopt))
      log("vcpu %u: held %lld us by %s (%s), from its stop to the guest's resume", unsigned(i),
          (long long)std::chrono::duration_cast<std::chrono::microseconds>(now - *since).count(),
          std::string(name(vcpus_[i].held_by)).c_str(),
          std::string(name(vcpus_[i].held_reply)).c_str());
}

// One instruction of vCPU `vcpu` (QEMU runs the others meanwhile, with
// interrupts and timers off on the stepped one); its stop is on_stop's.
bool kvmi_host::step(uint16_t vcpu) {
  auto r = gdb_.request(join({"Hc", hex_addr(vcpu + 1u)}));
  if (!r || *r != "OK" || !gdb_.send("s"))
    return false;
  running_ = true;
  stepping_ = vcpu;
  return true;
}

bool kvmi_host::select_thread(uint16_t vcpu) {
  auto r = gdb_.request(join({"Hg", hex_addr(vcpu + 1u)}));
  return r && *r == "OK";
}

std::optional<x86_state> kvmi_host::read_state(uint16_t vcpu) {
  if (!select_thread(vcpu))
    return std::nullopt;
  auto g = gdb_.request("g");
  if (!g)
    return std::nullopt;
  auto bytes = from_hex(*g);
  if (!bytes || bytes->size() < layout_.g_size()) {
    log("g: %zu bytes, target.xml describes %zu", bytes ? bytes->size() : 0, layout_.g_size());
    return std::nullopt;
  }
  return decode_registers(layout_, *bytes);
}

bool kvmi_host::write_regs(uint16_t vcpu, const kvm_regs& r) {
  if (!select_thread(vcpu))
    return false;
  for (auto& [regnum, bytes] : encode_regs(layout_, r)) {
    auto a = gdb_.request(join({"P", hex_addr(regnum), "=", to_hex(bytes)}));
    if (!a || *a != "OK")
      return false;
  }
  return true;
}

// The breakpoint at `gva` is lifted and `vcpu` steps past it on the next
// resume; on_stop puts it back once that step's stop comes. Not a step and
// a wait for "the" next stop: QEMU runs the other vCPUs during an `s`, and
// their stops (a watched write, another breakpoint) are events of their own.
void kvmi_host::step_over(uint16_t vcpu, uint64_t gva) {
  gdb_.request(join({"z0,", hex_addr(gva), ",1"}));
  passing_[vcpu] = gva;
}

// `vcpu`'s step past a lifted breakpoint is done: back it goes, unless
// kvmid took the breakpoint out meanwhile.
void kvmi_host::passed(uint16_t vcpu) {
  auto it = passing_.find(vcpu);
  if (it == passing_.end())
    return;
  uint64_t gva = it->second;
  passing_.erase(it);
  bool lifted_elsewhere = false;
  for (auto& [v, g] : passing_)
    lifted_elsewhere = lifted_elsewhere || g == gva;
  bool still = false;
  for (auto& [gpa, bp] : bps_)
    still = still || bp.gva == gva;
  if (still && !lifted_elsewhere)
    gdb_.request(join({"Z0,", hex_addr(gva), ",1"}));
}

std::optional<std::vector<uint8_t>> kvmi_host::read_physical_raw(uint64_t gpa, uint64_t size) {
  std::vector<uint8_t> out;
  for (uint64_t at = gpa; at < gpa + size; at += chunk) {
    uint64_t n = std::min<uint64_t>(chunk, gpa + size - at);
    auto r = gdb_.request(join({"m", hex_addr(at), ",", hex_addr(n)}));
    if (!r)
      return std::nullopt;
    if (std::getenv("KVMI_QEMU_TRACE"))
      log("m %s -> %s", hex_addr(at).c_str(), r->substr(0, 32).c_str());
    auto b = from_hex(*r);
    if (!b || b->size() != n)
      return std::nullopt; // "E14": not RAM
    out.insert(out.end(), b->begin(), b->end());
  }
  return out;
}

bool kvmi_host::write_physical_raw(uint64_t gpa, std::span<const uint8_t> data) {
  for (size_t off = 0; off < data.size(); off += chunk) {
    auto part = data.subspan(off, std::min<size_t>(chunk, data.size() - off));
    auto r = gdb_.request(join({"M", hex_addr(gpa + off), ",", hex_addr(part.size()), ":", to_hex(part)}));
    if (!r || *r != "OK")
      return false;
  }
  return true;
}

// The address of gpa in the kernel mapping at `base` (the kernel image or
// the direct map), checked with the monitor's gva2gpa once per page;
// nullopt where that mapping does not hold it.
std::optional<uint64_t> kvmi_host::mapped_gva(uint64_t gpa, uint64_t base) {
  uint64_t page = gpa & ~uint64_t(0xfff);
  auto it = maps_.find({base, page});
  if (it == maps_.end()) {
    uint64_t gva = page + base;
    auto out = gdb_.monitor(join({"gva2gpa 0x", hex_addr(gva)}));
    uint64_t got = ~uint64_t(0);
    if (!out || std::sscanf(out->c_str(), "gpa: 0x%" SCNx64, &got) != 1 || got != page)
      return std::nullopt;
    it = maps_.emplace(std::pair{base, page}, gva).first;
  }
  return it->second + (gpa & 0xfff);
}

std::optional<uint64_t> kvmi_host::text_gva(uint64_t gpa) { return mapped_gva(gpa, start_kernel_map); }

// ---- page restrictions -------------------------------------------------------

int32_t kvmi_host::set_access(uint64_t page, uint8_t access) {
  if (access & ~page_access_rwx)
    return kvm_einval;
  if ((access & (page_access_r | page_access_x)) != (page_access_r | page_access_x))
    return kvm_eopnotsupp; // reads and fetches have no watchpoint that stops before them
  auto it = pages_.find(page);
  if (access & page_access_w) {
    if (it != pages_.end()) {
      for (uint64_t gva : it->second.gvas)
        gdb_.request(join({"z2,", hex_addr(gva), ",1000"}));
      pages_.erase(it);
      log("page 0x%s writable again", hex_addr(page).c_str());
    }
    return 0;
  }
  if (it != pages_.end())
    return 0;
  protected_page p;
  p.access = access;
  auto bytes = read_physical_raw(page, page_size);
  if (!bytes)
    return kvm_efault;
  p.bytes = std::move(*bytes);
  for (uint64_t base : {start_kernel_map, direct_map}) {
    auto gva = mapped_gva(page, base);
    if (!gva)
      continue;
    auto r = gdb_.request(join({"Z2,", hex_addr(*gva), ",1000"}));
    if (r && *r == "OK")
      p.gvas.push_back(*gva);
  }
  if (p.gvas.empty())
    return kvm_efault; // in no kernel mapping a watchpoint could cover
  log("page 0x%s write-protected (%zu watchpoints)", hex_addr(page).c_str(), p.gvas.size());
  pages_.emplace(page, std::move(p));
  return 0;
}

void kvmi_host::unprotect_all() {
  for (auto& [page, p] : pages_)
    for (uint64_t gva : p.gvas)
      gdb_.request(join({"z2,", hex_addr(gva), ",1000"}));
  pages_.clear();
}

namespace {

kvmi::x86_after after_of(const x86_state& s) {
  const auto& r = s.regs;
  kvmi::x86_after a{{r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10,
                     r.r11, r.r12, r.r13, r.r14, r.r15},
                    r.rip,
                    (r.rflags & 0x400) != 0,
                    s.sregs.fs.base,
                    s.sregs.gs.base};
  return a;
}

// The first bytes of `now` that differ from `was` (at most 8: the widest
// store of the kernel's string and memset paths), as [offset, offset +
// size); nullopt when none differ.
std::optional<std::pair<uint16_t, uint16_t>> first_change(const std::vector<uint8_t>& was,
                                                          const std::vector<uint8_t>& now) {
  auto diff = std::mismatch(was.begin(), was.end(), now.begin(), now.end());
  if (diff.first == was.end())
    return std::nullopt;
  auto off = size_t(diff.first - was.begin());
  size_t size = 1;
  while (size < 8 && off + size < was.size() && was[off + size] != now[off + size])
    ++size;
  return std::pair{uint16_t(off), uint16_t(size)};
}

} // namespace

// A write watchpoint stopped vCPU `vcpu` after a write to the watchpoint at
// `addr`; true if it was one of ours (a PF event sent, or the write
// accepted). The gdbstub names the watchpoint, not the address written: that
// comes from the writing instruction and the registers after it, as the
// hardware's fault address would. When that does not lead into the page (no
// instruction decoded, or a stop QEMU delivered late, at the end of a block
// of instructions, after a lost one left its watchpoint hit pending), the
// write reported is the first change in the page, as one no stop reported
// (ask_unseen); and no change, no event.
bool kvmi_host::on_watch(uint16_t vcpu, uint64_t addr) {
  for (auto& [page, p] : pages_) {
    for (uint64_t gva : p.gvas) {
      if (addr < gva || addr - gva >= page_size)
        continue;
      if (o_.drop_watch_stops && ++watch_stops_ % o_.drop_watch_stops == 0) {
        log("vcpu %u: a write watchpoint stop ignored (--drop-watch-stops)", unsigned(vcpu));
        return true;
      }
      auto now = read_physical_raw(page, page_size);
      if (!now) {
        fatal("cannot read a protected page: " + gdb_.error());
        return true;
      }
      auto st = read_state(vcpu);
      if (!st) {
        fatal("cannot read registers after a stop: " + gdb_.error());
        return true;
      }
      auto w = find_writer(*st);
      std::optional<uint64_t> at;
      if (w.insn)
        at = kvmi::written_address(*w.insn, after_of(*st));
      auto in_page = [&](uint64_t base) { return at && *at - base < page_size; };
      auto mapping = std::find_if(p.gvas.begin(), p.gvas.end(), in_page);
      bool seen = mapping != p.gvas.end() && w.insn->operand.size > 0;
      uint16_t off = 0, size = 0;
      if (seen) {
        off = uint16_t(*at - *mapping);
        size = uint16_t(std::min<uint64_t>(w.insn->operand.size, page_size - off));
      } else if (auto change = first_change(p.bytes, *now)) {
        std::tie(off, size) = *change;
      } else {
        log("vcpu %u: a watchpoint stop with no write to report", unsigned(vcpu));
        return true;
      }
      if (seen)
        report_write(vcpu, page, p, *now, off, size, *at, w.rip, st->regs.rip,
                     join({"by the instruction at 0x", hex_addr(w.rip)}));
      else
        report_write(vcpu, page, p, *now, off, size, p.gvas.front() + off, std::nullopt,
                     st->regs.rip, "changed, its instruction unknown");
      return true;
    }
  }
  return false;
}

// The watchpoint stopped the vCPU after the write; a PF stops it at the
// writing instruction, which a tool may skip (RIP + its length). Found by
// decoding backwards from RIP: the longest instruction with a memory
// operand that ends at RIP, or RIP itself when a REP MOVS/STOS there has
// elements left. Either way RIP + its length is where the guest stopped.
// RIP as it is, and no instruction, when neither fits (outside the kernel
// image, say).
kvmi_host::writer kvmi_host::find_writer(const x86_state& s) {
  constexpr size_t max_insn = 15;
  uint64_t rip = s.regs.rip;
  if (rip < start_kernel_map + max_insn || !text_gva(rip - start_kernel_map - max_insn)
      || !text_gva(rip - start_kernel_map + max_insn))
    return {rip, std::nullopt};
  auto bytes = read_physical_raw(rip - start_kernel_map - max_insn, 2 * max_insn);
  if (!bytes)
    return {rip, std::nullopt};
  std::span<const uint8_t> b(*bytes);
  if (auto here = kvmi::decode_x86_64(b.subspan(max_insn)); here && here->rep_string && s.regs.rcx)
    return {rip, here};
  for (size_t k = max_insn; k >= 1; --k)
    if (auto i = kvmi::decode_x86_64(b.subspan(max_insn - k, k)); i && i->length == k && i->memory)
      return {rip - k, i};
  return {rip, std::nullopt};
}

// The write already happened (a watchpoint stops after the access): what
// the reply allows is kept, what it refuses is written back. Only the bytes
// the write covered count, when those are known: a write elsewhere in the
// page that the gdbstub never reported is neither allowed nor undone with
// it, but asked about on its own (ask_unseen). Returns the page as the
// guest now has it; nullopt when it is no longer protected or on failure.
std::optional<std::vector<uint8_t>> kvmi_host::finish_pf(uint16_t vcpu, action act) {
  auto& c = vcpus_[vcpu];
  auto it = pages_.find(c.pf_page);
  if (it == pages_.end())
    return std::nullopt; // made writable before the reply (allow-and-unprotect): it stands
  auto& p = it->second;
  auto now = read_physical_raw(it->first, page_size);
  if (!now) {
    fatal("cannot read a protected page: " + gdb_.error());
    return std::nullopt;
  }
  size_t from = c.pf_offset, to = std::min<size_t>(page_size, size_t(c.pf_offset) + c.pf_size);
  if (act == action::continue_) { // v5: the kernel emulates the access
    std::copy(now->begin() + from, now->begin() + to, p.bytes.begin() + from);
    return now;
  }
  // RETRY with the page still protected faults again on hardware, for as
  // long as the page stays so: the write never lands. CRASH: neither.
  bool written = !std::equal(p.bytes.begin() + from, p.bytes.begin() + to, now->begin() + from);
  std::copy(p.bytes.begin() + from, p.bytes.begin() + to, now->begin() + from);
  if (written
      && !write_physical_raw(it->first + from,
                             std::vector<uint8_t>(p.bytes.begin() + from, p.bytes.begin() + to))) {
    fatal("cannot write a protected page back: " + gdb_.error());
    return std::nullopt;
  }
  log("page 0x%s: the write was undone (%s)", hex_addr(it->first).c_str(),
      std::string(name(act)).c_str());
  return now;
}

// A write no stop reported landed unasked, where hardware would have
// faulted on it: QEMU loses a watchpoint stop now and then (two vCPUs
// hitting at once; a stop for another reason in between), and that vCPU's
// next hits then stop it late, at the end of a block of instructions whose
// writes have all landed. `now` is the page of the PF just answered as the
// guest has it; bytes there that differ from what kvmid allowed are such
// writes. The first change is reported now, on `vcpu` (stopped, just
// answered), as a PF of its own: kvmid decides it as any other and a RETRY
// undoes it. Only this page is compared: reading every protected page on
// every reply would cost each event a page per page protected; a write
// unseen elsewhere waits for the next PF answered on its page. True if a
// PF was sent. With no one to ask, the write stands, as in on_watch.
bool kvmi_host::ask_unseen(uint16_t vcpu, std::vector<uint8_t> now) {
  auto& c = vcpus_[vcpu];
  auto it = pages_.find(c.pf_page);
  if (it == pages_.end() || now.size() != page_size)
    return false;
  auto& [page, p] = *it;
  auto change = first_change(p.bytes, now);
  if (!change)
    return false;
  auto [off, size] = *change;
  auto st = read_state(vcpu);
  if (!st) {
    fatal("cannot read registers: " + gdb_.error());
    return false;
  }
  return report_write(vcpu, page, p, now, off, size, p.gvas.front() + off, std::nullopt,
                      st->regs.rip, "that no stop reported: asked now");
}

// A write of `size` bytes at `off` in protected page `page` (`p`, `now` as
// the guest has it), by stopped vCPU `vcpu`: a PF event for it, true; or,
// with nobody to ask, the page stands as it is, false. writer: the writing
// instruction's RIP; nullopt for a write whose instruction is unknown (the
// vCPU, at `rip`, is past it: a SET_REGISTERS in reply keeps RIP).
bool kvmi_host::report_write(uint16_t vcpu, uint64_t page, protected_page& p,
                             std::vector<uint8_t>& now, uint16_t off, uint16_t size, uint64_t gva,
                             std::optional<uint64_t> writer, uint64_t rip, const std::string& how) {
  auto& c = vcpus_[vcpu];
  if (!hooked_ || unhook_sent_ || c.waiting || !(c.events & flag(event_id::pf))) {
    log("vcpu %u: write at gpa 0x%s stands: %s", unsigned(vcpu), hex_addr(page + off).c_str(),
        !hooked_ || unhook_sent_ ? "no session"
        : c.waiting              ? "its vCPU waits for a reply"
                                 : "PF events off for its vCPU");
    p.bytes = std::move(now); // nobody to ask: the write stands
    return false;
  }
  c.pf_page = page;
  c.pf_offset = off;
  c.pf_size = size;
  c.pf_unseen = !writer;
  c.pf_rip = rip;
  log("vcpu %u: write at gpa 0x%s, %u bytes %s", unsigned(vcpu), hex_addr(page + off).c_str(),
      unsigned(size), how.c_str());
  send_event(vcpu, event_id::pf, event_pf{gva, page + off, page_access_w, 0}, writer);
  if (!c.held_since)
    c.held_since = stopped_at_;
  c.held_by = event_id::pf;
  return true;
}

int32_t kvmi_host::write_physical(uint64_t gpa, std::vector<uint8_t> data) {
  // A byte other than 0xCC over one of kvmid's INT3s takes it out.
  for (auto it = bps_.lower_bound(gpa); it != bps_.end() && it->first < gpa + data.size();) {
    if (data[it->first - gpa] == 0xcc) {
      data[it->first - gpa] = it->second.original; // stays planted; memory keeps its byte
      ++it;
      continue;
    }
    gdb_.request(join({"z0,", hex_addr(it->second.gva), ",1"}));
    log("breakpoint at gpa 0x%s removed", hex_addr(it->first).c_str());
    it = bps_.erase(it);
  }
  // An INT3 written alone into kernel text becomes a gdbstub breakpoint.
  if (data.size() == 1 && data[0] == 0xcc && !bps_.count(gpa)) {
    if (auto gva = text_gva(gpa)) {
      auto orig = read_physical_raw(gpa, 1);
      auto r = gdb_.request(join({"Z0,", hex_addr(*gva), ",1"}));
      if (!orig || !r || *r != "OK")
        return kvm_efault;
      bps_[gpa] = breakpoint{*gva, (*orig)[0]};
      log("breakpoint at gpa 0x%s (gva 0x%s) planted", hex_addr(gpa).c_str(),
          hex_addr(*gva).c_str());
      return 0;
    }
    // Elsewhere the byte goes into memory: a real INT3 the guest handles.
  }
  return write_physical_raw(gpa, data) ? 0 : kvm_efault;
}

// ---- the loop --------------------------------------------------------------

int kvmi_host::run(host_requests& req) {
  if (!gdb_.request("Qqemu.PhyMemMode:1"))
    return fatal("the gdbstub has no physical memory mode: " + gdb_.error()), 1;
  std::vector<uint8_t> buf(64 * 1024);
  while (exit_code_ < 0) {
    if (req.stop.load())
      break;
    if (req.unhook.exchange(false))
      request_unhook();
    if (req.hook.exchange(false) && fd_ < 0 && unhooked_) {
      unhooked_ = false;
      backoff_ = 100ms;
      next_connect_ = {};
    }
    if (unhook_sent_ && clock::now() > unhook_deadline_)
      end_session("kvmid did not close within 30 s of UNHOOK");
    try_connect();
    // Stops already read (while a command waited) come first.
    while (exit_code_ < 0 && running_) {
      auto s = gdb_.take_stop();
      if (!s)
        break;
      on_stop(*s);
    }
    send_due_events();
    maybe_resume();
    pollfd p[2] = {{fd_, POLLIN, 0}, {running_ ? gdb_.fd() : -1, POLLIN, 0}};
    int n = ::poll(p, 2, 50);
    if (n < 0 && errno != EINTR)
      return fatal(std::string("poll: ") + std::strerror(errno)), 1;
    if (n <= 0)
      continue;
    if (fd_ >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t got = ::read(fd_, buf.data(), buf.size());
      if (got <= 0)
        end_session(got == 0 ? "kvmid closed the socket" : std::strerror(errno));
      else
        on_kvmid_bytes({buf.data(), size_t(got)});
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      gdb_.clear_error();
      if (auto s = gdb_.take_stop())
        on_stop(*s);
      else if (!gdb_.error().empty())
        return fatal("gdbstub: " + gdb_.error()), 1;
    }
  }
  if (hooked_)
    end_session("kvmi-qemu stops");
  return exit_code_ < 0 ? 0 : exit_code_;
}

} // namespace kvmi::qemu
