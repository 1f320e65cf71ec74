#!/usr/bin/env bash
# Side by side on this machine: Etsy statsd (npm statsd 0.9), collectd's
# statsd plugin and tailfold, each alone under the same offered load from
# target/release/statsd-sender (counter lines of value 1, LINES per datagram
# over SERIES names). Prints, per daemon, the lines it counted, the loss, and
# the lines counted per CPU-second it spent (user + system, all threads),
# then tailfold's ratios. Not part of scripts/test.sh; figures go in BENCHMARKS.md.
#
#   scripts/compare-statsd.sh                 # 2 M lines/s for 8 s, 25 lines per datagram, 1,000 series
#   RATE=1000000 SECONDS_=8 scripts/compare-statsd.sh
#   scripts/compare-statsd.sh --only tailfold # one daemon (or ONLY="etsy collectd")
#   PERF_DATA=/tmp/tf.perf scripts/compare-statsd.sh --only tailfold  # perf record -F 999 -g of tailfold while it is offered the load
#   TAILFOLD=/path/to/tailfold scripts/compare-statsd.sh --only tailfold  # another build, for A/B pairs
#   TAILFOLD_STATSD='batch_wait_ms: 25' scripts/compare-statsd.sh --only tailfold  # extra keys of tailfold's statsd section
set -euo pipefail
cd "$(dirname "$0")/.."

while [ $# -gt 0 ]; do
  case $1 in
    --only) ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    *) echo "usage: $0 [--only 'etsy collectd tailfold']" >&2; exit 2 ;;
  esac
done

RATE=${RATE:-2000000}
SECONDS_=${SECONDS_:-8}
LINES=${LINES:-25}
SERIES=${SERIES:-1000}
# 8 source ports from 2 threads: the kernel picks a SO_REUSEPORT reader by
# source address, and a busy host has many senders; 2 ports could both land on one reader.
SENDERS=${SENDERS:-8}
SENDER_THREADS=${SENDER_THREADS:-2}
TAILFOLD=${TAILFOLD:-target/release/tailfold}
PERF_DATA=${PERF_DATA:-}
ONLY=${ONLY:-"etsy collectd tailfold"}
PORT=${PORT:-28125}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

# --- what the run needs, installed when missing ---
if [ ! -f target/etsy-statsd/node_modules/statsd/stats.js ]; then
  echo "== installing Etsy statsd (npm statsd@0.9.0) under target/etsy-statsd"
  command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends nodejs npm
  npm install --prefix target/etsy-statsd --no-audit --no-fund statsd@0.9.0 >/dev/null
fi
if ! command -v collectd >/dev/null || [ ! -f /usr/lib/collectd/statsd.so ]; then
  echo "== installing collectd (Debian collectd-core)"
  apt-get install -y -qq --no-install-recommends collectd-core >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends collectd-core >/dev/null; }
fi
echo "== building tailfold and statsd-sender (release)"
cargo build --release --locked --bin tailfold --bin statsd-sender 2>&1 | tail -1

WORK=$(mktemp -d)
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)

# CPU seconds (user + system, every thread) a process has used so far.
cpu_seconds() { awk -v tick="$TICK" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / tick }' "/proc/$1/stat"; }

wait_udp() { # waits until something listens on 127.0.0.1:$PORT/udp
  for _ in $(seq 100); do
    ss -Hlun "sport = :$PORT" | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on udp $PORT" >&2
  return 1
}

# Runs the sender against the daemon $DAEMON; sets SENT, CPU (seconds the daemon used).
offer() {
  local before after out
  before=$(cpu_seconds "$DAEMON")
  out=$(target/release/statsd-sender --target "127.0.0.1:$PORT" --rate "$RATE" --seconds "$SECONDS_" \
    --lines-per-datagram "$LINES" --series "$SERIES" --sockets "$SENDERS" --threads "$SENDER_THREADS")
  echo "   sender: $out"
  # What is queued drains; a flush falls due.
  sleep 3
  after=$(cpu_seconds "$DAEMON")
  SENT=$(sed -E 's/.*sent_lines=([0-9]+).*/\1/' <<<"$out")
  CPU=$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a - b }')
}

stop() { kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=; }

declare -A COUNTED SENT_BY CPU_BY

run_etsy() {
  local dir=$WORK/etsy
  mkdir -p "$dir"
  cat >"$dir/config.js" <<EOF
{ port: $PORT, address: "127.0.0.1", mgmt_address: "127.0.0.1", mgmt_port: $((PORT + 1)), flushInterval: 1000,
  backends: ["$PWD/tests/statsd/json_backend.js"], jsonBackend: { file: "$dir/flushes.jsonl" } }
EOF
  node target/etsy-statsd/node_modules/statsd/stats.js "$dir/config.js" >"$dir/log" 2>&1 &
  DAEMON=$!
  wait_udp
  offer
  sleep 1.5 # one more flush
  stop
  COUNTED[etsy]=$(python3 -c '
import json, sys
print(int(sum(v for line in open(sys.argv[1]) for k, v in json.loads(line)["counters"].items() if k.startswith("bench."))))
' "$dir/flushes.jsonl")
  SENT_BY[etsy]=$SENT CPU_BY[etsy]=$CPU
}

run_collectd() {
  local dir=$WORK/collectd
  mkdir -p "$dir/csv"
  cat >"$dir/collectd.conf" <<EOF
Hostname "bench"
FQDNLookup false
Interval 1
BaseDir "$dir"
PIDFile "$dir/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "127.0.0.1"
  Port "$PORT"
</Plugin>
<Plugin csv>
  DataDir "$dir/csv"
  StoreRates false
</Plugin>
EOF
  collectd -f -C "$dir/collectd.conf" >"$dir/log" 2>&1 &
  DAEMON=$!
  wait_udp
  offer
  sleep 1.5 # one more interval written
  stop
  # A statsd counter is dispatched as a derive: the running total since start; the last row holds it.
  COUNTED[collectd]=$(for file in "$dir"/csv/bench/statsd/derive-bench.c*; do tail -n1 "$file"; done |
    awk -F, '{ sum += $2 } END { printf "%d\n", sum }')
  SENT_BY[collectd]=$SENT CPU_BY[collectd]=$CPU
}

run_tailfold() {
  local dir=$WORK/tailfold
  mkdir -p "$dir"
  echo "mapping_rules: []" >"$dir/rules.yaml"
  cat >"$dir/tailfold.yaml" <<EOF
grpc: {listen: "127.0.0.1:$((PORT + 2))"}
http: {listen: "127.0.0.1:$((PORT + 3))"}
rules_file: rules.yaml
data_dir: $dir/data
statsd: {listen: "127.0.0.1:$PORT"${TAILFOLD_STATSD:+, $TAILFOLD_STATSD}}
EOF
  "$TAILFOLD" run -c "$dir/tailfold.yaml" >"$dir/log" 2>&1 &
  DAEMON=$!
  wait_udp
  local perf=
  if [ -n "$PERF_DATA" ]; then
    perf record -q -F 999 -g -p "$DAEMON" -o "$PERF_DATA" 2>"$dir/perf.log" &
    perf=$!
  fi
  offer
  if [ -n "$perf" ]; then
    kill -INT "$perf" && wait "$perf" || true
    echo "   tailfold: perf profile in $PERF_DATA"
  fi
  # How evenly the kernel spread the senders over the SO_REUSEPORT readers.
  local readers=
  for task in /proc/"$DAEMON"/task/*; do
    [[ $(cat "$task/comm") == statsd-reader-* ]] && readers+=" $(cat "$task/comm")=$(cpu_seconds "${task#/proc/}")s"
  done
  echo "   tailfold: CPU per reader since start:$readers"
  local metrics
  metrics=$(curl -sf "http://127.0.0.1:$((PORT + 3))/metrics")
  stop
  COUNTED[tailfold]=$(awk '/^tailfold_samples_received_total\{.*protocol="statsd"/ { sum += $NF } END { printf "%d\n", sum }' <<<"$metrics")
  local dropped
  dropped=$(awk '/^tailfold_statsd_receive_dropped_datagrams_total/ { print $NF }' <<<"$metrics")
  echo "   tailfold: receive-buffer drops ${dropped:-0} datagrams; $(grep -c WARN "$dir/log" || true) warnings in its log"
  SENT_BY[tailfold]=$SENT CPU_BY[tailfold]=$CPU
}

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
for daemon in $ONLY; do
  echo "== $daemon: $RATE lines/s for ${SECONDS_} s, $LINES lines per datagram, $SERIES series, $SENDERS sending sockets from $SENDER_THREADS threads"
  "run_$daemon"
  echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done

echo
printf '| daemon | lines sent | lines counted | loss | CPU s | lines counted per CPU-second |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
for daemon in $ONLY; do
  awk -v d="$daemon" -v s="${SENT_BY[$daemon]}" -v c="${COUNTED[$daemon]}" -v cpu="${CPU_BY[$daemon]}" 'BEGIN {
    printf "| %s | %d | %d | %.2f %% | %.2f | %.2f M |\n", d, s, c, 100 * (s - c) / s, cpu, c / cpu / 1e6 }'
done
if [ -n "${COUNTED[tailfold]:-}" ]; then
  for other in etsy collectd; do
    [ -n "${COUNTED[$other]:-}" ] || continue
    awk -v o="$other" -v tc="${COUNTED[tailfold]}" -v tcpu="${CPU_BY[tailfold]}" -v oc="${COUNTED[$other]}" -v ocpu="${CPU_BY[$other]}" 'BEGIN {
      printf "tailfold / %s, lines counted per CPU-second: %.1fx\n", o, (tc / tcpu) / (oc / ocpu) }'
  done
fi
