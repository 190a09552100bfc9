// Package serving is the HTTP API of the platform: metric queries answered by merging the
// exact batch view (<ds>_daily) and the approximate speed view (<ds>_speed) at the batch
// watermark, with every row saying where it came from and whether it is exact.
//
// The merge decision (Decide, merge.go) applies the design's merge rule without SQL; the
// planner (Plan, sqlgen.go) turns it into SQL: a UNION ALL of branches, one per source and
// range, combined per bucket and dimensions with the fragments of shared/metric, ratios
// computed from their parts' combined values and having applied there. A plan whose buckets
// never straddle the batch boundary runs as two statements, merged in Go in the query's order
// (query.go), the batch side cached (cache.go); offset and limit page the merged rows. Rows are
// encoded by hand (encode.go). Names come from the configuration only; values are bound.
//
// Errors are {"error", "field", "code"}: the codes (Code*) are stable; a 500 says what failed
// and the request id, never ClickHouse's text, which goes to the log under that id.
//
// Authentication: when serving.api_keys (or LAMBDA_API_KEYS) is set, /api/* needs
// `Authorization: Bearer <key>`. /healthz, /readyz, /metrics and the dashboards at / are open:
// they reveal no data (the dashboards call /api/* with a key). Without keys the server
// refuses to listen on anything but loopback.
package serving
