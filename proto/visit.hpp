// Generic visitors over inspect(): byte swapping and the padding check.
#pragma once

#include "proto/wire.hpp"

#include <bit>
#include <cstring>
#include <type_traits>

namespace kvmi {

// The peer's byte order relative to ours: the handshake decides it.
enum class byte_order : uint8_t { native, swapped };

namespace detail {

template <class T>
constexpr T bswap(T x) {
  if constexpr (sizeof(T) == 1) {
    return x;
  } else {
    using U = std::make_unsigned_t<T>;
    U u = static_cast<U>(x);
    if constexpr (sizeof(T) == 2)
      u = __builtin_bswap16(u);
    else if constexpr (sizeof(T) == 4)
      u = __builtin_bswap32(u);
    else
      u = __builtin_bswap64(u);
    return static_cast<T>(u);
  }
}

struct swapper {
  template <class... Ts>
  void operator()(Ts&&... xs) {
    (apply(xs), ...);
  }
  template <class T>
  void apply(pad_ref<T> p) {
    apply(p.value);
  }
  template <class T>
  void apply(T& x) {
    if constexpr (std::is_integral_v<T>) {
      x = bswap(x);
    } else if constexpr (std::is_array_v<T>) {
      for (auto& e : x)
        apply(e);
    } else {
      inspect(*this, x);
    }
  }
};

struct padding_checker {
  bool ok = true;
  template <class... Ts>
  void operator()(Ts&&... xs) {
    (apply(xs), ...);
  }
  template <class T>
  void apply(pad_ref<T> p) {
    T zero{};
    ok = ok && std::memcmp(&p.value, &zero, sizeof(T)) == 0;
  }
  template <class T>
  void apply(T& x) {
    if constexpr (!std::is_integral_v<T> && !std::is_array_v<T>)
      inspect(*this, x);
  }
};

} // namespace detail

// Swap every field of x (nested structs included) to the other byte order.
template <class T>
void swap_fields(T& x) {
  detail::swapper s;
  s.apply(x);
}

template <class T>
void to_order(T& x, byte_order order) {
  if (order == byte_order::swapped)
    swap_fields(x);
}

// True when every KVMI padding field of x (nested included) is zero.
template <class T>
bool padding_zero(const T& x) {
  detail::padding_checker c;
  c.apply(const_cast<T&>(x)); // the checker only reads
  return c.ok;
}

} // namespace kvmi
