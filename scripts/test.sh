#!/usr/bin/env bash
# The README's test command: install, build twice (Release, so a standard
# release build is proven to compile with -Werror, and ASan+UBSan),
# run every test through ctest in both builds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure --timeout 600 -j"$jobs")
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKVMID_SANITIZE=ON
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure --timeout 900 -j"$jobs" -LE no-sanitize)
