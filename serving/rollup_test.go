package serving

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/schema"
)

// rollUp writes the speed side's hours of day up to hourTo into <ds>_speed_hourly with the
// rollup's own queries (schema.SpeedHourlySelect and SpeedPrefixSelect, as the batch layer runs
// them) and records the
// rollup with ClickHouse's clock as its snapshot.
func rollUp(t *testing.T, e *testEnv, day, hourTo time.Time) {
	t.Helper()
	ctx := context.Background()
	g := schema.NewGenerator(e.cfg)
	d := &e.cfg.Datasets[0]
	var snapshot time.Time
	if err := e.conn.QueryRow(ctx, "SELECT now()").Scan(&snapshot); err != nil {
		t.Fatal(err)
	}
	cols := strings.Join(schema.SpeedHourlyColumns(d), ", ")
	var sets []string
	for _, set := range schema.SpeedSets(d) {
		sets = append(sets, strings.Join(set, ","))
		if err := e.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s)\n%s", g.T(schema.SpeedHourly(d.Name)), cols, g.SpeedHourlySelect(d, set, day, hourTo))); err != nil {
			t.Fatal(err)
		}
	}
	for h := day; h.Before(hourTo); h = h.Add(time.Hour) {
		if err := e.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s)\n%s", g.T(schema.SpeedHourly(d.Name)), cols, g.SpeedPrefixSelect(d, g.T(schema.SpeedHourly(d.Name)), day, h))); err != nil {
			t.Fatal(err)
		}
	}
	recordRollup(t, e, day, hourTo, snapshot, sets, schema.SpeedHourlyLayout(d))
}

// recordRollup records a rollup of day up to hourTo in speed_rollups, made with layout.
func recordRollup(t *testing.T, e *testEnv, day, hourTo, snapshot time.Time, sets []string, layout string) {
	t.Helper()
	g := schema.NewGenerator(e.cfg)
	b, err := e.conn.PrepareBatch(context.Background(), fmt.Sprintf("INSERT INTO %s (dataset, day, hour_to, snapshot, sets, rows, at_us, layout)", g.T(schema.SpeedRollups)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append(e.cfg.Datasets[0].Name, day, hourTo, snapshot, sets, uint64(1), uint64(time.Now().UnixMicro()), layout); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

// answers maps each row of a response (time and dimensions) to its metrics.
func answers(r apiResp, metrics, dims []string) map[string][]any {
	out := map[string][]any{}
	for _, row := range r.Rows {
		k := fmt.Sprint(row["time"])
		for _, d := range dims {
			k += "|" + fmt.Sprint(row[d])
		}
		var v []any
		for _, m := range metrics {
			v = append(v, row[m])
		}
		v = append(v, row["source"], row["exact"])
		out[k] = v
	}
	return out
}

func tables(r apiResp) string {
	var out []string
	for _, s := range r.Meta.Sources {
		g := ""
		if s.Grouping != nil {
			g = "(" + *s.Grouping + ")"
		}
		out = append(out, fmt.Sprintf("%s%s %s..%s", s.Table, g, s.From.Format("01-02T15"), s.To.Format("01-02T15")))
	}
	return strings.Join(out, ", ")
}

// The speed side's rolled-up hours answer as its minutes do: the same counts, sums, distinct
// counts and quantiles per bucket (one state per hour and set merges the same values as the
// minutes' states), flagged speed and approximate; once a flush after the rollup writes into
// an hour, the API reads the minutes from that hour on.
func TestSpeedRollupAnswers(t *testing.T) {
	e := newEnv(t, nil)
	metrics := []string{"events", "users", "revenue", "value_p95"}
	reqs := []struct {
		body string
		dims []string
	}{
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"hour"}`, nil},
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["event"],"filters":[{"dimension":"country","op":"neq","values":["DE"]}],"from":"2024-03-09T00:00:00Z","to":"2024-03-10T12:00:00Z","granularity":"hour"}`, []string{"event"}},
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["device"],"from":"2024-03-08","to":"2024-03-10T12:00:00Z","granularity":"day"}`, []string{"device"}},
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["country"],"from":"2024-03-09T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"all"}`, []string{"country"}},
		// Hours of a stored set (by event; one event, as the purchases panel asks): each bucket
		// is one hour row, read as its values.
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["event"],"from":"2024-03-09T22:00:00Z","to":"2024-03-10T12:00:00Z","granularity":"hour"}`, []string{"event"}},
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"filters":[{"dimension":"event","op":"eq","values":["buy"]}],"from":"2024-03-09T22:00:00Z","to":"2024-03-10T12:00:00Z","granularity":"hour"}`, nil},
	}
	before := make([]map[string][]any, len(reqs))
	for i, r := range reqs {
		resp := e.query(t, r.body)
		if strings.Contains(tables(resp), "speed_hourly") {
			t.Fatalf("speed_hourly read before any rollup: %s", tables(resp))
		}
		before[i] = answers(resp, metrics, r.dims)
	}
	// A second later than the ledger rows the set-up wrote (flushed_at has whole seconds).
	time.Sleep(1100 * time.Millisecond)
	d9, d10 := mustDay("2024-03-09"), mustDay("2024-03-10")
	rollUp(t, e, d9, d10)
	rollUp(t, e, d10, d10.Add(11*time.Hour))
	same := func(stage string, wantTables []string) {
		t.Helper()
		for i, r := range reqs {
			resp := e.query(t, r.body)
			if got := tables(resp); got != wantTables[i] {
				t.Errorf("%s, %s: reads %s, want %s", stage, r.body, got, wantTables[i])
			}
			got := answers(resp, metrics, r.dims)
			if len(got) != len(before[i]) {
				t.Errorf("%s, %s: %d rows, %d from the minutes", stage, r.body, len(got), len(before[i]))
			}
			for k, want := range before[i] {
				g := got[k]
				for j := range want {
					if g == nil || !closeTo(g[j], want[j]) {
						t.Errorf("%s, %s, row %s: %v, from the minutes %v", stage, r.body, k, g, want)
						break
					}
				}
			}
		}
	}
	same("rolled up", []string{
		"hourly() 03-08T20..03-09T00, speed_hourly() 03-09T00..03-10T11, speed 03-10T11..03-10T11",
		"speed_hourly(event,country,device) 03-09T00..03-10T11, speed 03-10T11..03-10T12",
		"daily(device) 03-08T00..03-09T00, speed_hourly(device) 03-09T00..03-10T00, speed_hourly(device) 03-10T00..03-10T11, speed 03-10T11..03-10T12",
		"speed_hourly(country) 03-09T20..03-10T00, speed_hourly(country) 03-10T00..03-10T11, speed 03-10T11..03-10T11",
		"speed_hourly(event) 03-09T22..03-10T11, speed 03-10T11..03-10T12",
		"speed_hourly(event) 03-09T22..03-10T11, speed 03-10T11..03-10T12",
	})
	// A rollup recorded with another layout (the table's columns changed since) is not read:
	// the minutes answer its day.
	sets := []string{"", "event", "country", "device", "event,country,device"}
	var snapshot time.Time
	if err := e.conn.QueryRow(context.Background(), "SELECT now()").Scan(&snapshot); err != nil {
		t.Fatal(err)
	}
	recordRollup(t, e, d10, d10.Add(11*time.Hour), snapshot, sets, "an older layout")
	same("a rollup of another layout", []string{
		"hourly() 03-08T20..03-09T00, speed_hourly() 03-09T00..03-10T00, speed 03-10T00..03-10T11",
		"speed_hourly(event,country,device) 03-09T00..03-10T00, speed 03-10T00..03-10T12",
		"daily(device) 03-08T00..03-09T00, speed_hourly(device) 03-09T00..03-10T00, speed 03-10T00..03-10T12",
		"speed_hourly(country) 03-09T20..03-10T00, speed 03-10T00..03-10T11",
		"speed_hourly(event) 03-09T22..03-10T00, speed 03-10T00..03-10T12",
		"speed_hourly(event) 03-09T22..03-10T00, speed 03-10T00..03-10T12",
	})
	recordRollup(t, e, d10, d10.Add(11*time.Hour), snapshot, sets, schema.SpeedHourlyLayout(&e.cfg.Datasets[0]))
	// A flush after the rollup with events from 05:30 on 03-10.
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.Exec(context.Background(), fmt.Sprintf(`INSERT INTO %s (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer, min_event_time)
SELECT 'events', 'events', 0, 100, 109, 110, 10, 0, 0, 0, toDateTime('2024-03-10 11:00:00', 'UTC'), 'test', toDateTime('2024-03-10 05:30:00', 'UTC')`, g.T(schema.SpeedFlushes))); err != nil {
		t.Fatal(err)
	}
	same("after a flush into 05:30", []string{
		"hourly() 03-08T20..03-09T00, speed_hourly() 03-09T00..03-10T05, speed 03-10T05..03-10T11",
		"speed_hourly(event,country,device) 03-09T00..03-10T05, speed 03-10T05..03-10T12",
		"daily(device) 03-08T00..03-09T00, speed_hourly(device) 03-09T00..03-10T00, speed_hourly(device) 03-10T00..03-10T05, speed 03-10T05..03-10T12",
		"speed_hourly(country) 03-09T20..03-10T00, speed_hourly(country) 03-10T00..03-10T05, speed 03-10T05..03-10T11",
		"speed_hourly(event) 03-09T22..03-10T05, speed 03-10T05..03-10T12",
		"speed_hourly(event) 03-09T22..03-10T05, speed 03-10T05..03-10T12",
	})
}

// closeTo compares two JSON values, numbers to 1e-9 relative (sums of floats in another order).
func closeTo(a, b any) bool {
	x, okA := a.(float64)
	y, okB := b.(float64)
	if !okA || !okB {
		return fmt.Sprint(a) == fmt.Sprint(b)
	}
	return math.Abs(x-y) <= 1e-9*math.Max(1, math.Max(math.Abs(x), math.Abs(y)))
}

// One bucket from inside the last sealed day to now answers the same from the rest of that day
// (<ds>_hourly_rest, one row per combination) as from its hours, and reads the rest only while
// it comes from the day's newest run.
func TestHourlyRestAnswers(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	g := schema.NewGenerator(e.cfg)
	d := &e.cfg.Datasets[0]
	metrics := []string{"events", "users", "revenue", "value_p95"}
	reqs := []struct {
		body string
		dims []string
	}{
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["country"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"all"}`, []string{"country"}},
		{`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"from":"2024-03-08T05:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"all"}`, nil},
	}
	before := make([]map[string][]any, len(reqs))
	for i, r := range reqs {
		resp := e.query(t, r.body)
		if got := tables(resp); !strings.HasPrefix(got, "hourly(") {
			t.Fatalf("%s reads %s, want the hours of 03-08 first", r.body, got)
		}
		before[i] = answers(resp, metrics, r.dims)
	}
	d8 := mustDay("2024-03-08")
	var run string
	if err := e.conn.QueryRow(ctx, fmt.Sprintf("SELECT any(run_id) FROM %s WHERE toDate(hour) = toDate('2024-03-08')", g.T(schema.Hourly(d.Name)))).Scan(&run); err != nil {
		t.Fatal(err)
	}
	var hours []time.Time
	for h := d8; h.Before(d8.AddDate(0, 0, 1)); h = h.Add(time.Hour) {
		hours = append(hours, h)
	}
	if err := e.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s)\n%s", g.T(schema.HourlyRest(d.Name)), strings.Join(schema.HourlyRestColumns(d), ", "), g.HourlyRestSelect(d, hours))); err != nil {
		t.Fatal(err)
	}
	record := func(run string) {
		t.Helper()
		if err := e.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (dataset, day, run_id, rows, layout, at_us) SELECT 'events', toDate('2024-03-08'), '%s', 1, '%s', %d",
			g.T(schema.RestRollups), run, schema.HourlyRestLayout(d), time.Now().UnixMicro())); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // the state is re-read at most every second
	}
	same := func(stage, want string) {
		t.Helper()
		for i, r := range reqs {
			resp := e.query(t, r.body)
			if got := tables(resp); !strings.HasPrefix(got, want) {
				t.Errorf("%s, %s: reads %s, want %s first", stage, r.body, got, want)
			}
			got := answers(resp, metrics, r.dims)
			if len(got) != len(before[i]) {
				t.Errorf("%s, %s: %d rows, %d from the hours", stage, r.body, len(got), len(before[i]))
			}
			for k, w := range before[i] {
				for j := range w {
					if g := got[k]; g == nil || !closeTo(g[j], w[j]) {
						t.Errorf("%s, %s, row %s: %v, from the hours %v", stage, r.body, k, got[k], w)
						break
					}
				}
			}
		}
	}
	record(run)
	same("from the rest", "hourly_rest(")
	record("another run")
	same("rest of another run", "hourly(")
}
