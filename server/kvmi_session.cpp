#include "server/kvmi_session.hpp"

#include "actors/core_impl.hpp"
#include "actors/link.hpp"
#include "actors/log.hpp"

#include <cstdio>
#include <optional>

namespace kvmid {

namespace {

constexpr uint64_t handshake_timer = 1;

class reactor_link final : public kvmi_link {
public:
  reactor_link(net::reactor& r, net::conn_id id, std::string peer)
    : r_(r), id_(id), peer_(std::move(peer)) {}
  void send(std::vector<uint8_t>&& bytes) override { r_.post_send(id_, std::move(bytes)); }
  void close() override { r_.post_close(id_); }
  std::string peer() const override { return peer_; }
  std::vector<uint8_t> take_buffer() override { return r_.take_buffer(); }

private:
  net::reactor& r_;
  net::conn_id id_;
  std::string peer_;
};

class kvmi_handler final : public net::connection_handler {
public:
  kvmi_handler(net::reactor& r, core& c, const kvmi_listener_options& o)
    : r_(r), c_(c), o_(o) {}

  void on_open(net::conn_ctx& ctx) override {
    hs_.emplace(o_.cookie, o_.mode);
    flush_handshake(ctx);
    ctx.set_timer(o_.handshake_timeout, handshake_timer);
  }

  void on_data(net::conn_ctx& ctx, std::span<const uint8_t> bytes) override {
    if (dead_)
      return;
    if (!link_) {
      auto st = hs_->feed(bytes);
      flush_handshake(ctx);
      if (st == kvmi::hs::status::failed)
        return handshake_failed(ctx, std::string(hs_->reason()));
      if (st == kvmi::hs::status::in_progress) {
        ctx.set_timer(o_.handshake_timeout, handshake_timer); // the next step's 10 s
        return;
      }
      ctx.cancel_timer(handshake_timer);
      start_session(ctx);
    }
    auto err = split_.feed(bytes, [&](const kvmi::frame& f) { on_frame(ctx, f); });
    if (err && !dead_)
      protocol_error(ctx, std::string(kvmi::name(err.code)));
  }

  void on_timer(net::conn_ctx& ctx, uint64_t token) override {
    if (token == handshake_timer && !link_)
      handshake_failed(ctx, "handshake timed out");
  }

  void on_close(net::conn_ctx& ctx, net::close_reason) override {
    if (vm_) {
      caf::anon_send(vm_, closed_atom::value);
    } else if (!failed_) {
      failed_ = true;
      count_failure(ctx, "connection closed during the handshake");
    }
  }

private:
  void flush_handshake(net::conn_ctx& ctx) {
    auto& out = hs_->out();
    if (!out.empty()) {
      ctx.send(std::span<const uint8_t>(out));
      out.clear();
    }
  }

  void count_failure(net::conn_ctx& ctx, const std::string& why) {
    c_.internals().m.handshake_failure(why).inc();
    if (log_on(log_warn))
      std::fprintf(stderr, "kvmid: handshake with %s failed: %s\n", ctx.peer().c_str(),
                 why.c_str());
    bus_record r;
    r.kind = bus_kind::lifecycle;
    r.name = "handshake-failed";
    r.message = why;
    r.fields.emplace_back("peer", ctx.peer());
    c_.bus().publish(std::move(r));
  }

  void handshake_failed(net::conn_ctx& ctx, const std::string& why) {
    if (failed_)
      return;
    failed_ = true;
    dead_ = true;
    count_failure(ctx, why);
    ctx.close(true); // without a word (DESIGN.md)
  }

  void start_session(net::conn_ctx& ctx) {
    auto& info = hs_->info();
    order_ = info.order;
    split_.set_order(order_);
    link_ = std::make_shared<reactor_link>(r_, ctx.id(), ctx.peer());
    session_params p{info, link_, ctx.peer()};
    vm_ = spawn_vm(c_, std::move(p));
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
    // The VM actor counts and reports it; the socket closes now so no
    // further byte of this stream is trusted.
    caf::anon_send(vm_, proto_err_atom::value, why);
    ctx.close(true);
  }

  net::reactor& r_;
  core& c_;
  const kvmi_listener_options& o_;
  std::optional<kvmi::hs::tool_side> hs_;
  kvmi::frame_splitter split_;
  kvmi::byte_order order_ = kvmi::byte_order::native;
  std::shared_ptr<reactor_link> link_;
  caf::actor vm_;
  bool dead_ = false, failed_ = false;
};

} // namespace

net::handler_factory kvmi_handler_factory(net::reactor& r, core& c, kvmi_listener_options o) {
  auto opts = std::make_shared<kvmi_listener_options>(std::move(o));
  return [&r, &c, opts]() -> std::unique_ptr<net::connection_handler> {
    return std::make_unique<kvmi_handler>(r, c, *opts);
  };
}

} // namespace kvmid
