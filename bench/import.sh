#!/usr/bin/env bash
# Import benchmark (make bench-import): rows/s of `lambda import` of a JSON-lines file of
# BENCH_LINES demo events (decode, validate, columnar inserts into events_raw with its
# materialized view) against the floor: a bare `clickhouse-client --query "INSERT INTO …
# FORMAT JSONEachRow" < file` of the same file into a plain MergeTree table with raw's
# partitioning and sort key and no view. Runs alternate, so both see the same machine load;
# the medians are compared.
#
# Environment: BENCH_LINES (default 1000000), BENCH_REPEAT (default 3), BENCH_DB (default
# lambda_bench_import, dropped and recreated), CH_TCP_PORT (default 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
LINES="${BENCH_LINES:-1000000}"
REPEAT="${BENCH_REPEAT:-3}"
DB="${BENCH_DB:-lambda_bench_import}"
PORT="${CH_TCP_PORT:-9000}"
export LAMBDA_CLICKHOUSE_DATABASE="$DB"
export LAMBDA_CLICKHOUSE_ADDR="127.0.0.1:$PORT"
export LAMBDA_LOG_LEVEL="${LAMBDA_LOG_LEVEL:-WARN}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
FILE="$TMP/history.jsonl"

ch() { clickhouse-client --port "$PORT" "$@"; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }

go build -o bin/lambda ./cmd/lambda
ch -q "DROP DATABASE IF EXISTS $DB"
./bin/lambda migrate >/dev/null 2>&1

# The demo dataset's events over the 30 days before today: epoch-millisecond times (one type,
# so that the floor's JSONEachRow can read them), skewed dimensions and users, 5% without a
# value. ClickHouse writes the file.
START=$(( ($(date -u +%s) / 86400 - 30) * 86400 ))
t0=$(now)
ch --output_format_json_quote_64bit_integers=0 -q "
SELECT
    toString(number) AS event_id,
    toUInt64(($START + intDiv(number * 86400 * 30, $LINES)) * 1000 + number % 1000) AS ts,
    ['page_view', 'page_view', 'page_view', 'click', 'click', 'search', 'purchase', 'signup'][1 + cityHash64(number, 1) % 8] AS event,
    ['us', 'us', 'us', 'de', 'de', 'in', 'br', 'gb', 'fr', 'jp'][1 + cityHash64(number, 2) % 10] AS country,
    ['android', 'ios', 'web', 'web', 'tablet'][1 + cityHash64(number, 3) % 5] AS device,
    concat('u', toString(intDiv((cityHash64(number, 4) % 1000) * (cityHash64(number, 5) % 1000), 20))) AS user_id,
    if(cityHash64(number, 6) % 20 = 0, NULL, toFloat64(cityHash64(number, 7) % 100000) / 100) AS value
FROM system.numbers LIMIT $LINES
FORMAT JSONEachRow" > "$FILE"
echo "wrote $(wc -l < "$FILE") lines ($(du -m "$FILE" | cut -f1) MB) in $(since "$t0")s" >&2

ch -q "CREATE TABLE $DB.floor (event_id String, ts UInt64, event String, country String, device String, user_id String,
    value Nullable(Float64), time DateTime MATERIALIZED toDateTime(intDiv(ts, 1000), 'UTC'))
    ENGINE = MergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (time, event_id)"

floors=() runs=()
for i in $(seq "$REPEAT"); do
    ch -q "TRUNCATE TABLE $DB.floor"
    ch -q "TRUNCATE TABLE $DB.events_raw"
    t0=$(now); ch -q "INSERT INTO $DB.floor FORMAT JSONEachRow" < "$FILE"; f=$(since "$t0")
    t0=$(now); ./bin/lambda import --dataset events "$FILE" >/dev/null; r=$(since "$t0")
    floors+=("$f") runs+=("$r")
    echo "round $i: floor ${f}s, lambda import ${r}s" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mf=$(median "${floors[@]}")
mr=$(median "${runs[@]}")
fl=$(ch -q "SELECT count() FROM $DB.floor")
raw=$(ch -q "SELECT count() FROM $DB.events_raw")
[ "$fl" = "$LINES" ] && [ "$raw" = "$LINES" ] || { echo "rows: floor $fl, raw $raw, want $LINES" >&2; exit 1; }

cat <<MD
| what | median of $REPEAT (s) | rows/s | all runs (s) |
|---|---|---|---|
| floor: \`clickhouse-client --query "INSERT INTO $DB.floor FORMAT JSONEachRow" < history.jsonl\` | $mf | $(echo "$LINES / $mf" | bc) | ${floors[*]} |
| \`lambda import --dataset events history.jsonl\` | $mr | $(echo "$LINES / $mr" | bc) | ${runs[*]} |
| ratio (import / floor) | $(echo "scale=2; $mr / $mf" | bc) | | |

$LINES lines ($(du -m "$FILE" | cut -f1) MB) over 30 days; $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, ClickHouse $(ch -q 'SELECT version()'), Go $(go env GOVERSION).
MD
ch -q "DROP DATABASE IF EXISTS $DB"
