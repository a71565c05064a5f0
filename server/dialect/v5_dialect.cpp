// v5: the actors' own messages, so frames pass as they are.
#include "server/dialect/dialect.hpp"

#include <cstring>

namespace kvmid {

namespace {

class v5_dialect final : public dialect {
public:
  explicit v5_dialect(kvmi::byte_order order) : order_(order) {}

  uint32_t max_payload() const override { return kvmi::max_payload; }

  from_host decode(const kvmi::frame& f) override {
    from_host out;
    if (f.hdr.id == static_cast<uint16_t>(kvmi::msg_id::event)) {
      auto ev = kvmi::decode_event(f, order_);
      if (!ev)
        out.error = protocol_fault{protocol_error_reason::bad_event,
                                   std::string("bad event: ") + std::string(ev.err().reason)};
      else
        out.event = std::move(*ev);
      return out;
    }
    // The VM actor decodes a reply against the shape of its command.
    raw_frame rf;
    rf.bytes.resize(sizeof(kvmi::msg_hdr) + f.payload.size());
    kvmi::msg_hdr h = f.hdr;
    kvmi::to_order(h, order_); // back to the wire's order
    std::memcpy(rf.bytes.data(), &h, sizeof h);
    std::memcpy(rf.bytes.data() + sizeof h, f.payload.data(), f.payload.size());
    out.reply = std::move(rf);
    return out;
  }

  void encode(std::vector<uint8_t>& out, const kvmi::command_msg& m,
              std::optional<raw_frame>&) override {
    kvmi::encode(out, m, order_);
  }
  void encode(std::vector<uint8_t>& out, const kvmi::event_reply_msg& m) override {
    kvmi::encode(out, m, order_);
  }

private:
  kvmi::byte_order order_;
};

} // namespace

std::unique_ptr<dialect> make_v5_dialect(kvmi::byte_order order) {
  return std::make_unique<v5_dialect>(order);
}

} // namespace kvmid
