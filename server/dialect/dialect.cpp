#include "server/dialect/dialect.hpp"

namespace kvmid {

std::string_view name(protocol p) {
  switch (p) {
    case protocol::v5: return "v5";
    case protocol::v7: return "v7";
  }
  return "?";
}

std::unique_ptr<tool_handshake> make_handshake(const dialect_options& o,
                                               std::vector<uint8_t> cookie) {
  if (o.proto == protocol::v7)
    return make_v7_handshake(o.v7_layout, std::move(cookie));
  return make_v5_handshake(o.v5_handshake, std::move(cookie));
}

std::unique_ptr<dialect> make_dialect(const dialect_options& o, const kvmi::hs::guest_info& g) {
  if (o.proto == protocol::v7)
    return make_v7_dialect();
  return make_v5_dialect(g.order);
}

} // namespace kvmid
