#include "server/kvmi_session.hpp"

#include "actors/core_impl.hpp"
#include "actors/link.hpp"
#include "actors/log.hpp"

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
  reactor_link(net::reactor& r, net::conn_id id, std::string peer)
    : r_(r), id_(id), peer_(std::move(peer)) {}
  void send(std::vector<uint8_t>&& bytes) override { r_.post_send(id_, std::move(bytes)); }
  void close(disconnect_reason why, std::string detail) override {
    {
      std::lock_guard lk(mu_);
      if (!cause_)
        cause_ = close_cause{why, std::move(detail)};
    }
    r_.post_close(id_);
  }
  std::string peer() const override { return peer_; }
  std::vector<uint8_t> take_buffer() override { return r_.take_buffer(); }
  std::optional<close_cause> cause() const {
    std::lock_guard lk(mu_);
    return cause_;
  }

private:
  net::reactor& r_;
  net::conn_id id_;
  std::string peer_;
  mutable std::mutex mu_;
  std::optional<close_cause> cause_;
};

struct listener_state {
  kvmi_listener_options o;
  gauge* pending = nullptr; // kvmid_handshakes_pending
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
      c_.internals().m.handshake_failure("too many handshakes pending").inc();
      ctx.close(true);
      return;
    }
    gated_ = true;
    l_.pending->add(1);
    hs_.emplace(o_.cookie, o_.mode);
    flush_handshake(ctx);
    ctx.set_timer(o_.handshake_timeout, handshake_timer); // the first step's deadline
  }

  void on_data(net::conn_ctx& ctx, std::span<const uint8_t> bytes) override {
    if (dead_)
      return;
    if (!link_) {
      auto st = hs_->feed(bytes);
      bool replied = flush_handshake(ctx);
      if (st == kvmi::hs::status::failed)
        return handshake_failed(ctx, disconnect_reason::handshake_failed,
                                std::string(hs_->reason()));
      if (st == kvmi::hs::status::in_progress) {
        // kvmid answered a whole message: the next step starts now, with a
        // deadline of its own. Part of a message changes nothing.
        if (replied)
          ctx.set_timer(o_.handshake_timeout, handshake_timer);
        return;
      }
      ctx.cancel_timer(handshake_timer);
      leave_gate();
      if (auto vm = kvmi::hs::to_string(hs_->info().id); !c_.admitted(vm)) {
        vm_label_ = " (vm " + vm + " " + hs_->info().name + ")";
        // One label for all such VMs; the close line names this one.
        return handshake_failed(ctx, disconnect_reason::not_admitted,
                                "unhooked by an operator: not admitted");
      }
      start_session(ctx);
    }
    auto err = split_.feed(bytes, [&](const kvmi::frame& f) { on_frame(ctx, f); });
    if (err && !dead_)
      protocol_error(ctx, std::string(kvmi::name(err.code)));
  }

  void on_timer(net::conn_ctx& ctx, uint64_t token) override {
    if (token == handshake_timer && !link_)
      handshake_failed(ctx, disconnect_reason::handshake_timeout, "handshake timed out");
  }

  void on_close(net::conn_ctx& ctx, net::close_reason why) override {
    leave_gate();
    if (!cause_ && link_)
      cause_ = link_->cause();
    if (!cause_)
      cause_ = close_cause{from_reactor(why), link_ ? std::string() : "during the handshake"};
    if (vm_) {
      caf::anon_send(vm_, closed_atom::value);
    } else if (!failed_) {
      failed_ = true;
      count_failure(ctx, "connection closed during the handshake");
    }
    c_.internals().m.disconnect(cause_->why).inc();
    if (!quiet_)
      log_close(ctx);
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

  void count_failure(net::conn_ctx& ctx, const std::string& why) {
    c_.internals().m.handshake_failure(why).inc();
    bus_record r;
    r.kind = bus_kind::lifecycle;
    r.name = "handshake-failed";
    r.message = why;
    r.fields.emplace_back("peer", ctx.peer());
    c_.bus().publish(std::move(r));
  }

  void handshake_failed(net::conn_ctx& ctx, disconnect_reason reason, const std::string& why) {
    if (failed_)
      return;
    failed_ = true;
    dead_ = true;
    cause_ = close_cause{reason, why};
    count_failure(ctx, why);
    ctx.close(true); // without a word: nothing for an unauthenticated peer to learn
  }

  void start_session(net::conn_ctx& ctx) {
    auto& info = hs_->info();
    order_ = info.order;
    split_.set_order(order_);
    link_ = std::make_shared<reactor_link>(r_, ctx.id(), ctx.peer());
    session_params p{info, link_, ctx.peer()};
    vm_ = spawn_vm(c_, std::move(p));
    vm_label_ = " (vm " + kvmi::hs::to_string(info.id) + " " + info.name + ")";
    if (log_on(log_info))
      std::fprintf(stderr, "kvmid: vm %s (%s) connected from %s, %u vCPUs%s\n",
                 kvmi::hs::to_string(info.id).c_str(), info.name.c_str(), ctx.peer().c_str(),
                 info.vcpu_count, order_ == kvmi::byte_order::swapped ? ", swapped byte order" : "");
  }

  void on_frame(net::conn_ctx& ctx, const kvmi::frame& f) {
    if (dead_)
      return;
    if (f.hdr.id == static_cast<uint16_t>(kvmi::msg_id::event)) {
      auto ev = kvmi::decode_event(f, order_);
      if (!ev)
        return protocol_error(ctx, std::string("bad event: ") + std::string(ev.err().reason));
      caf::actor to;
      if (ev->kind() != kvmi::event_id::unhook)
        to = link_->vcpu(ev->common.vcpu);
      if (!to)
        to = vm_;
      caf::anon_send(to, event_atom::value, std::move(*ev), now_ns());
      return;
    }
    raw_frame rf;
    rf.bytes.resize(sizeof(kvmi::msg_hdr) + f.payload.size());
    kvmi::msg_hdr h = f.hdr;
    kvmi::to_order(h, order_); // back to the wire's order
    std::memcpy(rf.bytes.data(), &h, sizeof h);
    std::memcpy(rf.bytes.data() + sizeof h, f.payload.data(), f.payload.size());
    caf::anon_send(vm_, reply_atom::value, std::move(rf));
  }

  void protocol_error(net::conn_ctx& ctx, const std::string& why) {
    dead_ = true;
    cause_ = close_cause{disconnect_reason::protocol_error, why};
    // The VM actor counts and reports it; the socket closes now so no
    // further byte of this stream is trusted.
    caf::anon_send(vm_, proto_err_atom::value, why);
    ctx.close(true);
  }

  net::reactor& r_;
  core& c_;
  const listener_state& l_;
  const kvmi_listener_options& o_;
  std::optional<kvmi::hs::tool_side> hs_;
  kvmi::frame_splitter split_;
  kvmi::byte_order order_ = kvmi::byte_order::native;
  std::shared_ptr<reactor_link> link_;
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
  return [&r, &c, l]() -> std::unique_ptr<net::connection_handler> {
    return std::make_unique<kvmi_handler>(r, c, *l);
  };
}

} // namespace kvmid
