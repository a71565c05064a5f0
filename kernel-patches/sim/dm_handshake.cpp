#include "kernel-patches/sim/dm_handshake.hpp"

#include <algorithm>

namespace kvmi::sim::detail {

namespace {

class v5_handshake final : public dm_handshake {
public:
  v5_handshake(std::vector<uint8_t> cookie, hs::guest_info info, hs::mode m)
    : side_(std::move(cookie), std::move(info), m) {}
  hs::status feed(std::span<const uint8_t>& in) override { return side_.feed(in); }
  std::vector<uint8_t>& out() override { return side_.out(); }
  hs::status state() const override { return side_.state(); }
  std::string reason() const override { return std::string(side_.reason()); }

private:
  hs::dm_side side_;
};

class v7_handshake final : public dm_handshake {
public:
  v7_handshake(std::vector<uint8_t> secret, const v7::hs::qemu_hello& hello, qemu_v7_hello l)
    : secret_(std::move(secret)) {
    auto layout = l == qemu_v7_hello::e820 ? v7::hs::layout::e820 : v7::hs::layout::max_gpa;
    v7::hs::qemu_hello h = hello;
    if (l != qemu_v7_hello::max_gpa)
      h.max_gpa.reset();
    if (l != qemu_v7_hello::e820) {
      h.cpu_type.reset();
      h.e820.clear();
    }
    v7::hs::encode(out_, h, layout);
  }

  hs::status feed(std::span<const uint8_t>& in) override {
    // The answer's struct_size first, then exactly that many bytes.
    while (status_ == hs::status::in_progress && !in.empty()) {
      size_t want = sizeof(uint32_t);
      if (buf_.size() >= want) {
        auto size = v7::hs::tool_answer_size(buf_);
        if (!size) {
          reason_ = std::string("the tool's answer: ").append(size.err().reason);
          return status_ = hs::status::failed;
        }
        want = *size;
      }
      size_t n = std::min(want - buf_.size(), in.size());
      buf_.insert(buf_.end(), in.begin(), in.begin() + static_cast<ptrdiff_t>(n));
      in = in.subspan(n);
      if (buf_.size() > sizeof(uint32_t) && buf_.size() == want)
        finish();
    }
    return status_;
  }
  std::vector<uint8_t>& out() override { return out_; }
  hs::status state() const override { return status_; }
  std::string reason() const override { return reason_; }

private:
  void finish() {
    auto answer = v7::hs::decode_tool_answer(buf_);
    // QEMU compares the hash only when it has a secret of its own.
    bool ok = answer && (secret_.empty() || v7::hs::cookie_matches(*answer, secret_));
    status_ = ok ? hs::status::done : hs::status::failed;
    if (!answer)
      reason_ = std::string("the tool's answer: ").append(answer.err().reason);
    else if (!ok)
      reason_ = "the tool's answer carries another cookie's hash";
  }

  std::vector<uint8_t> secret_;
  std::vector<uint8_t> buf_, out_;
  hs::status status_ = hs::status::in_progress;
  std::string reason_;
};

} // namespace

std::unique_ptr<dm_handshake> make_dm_handshake_v5(std::vector<uint8_t> cookie,
                                                   hs::guest_info info, hs::mode m) {
  return std::make_unique<v5_handshake>(std::move(cookie), std::move(info), m);
}

std::unique_ptr<dm_handshake> make_dm_handshake_v7(std::vector<uint8_t> secret,
                                                   const v7::hs::qemu_hello& hello,
                                                   qemu_v7_hello layout) {
  return std::make_unique<v7_handshake>(std::move(secret), hello, layout);
}

} // namespace kvmi::sim::detail
