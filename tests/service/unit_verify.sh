#!/bin/bash
# systemd-analyze verify on config/kvmid.service, with ExecStart pointing at
# the kvmid just built (verify insists that the binary exists). Needs no
# running systemd: verify loads the unit offline (--root would need a whole
# system in the root: sysinit.target, /bin/kill). Any output fails too:
# verify only warns, exit 0, about an unknown key or a bad value.
# With MANPATH (an installed tree's share/man), the man page the unit's
# Documentation= names must be there too.
# usage: unit_verify.sh UNIT KVMID_BIN [MANPATH]
set -euo pipefail
unit=$1 kvmid=$2 manpath=${3:-}
for tool in systemd-analyze; do
  command -v "$tool" > /dev/null || { echo "$0: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvmid-unit-XXXXXX")
trap 'rm -rf "$dir"' EXIT
sed "s#^ExecStart=/usr/sbin/kvmid #ExecStart=$kvmid #" "$unit" > "$dir/kvmid.service"
grep -q "^ExecStart=$kvmid " "$dir/kvmid.service" || {
  echo "unit_verify: no 'ExecStart=/usr/sbin/kvmid ' line in $unit" >&2; exit 1; }
if [ -n "$manpath" ]; then
  man=(env MANPATH="$manpath" systemd-analyze verify --man=yes)
else
  man=(systemd-analyze verify --man=no) # checked in the package (package_test.sh)
fi
out=$("${man[@]}" "$dir/kvmid.service" 2>&1) || {
  echo "$out"; echo "unit_verify: systemd-analyze verify failed" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "$out"; echo "unit_verify: systemd-analyze verify warned" >&2; exit 1
fi
# The hardening stays where it is: systemd's own exposure score (0 safe ..
# 10 exposed) at most 2.0, "OK" in its words.
systemd-analyze security --offline=yes --threshold=20 "$dir/kvmid.service" > "$dir/security" 2>&1 || {
  cat "$dir/security"; echo "unit_verify: exposure above 2.0 (systemd-analyze security)" >&2; exit 1; }
echo "unit_verify: $unit verified, $(grep -o 'exposure level.*' "$dir/security")"
