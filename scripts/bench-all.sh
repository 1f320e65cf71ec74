#!/usr/bin/env bash
# Every row of BENCHMARKS.md's Results and End-to-end tables, RUNS times, with
# the median of each printed in one table at the end: the criterion benches
# with the documented arguments, the memory and flush_stall harnesses, and end
# to end (gRPC and remote-write loadgen, each against a fresh release service)
# with the profiler on (default) and off and the write-ahead log off and on.
# Not part of scripts/test.sh. Run it on a quiet machine (it prints the load
# average before and after); the figures go in BENCHMARKS.md.
#
#   scripts/bench-all.sh                  # 3 runs, documented settings
#   scripts/bench-all.sh --runs 5
#   scripts/bench-all.sh --quick          # 1 run, short measurements, small harnesses: checks the script (15 min at load 12)
#   scripts/bench-all.sh --only 'ingest|e2e'   # rows whose section matches the regex
#
# Sections: histogram ingest_counters ingest_distributions memory flush
# flush_stall rules decode profile e2e. Raw output is kept in $OUT (printed).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=
QUICK=0
ONLY=.
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
[ -z "$RUNS" ] && { [ "$QUICK" = 1 ] && RUNS=1 || RUNS=3; }

if [ "$QUICK" = 1 ]; then
  CRITERION=(--warm-up-time 0.2 --measurement-time 1)
  HARNESS=() # without --bench the harnesses run their small sizes
  E2E_SECONDS=2
else
  CRITERION=(--warm-up-time 1 --measurement-time 5)
  HARNESS=(--bench)
  E2E_SECONDS=10
fi

OUT=$(mktemp -d /tmp/bench-all.XXXXXX)
export CRITERION_HOME=$OUT/criterion # criterion's own files, not target/criterion
ROWS=$OUT/rows.tsv # section, figure, unit, value (one line per run and figure)
: >"$ROWS"
SERVICE=
cleanup() {
  if [ -n "$SERVICE" ]; then
    kill "$SERVICE" 2>/dev/null || true
    wait "$SERVICE" 2>/dev/null || true
  fi
  rm -rf "$OUT/service"
}
trap cleanup EXIT
wanted() { [[ "$1" =~ $ONLY ]]; }
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg); raw output in $OUT"
echo "== building the benches and the service (release)"
BENCHES="histogram ingest_counters ingest_distributions memory flush flush_stall rules decode profile"
cargo bench --locked --no-run --message-format=json $(for b in $BENCHES; do printf -- '--bench %s ' "$b"; done) \
  2>"$OUT/build.log" | jq -r 'select(.executable != null and .target.kind == ["bench"]) | "\(.target.name) \(.executable)"' \
  >"$OUT/benches.txt"
cargo build --release --locked --bin tailfold 2>>"$OUT/build.log"
bench_bin() { awk -v name="$1" '$1 == name { print $2 }' "$OUT/benches.txt"; }

# Runs criterion bench $1 with filter $2 and records, per benchmark it ran,
# elements per second (criterion's typical estimate: the slope, else the mean).
criterion() {
  local name=$1 filter=$2 log=$OUT/$1.$2.$run.log
  rm -rf "$CRITERION_HOME"
  "$(bench_bin "$name")" --bench "${CRITERION[@]}" "$filter" >"$log" 2>&1
  for estimates in "$CRITERION_HOME"/*/*/new/estimates.json "$CRITERION_HOME"/*/new/estimates.json; do
    [ -f "$estimates" ] || continue
    local dir id ns elements
    dir=$(dirname "$(dirname "$estimates")")
    id=${dir#"$CRITERION_HOME"/}
    ns=$(jq '(.slope // .mean).point_estimate' "$estimates")
    elements=$(jq '.throughput.Elements // 0' "$dir/new/benchmark.json")
    if [ "$elements" != 0 ]; then
      row "$name" "$id" "M elem/s" "$(awk -v n="$ns" -v e="$elements" 'BEGIN { printf "%.3f", e / n * 1e3 }')"
    fi
    row "$name" "$id" "µs/iter" "$(awk -v n="$ns" 'BEGIN { printf "%.3f", n / 1e3 }')"
  done
}

# The memory harness: bytes and allocations per series (or window) per line.
memory() {
  local log=$OUT/memory.$run.log
  "$(bench_bin memory)" "${HARNESS[@]}" >"$log" 2>&1
  grep -E ' bytes +[0-9.]+ allocations$' "$log" | while read -r line; do
    local what bytes blocks
    what=$(sed -E 's/ +[0-9.]+ bytes +[0-9.]+ allocations$//' <<<"$line")
    bytes=$(sed -E 's/.* ([0-9.]+) bytes +[0-9.]+ allocations$/\1/' <<<"$line")
    blocks=$(sed -E 's/.* ([0-9.]+) allocations$/\1/' <<<"$line")
    row memory "$what" "bytes" "$bytes"
    row memory "$what" "allocations" "$blocks"
  done
}

flush_stall() {
  local log=$OUT/flush_stall.$run.log summary
  "$(bench_bin flush_stall)" "${HARNESS[@]}" >"$log" 2>&1
  summary=$(grep '^summary:' "$log")
  row flush_stall "flush, median of repetitions" ms "$(sed -E 's/.*median ([0-9.]+) ms, max.*/\1/' <<<"$summary")"
  row flush_stall "ingest p99 during flush, median" ms "$(sed -E 's/.*p99 median ([0-9.]+) ms.*/\1/' <<<"$summary")"
  row flush_stall "ingest p99 during flush, worst" ms "$(sed -E 's/.*worst ([0-9.]+) ms.*/\1/' <<<"$summary")"
  row flush_stall "ingest max single call" ms "$(sed -E 's/.*; max ([0-9.]+) ms$/\1/' <<<"$summary")"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts a fresh service from a copy of config/ with its data in a temp dir,
# on free ports, with the profiler $1 (true/false) and the write-ahead log $2.
start_service() {
  local profiler=$1 wal=$2 dir=$OUT/service
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -r config "$dir/config"
  GRPC_PORT=$(free_port)
  HTTP_PORT=$(free_port)
  python3 - "$dir/config/tailfold.yaml" "$GRPC_PORT" "$HTTP_PORT" "$dir/data" "$profiler" "$wal" <<'EOF'
import sys
path, grpc, http, data, profiler, wal = sys.argv[1:]
text = open(path).read()
for old, new in [
    ("listen: 127.0.0.1:4770", f"listen: 127.0.0.1:{grpc}"),
    ("listen: 127.0.0.1:4771", f"listen: 127.0.0.1:{http}"),
    ("data_dir: data ", f"data_dir: {data} "),
    ("profile:                        # the metrics profiler: GET /api/v1/profile and `tailfold top`\n  enabled: true",
     f"profile:\n  enabled: {profiler}"),
    ("wal:                            # write-ahead log (README: Running it safely)\n  enabled: false",
     f"wal:\n  enabled: {wal}"),
]:
    assert text.count(old) == 1, f"config/tailfold.yaml no longer has {old!r} once"
    text = text.replace(old, new)
open(path, "w").write(text)
EOF
  target/release/tailfold run -c "$dir/config/tailfold.yaml" >"$dir/service.log" 2>&1 &
  SERVICE=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/-/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "service did not get ready; its log:" >&2
  cat "$dir/service.log" >&2
  return 1
}

stop_service() {
  kill "$SERVICE"
  wait "$SERVICE" 2>/dev/null || true
  SERVICE=
}

# One loadgen run against a fresh service: $1 figure name, $2 protocol, $3 profiler, $4 WAL.
e2e() {
  local figure=$1 protocol=$2 log target
  log=$OUT/e2e.$(tr 'A-Z' 'a-z' <<<"$figure" | tr -c 'a-z0-9\n' _).$run.log
  start_service "$3" "$4"
  target=http://127.0.0.1:$GRPC_PORT
  [ "$protocol" = remote-write ] && target=http://127.0.0.1:$HTTP_PORT
  target/release/tailfold loadgen --protocol "$protocol" --target "$target" --rate 0 \
    --duration "${E2E_SECONDS}s" >"$log" 2>&1 || echo "   (loadgen: not every point accounted for, see $log)"
  stop_service
  row e2e "$figure" "M samples/s" "$(sed -nE 's/.* = ([0-9]+) points\/s$/\1/p' "$log" | awk '{ printf "%.3f", $1 / 1e6 }')"
  row e2e "$figure: write p99" ms "$(sed -nE 's/.*p99=([0-9.]+)ms.*/\1/p' "$log" | tail -1)"
}

for run in $(seq "$RUNS"); do
  echo "== run $run of $RUNS (load average $(cut -d' ' -f1 /proc/loadavg))"
  wanted histogram && criterion histogram ''
  if wanted ingest_counters; then
    for filter in 'zipf$' zipf_2threads uniform zipf_hot_batch zipf_window_cycle statsd_like; do criterion ingest_counters "$filter"; done
  fi
  if wanted ingest_distributions; then
    for filter in 'zipf$' uniform zipf_window_cycle; do criterion ingest_distributions "$filter"; done
  fi
  wanted memory && memory
  wanted flush && criterion flush ''
  wanted flush_stall && flush_stall
  wanted rules && criterion rules ''
  wanted decode && criterion decode ''
  wanted profile && criterion profile ''
  if wanted e2e; then
    e2e "gRPC, profiler on" grpc true false
    e2e "remote write, profiler on" remote-write true false
    e2e "gRPC, profiler off" grpc false false
    e2e "gRPC, WAL on" grpc true true
    e2e "remote write, WAL on" remote-write true true
  fi
done

echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$ROWS" "$RUNS" <<'EOF'
import statistics, sys
rows, runs = sys.argv[1], int(sys.argv[2])
values, order = {}, []
for line in open(rows):
    section, figure, unit, value = line.rstrip("\n").split("\t")
    key = (section, figure, unit)
    if key not in values:
        values[key] = []
        order.append(key)
    if value:
        values[key].append(float(value))
print(f"| section | figure | unit | median of {runs} | runs |")
print("|---|---|---|---|---|")
for key in order:
    got = values[key]
    median = f"{statistics.median(got):.3f}" if got else "missing"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {median} | {', '.join(f'{v:g}' for v in got)} |")
EOF
