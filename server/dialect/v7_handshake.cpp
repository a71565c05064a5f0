// The v7 (QEMU) handshake from kvmid's end: QEMU's struct, sized by its
// first 4 bytes (32 B .. 64 KiB, the bytes kvmid does not know consumed),
// then kvmid's 24-byte answer with the SHA-1 of the cookie. QEMU alone
// checks the answer; kvmid authenticates nobody here (docs/security.md).
#include "server/dialect/dialect.hpp"

namespace kvmid {

namespace {

class v7_handshake final : public tool_handshake {
public:
  v7_handshake(kvmi::v7::hs::layout l, std::vector<uint8_t> cookie)
    : layout_(l), cookie_(std::move(cookie)) {}

  kvmi::hs::status feed(std::span<const uint8_t>& in) override {
    namespace v7hs = kvmi::v7::hs;
    while (status_ == kvmi::hs::status::in_progress && !in.empty()) {
      if (!fill(in, sizeof(uint32_t)))
        break;
      auto size = v7hs::qemu_hello_size(buf_);
      if (!size)
        return fail(token(size.err()), size.err().reason);
      if (!fill(in, *size))
        break;
      auto h = v7hs::decode_qemu_hello(buf_, layout_);
      if (!h)
        return fail(token(h.err()), h.err().reason);
      if (auto e = v7hs::check(*h, layout_))
        return fail(token(e), e.reason);
      std::vector<uint8_t>().swap(buf_); // up to 64 KiB: given back
      info_.id = h->uuid;
      info_.name = h->name;
      info_.start_time = h->start_time;
      // The memory bound QEMU sent, as one RAM region (everything below it
      // counts as RAM), or the E820 RAM ranges; without either the dialect
      // asks GET_MAX_GFN.
      // max_gpa is the guest's highest address: the bound is one past it.
      if (h->max_gpa && *h->max_gpa > 0 && *h->max_gpa < UINT64_MAX)
        info_.regions.push_back(kvmi::hs::region{0, *h->max_gpa + 1,
                                                 uint32_t(kvmi::hs::region_type::ram),
                                                 kvmi::hs::region_online, 0});
      for (auto& e : h->e820)
        if (e.type == 1) // E820_RAM
          info_.regions.push_back(kvmi::hs::region{e.address, e.length,
                                                   uint32_t(kvmi::hs::region_type::ram),
                                                   kvmi::hs::region_online, 0});
      v7hs::encode(out_, v7hs::make_answer(cookie_));
      status_ = kvmi::hs::status::done;
    }
    return status_;
  }
  std::vector<uint8_t>& out() override { return out_; }
  handshake_failure failure() const override { return {token_, "v7 handshake: " + reason_}; }
  const kvmi::hs::guest_info& info() const override { return info_; }

private:
  // Sizes out of 32..64 KiB are bad_size, as are the E820 counts that
  // do not fit; padding and E820 ranges keep their names; any other field
  // out of its domain is bad_value (a token of handshake_failure_reasons).
  static std::string_view token(const kvmi::error& e) {
    switch (e.code) {
      case kvmi::errc::oversize:
      case kvmi::errc::truncated:
      case kvmi::errc::bad_size: return "bad_size";
      case kvmi::errc::bad_padding: return "bad_padding";
      case kvmi::errc::bad_range: return "bad_range";
      default: return "bad_value";
    }
  }
  kvmi::hs::status fail(std::string_view token, std::string_view why) {
    token_ = token;
    reason_ = std::string(why);
    return status_ = kvmi::hs::status::failed;
  }
  bool fill(std::span<const uint8_t>& in, size_t want) {
    size_t n = std::min(in.size(), want > buf_.size() ? want - buf_.size() : 0);
    buf_.insert(buf_.end(), in.begin(), in.begin() + n);
    in = in.subspan(n);
    return buf_.size() >= want;
  }

  kvmi::v7::hs::layout layout_;
  std::vector<uint8_t> cookie_;
  std::vector<uint8_t> buf_, out_;
  kvmi::hs::status status_ = kvmi::hs::status::in_progress;
  std::string_view token_;
  std::string reason_;
  kvmi::hs::guest_info info_;
};

} // namespace

std::unique_ptr<tool_handshake> make_v7_handshake(kvmi::v7::hs::layout l,
                                                  std::vector<uint8_t> cookie) {
  return std::make_unique<v7_handshake>(l, std::move(cookie));
}

} // namespace kvmid
