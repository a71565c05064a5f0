// v5: the handshakes of proto/handshake.hpp as they are.
#include "server/dialect/dialect.hpp"

namespace kvmid {

namespace {

class v5_handshake final : public tool_handshake {
public:
  v5_handshake(kvmi::hs::mode m, std::vector<uint8_t> cookie) : hs_(std::move(cookie), m) {}
  kvmi::hs::status feed(std::span<const uint8_t>& in) override { return hs_.feed(in); }
  std::vector<uint8_t>& out() override { return hs_.out(); }
  handshake_failure failure() const override {
    return {hs_.token(), std::string(hs_.reason())};
  }
  const kvmi::hs::guest_info& info() const override { return hs_.info(); }

private:
  kvmi::hs::tool_side hs_;
};

} // namespace

std::unique_ptr<tool_handshake> make_v5_handshake(kvmi::hs::mode m, std::vector<uint8_t> cookie) {
  return std::make_unique<v5_handshake>(m, std::move(cookie));
}

} // namespace kvmid
