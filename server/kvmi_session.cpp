#include "server/kvmi_session.hpp"

#include "actors/core_impl.hpp"
#include "actors/link.hpp"
#include "actors/log.hpp"
#include "actors/ring_unit.hpp"
#include "actors/vcpu_actor.hpp"

#include <cstdio>
#include <mutex>
#include <optional>

namespace kvmid {

namespace {

constexpr uint64_t handshake_timer = 1;

struct close_cause {
  disconnect_reason why;
  std::string detail;
};

disconnect_reason from_reactor(net::close_reason r) {
  switch (r) {
    case net::close_reason::peer_closed: return disconnect_reason::peer_closed;
    case net::close_reason::io_error: return disconnect_reason::io_error;
    case net::close_reason::queue_full: return disconnect_reason::send_queue_full;
    case net::close_reason::shutdown: return disconnect_reason::shutdown;
    case net::close_reason::local: break;
  }
  return disconnect_reason::actor_error; // a local close nobody gave a reason for
}

class reactor_link final : public kvmi_link {
public:
  reactor_link(net::reactor& r, net::conn_id id, std::string peer, std::shared_ptr<dialect> d)
    : r_(r), id_(id), peer_(std::move(peer)), d_(std::move(d)) {}
  void send(const kvmi::command_msg& m) override {
    auto buf = r_.take_buffer(); // capacity kept: sends allocate nothing
    std::optional<raw_frame> local;
    d_->encode(buf, m, local);
    if (local)
      caf::anon_send(vm(), reply_atom::value, std::move(*local));
    else
      r_.post_send(id_, std::move(buf));
  }
  void send(const kvmi::event_reply_msg& m) override {
    auto buf = r_.take_buffer();
    d_->encode(buf, m);
    r_.post_send(id_, std::move(buf));
  }
  bool can_singlestep() const override { return d_->can_singlestep(); }
  void singlestep(uint16_t vcpu, bool enable) override {
    auto buf = r_.take_buffer();
    if (d_->encode_singlestep(buf, vcpu, enable))
      r_.post_send(id_, std::move(buf));
  }
  void close(disconnect_reason why, std::string detail) override {
    {
      std::lock_guard lk(mu_);
      if (!cause_)
        cause_ = close_cause{why, std::move(detail)};
    }
    r_.post_close(id_);
  }
  std::string peer() const override { return peer_; }
  std::optional<close_cause> cause() const {
    std::lock_guard lk(mu_);
    return cause_;
  }

private:
  net::reactor& r_;
  net::conn_id id_;
  std::string peer_;
  std::shared_ptr<dialect> d_;
  mutable std::mutex mu_;
  std::optional<close_cause> cause_;
};

dialect_options dialect_of(const kvmi_listener_options& o) {
  dialect_options d;
  d.proto = o.proto;
  d.v5_handshake = o.mode;
  d.v7_layout = o.v7_layout;
  return d;
}

struct listener_state {
  kvmi_listener_options o;
  gauge* pending = nullptr; // kvmid_handshakes_pending
  std::shared_ptr<ring_unit> unit; // runs this listener's VM and vCPU actors
};

class kvmi_handler final : public net::connection_handler {
public:
  kvmi_handler(net::reactor& r, core& c, const listener_state& l)
    : r_(r), c_(c), l_(l), o_(l.o) {}

  void on_open(net::conn_ctx& ctx) override {
    if (!o_.gate->enter()) {
      // Counted, logged once per burst by the gate, never per connection.
      failed_ = dead_ = quiet_ = true;
      cause_ = close_cause{disconnect_reason::handshake_limit, {}};
      c_.internals().m.handshake_failure("too_many_pending").inc();
      ctx.close(true);
      return;
    }
    gated_ = true;
    l_.pending->add(1);
    hs_ = make_handshake(dialect_of(o_), o_.cookie);
    flush_handshake(ctx);
    ctx.set_timer(o_.handshake_timeout, handshake_timer); // the first step's deadline
  }

  void on_data(net::conn_ctx& ctx, std::span<const uint8_t> bytes) override {
    if (dead_)
      return;
    if (!dialect_) {
      auto st = hs_->feed(bytes);
      bool replied = flush_handshake(ctx);
      if (st == kvmi::hs::status::failed)
        return handshake_failed(ctx, disconnect_reason::handshake_failed, hs_->failure());
      if (st == kvmi::hs::status::in_progress) {
        // kvmid answered a whole message: the next step starts now, with a
        // deadline of its own. Part of a message changes nothing.
        if (replied)
          ctx.set_timer(o_.handshake_timeout, handshake_timer);
        return;
      }
      leave_gate();
      if (auto vm = kvmi::hs::to_string(hs_->info().id); !c_.admitted(vm)) {
        ctx.cancel_timer(handshake_timer);
        vm_label_ = " (vm " + vm + " " + hs_->info().name + ")";
        // One label for all such VMs; the close line names this one.
        return handshake_failed(ctx, disconnect_reason::not_admitted,
                                {"not_admitted", "unhooked by an operator: not admitted"});
      }
      guest_ = hs_->info();
      dialect_ = make_dialect(dialect_of(o_), guest_);
      split_ = kvmi::frame_splitter(guest_.order, dialect_->max_payload());
      if (auto pro = dialect_->prologue(guest_); !pro.empty()) {
        // The prologue's reply gets the handshake step's deadline.
        ctx.send(std::span<const uint8_t>(pro));
        ctx.set_timer(o_.handshake_timeout, handshake_timer);
      } else {
        start_session(ctx);
      }
    }
    // The frames of one read arrived together: one clock read dates them all.
    int64_t received = now_ns();
    auto err = split_.feed(bytes, [&](const kvmi::frame& f) { on_frame(ctx, f, received); });
    if (err && !dead_)
      protocol_error(ctx, {protocol_error_reason::bad_frame, std::string(kvmi::name(err.code))});
  }

  void on_timer(net::conn_ctx& ctx, uint64_t token) override {
    if (token == handshake_timer && !link_)
      handshake_failed(ctx, disconnect_reason::handshake_timeout,
                       {"timeout", "handshake timed out"});
  }

  void on_close(net::conn_ctx& ctx, net::close_reason why) override {
    leave_gate();
    if (!cause_ && link_)
      cause_ = link_->cause();
    if (!cause_)
      cause_ = close_cause{from_reactor(why), link_ ? std::string() : "during the handshake"};
    routes_ = {}; // the vCPU actors are the VM actor's to end
    if (vm_) {
      l_.unit->send(vm_, closed_atom::value);
    } else if (!failed_) {
      failed_ = true;
      count_failure(ctx, {"peer_closed", "connection closed during the handshake"});
    }
    // Logged before it is counted: whoever sees the count sees the line.
    if (!quiet_)
      log_close(ctx);
    c_.internals().m.disconnect(cause_->why).inc();
  }

private:
  void leave_gate() {
    if (!gated_)
      return;
    gated_ = false;
    o_.gate->leave();
    l_.pending->add(-1);
  }

  // True when it sent something: kvmid's part of a step is complete.
  bool flush_handshake(net::conn_ctx& ctx) {
    auto& out = hs_->out();
    if (out.empty())
      return false;
    ctx.send(std::span<const uint8_t>(out));
    out.clear();
    return true;
  }

  // The one line a closed KVMI socket logs.
  void log_close(net::conn_ctx& ctx) {
    auto w = cause_->why;
    bool routine = w == disconnect_reason::peer_closed || w == disconnect_reason::unhook
                   || w == disconnect_reason::shutdown;
    if (!log_on(routine ? log_info : log_warn))
      return;
    auto reason = name(w);
    std::fprintf(stderr, "kvmid: KVMI connection %s%s closed: %.*s%s%s%s\n", ctx.peer().c_str(),
                 vm_label_.c_str(), int(reason.size()), reason.data(),
                 cause_->detail.empty() ? "" : " (", cause_->detail.c_str(),
                 cause_->detail.empty() ? "" : ")");
  }

  void count_failure(net::conn_ctx& ctx, const handshake_failure& why) {
    c_.internals().m.handshake_failure(why.token).inc();
    bus_record r;
    r.kind = bus_kind::lifecycle;
    r.name = "handshake-failed";
    r.message = why.sentence;
    r.fields.emplace_back("peer", ctx.peer());
    r.fields.emplace_back("reason", std::string(why.token));
    r.fields.emplace_back("protocol", std::string(name(o_.proto)));
    c_.bus().publish(std::move(r));
  }

  void handshake_failed(net::conn_ctx& ctx, disconnect_reason reason,
                        const handshake_failure& why) {
    if (failed_)
      return;
    failed_ = true;
    dead_ = true;
    cause_ = close_cause{reason, why.sentence};
    count_failure(ctx, why);
    ctx.close(true); // without a word: nothing for an unauthenticated peer to learn
  }

  void start_session(net::conn_ctx& ctx) {
    ctx.cancel_timer(handshake_timer);
    auto& info = guest_;
    order_ = info.order;
    link_ = std::make_shared<reactor_link>(r_, ctx.id(), ctx.peer(), dialect_);
    session_params p{info, link_, ctx.peer(), std::string(name(o_.proto))};
    vm_ = spawn_vm(c_, std::move(p));
    vm_label_ = " (vm " + kvmi::hs::to_string(info.id) + " " + info.name + ")";
    if (log_on(log_info))
      std::fprintf(stderr, "kvmid: vm %s (%s) connected from %s (KVMI %s), %u vCPUs%s\n",
                 kvmi::hs::to_string(info.id).c_str(), info.name.c_str(), ctx.peer().c_str(),
                 name(o_.proto).data(), info.vcpu_count,
                 order_ == kvmi::byte_order::swapped ? ", swapped byte order" : "");
  }

  void on_frame(net::conn_ctx& ctx, const kvmi::frame& f, int64_t received) {
    if (dead_)
      return;
    if (!link_) {
      if (auto why = dialect_->on_prologue(f, guest_))
        return protocol_error(ctx, std::move(*why));
      return start_session(ctx);
    }
    auto in = dialect_->decode(f);
    if (in.error)
      return protocol_error(ctx, std::move(*in.error));
    if (in.event) {
      const caf::actor* to = nullptr;
      if (in.event->kind() != kvmi::event_id::unhook)
        to = link_->vcpu(routes_, in.event->common.vcpu);
      if (to && deliver_event_in_place(*to, l_.unit.get(), *in.event, received))
        return;
      l_.unit->send(to ? *to : vm_, event_atom::value, std::move(*in.event), received);
      return;
    }
    if (in.reply)
      l_.unit->send(vm_, reply_atom::value, std::move(*in.reply));
  }

  void protocol_error(net::conn_ctx& ctx, protocol_fault why) {
    dead_ = true;
    cause_ = close_cause{disconnect_reason::protocol_error, why.detail};
    // The VM actor counts and reports it (before it exists: counted here);
    // the socket closes now so no further byte of this stream is trusted.
    if (vm_)
      l_.unit->send(vm_, proto_err_atom::value, why);
    else {
      failed_ = true; // no handshake failure: it was done
      c_.internals().m.protocol_error(why.reason).inc();
    }
    ctx.close(true);
  }

  net::reactor& r_;
  core& c_;
  const listener_state& l_;
  const kvmi_listener_options& o_;
  std::unique_ptr<tool_handshake> hs_;
  std::shared_ptr<dialect> dialect_; // set once the handshake is done
  kvmi::hs::guest_info guest_;       // the handshake's, completed by the prologue
  kvmi::frame_splitter split_;
  kvmi::byte_order order_ = kvmi::byte_order::native;
  std::shared_ptr<reactor_link> link_;
  kvmi_link::route_cache routes_; // read on this socket's ring thread only
  caf::actor vm_;
  std::string vm_label_; // " (vm <uuid> <name>)" once the handshake is done
  std::optional<close_cause> cause_; // set by whoever closed first on the ring
  bool dead_ = false, failed_ = false, gated_ = false, quiet_ = false;
};

} // namespace

net::handler_factory kvmi_handler_factory(net::reactor& r, core& c, kvmi_listener_options o) {
  auto l = std::make_shared<listener_state>();
  l->o = std::move(o);
  if (!l->o.gate)
    l->o.gate = std::make_shared<handshake_gate>(l->o.max_handshakes);
  l->pending = &c.metrics().get_gauge("kvmid_handshakes_pending",
                                      "KVMI connections still in their handshake");
  for (auto reason : handshake_failure_reasons)
    c.internals().m.handshake_failure(reason);
  l->unit = std::make_shared<ring_unit>(c.system(), [&r] { return r.on_ring_thread(); });
  r.add_turn_hook([unit = l->unit](bool stopping) {
    if (stopping) {
      unit->detach();
      return false;
    }
    return unit->run(1024); // then the ring collects completions again
  });
  return [&r, &c, l]() -> std::unique_ptr<net::connection_handler> {
    return std::make_unique<kvmi_handler>(r, c, *l);
  };
}

} // namespace kvmid
