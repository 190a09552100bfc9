#!/usr/bin/env bash
# Dashboards at volume (make bench-volume): D sealed days of N events a day plus today, every
# query the built-in dashboards send for their default views, through the API (uncached,
# cached, concurrency 1 and 8) and by hand-written SQL from the rollups and from raw, and
# ClickHouse's CPU per dashboard refresh against a baseline build (the code before the rollups).
#
# It runs its own ClickHouse server (deploy/local/clickhouse.sh on port BENCH_CH_PORT, data in
# .data/bench-volume) so that its CPU time is the benchmark's alone.
#
# Environment: BENCH_DAYS (default 7), BENCH_PER_DAY (default 5000000), BENCH_BASE_REF (git ref
# of the baseline, default 0108b93, the code before the rollups; empty: no baseline),
# BENCH_CH_PORT (default 19500). Prints markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${BENCH_CH_PORT:-19500}"
BASE_REF="${BENCH_BASE_REF-0108b93}"
export CH_TCP_PORT="$PORT" CH_HTTP_PORT="$((PORT + 1))" CH_INTERSERVER_PORT="$((PORT + 2))" CH_DATA_DIR="$PWD/.data/bench-volume"
deploy/local/clickhouse.sh start >&2
trap 'deploy/local/clickhouse.sh stop >&2' EXIT
go build -o bin/lambda ./cmd/lambda
base=()
if [ -n "$BASE_REF" ]; then
    dir="$(mktemp -d)"
    git worktree add -q --detach "$dir/src" "$BASE_REF"
    (cd "$dir/src" && go build -o "$dir/lambda" ./cmd/lambda)
    git worktree remove --force "$dir/src"
    base=(-base-bin "$dir/lambda")
fi
go run ./bench/volumeload -addr "127.0.0.1:$PORT" -bin bin/lambda -days "${BENCH_DAYS:-7}" -per-day "${BENCH_PER_DAY:-5000000}" \
    -ch-pid "$(cat "$CH_DATA_DIR/clickhouse-server.pid")" "${base[@]}" "$@"
