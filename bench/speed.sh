#!/usr/bin/env bash
# Speed layer benchmark (make bench-speed): a backlog in the embedded broker, drained by
# `lambda speed` and, in the same run, the same events (flattened for JSONEachRow) by
# ClickHouse's own Kafka table engine into the same raw table and per-minute
# AggregatingMergeTree (the baseline); the speed layer's raw inserts alone (the insert floor);
# stage floors (sarama, decoder, encoder); then produce-to-visible latency at a fixed rate and
# CPU profiles of the speed process. The driver is bench/speedbench; it prints a markdown
# report for BENCHMARKS.md and keeps profiles and logs in .data/bench-speed/.
#
# ClickHouse: a private 18.16 server of the benchmark's own (deploy/local/clickhouse.sh, data
# in .data/bench-speed/clickhouse, port BENCH_CH_PORT), so that its CPU time is the
# benchmark's alone and not that of other tests sharing the machine; BENCH_SHARED_CH=1 uses
# the shared server on CH_TCP_PORT (default 9000) instead.
#
# Environment: BENCH_EVENTS (default 5000000: a shorter backlog favours the speed layer,
# since the Kafka engine's flush interval dominates its time), BENCH_REPEAT (default 3),
# BENCH_PARTITIONS (default 4), BENCH_RATE (default 10000), BENCH_LATENCY (default 30s),
# BENCH_CH_PORT (default 19600), BENCH_BEFORE_REF (a git ref, e.g. main: its `lambda speed` also
# drains the backlog in every round, for a before/after in the same conditions). Other flags:
# speed.sh -h.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.data/bench-speed
mkdir -p "$OUT"
# Own copies of the binaries: bin/lambda may be rebuilt by someone else mid-run.
go build -o "$OUT/lambda" ./cmd/lambda
go build -o "$OUT/speedbench" ./bench/speedbench
before=()
if [ -n "${BENCH_BEFORE_REF:-}" ]; then
  dir="$(mktemp -d)"
  git worktree add -q --detach "$dir/src" "$BENCH_BEFORE_REF"
  (cd "$dir/src" && go build -o "$dir/lambda" ./cmd/lambda)
  git worktree remove --force "$dir/src"
  cp "$dir/lambda" "$OUT/lambda-before"
  before=(-before "$OUT/lambda-before")
fi

if [ "${BENCH_SHARED_CH:-0}" = 1 ]; then
  ADDR="127.0.0.1:${CH_TCP_PORT:-9000}"
  PIDFILE=.data/clickhouse/clickhouse-server.pid
else
  PORT="${BENCH_CH_PORT:-19600}"
  export CH_DATA_DIR="$OUT/clickhouse" CH_TCP_PORT="$PORT" CH_HTTP_PORT="$((PORT + 1))" CH_INTERSERVER_PORT="$((PORT + 2))"
  deploy/local/clickhouse.sh start >&2
  trap 'deploy/local/clickhouse.sh stop >&2' EXIT
  ADDR="127.0.0.1:$PORT"
  PIDFILE="$CH_DATA_DIR/clickhouse-server.pid"
fi

echo "uptime before: $(uptime)" >&2
"$OUT/speedbench" -lambda "$OUT/lambda" -out "$OUT" -addr "$ADDR" -ch-pid-file "$PIDFILE" \
  -events "${BENCH_EVENTS:-5000000}" -repeat "${BENCH_REPEAT:-3}" -partitions "${BENCH_PARTITIONS:-4}" \
  -rate "${BENCH_RATE:-10000}" -latency "${BENCH_LATENCY:-30s}" "${before[@]}" "$@"
echo "uptime after: $(uptime)" >&2
