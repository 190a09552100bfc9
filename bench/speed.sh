#!/usr/bin/env bash
# Speed layer benchmark (make bench-speed): a backlog of >= 1M events in the embedded broker,
# drained by `lambda speed` and, in the same run, the same events (flattened for JSONEachRow)
# by ClickHouse's own Kafka table engine into the same raw table and per-minute
# AggregatingMergeTree (the baseline); then produce-to-visible latency at a fixed rate and a CPU
# profile of the speed process. The driver is bench/speedbench; it prints a markdown report
# for BENCHMARKS.md and keeps profiles and logs in .data/bench-speed/.
#
# Needs the local ClickHouse (make ch-start). Environment: BENCH_EVENTS (default 1000000),
# BENCH_REPEAT (default 3), BENCH_PARTITIONS (default 4), BENCH_RATE (default 10000),
# BENCH_LATENCY (default 30s), CH_TCP_PORT (default 9000). Other flags: speed.sh -h.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.data/bench-speed
mkdir -p "$OUT"
# Own copies of the binaries: bin/lambda may be rebuilt by someone else mid-run.
go build -o "$OUT/lambda" ./cmd/lambda
go build -o "$OUT/speedbench" ./bench/speedbench
exec "$OUT/speedbench" -lambda "$OUT/lambda" -out "$OUT" \
  -addr "127.0.0.1:${CH_TCP_PORT:-9000}" \
  -events "${BENCH_EVENTS:-1000000}" -repeat "${BENCH_REPEAT:-3}" -partitions "${BENCH_PARTITIONS:-4}" \
  -rate "${BENCH_RATE:-10000}" -latency "${BENCH_LATENCY:-30s}" "$@"
