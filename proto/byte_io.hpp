// Bounds-checked reading and writing of wire structs in a peer's byte
// order, shared by every dialect's codec.
#pragma once

#include "proto/visit.hpp"
#include "proto/wire.hpp"

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

namespace kvmi::detail {

// Reads fixed structs and arrays from a payload, converting byte order.
// Every read is bounds-checked; nothing reads past the span.
class reader {
public:
  reader(std::span<const uint8_t> bytes, byte_order order) : bytes_(bytes), order_(order) {}

  template <class T>
  bool get(T& x) {
    if (bytes_.size() < sizeof(T))
      return false;
    std::memcpy(&x, bytes_.data(), sizeof(T));
    bytes_ = bytes_.subspan(sizeof(T));
    to_order(x, order_);
    return true;
  }
  template <class T>
  bool get_array(std::vector<T>& xs, size_t n) {
    if (bytes_.size() / sizeof(T) < n)
      return false;
    xs.resize(n);
    for (auto& x : xs)
      get(x);
    return true;
  }
  size_t left() const { return bytes_.size(); }
  std::span<const uint8_t> rest() const { return bytes_; }

private:
  std::span<const uint8_t> bytes_;
  byte_order order_;
};

class writer {
public:
  writer(std::vector<uint8_t>& out, byte_order order, uint16_t id, uint32_t seq)
    : out_(out), order_(order) {
    out_.clear();
    msg_hdr h{id, 0, seq};
    put(h);
  }
  ~writer() {
    // Patch the header's size once the payload is complete.
    uint16_t size = static_cast<uint16_t>(out_.size() - sizeof(msg_hdr));
    if (order_ == byte_order::swapped)
      size = detail::bswap(size);
    std::memcpy(out_.data() + offsetof(msg_hdr, size), &size, sizeof size);
  }
  template <class T>
  void put(T x) {
    to_order(x, order_);
    auto p = reinterpret_cast<const uint8_t*>(&x);
    out_.insert(out_.end(), p, p + sizeof(T));
  }
  template <class T>
  void put_array(const std::vector<T>& xs) {
    for (auto& x : xs)
      put(x);
  }

private:
  std::vector<uint8_t>& out_;
  byte_order order_;
};

} // namespace kvmi::detail
