#!/usr/bin/env bash
# Prints the SQL of the reference bench/batch.sh checks a run of the demo dataset against: the
# exact values of day DAY of database DB, computed independently of the batch layer, in bounded
# chunks, each a query of its own. Dedup by argMin over the ingestion order (not ORDER BY …
# LIMIT 1 BY) in CHUNKS (default 16) chunks of ids by sipHash64 (not the layer's cityHash64); distinct users in
# 16 chunks of keys by sipHash64 per grouping set; every other value per grouping set. The last
# statement prints: rows of events_daily that differ from the reference (0 when the run is exact;
# sums compared to 1e-12 relative, the rest equal), rows of the reference found in events_daily,
# rows of the reference, rows of events_daily.
#
#   bench/batch_reference.sh DB DAY [CHUNKS] | clickhouse-client --multiquery
set -euo pipefail
DB=$1 DAY=$2 DEDUP_CHUNKS=${3:-16}
cat <<SQL
DROP TABLE IF EXISTS $DB.ref_dedup;
CREATE TABLE $DB.ref_dedup (event String, country String, device String, user_id String, value Nullable(Float64)) ENGINE = MergeTree ORDER BY tuple();
DROP TABLE IF EXISTS $DB.ref_daily;
CREATE TABLE $DB.ref_daily (grouping String, event String, country String, device String, events UInt64, revenue Nullable(Float64), value_p95 Nullable(Float64)) ENGINE = MergeTree ORDER BY tuple();
DROP TABLE IF EXISTS $DB.ref_users;
CREATE TABLE $DB.ref_users (grouping String, event String, country String, device String, users UInt64) ENGINE = MergeTree ORDER BY tuple();
SQL
for c in $(seq 0 $((DEDUP_CHUNKS - 1))); do
	echo "INSERT INTO $DB.ref_dedup SELECT r.1, r.2, r.3, r.4, r.5 FROM (SELECT argMin((event, country, device, user_id, value), (_ingested_at, _partition, _offset)) AS r FROM $DB.events_raw WHERE toDate(time) = toDate('$DAY') AND sipHash64(id) % $DEDUP_CHUNKS = $c GROUP BY id);"
done
sets=("'' AS g, '' AS e, '' AS c, '' AS d|"
	"'event' AS g, event AS e, '' AS c, '' AS d|GROUP BY e"
	"'country' AS g, '' AS e, country AS c, '' AS d|GROUP BY c"
	"'device' AS g, '' AS e, '' AS c, device AS d|GROUP BY d"
	"'event,country,device' AS g, event AS e, country AS c, device AS d|GROUP BY e, c, d")
for s in "${sets[@]}"; do
	keys=${s%%|*} group=${s#*|}
	echo "INSERT INTO $DB.ref_daily SELECT $keys, count(), sum(value), quantileExact(0.95)(value) FROM $DB.ref_dedup $group;"
	for c in $(seq 0 15); do
		echo "INSERT INTO $DB.ref_users SELECT $keys, uniqExact(user_id) FROM $DB.ref_dedup WHERE user_id != '' AND sipHash64(user_id) % 16 = $c $group;"
	done
done
cat <<SQL
SELECT
    countIf(NOT (r_events = d_events AND r_users = d_users AND isNull(r_p95) = isNull(d_p95) AND ifNull(r_p95 = d_p95, 1)
        AND isNull(r_rev) = isNull(d_rev) AND ifNull(abs(r_rev - d_rev) <= 1e-12 * abs(r_rev), 1))),
    countIf(d_events > 0),
    count(),
    (SELECT count() FROM $DB.events_daily WHERE day = toDate('$DAY'))
FROM
(
    SELECT grouping, event, country, device, r_events, r_rev, r_p95, r_users
    FROM (SELECT grouping, event, country, device, events AS r_events, revenue AS r_rev, value_p95 AS r_p95 FROM $DB.ref_daily) AS r
    ANY LEFT JOIN (SELECT grouping, event, country, device, sum(users) AS r_users FROM $DB.ref_users GROUP BY grouping, event, country, device) AS u
    USING (grouping, event, country, device)
) AS a
ANY LEFT JOIN
(
    SELECT grouping, event, country, device, events AS d_events, users AS d_users, value_p95 AS d_p95, revenue AS d_rev
    FROM $DB.events_daily WHERE day = toDate('$DAY')
) AS b
USING (grouping, event, country, device);
SQL
