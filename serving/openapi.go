package serving

import (
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
		for _, m := range d.Metrics {
			if !seenM[m.Name] {
				seenM[m.Name] = true
				metrics = append(metrics, m.Name)
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
	errResp := func(desc string) obj {
		return obj{"description": desc, "content": obj{"application/json": obj{"schema": obj{"$ref": "#/components/schemas/Error"}}}}
	}
	queryResponses := obj{
		"200": obj{"description": "rows and where they came from", "content": obj{
			"application/json": obj{"schema": obj{"$ref": "#/components/schemas/QueryResponse"}},
			"text/csv":         obj{"schema": str},
		}},
		"400": errResp("invalid request; field names the offending field"),
		"401": errResp("missing or wrong API key"),
		"404": errResp("unknown dataset"),
		"413": errResp("request body too large"),
		"504": errResp("query timed out"),
	}
	formatParam := obj{"name": "format", "in": "query", "schema": obj{"type": "string", "enum": []string{"json", "csv"}}}
	getParams := []obj{
		{"name": "dataset", "in": "query", "required": true, "schema": obj{"type": "string", "enum": datasets}},
		{"name": "metrics", "in": "query", "required": true, "description": "comma-separated metric names", "schema": str},
		{"name": "dimensions", "in": "query", "description": "comma-separated dimension names", "schema": str},
		{"name": "filters", "in": "query", "description": "JSON array of filters", "schema": str},
		{"name": "from", "in": "query", "required": true, "schema": str},
		{"name": "to", "in": "query", "required": true, "schema": str},
		{"name": "granularity", "in": "query", "schema": obj{"type": "string", "enum": Granularities}},
		{"name": "order_by", "in": "query", "schema": str},
		{"name": "limit", "in": "query", "schema": obj{"type": "integer", "minimum": 0}},
		{"name": "exact", "in": "query", "schema": obj{"type": "boolean"}},
		formatParam,
	}
	timeDoc := "RFC 3339 time, YYYY-MM-DD (UTC midnight), now, or now-<duration> (now-6h, now-30d)"
	return obj{
		"openapi": "3.0.3",
		"info": obj{"title": "lambda serving API", "version": "1",
			"description": "Metric queries merged from the exact batch view and the approximate speed view at the batch watermark. Every row says its source and whether it is exact. /healthz, /readyz, /metrics and the dashboards at / need no key."},
		"security": []obj{{"bearer": []string{}}},
		"paths": obj{
			"/api/v1/datasets": obj{"get": obj{"summary": "datasets with their dimensions and metrics",
				"responses": obj{"200": obj{"description": "datasets"}, "401": errResp("missing or wrong API key")}}},
			"/api/v1/query": obj{
				"post": obj{"summary": "query metrics", "parameters": []obj{formatParam},
					"requestBody": obj{"required": true, "content": obj{"application/json": obj{"schema": obj{"$ref": "#/components/schemas/QueryRequest"}}}},
					"responses":   queryResponses},
				"get": obj{"summary": "query metrics with query parameters", "parameters": getParams, "responses": queryResponses},
			},
			"/api/v1/freshness": obj{"get": obj{"summary": "watermarks, lag, last batch runs, pending corrections and drift per dataset",
				"responses": obj{"200": obj{"description": "freshness per dataset"}, "401": errResp("missing or wrong API key")}}},
			"/api/v1/openapi.json": obj{"get": obj{"summary": "this document", "responses": obj{"200": obj{"description": "OpenAPI 3 document"}}}},
			"/healthz":             obj{"get": obj{"summary": "liveness", "security": []obj{}, "responses": obj{"200": obj{"description": "alive"}}}},
			"/readyz":              obj{"get": obj{"summary": "ClickHouse reachable and schema present", "security": []obj{}, "responses": obj{"200": obj{"description": "ready"}, "503": obj{"description": "not ready: ClickHouse unreachable, or the schema incomplete (`missing` lists the objects; run lambda migrate)"}}}},
			"/metrics":             obj{"get": obj{"summary": "Prometheus metrics", "security": []obj{}, "responses": obj{"200": obj{"description": "text exposition format"}}}},
		},
		"components": obj{
			"securitySchemes": obj{"bearer": obj{"type": "http", "scheme": "bearer", "description": "one of serving.api_keys (or LAMBDA_API_KEYS); not required when none is configured"}},
			"schemas": obj{
				"Error": obj{"type": "object", "required": []string{"error"}, "properties": obj{"error": str, "field": str}},
				"Filter": obj{"type": "object", "required": []string{"dimension", "op", "values"}, "additionalProperties": false, "properties": obj{
					"dimension": obj{"type": "string", "enum": dims},
					"op":        obj{"type": "string", "enum": Ops},
					"values":    obj{"type": "array", "items": str, "minItems": 1, "maxItems": maxFilterValues},
				}},
				"QueryRequest": obj{"type": "object", "required": []string{"dataset", "metrics", "from", "to"}, "additionalProperties": false, "properties": obj{
					"dataset":     obj{"type": "string", "enum": datasets},
					"metrics":     obj{"type": "array", "minItems": 1, "items": obj{"type": "string", "enum": metrics}},
					"dimensions":  obj{"type": "array", "items": obj{"type": "string", "enum": dims}},
					"filters":     obj{"type": "array", "items": obj{"$ref": "#/components/schemas/Filter"}},
					"from":        obj{"type": "string", "description": "inclusive; " + timeDoc},
					"to":          obj{"type": "string", "description": "exclusive; " + timeDoc},
					"granularity": obj{"type": "string", "enum": Granularities, "default": "day", "description": "weeks are ISO weeks starting Monday; all is one bucket starting at from"},
					"order_by":    obj{"type": "string", "description": "time, a requested dimension or metric; prefix - for descending"},
					"limit":       obj{"type": "integer", "minimum": 0, "description": "0 means serving.max_rows"},
					"exact":       obj{"type": "boolean", "description": "answer from deduplicated raw events whatever would otherwise be approximate: distinct counts and quantiles that no stored grouping set covers, days waiting for a correction, the speed side"},
				}},
				"SourceRange": obj{"type": "object", "properties": obj{
					"from": obj{"type": "string", "format": "date-time"}, "to": obj{"type": "string", "format": "date-time"},
					"source":   obj{"type": "string", "enum": []string{SourceBatch, SourceSpeed, SourceRaw, SourceNone}},
					"grouping": str, "exact": obj{"type": "boolean"},
				}},
				"QueryResponse": obj{"type": "object", "properties": obj{
					"rows": obj{"type": "array", "items": obj{"type": "object", "description": "time, the requested dimensions and metrics, source (batch|speed|raw|mixed) and exact",
						"properties": obj{"time": obj{"type": "string", "format": "date-time"},
							"source": obj{"type": "string", "enum": []string{SourceBatch, SourceSpeed, SourceRaw, SourceMixed}},
							"exact":  obj{"type": "boolean"}},
						"additionalProperties": true}},
					"meta": obj{"type": "object", "properties": obj{
						"batch_watermark":           obj{"type": "string", "format": "date", "nullable": true, "description": "last day up to which every day is exact: the persisted watermark, or the day before the first pending correction"},
						"persisted_batch_watermark": obj{"type": "string", "format": "date", "nullable": true, "description": "the batch layer's watermark: <ds>_daily answers whole days up to it (pending corrections flagged exact:false), <ds>_speed after it"},
						"speed_watermark":           obj{"type": "string", "format": "date-time", "nullable": true},
						"lag_seconds":               obj{"type": "number"},
						"complete":                  obj{"type": "boolean"},
						"sources":                   obj{"type": "array", "items": obj{"$ref": "#/components/schemas/SourceRange"}},
						"pending_corrections":       obj{"type": "array", "items": obj{"type": "string", "format": "date"}, "description": "dirty days: late events arrived after their batch run; recomputed at the next batch tick"},
						"truncated":                 obj{"type": "boolean"},
						"cached":                    obj{"type": "boolean"},
						"took_ms":                   obj{"type": "number"},
					}},
				}},
			},
		},
	}
}

func (s *Server) openapi(c *gin.Context) { c.JSON(http.StatusOK, s.OpenAPI()) }
