#!/usr/bin/env bash
# Where kvmid's CPU goes per event: perf samples of the kvmid-ring thread
# (it decodes, runs the VM and vCPU actors, encodes and sends) during the
# bench's throughput run, 128 VMs x 32 vCPUs flat out, summed by stage and
# turned into microseconds per event with the bench's own CPU/event figure.
#
#   bench/profile-event-path.sh [BUILD_DIR] [SETTLE_SECONDS]   (build, 1)
#
# Sampling starts SETTLE_SECONDS after kvmid's ring thread appears (the
# fleet attaching) and ends with that thread, at the end of kvmid's first
# window (of three: the CPU per event it scales by is their median).
#
# Needs perf (Debian: linux-perf) and permission to profile (root, or
# kernel.perf_event_paranoid <= 1). KEEP=1 keeps perf.data and the reports.
set -euo pipefail

build=${1:-build}
settle=${2:-1}
bench=$build/bench/kvmid-bench
if ! command -v perf > /dev/null; then
  echo "profile-event-path: needs perf (apt-get install linux-perf)" >&2
  exit 2
fi
if [ ! -x "$bench" ]; then
  echo "profile-event-path: no $bench (build the kvmid-bench target first)" >&2
  exit 2
fi

out=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2> /dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $out" >&2; else rm -rf "$out"; fi
}
trap cleanup EXIT

"$bench" 20000 "$out/run" 3 throughput > "$out/bench.log" 2>&1 &
pid=$!

# The throughput run drives kvmid first: its ring thread is named kvmid-ring.
tid=
for _ in $(seq 1 400); do
  for t in /proc/"$pid"/task/*; do
    if [ "$(cat "$t/comm" 2> /dev/null)" = kvmid-ring ]; then
      tid=${t##*/}
    fi
  done
  [ -n "$tid" ] && break
  sleep 0.05
done
if [ -z "$tid" ]; then
  echo "profile-event-path: the bench never started a kvmid-ring thread" >&2
  cat "$out/bench.log" >&2
  exit 1
fi
sleep "$settle" # the fleet attaches; then every vCPU is busy
# Until the thread ends with the kvmid half of the run (timeout: a bound).
timeout -s INT 60 perf record -q -F 1999 -t "$tid" --call-graph dwarf,32768 \
  -o "$out/perf.data" 2> "$out/perf.err" || true
if [ ! -s "$out/perf.data" ]; then
  cat "$out/perf.err" >&2
  exit 1
fi
wait "$pid"
pid=

cpu=$(awk '/kvmid CPU time per event/ {print $6; exit}' "$out/bench.log")
perf report -i "$out/perf.data" --children --sort sym --stdio -g none 2> /dev/null \
  > "$out/children.txt"
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2> /dev/null \
  > "$out/dso.txt"

# Inclusive share (percent) of the first symbol line matching a pattern.
share() {
  awk -v pat="$1" '$0 ~ /^ +[0-9.]+%/ && index($0, pat) {gsub("%", "", $1); print $1; exit}' \
    "$out/children.txt"
}
kernel=$(awk '/\[kernel.kallsyms\]/ {gsub("%", "", $1); print $1; exit}' "$out/dso.txt")
actors=$(share "kvmid::ring_unit::run")
handlers=$(share "caf::detail::behavior_impl::invoke")
# An event for an idle vCPU actor is handled in place, inside on_data
# (ring_actor::run_in_place); claim and release are its CAF part.
in_place=$(share "deliver_event_in_place")
claim=$(share "kvmid::ring_actor::claim")
release=$(share "kvmid::ring_actor::give_back")
decide=$(share "decide_and_reply")
# An alert: its record, the bus, the rule's hit count (publish_alert is
# kept out of line for this).
alert=$(share "publish_alert")
reply=$(share "send_reply")
frames=$(share "kvmi_handler::on_data")

python3 - "$cpu" "${kernel:-0}" "${actors:-0}" "${handlers:-0}" "${in_place:-0}" \
  "${claim:-0}" "${release:-0}" "${decide:-0}" "${alert:-0}" "${reply:-0}" \
  "${frames:-0}" << 'EOF'
import sys
(cpu, kernel, actors, handlers, in_place, claim, release, decide, alert, reply,
 frames) = map(float, sys.argv[1:])
rows = [
    ("received frames: split, decode, route", frames - in_place),
    ("events run in place (idle vCPU actor)", in_place),
    ("  CAF: claim and release the actor", claim + release),
    ("actors run from their mailboxes", actors),
    ("  CAF: mailboxes, resume, dispatch", actors - handlers),
    # Either way in: the handler ends in decide_and_reply (a tail call,
    # so it is not counted under on_event).
    ("decision and reply, either way", decide),
    ("  alert: record, bus, counters", alert),
    ("  reply: encode and queue", reply),
    ("in the kernel (io_uring, UNIX sockets)", kernel),
    ("the rest (the reactor's loop, timers)", max(0.0, 100 - frames - actors - kernel)),
]
print("kvmid-ring thread, 128 VMs x 32 vCPUs flat out: %.2f us of kvmid CPU per event" % cpu)
print("%-46s %8s %10s" % ("stage (inclusive; rows overlap)", "share", "us/event"))
for name, pct in rows:
    print("%-46s %7.1f%% %10.2f" % (name, pct, cpu * pct / 100))
EOF
