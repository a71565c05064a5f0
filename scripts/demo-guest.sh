#!/usr/bin/env bash
# kvmid watching a real Linux guest: kvmi-qemu boots Debian's cloud kernel
# under QEMU TCG; kvmid's policy plants a breakpoint on __x64_sys_newuname
# and denies writes to the guest's hostname (init_uts_ns.nodename), and
# `kvmictl watch` prints the alerts while the guest's workload keeps
# running `uname` and renaming itself (`hostname evil` among others).
# Everything started here is stopped on exit, ^C included.
#   scripts/demo-guest.sh [SECONDS]   (default 60; build dir: $BUILD or build)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${BUILD:-build}
scripts/deps.sh
if [ ! -x "$build/server/kvmid" ] || [ ! -x "$build/server/kvmictl/kvmictl" ] \
   || [ ! -x "$build/kernel-patches/qemu/kvmi-qemu" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build "$build" -j"$(nproc)" --target kvmid kvmictl kvmi-qemu
fi

dir=$(mktemp -d /tmp/kvmid-demo-guest.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  # The last started first: the watch before kvmid, kvmid before the guest
  # (kvmi-qemu quits QEMU on SIGTERM; QEMU also dies with it).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  echo "demo: stopped; logs in $dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

umask 077
head -c 32 /dev/urandom >"$dir/cookie"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/token"
mkdir -p "$dir/vm"

echo "demo: booting the guest (QEMU TCG, 10-30 s); console: $dir/vm/serial.log"
"$build/kernel-patches/qemu/kvmi-qemu" --unix "$dir/kvmi.sock" --cookie-file "$dir/cookie" \
  --work-dir "$dir/vm" --name demo-guest --symbols init_uts_ns,__x64_sys_newuname \
  2>"$dir/kvmi-qemu.log" &
pids+=($!)
# kvmid's policy is written with the guest's own kallsyms addresses.
# (The first console line may start with the firmware's terminal escapes.)
sym() { sed -n "s/.*kallsyms \([0-9a-f]*\) . $1\r\?$/\1/p" "$dir/vm/serial.log" 2>/dev/null | head -1; }
for _ in $(seq 300); do
  [ -n "$(sym init_uts_ns)" ] && [ -n "$(sym __x64_sys_newuname)" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$dir/kvmi-qemu.log"; exit 1; }
  sleep 0.5
done
[ -n "$(sym init_uts_ns)" ] || { echo "demo: the guest printed no kallsyms"; exit 1; }
gpa() { printf '0x%x' $((0x$(sym "$1") - 0xffffffff80000000)); }
uts=$(gpa init_uts_ns)
nodename=$(printf '0x%x' $((uts + 65)))  # new_utsname: sysname[65], nodename[65]
page=$(printf '0x%x' $((uts & ~0xfff)))
cat >"$dir/kvmid.json" <<JSON
{
  "log_level": "warn",
  "cookie_file": "$dir/cookie",
  "state_dir": "$dir/state",
  "listeners": [{ "type": "unix", "path": "$dir/kvmi.sock" }],
  "api": { "listen": ["unix:$dir/api.sock"], "token_file": "$dir/token" },
  "policies": [{
    "name": "demo", "match": ["demo-*"], "hypercalls": false,
    "page_protection": [{ "name": "hostname", "gpa": "$page", "size": "0x1000", "access": "r-x",
                          "on_violation": "deny", "deny_range": { "gpa": "$nodename", "size": 65 } }],
    "breakpoints": [{ "name": "newuname", "gpa": "$(gpa __x64_sys_newuname)" }]
  }]
}
JSON
"$build/server/kvmid" --config "$dir/kvmid.json" 2>"$dir/kvmid.log" &
pids+=($!)
kvmictl=("$build/server/kvmictl/kvmictl" --unix "$dir/api.sock" --token-file "$dir/token")
ctl() { "${kvmictl[@]}" "$@"; }
for _ in $(seq 120); do
  ctl vm demo-guest >/dev/null 2>&1 && break
  sleep 0.5
done
echo "demo: kvmid protects nodename at $nodename (deny) and breaks on __x64_sys_newuname;"
echo "demo: the guest runs uname every round and renames itself every 40 (evil among them)."
echo "demo: alerts and reports for $seconds s (^C stops):"
"${kvmictl[@]}" watch --kind alert,report & # not through a function: $! is kvmictl itself
pids+=($!)
end=$((SECONDS + seconds))
n=0
while [ $SECONDS -lt $end ]; do
  sleep 5
  n=$((n + 1))
  # The breakpoint is one-shot: planted again, the next uname hits it.
  [ $((n % 2)) -eq 0 ] && ctl add-breakpoint demo-guest "$(gpa __x64_sys_newuname)" >/dev/null 2>&1 || true
  echo "demo: guest says: $(grep -a '^progress' "$dir/vm/serial.log" | tail -1 | tr -d '\r')"
done
echo "demo: writes to the hostname denied: $(grep -c 'the write was undone (retry)' "$dir/kvmi-qemu.log" || true);" \
  "the guest is still $(grep -a '^progress' "$dir/vm/serial.log" | tail -1 | awk '{print $3}' | tr -d '\r')"
