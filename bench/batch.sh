#!/usr/bin/env bash
# Batch layer benchmark (make bench-batch): recompute one day of >= 5M raw events with
# `lambda batch run` (dedup, staging, swap, bookkeeping, drift, watermark) against the floor: the
# bare INSERT … SELECT of the same exact aggregation (`lambda batch sql` prints it) run by
# clickhouse-client. Runs alternate, so both see the same machine load; the medians are compared.
#
# Environment: BENCH_EVENTS (default 5000000), BENCH_REPEAT (default 3), BENCH_DB
# (default lambda_bench_batch, dropped and recreated), CH_TCP_PORT (default 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${BENCH_EVENTS:-5000000}"
REPEAT="${BENCH_REPEAT:-3}"
DB="${BENCH_DB:-lambda_bench_batch}"
PORT="${CH_TCP_PORT:-9000}"
DAY=2024-03-01
export LAMBDA_CLICKHOUSE_DATABASE="$DB"
export LAMBDA_CLICKHOUSE_ADDR="127.0.0.1:$PORT"
export LAMBDA_LOG_LEVEL="${LAMBDA_LOG_LEVEL:-WARN}"

ch() { clickhouse-client --port "$PORT" "$@"; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }

go build -o bin/lambda ./cmd/lambda
ch -q "DROP DATABASE IF EXISTS $DB"
./bin/lambda migrate >/dev/null 2>&1

# ~2% duplicates (every 50th row repeats the id of a row 7 earlier), skewed event, country,
# device and user, 5% NULL values, 8 Kafka partitions. The speed view fills through its
# materialized view as it would from the speed layer, so drift has something to compare.
t0=$(now)
ch -q "INSERT INTO $DB.events_raw (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at)
SELECT
    if(number % 50 = 7, toString(number - 7), toString(number)),
    toDateTime('$DAY 00:00:00', 'UTC') + intDiv(number * 86400, $EVENTS),
    ['view', 'view', 'view', 'view', 'click', 'click', 'buy', 'signup'][1 + cityHash64(number, 1) % 8],
    ['us', 'us', 'us', 'us', 'de', 'de', 'fr', 'gb', 'jp', 'br', 'in', ''][1 + cityHash64(number, 2) % 12],
    ['web', 'web', 'ios', 'android'][1 + cityHash64(number, 3) % 4],
    toString(intDiv((cityHash64(number, 4) % 1000) * (cityHash64(number, 5) % 1000), 3)),
    if(cityHash64(number, 6) % 20 = 0, NULL, toFloat64(cityHash64(number, 7) % 100000) / 100),
    'events', toInt32(number % 8), toInt64(intDiv(number, 8)), 0,
    toDateTime('$DAY 00:00:00', 'UTC') + intDiv(number * 86400, $EVENTS) + 5
FROM system.numbers LIMIT $EVENTS"
gen=$(since "$t0")
raw=$(ch -q "SELECT count() FROM $DB.events_raw")
dedup=$(ch -q "SELECT uniqExact(id) FROM $DB.events_raw")
echo "generated $raw raw rows ($dedup distinct ids) in ${gen}s" >&2

SQL=$(./bin/lambda batch sql --dataset events --day $DAY --table floor_daily)
floors=() runs=()
for i in $(seq "$REPEAT"); do
    ch -q "DROP TABLE IF EXISTS $DB.floor_daily"
    ch -q "CREATE TABLE $DB.floor_daily AS $DB.events_daily"
    t0=$(now); ch -q "$SQL"; f=$(since "$t0")
    t0=$(now); ./bin/lambda batch run --dataset events --from $DAY >/dev/null; r=$(since "$t0")
    floors+=("$f") runs+=("$r")
    echo "round $i: floor ${f}s, lambda batch run ${r}s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mf=$(median "${floors[@]}")
mr=$(median "${runs[@]}")
rows=$(ch -q "SELECT count() FROM $DB.events_daily")
check=$(ch -q "SELECT (SELECT groupBitXor(cityHash64(grouping, event, country, device, events, users, value_p95)) FROM $DB.events_daily) = (SELECT groupBitXor(cityHash64(grouping, event, country, device, events, users, value_p95)) FROM $DB.floor_daily)")
[ "$check" = 1 ] || { echo "lambda batch run and the floor disagree" >&2; exit 1; }

cat <<MD
| what | median of $REPEAT (s) | all runs (s) |
|---|---|---|
| floor: bare \`INSERT INTO … SELECT\` (clickhouse-client) | $mf | ${floors[*]} |
| \`lambda batch run --dataset events --from $DAY\` | $mr | ${runs[*]} |
| ratio | $(echo "scale=2; $mr / $mf" | bc) | target ≤ 1.3 |

$raw raw events ($dedup distinct ids) for one day, $rows rows in events_daily; $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, ClickHouse $(ch -q 'SELECT version()').
MD
ch -q "DROP DATABASE IF EXISTS $DB"
