// Package serving is the HTTP API of the platform: metric queries answered by merging the
// exact batch view (<ds>_daily) and the approximate speed view (<ds>_speed) at the batch
// watermark, with every row saying where it came from and whether it is exact.
//
// The planner (Plan) applies the design's merge rule and builds one SQL statement per query:
// a UNION ALL of branches, one per source and range, combined per bucket and dimensions with
// the fragments of shared/metric. Names come from the configuration only; values are bound.
//
// Authentication: when serving.api_keys (or LAMBDA_API_KEYS) is set, /api/* needs
// `Authorization: Bearer <key>`. /healthz, /readyz, /metrics and the dashboards at / are open:
// they reveal no data (the dashboards call /api/* with a key). Without keys the server
// refuses to listen on anything but loopback.
package serving
