#!/usr/bin/env bash
# The README's bench command: install, build release, run kvmid-bench.
# Prints the table; writes bench-results.json and latency-cdf.png into
# bench-out/ (or $1). Not part of the tests.
#   scripts/bench.sh [OUT_DIR [ROUNDS [SECONDS_PER_RUN [SECTIONS]]]]
# SECTIONS: a comma list of latency, throughput, memory, guest, nats (default:
# all; guest boots a real Linux guest under QEMU twice, about two minutes;
# nats starts a nats-server with JetStream on loopback and stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
out=${1:-bench-out}
mkdir -p "$out"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)" --target kvmid-bench kvmid kvmi-qemu
build/bench/kvmid-bench "${2:-50000}" "$out" "${3:-3}" "${4:-latency,throughput,memory,guest,nats}"
