package serving

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// insertLate writes one event to raw as the speed layer writes a correction for a sealed day,
// ingested at ingested.
func insertLate(t *testing.T, e *testEnv, ev event, ingested time.Time) {
	t.Helper()
	g := schema.NewGenerator(e.cfg)
	q := fmt.Sprintf("INSERT INTO %s (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at) SELECT ?, toDateTime(?), ?, ?, ?, ?, ?, 'events', 0, 1000000, 1, toDateTime(?)",
		g.T(schema.Raw("events")))
	if err := e.conn.Exec(context.Background(), q, ev.id, ev.t.Unix(), ev.event, ev.country, ev.device, ev.user, *ev.value, ingested.Unix()); err != nil {
		t.Fatal(err)
	}
	e.evs = append(e.evs, ev)
}

// freshness returns the events dataset's entry of /api/v1/freshness.
func (e *testEnv) freshness(t *testing.T) Freshness {
	t.Helper()
	var fr struct {
		Datasets []Freshness `json:"datasets"`
	}
	if code := e.do(t, "GET", "/api/v1/freshness", "", "", &fr); code != 200 || len(fr.Datasets) != 1 {
		t.Fatalf("freshness: %d %+v", code, fr)
	}
	return fr.Datasets[0]
}

// TestDirtyDayUntilRerun: a late event for a sealed day makes the day dirty. Until the batch
// layer recomputes it, the API still reads it from <ds>_daily (speed never sees late events)
// but flags it exact:false, the days around it stay exact, the freshness endpoint and meta list
// it as a pending correction, <ds>_lambda agrees, exact:true reads it from raw, and a cached
// answer is not served. After the rerun it is exact again, with the late event.
func TestDirtyDayUntilRerun(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		// <ds>_lambda counts the lookback from the server's clock, the API from testNow: a
		// lookback long enough to hold 2024-03-08 for both.
		c.Datasets[0].BatchConf.Lookback = config.Duration(3000 * 24 * time.Hour)
		c.Datasets[0].RawRetention = config.Duration(4000 * 24 * time.Hour)
	})
	req := `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"from":"2024-03-06","to":"2024-03-09"}`
	type row struct {
		events, users float64
		source        string
		exact         bool
	}
	read := func(r apiResp) map[string]row {
		out := map[string]row{}
		for _, x := range r.Rows {
			out[x["time"].(string)[:10]+"|"+x["country"].(string)] = row{num(x["events"]), num(x["users"]), x["source"].(string), x["exact"].(bool)}
		}
		return out
	}
	want := func(day, country string, withLate bool) row {
		d := mustDay(day)
		tr := e.truth(d, d.AddDate(0, 0, 1), func(ev event) bool { return ev.country == country && (withLate || ev.id != "late-1") })
		return row{events: float64(tr.events), users: float64(len(tr.users))}
	}
	check := func(name string, got map[string]row, dirtyWithLate *bool) {
		t.Helper()
		if len(got) != 12 {
			t.Fatalf("%s: %d rows, want 3 days x 4 countries: %v", name, len(got), got)
		}
		for k, g := range got {
			day, country, _ := strings.Cut(k, "|")
			w := want(day, country, true)
			exact, source := true, "batch"
			if day == "2024-03-08" && dirtyWithLate != nil {
				w, exact = want(day, country, *dirtyWithLate), *dirtyWithLate
				if *dirtyWithLate {
					source = "raw"
				}
			}
			if g.events != w.events || g.users != w.users || g.source != source || g.exact != exact {
				t.Errorf("%s %s: got %+v, want events %v users %v source %s exact %v", name, k, g, w.events, w.users, source, exact)
			}
		}
	}
	r := e.query(t, req)
	check("before", read(r), nil)
	if !e.query(t, req).Meta.Cached {
		t.Fatal("a batch-only answer was not cached")
	}

	// The late event, ingested after the start of 03-08's run (seal starts runs an hour from now).
	v := 12.5
	insertLate(t, e, event{id: "late-1", event: "buy", country: "DE", device: "web", user: "late-user", value: &v,
		t: mustDay("2024-03-08").Add(10 * time.Hour)}, time.Now().Add(2*time.Hour))
	r = e.query(t, req)
	no := false
	check("dirty", read(r), &no)
	if r.Meta.Cached {
		t.Error("served the cached answer after the day turned dirty")
	}
	if r.Meta.BatchWatermark == nil || *r.Meta.BatchWatermark != "2024-03-07" || !slices.Equal(r.Meta.Pending, []string{"2024-03-08"}) {
		t.Errorf("dirty meta: watermark %v pending %v", r.Meta.BatchWatermark, r.Meta.Pending)
	}
	var dirtySrc bool
	for _, s := range r.Meta.Sources {
		if s.Source == SourceBatch && s.From.Equal(mustDay("2024-03-08")) && s.To.Equal(mustDay("2024-03-09")) && !s.Exact {
			dirtySrc = true
		}
	}
	if !dirtySrc {
		t.Errorf("sources do not flag 03-08 approximate: %+v", r.Meta.Sources)
	}
	if f := e.freshness(t); !slices.Equal(f.PendingCorrections, []string{"2024-03-08"}) || *f.BatchWatermark != "2024-03-07" || *f.PersistedBatchWatermark != "2024-03-08" {
		t.Errorf("freshness: pending %v watermark %v persisted %v", f.PendingCorrections, *f.BatchWatermark, *f.PersistedBatchWatermark)
	}
	viewAgrees(t, e)
	yes := true
	check("dirty, exact:true", read(e.query(t, strings.Replace(req, `"from"`, `"exact":true,"from"`, 1))), &yes)

	// The day is recomputed as the batch layer does it (a new run replaces its rows; the
	// batch layer itself with serving is tested in e2e/).
	reseal(t, e.conn, e.cfg, mustDay("2024-03-08"), "run-2", mustDay("2024-03-08"))
	r = e.query(t, req)
	check("rerun", read(r), nil)
	if r.Meta.Cached || r.Meta.BatchWatermark == nil || *r.Meta.BatchWatermark != "2024-03-08" || len(r.Meta.Pending) != 0 {
		t.Errorf("rerun meta: cached %v watermark %v pending %v", r.Meta.Cached, r.Meta.BatchWatermark, r.Meta.Pending)
	}
	if f := e.freshness(t); len(f.PendingCorrections) != 0 || *f.BatchWatermark != "2024-03-08" {
		t.Errorf("freshness after the rerun: pending %v watermark %v", f.PendingCorrections, *f.BatchWatermark)
	}
	viewAgrees(t, e)
}

// TestOldDaysKeepTheirSets: 03-05 was computed before device was a dimension, so <ds>_daily
// holds only the sets of that configuration for it (no device, no event,country,device; an
// event,country set instead). The planner reads what each day holds: grouping by device takes
// 03-05 from raw (exact), the newer days from their device set; the old all-set answers its
// own combination exactly; once raw no longer holds the day, its sets answer with device empty
// (approximate).
func TestOldDaysKeepTheirSets(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240305", g.T(schema.Daily("events")))); err != nil {
		t.Fatal(err)
	}
	old := *e.cfg
	old.Datasets = []config.Dataset{e.cfg.Datasets[0]}
	old.Datasets[0].Dimensions = []config.Dimension{{Name: "event", Field: "event"}, {Name: "country", Field: "country"}}
	seal(t, e.conn, &old, mustDay("2024-03-05"), mustDay("2024-03-06"), "run-old", mustDay("2024-03-08"))

	type key struct{ day, dims string }
	check := func(req string, dims []string, keep func(day string, ev event) bool, source func(day string) string, exact bool) {
		t.Helper()
		r := e.query(t, req)
		seen := map[key]bool{}
		for _, row := range r.Rows {
			day := row["time"].(string)[:10]
			var vals []string
			for _, d := range dims {
				vals = append(vals, row[d].(string))
			}
			k := key{day, strings.Join(vals, "|")}
			seen[k] = true
			d := mustDay(day)
			tr := e.truth(d, d.AddDate(0, 0, 1), func(ev event) bool {
				evVals := map[string]string{"event": ev.event, "country": ev.country, "device": ev.device}
				for i, dim := range dims {
					if evVals[dim] != vals[i] {
						return false
					}
				}
				return keep == nil || keep(day, ev)
			})
			if num(row["events"]) != float64(tr.events) || num(row["users"]) != float64(len(tr.users)) || row["source"] != source(day) || row["exact"] != exact {
				t.Errorf("%s %v: got %v, want events %d users %d source %s exact %v", req, k, row, tr.events, len(tr.users), source(day), exact)
			}
		}
		var r0 Request
		if err := json.Unmarshal([]byte(req), &r0); err != nil {
			t.Fatal(err)
		}
		want := map[key]bool{}
		for _, ev := range e.evs {
			day := ledger.DayOf(ev.t).Format("2006-01-02")
			if ev.t.Before(mustDay(r0.From)) || !ev.t.Before(mustDay(r0.To)) || (keep != nil && !keep(day, ev)) {
				continue
			}
			evVals := map[string]string{"event": ev.event, "country": ev.country, "device": ev.device}
			var vals []string
			for _, d := range dims {
				vals = append(vals, evVals[d])
			}
			want[key{day, strings.Join(vals, "|")}] = true
		}
		if len(seen) != len(want) || len(want) == 0 {
			t.Errorf("%s: %d rows, want %d", req, len(seen), len(want))
		}
	}
	byDay := func(old, rest string) func(string) string {
		return func(day string) string {
			if day == "2024-03-05" {
				return old
			}
			return rest
		}
	}
	check(`{"dataset":"events","metrics":["events","users"],"dimensions":["device"],"from":"2024-03-05","to":"2024-03-07"}`,
		[]string{"device"}, nil, byDay("raw", "batch"), true)
	check(`{"dataset":"events","metrics":["events","users"],"dimensions":["event","country"],"from":"2024-03-05","to":"2024-03-06"}`,
		[]string{"event", "country"}, nil, byDay("batch", "batch"), true)
	check(`{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"filters":[{"dimension":"device","op":"eq","values":["ios"]}],"from":"2024-03-05","to":"2024-03-06"}`,
		[]string{"country"}, func(_ string, ev event) bool { return ev.device == "ios" }, byDay("raw", "batch"), true)

	// Raw from 03-06 on only: 03-05 answers from its sets, every event under device ''.
	short := *e.cfg
	short.Datasets = []config.Dataset{e.cfg.Datasets[0]}
	short.Datasets[0].RawRetention = config.Duration(100 * time.Hour)
	srv, err := New(&short, Options{Conn: e.conn, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	resp, apiErr := srv.Query(ctx, &Request{Dataset: "events", Metrics: []string{"events"}, Dimensions: []string{"device"}, From: "2024-03-05", To: "2024-03-06"})
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	tr := e.truth(mustDay("2024-03-05"), mustDay("2024-03-06"), nil)
	if rows := resp.Rows.Rows; len(rows) != 1 || rows[0][1] != "" || rows[0][2] != uint64(tr.events) || rows[0][3] != SourceBatch || rows[0][4] != false {
		t.Errorf("beyond raw retention: %v, want one row device '' with %d events, batch, approximate", rows, tr.events)
	}
}

// TestCacheFollowsDaily: a result is cached only when <ds>_daily holds the runs batch_runs
// names for the days read. A server whose replica of <ds>_daily has not received a swap yet
// (batch_runs already names the new run) answers from what it holds and does not cache it, so
// the old rows are never kept under the new run's key; once the swap arrives, the answer is
// cached again. A day whose run wrote nothing is consistent without rows.
func TestCacheFollowsDaily(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	req := `{"dataset":"events","metrics":["events"],"dimensions":["country"],"from":"2024-03-04","to":"2024-03-09"}`
	recordRun(t, e.conn, e.cfg, mustDay("2024-03-04"), "run-empty", 0) // before the first event
	if r := e.query(t, req); r.Meta.Cached {
		t.Fatal("first answer cached")
	}
	if r := e.query(t, req); !r.Meta.Cached {
		t.Fatal("an empty day with a run that wrote nothing prevents caching")
	}
	// batch_runs names run-2 for 03-06; daily still holds run-1.
	recordRun(t, e.conn, e.cfg, mustDay("2024-03-06"), "run-2", 100)
	for i := range 2 {
		if r := e.query(t, req); r.Meta.Cached {
			t.Fatalf("answer %d served from the cache while daily lags its run", i)
		}
	}
	// The swap arrives, with a late event in it.
	g := schema.NewGenerator(e.cfg)
	late := genEvents(mustDay("2024-03-06"), mustDay("2024-03-06").Add(time.Hour), 5, 7)
	insertRaw(t, e.conn, e.cfg, late)
	e.evs = append(e.evs, late...)
	if err := e.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240306", g.T(schema.Daily("events")))); err != nil {
		t.Fatal(err)
	}
	seal(t, e.conn, e.cfg, mustDay("2024-03-06"), mustDay("2024-03-07"), "run-2", mustDay("2024-03-08"))
	r := e.query(t, req)
	if r.Meta.Cached {
		t.Fatal("served the lagging answer after the swap")
	}
	var sum float64
	for _, row := range r.Rows {
		if strings.HasPrefix(row["time"].(string), "2024-03-06") {
			sum += num(row["events"])
		}
	}
	if tr := e.truth(mustDay("2024-03-06"), mustDay("2024-03-07"), nil); sum != float64(tr.events) {
		t.Errorf("03-06 after the swap: %v events, want %d", sum, tr.events)
	}
	if r := e.query(t, req); !r.Meta.Cached {
		t.Error("not cached once daily holds the runs batch_runs names")
	}
}

// TestUnrunDayNeverExact: history loaded into raw for a day below the boundary that no batch run
// has read is read from raw (daily holds nothing for it) and never flagged exact, whether exact
// was asked for or not; it is listed as a pending correction.
func TestUnrunDayNeverExact(t *testing.T) {
	e := newEnv(t, nil)
	old := genEvents(mustDay("2024-03-02"), mustDay("2024-03-03"), 10, 9)
	insertRaw(t, e.conn, e.cfg, old)
	for _, exact := range []string{"false", "true"} {
		r := e.query(t, `{"dataset":"events","metrics":["events","users"],"from":"2024-02-28","to":"2024-03-11","granularity":"day","exact":`+exact+`}`)
		seen := false
		for _, row := range r.Rows {
			if row["time"].(string)[:10] != "2024-03-02" {
				continue
			}
			seen = true
			if row["source"] != SourceRaw || row["exact"] != false {
				t.Errorf("exact:%s: the unrun day %v, want from raw, not exact", exact, row)
			}
		}
		if !seen {
			t.Errorf("exact:%s: no row for the unrun day", exact)
		}
		if !slices.Contains(r.Meta.Pending, "2024-03-02") {
			t.Errorf("pending corrections %v lack the unrun day", r.Meta.Pending)
		}
	}
}

// TestRawExactOnlyWhenComplete: rows read from raw are exact only for ranges the speed layer has
// consumed: exact:true over a day that is not over reads raw and flags it approximate.
func TestRawExactOnlyWhenComplete(t *testing.T) {
	e := newEnv(t, nil)
	g := schema.NewGenerator(e.cfg)
	// The speed layer is caught up (a fresh ledger row saying lag 0): the speed watermark is now.
	if err := e.conn.Exec(context.Background(), fmt.Sprintf(`INSERT INTO %s (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer)
SELECT 'events', 'events', 0, 0, 99, 100, 100, 0, 0, 0, toDateTime('2024-03-10 11:59:00', 'UTC'), 'test'`, g.T(schema.SpeedFlushes))); err != nil {
		t.Fatal(err)
	}
	r := e.query(t, `{"dataset":"events","metrics":["events","users"],"from":"2024-03-09","to":"2024-03-11","granularity":"day","exact":true}`)
	got := map[string]string{}
	for _, row := range r.Rows {
		got[row["time"].(string)[:10]] = fmt.Sprintf("%v %v", row["source"], row["exact"])
	}
	if got["2024-03-09"] != "raw true" || got["2024-03-10"] != "raw false" {
		t.Errorf("exact:true over a complete day and today: %v, want 03-09 raw exact, 03-10 raw approximate", got)
	}
}
