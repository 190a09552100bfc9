#!/usr/bin/env bash
# Batch layer benchmark (make bench-batch): a series of days of growing size, each recomputed by
# `lambda batch run` (dedup, the day, its hours, its speed minutes, bookkeeping, swaps) and, where
# it fits in memory, by the floor: the single INSERT … SELECT per table that runs made before
# they were bounded in memory (`lambda batch sql --grain day|hour|minute` prints them), run by
# clickhouse-client. Floor and run alternate on the same day, so they see the same machine load.
#
# For each day size it records: the run's time, its ClickHouse CPU seconds and peak memory (from
# system.query_log: the largest query, and the server's resident memory sampled every 0.5 s), the
# floor's, and the load of the machine (uptime before and after). With BENCH_CLUSTER=1 the same
# days also run on the local 2×2 cluster (deploy/local/cluster.sh), with every node's peak.
#
# The largest day is checked against a reference computed independently, in bounded chunks
# (bench/batch_reference.sql): equal counts, distinct counts and quantiles, sums to 1e-12.
#
# Environment:
#   BENCH_SIZES        events per day, space-separated (default "5000000 20000000 50000000 100000000")
#   BENCH_FLOOR_MAX    largest day the floor runs on (default 20000000: it needs ~0.35 GB a million)
#   BENCH_FULL_FLOOR_MAX  largest day the floor also computes the hours and minutes on (default 5000000)
#   BENCH_MAX_MEMORY   batch.max_memory of the runs (default 2GiB)
#   BENCH_BIG_MEMORY   batch.max_memory from 50M events on (default 4GiB: the issue's 4 GiB limit)
#   BENCH_REPEAT       rounds per size up to BENCH_FLOOR_MAX (default 1)
#   BENCH_CLUSTER      1: also on the local cluster, for sizes up to BENCH_CLUSTER_MAX (default 20000000)
#   BENCH_REFERENCE    0: skip the reference check of the largest day
#   CH_TCP_PORT        the single server (default 9000)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${BENCH_SIZES:-5000000 20000000 50000000 100000000}"
FLOOR_MAX="${BENCH_FLOOR_MAX:-20000000}"
FULL_FLOOR_MAX="${BENCH_FULL_FLOOR_MAX:-5000000}"
MAX_MEMORY="${BENCH_MAX_MEMORY:-2GiB}"
BIG_MEMORY="${BENCH_BIG_MEMORY:-4GiB}"
REPEAT="${BENCH_REPEAT:-1}"
CLUSTER="${BENCH_CLUSTER:-0}"
CLUSTER_MAX="${BENCH_CLUSTER_MAX:-20000000}"
REFERENCE="${BENCH_REFERENCE:-1}"
PORT="${CH_TCP_PORT:-9000}"
DB=lambda_bench_batch
DAY=2024-03-01
export LAMBDA_LOG_LEVEL="${LAMBDA_LOG_LEVEL:-WARN}"

now() { date +%s.%N; }
since() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }
load() { uptime | sed 's/.*load average: //'; }

go build -o bin/lambda ./cmd/lambda

# pids PORT…: the clickhouse-server processes listening on those ports.
pids() {
	local out=()
	for p in "$@"; do
		out+=("$(ss -ltnpH "sport = :$p" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)")
	done
	echo "${out[@]}"
}

# sample PIDS… > FILE: resident memory (kB) of every pid, in order, every 0.5 s, one line per sample.
sample() { while :; do for p in "$@"; do printf '%s ' "$(ps -o rss= -p "$p" | tr -d ' ')"; done; echo; sleep 0.5; done; }
peak_rss() { awk -v i="$2" '{ if ($i > m) m = $i } END { printf "%.2f", m / 1048576 }' "$1"; } # GiB
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# query_stats PORT WHERE: CPU seconds (user + system) and peak memory (GiB) of the queries in
# query_log matching WHERE, on the server at PORT.
query_stats() {
	clickhouse-client --port "$1" -q "SYSTEM FLUSH LOGS"
	if [ "$(clickhouse-client --port "$1" -q "EXISTS TABLE system.query_log")" != 1 ]; then
		echo "0 0" # a node that ran no query of the run yet has no query log
		return
	fi
	clickhouse-client --port "$1" -q "SELECT round(sum(ProfileEvents.Values[indexOf(ProfileEvents.Names, 'UserTimeMicroseconds')] + ProfileEvents.Values[indexOf(ProfileEvents.Names, 'SystemTimeMicroseconds')]) / 1e6, 1), round(max(memory_usage) / 1073741824, 2) FROM system.query_log WHERE type = 2 AND ($2)" | tr '\t' ' '
}

config() { # config FILE MAX_MEMORY [cluster]
	cp shared/config/demo.yaml "$1"
	echo "batch: {max_memory: $2}" >> "$1"
}

generate() { # generate PORT TABLE EVENTS: one day as in the issue: ~2% duplicates, skew, 5% NULLs
	clickhouse-client --port "$1" --max_memory_usage 0 -q "INSERT INTO $2 (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at)
SELECT
    if(number % 50 = 7, toString(number - 7), toString(number)),
    toDateTime('$DAY 00:00:00', 'UTC') + intDiv(number * 86400, $3),
    ['view', 'view', 'view', 'view', 'click', 'click', 'buy', 'signup'][1 + cityHash64(number, 1) % 8],
    ['us', 'us', 'us', 'us', 'de', 'de', 'fr', 'gb', 'jp', 'br', 'in', ''][1 + cityHash64(number, 2) % 12],
    ['web', 'web', 'ios', 'android'][1 + cityHash64(number, 3) % 4],
    toString(intDiv((cityHash64(number, 4) % 1000) * (cityHash64(number, 5) % 1000), 3)),
    if(cityHash64(number, 6) % 20 = 0, NULL, toFloat64(cityHash64(number, 7) % 100000) / 100),
    'events', toInt32(number % 8), toInt64(intDiv(number, 8)), 0,
    toDateTime('$DAY 00:00:00', 'UTC') + intDiv(number * 86400, $3) + 5
FROM system.numbers LIMIT $3"
}

results=()
single_run() { # single_run EVENTS ROUND: floor (if it fits) and run on the single server
	local n=$1 mem=$MAX_MEMORY cfg=/tmp/lambda-bench-batch.yaml
	[ "$n" -ge 50000000 ] && mem=$BIG_MEMORY
	config "$cfg" "$mem"
	local pid; pid=$(pids "$PORT")
	local l0; l0=$(load)
	local floor="-" fcpu="-" fmem="-" ffull="-"
	if [ "$n" -le "$FLOOR_MAX" ]; then
		local t0 fid="bench-floor-$n-$2-$RANDOM" tf=0
		local grains="day"
		[ "$n" -le "$FULL_FLOOR_MAX" ] && grains="day hour minute" || ffull="-"
		for g in $grains; do
			local table=floor_$g
			case $g in day) like=events_daily ;; hour) like=events_hourly ;; minute) like=events_speed ;; esac
			clickhouse-client --port "$PORT" -q "DROP TABLE IF EXISTS $DB.$table"
			clickhouse-client --port "$PORT" -q "CREATE TABLE $DB.$table AS $DB.$like"
			local sql; sql=$(./bin/lambda batch sql --config "$cfg" --dataset events --day $DAY --grain $g --table $table)
			t0=$(now)
			clickhouse-client --port "$PORT" --log_queries 1 --query_id "$fid-$g" -q "$sql"
			local took; took=$(since "$t0")
			[ $g = day ] && floor=$took
			tf=$(echo "$tf + $took" | bc)
		done
		[ "$n" -le "$FULL_FLOOR_MAX" ] && ffull=$tf
		read -r fcpu fmem <<<"$(query_stats "$PORT" "query_id = '$fid-day'")"
	fi
	local sf; sf=$(mktemp)
	sample "$pid" >"$sf" &
	local sp=$!
	local c0; c0=$(cpu_ticks "$pid")
	local t0; t0=$(now)
	./bin/lambda batch run --config "$cfg" --dataset events --from $DAY >/tmp/lambda-bench-batch-run.log 2>&1 || { cat /tmp/lambda-bench-batch-run.log; kill $sp; exit 1; }
	local run; run=$(since "$t0")
	local c1; c1=$(cpu_ticks "$pid")
	kill $sp
	local rid; rid=$(clickhouse-client --port "$PORT" -q "SELECT argMax(run_id, at_us) FROM $DB.batch_runs WHERE status = 'succeeded'")
	local rcpu rmem; read -r rcpu rmem <<<"$(query_stats "$PORT" "initial_query_id LIKE '$rid%'")"
	local rss; rss=$(peak_rss "$sf" 1)
	local pcpu; pcpu=$(echo "scale=1; ($c1 - $c0) / $(getconf CLK_TCK)" | bc)
	local plan; plan=$(clickhouse-client --port "$PORT" -q "SELECT argMax(rows_out, at_us), argMax(rows_hourly, at_us), argMax(rows_speed, at_us) FROM $DB.batch_runs WHERE run_id = '$rid'" | tr '\t' /)
	local l1; l1=$(load)
	local ratio="-"
	[ "$floor" != "-" ] && ratio=$(echo "scale=2; $run / $floor" | bc)
	results+=("| single | $(printf "%'d" "$n") | $mem | $run | $rcpu | $pcpu | $rmem | $rss | $floor | $ffull | $fcpu | $fmem | $ratio | $plan | $l0 → $l1 |")
	echo "${results[-1]}" >&2
	rm -f "$sf"
}

cluster_run() { # cluster_run EVENTS: the same day on the local cluster
	local n=$1 mem=$MAX_MEMORY cfg=/tmp/lambda-bench-batch-cluster.yaml
	config "$cfg" "$mem"
	local ports=(19001 19002 19003 19004)
	local addr; addr=$(deploy/local/cluster.sh addr)
	local ps; ps=$(pids "${ports[@]}")
	export LAMBDA_CLICKHOUSE_ADDR="$addr" LAMBDA_CLICKHOUSE_CLUSTER=lambda LAMBDA_CLICKHOUSE_ZOOKEEPER_PATH=/clickhouse/lambda-bench
	clickhouse-client --port 19001 -q "DROP DATABASE IF EXISTS $DB ON CLUSTER lambda" >/dev/null
	./bin/lambda migrate --config "$cfg" >/dev/null 2>&1
	generate 19001 "$DB.events_raw" "$n"
	for p in "${ports[@]}"; do clickhouse-client --port "$p" -q "SYSTEM SYNC REPLICA $DB.events_raw_local" >/dev/null; done
	local l0; l0=$(load)
	local sf; sf=$(mktemp)
	# shellcheck disable=SC2086
	sample $ps >"$sf" &
	local sp=$!
	# shellcheck disable=SC2086
	local c0; c0=$(cpu_ticks $ps)
	local t0; t0=$(now)
	./bin/lambda batch run --config "$cfg" --dataset events --from $DAY >/tmp/lambda-bench-batch-run.log 2>&1 || { cat /tmp/lambda-bench-batch-run.log; kill $sp; exit 1; }
	local run; run=$(since "$t0")
	# shellcheck disable=SC2086
	local c1; c1=$(cpu_ticks $ps)
	kill $sp
	local rid; rid=$(clickhouse-client --port 19001 -q "SELECT argMax(run_id, at_us) FROM $DB.batch_runs WHERE status = 'succeeded'")
	local per=() cpus=0
	for i in "${!ports[@]}"; do
		local c m; read -r c m <<<"$(query_stats "${ports[$i]}" "initial_query_id LIKE '$rid%'")"
		per+=("$m/$(peak_rss "$sf" $((i + 1)))")
		cpus=$(echo "$cpus + $c" | bc)
	done
	local pcpu; pcpu=$(echo "scale=1; ($c1 - $c0) / $(getconf CLK_TCK)" | bc)
	local l1; l1=$(load)
	results+=("| 2×2 cluster | $(printf "%'d" "$n") | $mem | $run | $cpus | $pcpu | ${per[*]} | | - | - | - | - | - | | $l0 → $l1 |")
	echo "${results[-1]}" >&2
	clickhouse-client --port 19001 -q "DROP DATABASE IF EXISTS $DB ON CLUSTER lambda" >/dev/null
	unset LAMBDA_CLICKHOUSE_ADDR LAMBDA_CLICKHOUSE_CLUSTER LAMBDA_CLICKHOUSE_ZOOKEEPER_PATH
}

export LAMBDA_CLICKHOUSE_DATABASE="$DB" LAMBDA_CLICKHOUSE_ADDR="127.0.0.1:$PORT"
last="" reference=""
for n in $SIZES; do
	if [ "$n" -ge 50000000 ]; then
		echo "disk before generating $n events: $(df -h /work | tail -1)" >&2
	fi
	clickhouse-client --port "$PORT" -q "DROP DATABASE IF EXISTS $DB"
	./bin/lambda migrate >/dev/null 2>&1
	t0=$(now)
	generate "$PORT" "$DB.events_raw" "$n"
	echo "generated $n events in $(since "$t0")s" >&2
	rounds=1
	[ "$n" -le "$FLOOR_MAX" ] && rounds=$REPEAT
	for r in $(seq "$rounds"); do single_run "$n" "$r"; done
	last=$n
	if [ "$REFERENCE" = 1 ] && [ "$n" = "$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -1)" ]; then
		t0=$(now)
		check=$(bench/batch_reference.sh "$DB" "$DAY" | clickhouse-client --port "$PORT" --multiquery | tail -1)
		read -r bad found ref daily <<<"$check"
		reference="the run's $daily rows of events_daily against a reference computed in bounded chunks (bench/batch_reference.sh, $(since "$t0") s): $bad differ, $found of the reference's $ref found"
		echo "$reference" >&2
		[ "$bad" = 0 ] && [ "$found" = "$ref" ] && [ "$ref" = "$daily" ] || { echo "the run and the reference disagree" >&2; exit 1; }
	fi
	clickhouse-client --port "$PORT" -q "DROP DATABASE IF EXISTS $DB"
	if [ "$CLUSTER" = 1 ] && [ "$n" -le "$CLUSTER_MAX" ]; then
		cluster_run "$n"
		export LAMBDA_CLICKHOUSE_DATABASE="$DB" LAMBDA_CLICKHOUSE_ADDR="127.0.0.1:$PORT"
	fi
done

cat <<MD
| where | events | max_memory | run (s) | run CPU (s, queries) | ClickHouse CPU (s, process) | peak query memory (GiB) | peak RSS (GiB) | floor: today's query (s) | floor: day + hours + minutes (s) | floor CPU (s) | floor memory (GiB) | run / today's query | rows day/hours/minutes | load (1, 5, 15 min) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${results[@]}")

$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, ClickHouse $(clickhouse-client --port "$PORT" -q 'SELECT version()'). In cluster rows, the peak memory column is, per node (s1r1 s1r2 s2r1 s2r2), the largest query / the peak RSS (GiB).
${reference:+
Exactness: $reference.}
MD
