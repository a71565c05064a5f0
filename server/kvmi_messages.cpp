// Prints every message kind the protocol knows with its id and payload size.
#include "proto/messages.hpp"

#include <cstdio>

int main() {
  std::printf("%-18s %-12s %4s %6s %8s %8s\n", "message", "direction", "id", "event", "size",
              "element");
  for (auto& k : kvmi::message_kinds()) {
    std::printf("%-18.*s %-12.*s %4u ", static_cast<int>(k.name.size()), k.name.data(),
                static_cast<int>(k.direction.size()), k.direction.data(), k.id);
    if (k.event >= 0)
      std::printf("%6d ", k.event);
    else
      std::printf("%6s ", "-");
    std::printf("%8u %8u\n", k.size, k.element);
  }
}
