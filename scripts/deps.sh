#!/usr/bin/env bash
# Installs what kvmid needs on Debian 12, idempotently. Used by both README
# commands and by .ci/run.
set -euo pipefail
pkgs=(build-essential cmake pkg-config git clang libclang-rt-14-dev
      libcaf-dev liburing-dev nlohmann-json3-dev doctest-dev libhttp-parser-dev
      libssl-dev openssl libcurl4-openssl-dev curl prometheus gnuplot-nox python3
      python3-jsonschema)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
