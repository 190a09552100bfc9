package serving

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestSecurityMatrix: every refusal is a 4xx with a JSON message naming the field, nothing
// user-supplied reaches SQL as text, and the table survives every attempt.
func TestSecurityMatrix(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Serving.APIKeys = []string{"k1-secret", "k2-secret"}
		c.Serving.MaxBodyBytes = 4096
		c.Serving.MaxBuckets = 1000
		c.Serving.MaxRows = 500
	})
	ok := `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`
	f := func(name, method, path, key, body string, wantCode int, wantField string) {
		t.Helper()
		var r apiResp
		code := e.do(t, method, path, key, body, &r)
		if code != wantCode || (wantField != "" && r.Field != wantField) || (code >= 400 && r.Error == "") {
			t.Errorf("%s: got %d %q (field %q), want %d field %q", name, code, r.Error, r.Field, wantCode, wantField)
		}
	}
	f("no key", "POST", "/api/v1/query", "", ok, 401, "Authorization")
	f("wrong key", "POST", "/api/v1/query", "k1-secreT", ok, 401, "Authorization")
	f("prefix of a key", "POST", "/api/v1/query", "k1-secret-", ok, 401, "Authorization")
	f("datasets without key", "GET", "/api/v1/datasets", "", "", 401, "Authorization")
	f("freshness without key", "GET", "/api/v1/freshness", "", "", 401, "Authorization")
	f("good key", "POST", "/api/v1/query", "k2-secret", ok, 200, "")
	k := "k1-secret"
	f("unknown dataset", "POST", "/api/v1/query", k, `{"dataset":"nope","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`, 404, "dataset")
	f("dataset injection", "POST", "/api/v1/query", k, `{"dataset":"events_raw; DROP TABLE x","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`, 404, "dataset")
	f("metric injection", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events`+"`"+`, (SELECT 1)"],"from":"2024-03-05","to":"2024-03-07"}`, 400, "metrics")
	f("dimension injection", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"dimensions":["country) FROM system.tables --"],"from":"2024-03-05","to":"2024-03-07"}`, 400, "dimensions")
	f("filter dimension injection", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"filters":[{"dimension":"1=1 OR country","op":"eq","values":["x"]}],"from":"2024-03-05","to":"2024-03-07"}`, 400, "filters[0].dimension")
	f("unknown op", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"filters":[{"dimension":"country","op":"like","values":["x"]}],"from":"2024-03-05","to":"2024-03-07"}`, 400, "filters[0].op")
	f("order_by injection", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"order_by":"events; DROP TABLE x","from":"2024-03-05","to":"2024-03-07"}`, 400, "order_by")
	f("unknown metric", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["nope"],"from":"2024-03-05","to":"2024-03-07"}`, 400, "metrics")
	f("no metric", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":[],"from":"2024-03-05","to":"2024-03-07"}`, 400, "metrics")
	f("unknown field", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07","sql":"SELECT 1"}`, 400, "body")
	f("malformed JSON", "POST", "/api/v1/query", k, `{"dataset":"events",`, 400, "body")
	f("trailing JSON", "POST", "/api/v1/query", k, ok+`{}`, 400, "body")
	f("reversed range", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-07","to":"2024-03-05"}`, 400, "to")
	f("empty range", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-07","to":"2024-03-07"}`, 400, "to")
	f("huge range", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"1970-01-01","to":"2106-01-01","granularity":"minute"}`, 400, "granularity")
	f("out of range", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"0001-01-01","to":"9999-01-01","granularity":"all"}`, 400, "from")
	f("bad time", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"yesterday","to":"2024-03-05"}`, 400, "from")
	f("limit over max_rows", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07","limit":501}`, 400, "limit")
	f("bad granularity", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07","granularity":"second"}`, 400, "granularity")
	f("oversized body", "POST", "/api/v1/query", k, `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07","dimensions":[`+strings.Repeat(`"country",`, 1000)+`"country"]}`, 413, "body")
	f("bad format", "POST", "/api/v1/query?format=xml", k, ok, 400, "format")
	f("GET bad filters", "GET", "/api/v1/query?dataset=events&metrics=events&from=2024-03-05&to=2024-03-07&filters=[{", k, "", 400, "filters")
	f("GET bad limit", "GET", "/api/v1/query?dataset=events&metrics=events&from=2024-03-05&to=2024-03-07&limit=x", k, "", 400, "limit")
	f("GET", "GET", "/api/v1/query?dataset=events&metrics=events,users&dimensions=country&from=2024-03-05&to=2024-03-07", k, "", 200, "")

	// Quotes and SQL in filter values are bound: they match nothing (or the one country with
	// a quote in its name), and the tables are intact.
	for _, v := range []string{`'`, `\'`, `x' OR '1'='1`, `'); DROP TABLE events_daily; --`, "`", `\`, `?`, "a\x00b", `it's`} {
		for _, op := range []string{"eq", "in", "neq", "prefix", "contains"} {
			jv, _ := json.Marshal(v)
			body := fmt.Sprintf(`{"dataset":"events","metrics":["events"],"dimensions":["country"],"filters":[{"dimension":"country","op":%q,"values":[%s]}],"from":"2024-03-05","to":"2024-03-11"}`, op, jv)
			var r apiResp
			if code := e.do(t, "POST", "/api/v1/query", k, body, &r); code != 200 {
				t.Errorf("value %q op %s: status %d %s", v, op, code, r.Error)
				continue
			}
			for _, row := range r.Rows {
				c := row["country"].(string)
				var match bool
				switch op {
				case "prefix":
					match = strings.HasPrefix(c, v)
				case "contains":
					match = strings.Contains(c, v)
				default:
					match = c == v
				}
				if (op == "neq") == match {
					t.Errorf("value %q op %s matched country %q", v, op, c)
				}
			}
			if found := (op == "contains" && (v == `it's` || v == `'`)) || (op == "prefix" && v == `it's`); found && len(r.Rows) == 0 {
				t.Errorf("country it's not found by %s %q", op, v)
			}
			if v == `it's` && op == "eq" && len(r.Rows) == 0 {
				t.Errorf("country it's not found by eq")
			}
		}
	}
	var n uint64
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.QueryRow(context.Background(), "SELECT count() FROM "+g.T(schema.Daily("events"))).Scan(&n); err != nil || n == 0 {
		t.Fatalf("daily table damaged: %d rows, %v", n, err)
	}

	// Open endpoints need no key.
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		w := httptest.NewRecorder()
		e.http.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != 200 {
			t.Errorf("%s: %d %s", p, w.Code, w.Body.String())
		}
	}
}

// FuzzParseRequest: no request body makes the parser, the checker or the planner panic, and
// whatever passes the checker names only configured identifiers.
func FuzzParseRequest(f *testing.F) {
	for _, c := range planCases {
		f.Add([]byte(c.req))
	}
	f.Add([]byte(`{"dataset":"events","metrics":["events"],"from":"now-1d","to":"now","filters":[{"dimension":"country","op":"in","values":["'"]}]}`))
	f.Add([]byte(`{`))
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		f.Fatal(err)
	}
	p := NewPlanner(cfg)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := DecodeRequest(body)
		if e != nil {
			if e.Status != 400 || e.Field == "" {
				t.Fatalf("decode error without field: %+v", e)
			}
			return
		}
		q, e := Check(cfg, r, Limits{MaxRows: 1000, MaxBuckets: 10000}, testNow)
		if e != nil {
			if e.Status/100 != 4 || e.Field == "" {
				t.Fatalf("check error without field: %+v", e)
			}
			return
		}
		pl, e := p.Plan(q, planState(), testNow)
		if e != nil {
			return
		}
		for _, sql := range pl.Statements() {
			for _, fl := range q.Filters {
				for _, v := range fl.Values {
					if len(v) > 3 && strings.Contains(sql.Text, v) {
						t.Fatalf("filter value %q spliced into SQL:\n%s", v, sql.Text)
					}
				}
			}
			if strings.Count(sql.Text, "?") != len(sql.Args) {
				t.Fatalf("%d placeholders, %d args", strings.Count(sql.Text, "?"), len(sql.Args))
			}
		}
	})
}

// TestRefuseOpenListen: without keys the server listens on loopback only.
func TestRefuseOpenListen(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Serving.Listen = "0.0.0.0:0" })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Run(ctx); err == nil || !strings.Contains(err.Error(), "without API keys") {
		t.Fatalf("want a refusal, got %v", err)
	}
	e.cfg.Serving.Listen = "127.0.0.1:0"
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := e.srv.Run(ctx2); err != nil {
		t.Fatalf("loopback: %v", err)
	}
}

// TestCORSAndCSV covers the CORS preflight and the CSV format.
func TestCORSAndCSV(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Serving.CORSOrigins = []string{"https://dash.example"} })
	r := httptest.NewRequest("OPTIONS", "/api/v1/query", nil)
	r.Header.Set("Origin", "https://dash.example")
	w := httptest.NewRecorder()
	e.http.ServeHTTP(w, r)
	if w.Code != 204 || w.Header().Get("Access-Control-Allow-Origin") != "https://dash.example" {
		t.Errorf("preflight: %d %v", w.Code, w.Header())
	}
	r = httptest.NewRequest("GET", "/api/v1/datasets", nil)
	r.Header.Set("Origin", "https://evil.example")
	w = httptest.NewRecorder()
	e.http.ServeHTTP(w, r)
	if w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("CORS header for an unlisted origin")
	}
	r = httptest.NewRequest("GET", "/api/v1/query?format=csv&dataset=events&metrics=events,revenue&dimensions=country&from=2024-03-05&to=2024-03-06", nil)
	w = httptest.NewRecorder()
	e.http.ServeHTTP(w, r)
	lines := strings.Split(strings.TrimSpace(w.Body.String()), "\n")
	if w.Code != http.StatusOK || lines[0] != "time,country,events,revenue,source,exact" || len(lines) != 5 {
		t.Errorf("csv: %d\n%s", w.Code, w.Body.String())
	}
	var doc map[string]any
	if e.do(t, "GET", "/api/v1/openapi.json", "", "", &doc); doc["openapi"] != "3.0.3" {
		t.Errorf("openapi: %v", doc["openapi"])
	}
	var fr struct {
		Datasets []Freshness `json:"datasets"`
	}
	if code := e.do(t, "GET", "/api/v1/freshness", "", "", &fr); code != 200 || len(fr.Datasets) != 1 || fr.Datasets[0].BatchWatermark == nil || len(fr.Datasets[0].LastRuns) == 0 {
		t.Errorf("freshness: %d %+v", code, fr)
	}
}
