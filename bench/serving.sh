#!/usr/bin/env bash
# Serving API benchmark (make bench-serving): two dashboard queries at concurrency 16 through
# the API (cache off, cache on) and straight to ClickHouse's HTTP interface, in one run.
# Needs the local ClickHouse (make ch-start). Prints a markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./bench/servingload \
  -addr "${LAMBDA_TEST_CLICKHOUSE_ADDR:-127.0.0.1:9000}" \
  -http "${LAMBDA_BENCH_CLICKHOUSE_HTTP:-127.0.0.1:8123}" \
  -c "${BENCH_CONCURRENCY:-16}" -d "${BENCH_DURATION:-8s}" "$@"
