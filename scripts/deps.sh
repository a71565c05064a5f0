#!/usr/bin/env bash
# Installs what kvmid needs on Debian 12, idempotently. Used by both README
# commands and by .ci/run.
set -euo pipefail
pkgs=(build-essential cmake pkg-config git clang libclang-rt-14-dev
      libcaf-dev liburing-dev nlohmann-json3-dev doctest-dev libhttp-parser-dev
      libssl-dev openssl libcurl4-openssl-dev curl prometheus gnuplot-nox python3
      python3-jsonschema qemu-system-x86 busybox-static
      # sd_notify (READY, STOPPING, WATCHDOG) for the systemd unit
      libsystemd-dev
      # the service and package tests: systemd-analyze verify, lintian, dpkg-shlibdeps
      systemd lintian dpkg-dev
      # NATS: the C client kvmid publishes and serves its API with; the server its tests run
      libnats-dev nats-server
      # amtool checks the shipped config/alertmanager.yml
      prometheus-alertmanager
      # the dashboard's tests drive a headless browser over DevTools (tests/ui)
      chromium
      # the fleet test's network namespaces and veth pairs (ip netns, tests/fleet)
      iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The guest kvmi-qemu boots (kernel-patches/qemu): Debian's cloud kernel,
# downloaded and unpacked into a cache, never installed on this host.
guest_dir="${KVMID_GUEST_DIR:-$HOME/.cache/kvmid/guest}"
if [ "$(uname -m)" = x86_64 ] && ! ls "$guest_dir"/root/boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1; then
  mkdir -p "$guest_dir"
  # linux-image-cloud-amd64 is the meta package; its dependency is the kernel.
  cloud_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
      | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1
  }
  kpkg=$(cloud_kernel)
  if [ -z "$kpkg" ]; then # apt's lists may be missing on a machine that had every package
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    kpkg=$(cloud_kernel)
  fi
  [ -n "$kpkg" ] || { echo "deps.sh: no linux-image-*-cloud-amd64 in apt's lists" >&2; exit 1; }
  (cd "$guest_dir" && apt-get download "$kpkg" && dpkg-deb -x "$kpkg"_*.deb root && rm -f "$kpkg"_*.deb)
fi
