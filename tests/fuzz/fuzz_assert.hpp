// The fuzz targets' invariant check: aborts in the libFuzzer binary (a
// crash libFuzzer records), throws in fuzz_replay_test (which defines
// KVMI_FUZZ_FAIL before including the targets).
#pragma once

#include <cstdio>
#include <cstdlib>

#ifndef KVMI_FUZZ_FAIL
#define KVMI_FUZZ_FAIL(msg) (std::fprintf(stderr, "invariant violated: %s\n", msg), std::abort())
#endif
#define KVMI_FUZZ_ASSERT(cond)                                                                    \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      KVMI_FUZZ_FAIL(#cond);                                                                      \
  } while (0)
