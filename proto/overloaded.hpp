// The overload set for std::visit over the message variants.
#pragma once

namespace kvmi {

template <class... Fs>
struct overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
overloaded(Fs...) -> overloaded<Fs...>;

} // namespace kvmi
