// The libFuzzer binary: one executable for all targets, chosen by the
// environment variable KVMI_FUZZ_TARGET (decode, splitter or handshake), so
// the proto sources are compiled with clang's sanitizers only once.
#include "tests/fuzz/fuzz_targets.hpp"

#include <cstring>

namespace {
int (*target)(const uint8_t*, size_t) = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* t = std::getenv("KVMI_FUZZ_TARGET");
  if (t && std::strcmp(t, "decode") == 0)
    target = kvmi::fuzz::decode_one;
  else if (t && std::strcmp(t, "splitter") == 0)
    target = kvmi::fuzz::split_stream;
  else if (t && std::strcmp(t, "handshake") == 0)
    target = kvmi::fuzz::handshake_bytes;
  else {
    std::fprintf(stderr, "set KVMI_FUZZ_TARGET to decode, splitter or handshake\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return target(data, size);
}
