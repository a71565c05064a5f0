// The libFuzzer binary: one executable for all targets, chosen by the
// environment variable KVMI_FUZZ_TARGET (decode, splitter, handshake,
// http_request, json_body, decode_v7 or handshake_v7), so the sources are compiled with clang's
// sanitizers only once.
#include "tests/fuzz/api_targets.hpp"
#include "tests/fuzz/fuzz_targets.hpp"
#include "tests/fuzz/v7_targets.hpp"

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
  else if (t && std::strcmp(t, "http_request") == 0)
    target = kvmi::fuzz::http_request;
  else if (t && std::strcmp(t, "json_body") == 0)
    target = kvmi::fuzz::json_body;
  else if (t && std::strcmp(t, "decode_v7") == 0)
    target = kvmi::fuzz::v7::decode_one;
  else if (t && std::strcmp(t, "handshake_v7") == 0)
    target = kvmi::fuzz::v7::handshake_bytes;
  else {
    std::fprintf(stderr, "set KVMI_FUZZ_TARGET to decode, splitter, handshake, http_request, "
                         "json_body, decode_v7 or handshake_v7\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return target(data, size);
}
