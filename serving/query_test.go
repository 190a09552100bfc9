package serving

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestBatchSideExact checks batch-side values against totals computed independently from the
// generated events: per day, per country, filtered, and rolled up into a week.
func TestBatchSideExact(t *testing.T) {
	e := newEnv(t, nil)
	// Per day, no dimension: daily's '' set, exact for every metric.
	r := e.query(t, `{"dataset":"events","metrics":["events","users","revenue"],"from":"2024-03-05","to":"2024-03-09","granularity":"day"}`)
	if len(r.Rows) != 4 {
		t.Fatalf("want 4 days, got %d: %v", len(r.Rows), r.Rows)
	}
	for _, row := range r.Rows {
		d, _ := time.Parse(time.RFC3339, row["time"].(string))
		tr := e.truth(d, d.AddDate(0, 0, 1), nil)
		if num(row["events"]) != float64(tr.events) || num(row["users"]) != float64(len(tr.users)) || math.Abs(num(row["revenue"])-tr.revenue) > 1e-6 {
			t.Errorf("%s: got %v, want events %d users %d revenue %f", d, row, tr.events, len(tr.users), tr.revenue)
		}
		if row["source"] != "batch" || row["exact"] != true {
			t.Errorf("%s: want batch exact, got %v", d, row)
		}
	}
	// Users per country for one day filtered by device eq: set country,device? No such set:
	// the planner rolls up the all-dimensions set, and users is approximate.
	r = e.query(t, `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"filters":[{"dimension":"device","op":"eq","values":["ios"]}],"from":"2024-03-06","to":"2024-03-07"}`)
	for _, row := range r.Rows {
		c := row["country"].(string)
		tr := e.truth(mustDay("2024-03-06"), mustDay("2024-03-07"), func(ev event) bool { return ev.country == c && ev.device == "ios" })
		if num(row["events"]) != float64(tr.events) {
			t.Errorf("country %s ios: events %v, want %d", c, row["events"], tr.events)
		}
		if row["exact"] != false {
			t.Errorf("users over a set no grouping stores must be approximate: %v", row)
		}
	}
	// Same with exact:true: from raw, exact.
	r = e.query(t, `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"filters":[{"dimension":"device","op":"eq","values":["ios"]}],"from":"2024-03-06","to":"2024-03-07","exact":true}`)
	if len(r.Rows) == 0 {
		t.Fatal("no rows")
	}
	for _, row := range r.Rows {
		c := row["country"].(string)
		tr := e.truth(mustDay("2024-03-06"), mustDay("2024-03-07"), func(ev event) bool { return ev.country == c && ev.device == "ios" })
		if num(row["users"]) != float64(len(tr.users)) || row["exact"] != true || row["source"] != "raw" {
			t.Errorf("exact country %s ios: %v, want users %d from raw", c, row, len(tr.users))
		}
	}
	// Country filtered by eq with the country set: exact from daily.
	r = e.query(t, `{"dataset":"events","metrics":["users"],"filters":[{"dimension":"country","op":"eq","values":["it's"]}],"from":"2024-03-06","to":"2024-03-08"}`)
	if len(r.Rows) != 2 {
		t.Fatalf("want 2 rows, got %v", r.Rows)
	}
	for _, row := range r.Rows {
		d, _ := time.Parse(time.RFC3339, row["time"].(string))
		tr := e.truth(d, d.AddDate(0, 0, 1), func(ev event) bool { return ev.country == "it's" })
		if num(row["users"]) != float64(len(tr.users)) || row["exact"] != true || row["source"] != "batch" {
			t.Errorf("%s it's: %v, want users %d exact batch", d, row, len(tr.users))
		}
	}
	// A week of counts rolls up exactly; users over several days is approximate.
	r = e.query(t, `{"dataset":"events","metrics":["events","revenue"],"from":"2024-03-05","to":"2024-03-09","granularity":"all"}`)
	tr := e.truth(mustDay("2024-03-05"), mustDay("2024-03-09"), nil)
	if len(r.Rows) != 1 || num(r.Rows[0]["events"]) != float64(tr.events) || r.Rows[0]["exact"] != true {
		t.Errorf("all: %v, want events %d exact", r.Rows, tr.events)
	}
	r = e.query(t, `{"dataset":"events","metrics":["users"],"from":"2024-03-05","to":"2024-03-09","granularity":"all","exact":true}`)
	if len(r.Rows) != 1 || num(r.Rows[0]["users"]) != float64(len(tr.users)) || r.Rows[0]["exact"] != true {
		t.Errorf("all exact: %v, want users %d exact", r.Rows, len(tr.users))
	}
	// Hours on the batch side come from <ds>_hourly, exact (see TestSubDayFromRollups).
	r = e.query(t, `{"dataset":"events","metrics":["events","users"],"from":"2024-03-06T10:00:00Z","to":"2024-03-06T12:00:00Z","granularity":"hour"}`)
	if len(r.Rows) != 2 {
		t.Fatalf("want 2 hours, got %v", r.Rows)
	}
	for _, row := range r.Rows {
		h, _ := time.Parse(time.RFC3339, row["time"].(string))
		tr := e.truth(h, h.Add(time.Hour), nil)
		if num(row["events"]) != float64(tr.events) || num(row["users"]) != float64(len(tr.users)) || row["source"] != "batch" || row["exact"] != true {
			t.Errorf("hour %s: %v, want %d events %d users, exact from batch", h, row, tr.events, len(tr.users))
		}
	}
}

// TestSpeedSideApproximate checks that rows after the watermark come from speed, flagged
// approximate, and a bucket spanning both sides is mixed.
func TestSpeedSideApproximate(t *testing.T) {
	e := newEnv(t, nil)
	r := e.query(t, `{"dataset":"events","metrics":["events","users"],"from":"2024-03-07","to":"2024-03-11","granularity":"day"}`)
	want := map[string]string{"2024-03-07": "batch", "2024-03-08": "batch", "2024-03-09": "speed", "2024-03-10": "speed"}
	if len(r.Rows) != 4 {
		t.Fatalf("want 4 rows, got %v", r.Rows)
	}
	for _, row := range r.Rows {
		d := row["time"].(string)[:10]
		if row["source"] != want[d] || row["exact"] != (want[d] == "batch") {
			t.Errorf("%s: %v, want source %s", d, row, want[d])
		}
		dd := mustDay(d)
		tr := e.truth(dd, dd.AddDate(0, 0, 1), nil)
		// Speed drops nothing here (no duplicates are dropped by the test loader, so speed
		// overcounts duplicates): events within the duplicate ratio.
		if got := num(row["events"]); got < float64(tr.events) || got > float64(tr.events)*1.2 {
			t.Errorf("%s: events %v, want about %d", d, got, tr.events)
		}
	}
	if r.Meta.BatchWatermark == nil || *r.Meta.BatchWatermark != "2024-03-08" || !r.Meta.Complete {
		t.Errorf("meta: %+v", r.Meta)
	}
	// The ISO week of 2024-03-04 spans batch days and speed days: mixed, approximate.
	r = e.query(t, `{"dataset":"events","metrics":["events"],"from":"2024-03-04","to":"2024-03-11","granularity":"week"}`)
	if len(r.Rows) != 1 || r.Rows[0]["source"] != "mixed" || r.Rows[0]["exact"] != false || r.Rows[0]["time"] != "2024-03-04T00:00:00Z" {
		t.Errorf("week: %v", r.Rows)
	}
}

// TestGapIncomplete: days after the watermark that the speed view no longer holds have no
// source; the answer says complete:false and names the range.
func TestGapIncomplete(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	g := schema.NewGenerator(e.cfg)
	// The batch watermark falls back to 03-05 (as if runs failed since), and speed no longer
	// holds 03-06 (retention 72h from testNow covers 03-07 on).
	wq := fmt.Sprintf("INSERT INTO %s (dataset, watermark, run_id, at, at_us) SELECT 'events', toDate('2024-03-05'), 'r', now(), toUInt64(?)", g.T(schema.BatchWatermarks))
	if err := e.conn.Exec(ctx, wq, time.Now().UnixMicro()+1e9); err != nil {
		t.Fatal(err)
	}
	if err := e.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240306", g.T(schema.Speed("events")))); err != nil {
		t.Fatal(err)
	}
	if err := e.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240305", g.T(schema.Speed("events")))); err != nil {
		t.Fatal(err)
	}
	r := e.query(t, `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-09"}`)
	if r.Meta.Complete {
		t.Fatalf("want complete:false, got %+v", r.Meta)
	}
	var gap bool
	for _, s := range r.Meta.Sources {
		if s.Source == SourceNone && s.From.Equal(mustDay("2024-03-06")) && s.To.Equal(mustDay("2024-03-07")) {
			gap = true
		}
	}
	if !gap {
		t.Errorf("want a none source for 2024-03-06, got %+v", r.Meta.Sources)
	}
	for _, row := range r.Rows {
		if strings.HasPrefix(row["time"].(string), "2024-03-06") {
			t.Errorf("no source for 03-06, yet a row: %v", row)
		}
	}
}

// TestCache: a batch-only result is cached; a new run of a day read changes the key.
func TestCache(t *testing.T) {
	e := newEnv(t, nil)
	req := `{"dataset":"events","metrics":["events"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-09"}`
	r1 := e.query(t, req)
	r2 := e.query(t, req)
	if r1.Meta.Cached || !r2.Meta.Cached {
		t.Fatalf("want miss then hit, got %v then %v", r1.Meta.Cached, r2.Meta.Cached)
	}
	// A speed query is never cached.
	sreq := `{"dataset":"events","metrics":["events"],"from":"2024-03-09","to":"2024-03-10"}`
	e.query(t, sreq)
	if e.query(t, sreq).Meta.Cached {
		t.Error("speed result cached")
	}
	// Recompute 03-06 with more events: the next answer must see them.
	late := genEvents(mustDay("2024-03-06"), mustDay("2024-03-06").Add(time.Hour), 7, 99)
	insertRaw(t, e.conn, e.cfg, late)
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.Exec(context.Background(), fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240306", g.T(schema.Daily("events")))); err != nil {
		t.Fatal(err)
	}
	e.evs = append(e.evs, late...)
	seal(t, e.conn, e.cfg, mustDay("2024-03-06"), mustDay("2024-03-07"), "run-2", mustDay("2024-03-08"))
	r3 := e.query(t, req)
	if r3.Meta.Cached {
		t.Fatal("served from cache after a recomputation of a day read")
	}
	var sum float64
	for _, row := range r3.Rows {
		if strings.HasPrefix(row["time"].(string), "2024-03-06") {
			sum += num(row["events"])
		}
	}
	if tr := e.truth(mustDay("2024-03-06"), mustDay("2024-03-07"), nil); sum != float64(tr.events) {
		t.Errorf("after rerun 03-06 has %v events, want %d", sum, tr.events)
	}
	// /metrics reports hits and misses: one hit, two misses (the first answer and the one
	// after the rerun; the speed query is not cacheable, so neither).
	w := httptest.NewRecorder()
	e.http.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"lambda_serving_cache_hits_total 1\n", "lambda_serving_cache_misses_total 2\n"} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestQueryTimeout: a query that runs out of serving.query_timeout is a 504 naming the
// setting (here the deadline has passed before ClickHouse is asked anything).
func TestQueryTimeout(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Serving.QueryTimeout = config.Duration(time.Nanosecond) })
	var r apiResp
	code := e.do(t, "POST", "/api/v1/query", "", `{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`, &r)
	if code != http.StatusGatewayTimeout || !strings.Contains(r.Error, "serving.query_timeout") {
		t.Errorf("got %d %q, want 504 naming serving.query_timeout", code, r.Error)
	}
	if code := e.do(t, "GET", "/api/v1/freshness", "", "", &r); code != http.StatusGatewayTimeout {
		t.Errorf("freshness: got %d, want 504", code)
	}
}
