package serving

import (
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"
)

type obj = map[string]any

// OpenAPI returns the OpenAPI 3 document of the API, with the configured datasets, metrics and
// dimensions as enums.
func (s *Server) OpenAPI() map[string]any {
	var datasets, metrics, dims []string
	seenM, seenD := map[string]bool{}, map[string]bool{}
	for i := range s.cfg.Datasets {
		d := &s.cfg.Datasets[i]
		datasets = append(datasets, d.Name)
		for _, m := range d.MetricNames() {
			if !seenM[m] {
				seenM[m] = true
				metrics = append(metrics, m)
			}
		}
		for _, n := range d.DimensionNames() {
			if !seenD[n] {
				seenD[n] = true
				dims = append(dims, n)
			}
		}
	}
	str := obj{"type": "string"}
	num := obj{"type": "number"}
	integer := obj{"type": "integer"}
	boolean := obj{"type": "boolean"}
	ref := func(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }
	arr := func(items obj) obj { return obj{"type": "array", "items": items} }
	nstr := func(format string) obj {
		o := obj{"type": "string", "nullable": true}
		if format != "" {
			o["format"] = format
		}
		return o
	}
	object := func(required []string, props obj) obj {
		o := obj{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			o["required"] = required
		}
		return o
	}
	jsonContent := func(schema obj) obj { return obj{"application/json": obj{"schema": schema}} }
	errResp := func(desc string) obj {
		return obj{"description": desc, "content": jsonContent(ref("Error"))}
	}
	ok := func(desc, schema string) obj { return obj{"description": desc, "content": jsonContent(ref(schema))} }
	unauthorized := errResp("missing or wrong API key (code unauthorized)")
	dbErrors := obj{
		"500": errResp("ClickHouse failed (code internal): the message says what, the server log has the cause under the request id"),
		"503": errResp("ClickHouse cannot be reached (code unavailable); retry later"),
		"504": errResp("timed out after serving.query_timeout (code timeout)"),
	}
	withDB := func(r obj) obj {
		for k, v := range dbErrors {
			r[k] = v
		}
		return r
	}
	boolHeader := func(desc string) obj { return obj{"description": desc, "schema": boolean} }
	csvHeaders := obj{
		"X-Lambda-Truncated":       boolHeader("more rows follow this page (meta.truncated)"),
		"X-Lambda-Complete":        boolHeader("false when part of the range has no source (meta.complete)"),
		"X-Lambda-Exact":           boolHeader("every row is exact"),
		"X-Lambda-Batch-Watermark": obj{"description": "the last exact day (meta.batch_watermark); absent when no day is exact", "schema": obj{"type": "string", "format": "date"}},
	}
	queryResponses := withDB(obj{
		"200": obj{"description": "rows and where they came from; for CSV, meta's warnings are headers", "headers": csvHeaders, "content": obj{
			"application/json": obj{"schema": ref("QueryResponse")},
			"text/csv":         obj{"schema": obj{"type": "string", "description": "a header line with meta.columns' names, then one line per row"}},
		}},
		"400": errResp("invalid request: field names the offending field, code says why"),
		"401": unauthorized,
		"404": errResp("unknown dataset (code unknown_dataset)"),
		"413": errResp("request body too large (code body_too_large)"),
	})
	formatParam := obj{"name": "format", "in": "query", "schema": obj{"type": "string", "enum": []string{"json", "csv"}}}
	timeDoc := "RFC 3339 time, YYYY-MM-DD (midnight in time_zone), now, or now-<duration> (now-6h, now-30d)"
	zoneDoc := "IANA time zone of the buckets and of YYYY-MM-DD (default: the dataset's time_zone); day, week and month buckets in another zone than the dataset's are computed from raw, or refused (400, field time_zone) when raw no longer holds the range; bucket times are UTC instants"
	getParams := []obj{
		{"name": "dataset", "in": "query", "required": true, "schema": obj{"type": "string", "enum": datasets}},
		{"name": "metrics", "in": "query", "required": true, "description": "comma-separated metric names", "schema": str},
		{"name": "dimensions", "in": "query", "description": "comma-separated dimension names", "schema": str},
		{"name": "filters", "in": "query", "description": "JSON array of filters", "schema": str},
		{"name": "having", "in": "query", "description": "JSON array of having conditions", "schema": str},
		{"name": "from", "in": "query", "required": true, "schema": str},
		{"name": "to", "in": "query", "required": true, "schema": str},
		{"name": "granularity", "in": "query", "schema": obj{"type": "string", "enum": Granularities}},
		{"name": "order_by", "in": "query", "schema": str},
		{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 0}},
		{"name": "offset", "in": "query", "schema": obj{"type": "integer", "minimum": 0, "maximum": maxOffset}},
		{"name": "exact", "in": "query", "schema": boolean},
		{"name": "time_zone", "in": "query", "description": zoneDoc, "schema": str},
		formatParam,
	}
	valuesParams := []obj{
		{"name": "dataset", "in": "query", "required": true, "schema": obj{"type": "string", "enum": datasets}},
		{"name": "dimension", "in": "query", "required": true, "schema": obj{"type": "string", "enum": dims}},
		{"name": "prefix", "in": "query", "description": "only values starting with this (case-sensitive)", "schema": str},
		{"name": "from", "in": "query", "description": "inclusive, default now-30d; " + timeDoc, "schema": str},
		{"name": "to", "in": "query", "description": "exclusive, default now", "schema": str},
		{"name": "limit", "in": "query", "description": "default 100", "schema": obj{"type": "integer", "minimum": 0, "maximum": maxValuesLimit}},
	}
	sourceEnum := []string{SourceBatch, SourceSpeed, SourceRaw, SourceNone}
	return obj{
		"openapi": "3.0.3",
		"info": obj{"title": "lambda serving API", "version": "1",
			"description": "Metric queries merged from the exact batch view and the approximate speed view at the batch watermark. Every row says its source and whether it is exact. /healthz, /readyz, /metrics and the dashboards at / need no key. Every response carries X-Request-Id. Errors are {error, field, code}; clients branch on code."},
		"security": []obj{{"bearer": []string{}}},
		"paths": obj{
			"/api/v1/datasets": obj{"get": obj{"summary": "datasets with their dimensions and metrics",
				"responses": obj{"200": ok("datasets", "DatasetsResponse"), "401": unauthorized}}},
			"/api/v1/query": obj{
				"post": obj{"summary": "query metrics", "parameters": []obj{formatParam},
					"requestBody": obj{"required": true, "content": jsonContent(ref("QueryRequest"))},
					"responses":   queryResponses},
				"get": obj{"summary": "query metrics with query parameters", "parameters": getParams, "responses": queryResponses},
			},
			"/api/v1/values": obj{"get": obj{"summary": "a dimension's values by frequency over a range, for filter pickers", "parameters": valuesParams,
				"responses": withDB(obj{"200": ok("values, most frequent first", "ValuesResponse"), "400": errResp("invalid request"), "401": unauthorized, "404": errResp("unknown dataset")})}},
			"/api/v1/freshness": obj{"get": obj{"summary": "watermarks, lag, last batch runs, pending corrections and drift per dataset",
				"responses": withDB(obj{"200": ok("freshness per dataset", "FreshnessResponse"), "401": unauthorized})}},
			"/api/v1/openapi.json": obj{"get": obj{"summary": "this document", "responses": obj{"200": obj{"description": "OpenAPI 3 document", "content": jsonContent(obj{"type": "object"})}, "401": unauthorized}}},
			"/healthz":             obj{"get": obj{"summary": "liveness", "security": []obj{}, "responses": obj{"200": obj{"description": "alive", "content": obj{"text/plain": obj{"schema": obj{"type": "string", "enum": []string{"ok\n"}}}}}}}},
			"/readyz": obj{"get": obj{"summary": "ClickHouse reachable and schema present", "security": []obj{}, "responses": obj{
				"200": ok("ready", "Ready"),
				"503": obj{"description": "not ready: ClickHouse unreachable, or the schema incomplete (`missing` lists the objects; run lambda migrate)", "content": jsonContent(ref("Ready"))}}}},
			"/metrics": obj{"get": obj{"summary": "Prometheus metrics", "security": []obj{}, "responses": obj{"200": obj{"description": "text exposition format", "content": obj{"text/plain": obj{"schema": str}}}}}},
		},
		"components": obj{
			"securitySchemes": obj{"bearer": obj{"type": "http", "scheme": "bearer", "description": "one of serving.api_keys (or LAMBDA_API_KEYS); not required when none is configured"}},
			"schemas": obj{
				"Error": object([]string{"error", "field", "code"}, obj{
					"error": obj{"type": "string", "description": "for people; may change"},
					"field": obj{"type": "string", "description": "the request field at fault, \"\" when none"},
					"code":  obj{"type": "string", "enum": Codes, "description": "stable; see docs/api.md"},
				}),
				"Filter": object([]string{"dimension", "op", "values"}, obj{
					"dimension": obj{"type": "string", "enum": dims},
					"op":        obj{"type": "string", "enum": Ops, "description": "eq, neq, prefix and contains take one value; in and not_in up to " + fmt.Sprint(maxFilterValues) + "; prefix and contains are case-sensitive"},
					"values":    obj{"type": "array", "items": str, "minItems": 1, "maxItems": maxFilterValues},
				}),
				"Having": object([]string{"metric", "op", "value"}, obj{
					"metric": obj{"type": "string", "enum": metrics, "description": "any metric of the dataset, requested or not; it counts toward the rows' exactness"},
					"op":     obj{"type": "string", "enum": HavingOps},
					"value":  num,
				}),
				"QueryRequest": object([]string{"dataset", "metrics", "from", "to"}, obj{
					"dataset":     obj{"type": "string", "enum": datasets},
					"metrics":     obj{"type": "array", "minItems": 1, "items": obj{"type": "string", "enum": metrics}},
					"dimensions":  obj{"type": "array", "items": obj{"type": "string", "enum": dims}},
					"filters":     arr(ref("Filter")),
					"having":      obj{"type": "array", "items": ref("Having"), "maxItems": maxHaving, "description": "conditions on each row's merged values, all of which must hold; applied before order, offset and limit; null compares with nothing"},
					"from":        obj{"type": "string", "description": "inclusive; " + timeDoc},
					"to":          obj{"type": "string", "description": "exclusive; " + timeDoc},
					"granularity": obj{"type": "string", "enum": Granularities, "default": "day", "description": "weeks are ISO weeks starting Monday; all is one bucket starting at from"},
					"order_by":    obj{"type": "string", "description": "time, a requested dimension or metric; prefix - for descending; ties are broken by time, then the dimensions, so pages are stable"},
					"limit":       obj{"type": "integer", "minimum": 0, "description": "0 means serving.max_rows"},
					"offset":      obj{"type": "integer", "minimum": 0, "maximum": maxOffset, "description": "rows to skip, in the query's order"},
					"exact":       obj{"type": "boolean", "description": "answer from deduplicated raw events whatever would otherwise be approximate: distinct counts and quantiles that no stored grouping set covers, days waiting for a correction, the speed side"},
					"time_zone":   obj{"type": "string", "description": zoneDoc},
				}),
				"SourceRange": object(nil, obj{
					"from": obj{"type": "string", "format": "date-time"}, "to": obj{"type": "string", "format": "date-time"},
					"source":   obj{"type": "string", "enum": sourceEnum},
					"table":    obj{"type": "string", "enum": []string{TableDaily, TableHourly, TableSpeed, TableSpeedHourly, TableRaw}},
					"grouping": str, "exact": boolean,
				}),
				"Column": object([]string{"name", "type", "nullable"}, obj{
					"name":     str,
					"type":     obj{"type": "string", "enum": []string{TypeTimestamp, TypeString, TypeInteger, TypeNumber, TypeDecimal, TypeBoolean}},
					"nullable": boolean,
				}),
				"QueryResponse": object([]string{"rows", "meta"}, obj{
					"rows": obj{"type": "array", "items": obj{"type": "object", "description": "time, the requested dimensions and metrics (meta.columns), source (batch|speed|raw|mixed) and exact",
						"properties": obj{"time": obj{"type": "string", "format": "date-time"},
							"source": obj{"type": "string", "enum": []string{SourceBatch, SourceSpeed, SourceRaw, SourceMixed}},
							"exact":  boolean},
						"additionalProperties": true}},
					"meta": object(nil, obj{
						"batch_watermark":           obj{"type": "string", "format": "date", "nullable": true, "description": "last day up to which every day is exact: the persisted watermark, or the day before the first pending correction"},
						"persisted_batch_watermark": obj{"type": "string", "format": "date", "nullable": true, "description": "the batch layer's watermark: <ds>_daily answers whole days up to it (pending corrections flagged exact:false), <ds>_speed after it"},
						"speed_watermark":           nstr("date-time"),
						"lag_seconds":               num,
						"complete":                  boolean,
						"sources":                   arr(ref("SourceRange")),
						"pending_corrections":       obj{"type": "array", "items": obj{"type": "string", "format": "date"}, "description": "dirty days: late events arrived after their batch run; recomputed at the next batch tick"},
						"truncated":                 obj{"type": "boolean", "description": "more rows follow: raise limit, page on with offset, or narrow the request"},
						"columns":                   arr(ref("Column")),
						"cached":                    boolean,
						"took_ms":                   num,
					}),
				}),
				"MetricInfo": object([]string{"name", "type", "exact_rollup"}, obj{
					"name": str, "type": obj{"type": "string", "enum": []string{"count", "sum", "min", "max", "avg", "uniq", "quantile", "ratio"}},
					"field": str, "level": num, "numerator": str, "denominator": str,
					"exact_rollup": obj{"type": "boolean", "description": "false for distinct counts and quantiles (and ratios of them): approximate beyond the stored grouping sets unless exact:true"},
				}),
				"DatasetInfo": object(nil, obj{
					"name": str, "dimensions": arr(str), "speed_dimensions": arr(str), "metrics": arr(ref("MetricInfo")),
					"grouping_sets": arr(str), "granularities": arr(str),
					"time_zone": obj{"type": "string", "description": "IANA zone of the dataset's days: the default time_zone of a query"},
				}),
				"DatasetsResponse": object([]string{"datasets"}, obj{"datasets": arr(ref("DatasetInfo"))}),
				"Value": object([]string{"value", "count", "exact"}, obj{
					"value": str, "count": obj{"type": "integer", "nullable": true, "description": "the dataset's first count metric over the range; null when it has none"}, "exact": boolean,
				}),
				"ValuesResponse": object([]string{"values", "meta"}, obj{
					"values": arr(ref("Value")),
					"meta": object(nil, obj{"dataset": str, "dimension": str, "metric": obj{"type": "string", "description": "the count metric the values are ordered by; \"\": none, alphabetical order"},
						"complete": boolean, "truncated": boolean, "sources": arr(ref("SourceRange")), "cached": boolean}),
				}),
				"Partition": object(nil, obj{
					"partition": integer, "committed_offset": integer, "high_watermark": integer, "lag": integer,
					"newest_event_time": obj{"type": "string", "format": "date-time"}, "flushed_at": obj{"type": "string", "format": "date-time"},
					"caught_up": boolean, "evidence": obj{"type": "string", "enum": []string{"kafka", "heartbeat", ""}},
				}),
				"RunInfo": object(nil, obj{
					"run_id": str, "day": obj{"type": "string", "format": "date"}, "status": str, "at": obj{"type": "string", "format": "date-time"},
					"rows_raw": integer, "rows_out": integer, "error": str, "duration_seconds": num,
				}),
				"DriftRow": object(nil, obj{
					"day": obj{"type": "string", "format": "date"}, "metric": str,
					"speed_value": obj{"type": "number", "nullable": true}, "exact_value": obj{"type": "number", "nullable": true}, "rel_error": obj{"type": "number", "nullable": true},
				}),
				"Freshness": object(nil, obj{
					"dataset": str, "speed_watermark": nstr("date-time"), "lag_seconds": num, "partitions": arr(ref("Partition")),
					"batch_watermark": nstr("date"), "persisted_batch_watermark": nstr("date"),
					"pending_corrections": arr(obj{"type": "string", "format": "date"}), "last_runs": arr(ref("RunInfo")), "drift": arr(ref("DriftRow")),
				}),
				"FreshnessResponse": object([]string{"datasets"}, obj{"datasets": arr(ref("Freshness"))}),
				"Ready":             object([]string{"ready"}, obj{"ready": boolean, "missing": arr(str), "error": str}),
			},
		},
	}
}

func (s *Server) openapi(c *gin.Context) { c.JSON(http.StatusOK, s.OpenAPI()) }
