#!/usr/bin/env bash
# The README's run command: install, build, run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
# kvmid against the embedded simulated host: 4 VMs x 4 vCPUs for 15 s.
# Pass your own flags to override (e.g. scripts/run.sh --simulate 32x8).
if [ $# -eq 0 ]; then set -- --simulate 4x4 --duration 15; fi
exec build/server/kvmid "$@"
