package serving

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// allTypes is a dataset with a metric of every type; the speed view keeps event and country
// only, so that the sets with device come from raw after the boundary.
func allTypes(c *config.Config) {
	d := &c.Datasets[0]
	d.Metrics = []config.Metric{
		{Name: "events", Type: "count"},
		{Name: "users", Type: "uniq", Field: "user_id"},
		{Name: "revenue", Type: "sum", Field: "value"},
		{Name: "lo", Type: "min", Field: "value"},
		{Name: "hi", Type: "max", Field: "value"},
		{Name: "mean", Type: "avg", Field: "value"},
		{Name: "value_p95", Type: "quantile", Field: "value", Level: 0.95},
	}
	d.SpeedConf.Dimensions = []string{"event", "country"}
}

var allMetrics = []string{"events", "users", "revenue", "lo", "hi", "mean", "value_p95"}

// nullEvents are generated events where country "it's" never carries a value and a tenth of
// the events have no user id: the NULL cases of every metric type.
func nullEvents() []event {
	evs := genEvents(mustDay("2024-03-05"), testNow.Add(-time.Hour), 20, 7)
	for i := range evs {
		if evs[i].country == "it's" {
			evs[i].value = nil
		}
		if i%10 == 3 {
			evs[i].user = ""
		}
	}
	return evs
}

// expect computes every metric over evs (deduplicated by day and id when dedup) as the API
// encodes it: nil where no value exists. quantile is quantileExact's: the element at
// floor(level·n) of the sorted values.
func expect(evs []event, dedup bool) []any {
	seen := map[string]bool{}
	var n int
	users := map[string]bool{}
	var vals []float64
	for _, ev := range evs {
		k := ledger.DayOf(ev.t).String() + ev.id
		if dedup && seen[k] {
			continue
		}
		seen[k] = true
		n++
		if ev.user != "" {
			users[ev.user] = true
		}
		if ev.value != nil {
			vals = append(vals, *ev.value)
		}
	}
	out := []any{float64(n), float64(len(users))}
	if len(vals) == 0 {
		return append(out, nil, nil, nil, nil, nil)
	}
	sort.Float64s(vals)
	sum := 0.0
	for _, v := range vals {
		sum += v
	}
	return append(out, sum, vals[0], vals[len(vals)-1], sum/float64(len(vals)), vals[min(len(vals)-1, int(0.95*float64(len(vals))))])
}

func sameValue(got, want any, tol float64) bool {
	if got == nil || want == nil {
		return got == nil && want == nil
	}
	g, w := got.(float64), want.(float64)
	return math.Abs(g-w) <= tol*math.Max(1, math.Abs(w))
}

// TestNullSemanticsEveryLayer: a missing value is ignored as SQL ignores NULL, in every layer
// alike. count counts events, uniq counts present keys only, sum/min/max/avg/quantile run over
// present values and are null where none exists: from <ds>_daily (sealed days), from <ds>_speed
// (after the boundary), from deduplicated raw (exact:true), and in <ds>_lambda.
func TestNullSemanticsEveryLayer(t *testing.T) {
	e := newEnvWith(t, allTypes, nullEvents())
	byDayCountry := func(dedup bool) map[string][]any {
		groups := map[string][]event{}
		for _, ev := range e.evs {
			k := ledger.DayOf(ev.t).Format(time.DateOnly) + "|" + ev.country
			groups[k] = append(groups[k], ev)
		}
		out := map[string][]any{}
		for k, evs := range groups {
			out[k] = expect(evs, dedup)
		}
		return out
	}
	exact, withDups := byDayCountry(true), byDayCountry(false)
	check := func(name string, req string, want func(day string) ([]any, bool)) {
		t.Helper()
		r := e.query(t, req)
		if len(r.Rows) != len(exact) {
			t.Fatalf("%s: %d rows, want %d", name, len(r.Rows), len(exact))
		}
		for _, row := range r.Rows {
			day := row["time"].(string)[:10]
			k := day + "|" + row["country"].(string)
			w, isSpeed := want(day)
			if w == nil {
				w = exact[k]
			}
			if isSpeed {
				w = withDups[k]
			}
			for i, m := range allMetrics {
				tol := 1e-9
				if isSpeed && (m == "value_p95") {
					// The speed view's quantile is a sketch: only its NULL-ness is exact.
					if (row[m] == nil) != (w[i] == nil) {
						t.Errorf("%s %s %s: %v, want %v", name, k, m, row[m], w[i])
					}
					continue
				}
				if !sameValue(row[m], w[i], tol) {
					t.Errorf("%s %s %s (%s): %v, want %v", name, k, m, row["source"], row[m], w[i])
				}
			}
			if strings.HasPrefix(k[11:], "it's") && (row["revenue"] != nil || row["lo"] != nil || row["mean"] != nil) {
				t.Errorf("%s %s: values where none exists: %v", name, k, row)
			}
		}
	}
	metrics := `"events","users","revenue","lo","hi","mean","value_p95"`
	// Batch days up to 03-08, speed after it (with the speed layer's duplicates).
	check("merged", fmt.Sprintf(`{"dataset":"events","metrics":[%s],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11","granularity":"day"}`, metrics),
		func(day string) ([]any, bool) { return nil, day > "2024-03-08" })
	// Deduplicated raw for every day.
	check("exact", fmt.Sprintf(`{"dataset":"events","metrics":[%s],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11","granularity":"day","exact":true}`, metrics),
		func(string) ([]any, bool) { return nil, false })
	viewAgreesAll(t, e, "day", "2024-03-05", "2024-03-11")
	viewAgreesAll(t, e, "hour", "2024-03-08 06:00:00", "2024-03-09 18:00:00")
}

// viewAgreesAll compares <ds>_lambda (grain day) or <ds>_lambda_hourly (grain hour) with the
// API for every metric and every grouping set (those the speed view keeps and those it does
// not), per bucket of [from, to), batch and speed side alike.
func viewAgreesAll(t *testing.T, e *testEnv, grain, from, to string) {
	t.Helper()
	ds, _ := e.cfg.Dataset("events")
	g := schema.NewGenerator(e.cfg)
	specs := ds.Specs()
	for _, set := range ds.GroupingSets() {
		dimsJSON := `[]`
		if len(set) > 0 {
			dimsJSON = `["` + strings.Join(set, `","`) + `"]`
		}
		var names []string
		for _, s := range specs {
			names = append(names, `"`+s.Name+`"`)
		}
		apiTime := func(s string) string {
			if grain == "hour" {
				return strings.Replace(s, " ", "T", 1) + "Z"
			}
			return s
		}
		r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":[%s],"dimensions":%s,"from":"%s","to":"%s","granularity":"%s","limit":100000}`,
			strings.Join(names, ","), dimsJSON, apiTime(from), apiTime(to), grain))
		api := map[string]map[string]any{}
		for _, row := range r.Rows {
			k := row["time"].(string)[:10]
			if grain == "hour" {
				k = strings.Replace(strings.TrimSuffix(row["time"].(string), "Z"), "T", " ", 1)
			}
			for _, d := range set {
				k += "|" + row[d].(string)
			}
			api[k] = row
		}
		key := "toString(" + grain + ")"
		if len(set) > 0 {
			key = "concat(toString(" + grain + "), '|', arrayStringConcat([" + strings.Join(set, ", ") + "], '|'))"
		}
		cols := []string{key}
		for _, s := range specs {
			cols = append(cols, "toNullable(toFloat64("+schema.Q(s.Name)+"))")
		}
		view := schema.Lambda("events")
		if grain == "hour" {
			view = schema.LambdaHourly("events")
		}
		q := fmt.Sprintf("SELECT %s, source, exact FROM %s WHERE grouping = ? AND %s >= '%s' AND %s < '%s'",
			strings.Join(cols, ", "), g.T(view), grain, from, grain, to)
		rows, err := e.conn.Query(context.Background(), q, config.GroupingName(set))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var k, src string
			var ex uint8
			vals := make([]*float64, len(specs))
			dest := []any{&k}
			for i := range vals {
				dest = append(dest, &vals[i])
			}
			dest = append(dest, &src, &ex)
			if err := rows.Scan(dest...); err != nil {
				t.Fatal(err)
			}
			n++
			a, ok := api[k]
			if !ok {
				t.Errorf("grouping %q %s: in the view, not in the API", config.GroupingName(set), k)
				continue
			}
			if a["source"] != src || a["exact"] != (ex == 1) {
				t.Errorf("grouping %q %s: view %s exact %v, api %v exact %v", config.GroupingName(set), k, src, ex == 1, a["source"], a["exact"])
			}
			for i, s := range specs {
				var got any
				if vals[i] != nil {
					got = *vals[i]
				}
				tol := 1e-9
				if s.Type == "quantile" && src == SourceSpeed {
					tol = 0.05 // a merge of sketches may differ in order
				}
				if !sameValue(got, a[s.Name], tol) {
					t.Errorf("grouping %q %s %s (%s): view %v, api %v", config.GroupingName(set), k, s.Name, src, got, a[s.Name])
				}
			}
		}
		rows.Close()
		if n != len(api) || n == 0 {
			var keys []string
			for k := range api {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			t.Errorf("grouping %q: view has %d rows, api %d", config.GroupingName(set), n, len(api))
		}
	}
}

// TestSubDayFromRollups: sub-day buckets of sealed days come from the batch layer's rollups,
// not from raw. Every hour bucket equals the truth for every metric and stored set (exact from
// <ds>_hourly); minute buckets come from the rewritten <ds>_speed partition, exact for count,
// sum, min, max and avg, flagged approximate when a distinct count or quantile is asked; hours
// rolled up from another set than the one asked are approximate for distinct counts; a day
// bucket that starts mid-day combines hours and minutes; exact:true reads raw.
func TestSubDayFromRollups(t *testing.T) {
	e := newEnvWith(t, allTypes, nullEvents())
	hourTruth := map[string][]any{}
	groups := map[string][]event{}
	for _, ev := range e.evs {
		k := ev.t.Truncate(time.Hour).Format(time.RFC3339) + "|" + ev.country
		groups[k] = append(groups[k], ev)
	}
	for k, evs := range groups {
		hourTruth[k] = expect(evs, true)
	}
	metrics := `"events","users","revenue","lo","hi","mean","value_p95"`
	r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":[%s],"dimensions":["country"],"from":"2024-03-06T05:00:00Z","to":"2024-03-08T19:00:00Z","granularity":"hour","limit":10000}`, metrics))
	if len(r.Rows) != 62*4 {
		t.Fatalf("%d hour rows, want 62 hours x 4 countries", len(r.Rows))
	}
	for _, row := range r.Rows {
		k := row["time"].(string) + "|" + row["country"].(string)
		if row["source"] != SourceBatch || row["exact"] != true {
			t.Errorf("%s: source %v exact %v, want exact from batch", k, row["source"], row["exact"])
		}
		for i, m := range allMetrics {
			if !sameValue(row[m], hourTruth[k][i], 1e-9) {
				t.Errorf("%s %s: %v, want %v", k, m, row[m], hourTruth[k][i])
			}
		}
	}
	for _, src := range r.Meta.Sources {
		if src.Table != TableHourly {
			t.Errorf("hour buckets read %+v, want only %s", src, TableHourly)
		}
	}
	// Minutes: exact for the additive metrics, approximate with a distinct count.
	minuteTruth := map[string][]any{}
	groups = map[string][]event{}
	for _, ev := range e.evs {
		k := ev.t.Truncate(time.Minute).Format(time.RFC3339)
		groups[k] = append(groups[k], ev)
	}
	for k, evs := range groups {
		minuteTruth[k] = expect(evs, true)
	}
	r = e.query(t, `{"dataset":"events","metrics":["events","revenue","lo","hi","mean"],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T13:00:00Z","granularity":"minute","limit":10000}`)
	if len(r.Rows) == 0 {
		t.Fatal("no minute rows")
	}
	for _, row := range r.Rows {
		k := row["time"].(string)
		w := minuteTruth[k]
		if row["source"] != SourceBatch || row["exact"] != true || !sameValue(row["events"], w[0], 0) || !sameValue(row["revenue"], w[2], 1e-9) ||
			!sameValue(row["lo"], w[3], 0) || !sameValue(row["hi"], w[4], 0) || !sameValue(row["mean"], w[5], 1e-9) {
			t.Errorf("minute %s: %v, want %v exact from batch", k, row, w)
		}
	}
	r = e.query(t, `{"dataset":"events","metrics":["events","users"],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T10:10:00Z","granularity":"minute"}`)
	for _, row := range r.Rows {
		if row["exact"] != false {
			t.Errorf("minute with a distinct count flagged exact: %v", row)
		}
	}
	// Hours by device filtered to one country roll the full set up: users approximate.
	r = e.query(t, `{"dataset":"events","metrics":["events","users"],"dimensions":["device"],"filters":[{"dimension":"country","op":"in","values":["DE","FR"]}],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T12:00:00Z","granularity":"hour"}`)
	for _, row := range r.Rows {
		if row["exact"] != false {
			t.Errorf("rolled-up distinct count flagged exact: %v", row)
		}
	}
	// A day bucket from 10:30: minutes 10:30-11:00, then hours: events exact.
	r = e.query(t, `{"dataset":"events","metrics":["events","revenue"],"from":"2024-03-07T10:30:00Z","to":"2024-03-08T00:00:00Z","granularity":"day"}`)
	tr := e.truth(mustDay("2024-03-07").Add(10*time.Hour+30*time.Minute), mustDay("2024-03-08"), nil)
	if len(r.Rows) != 1 || num(r.Rows[0]["events"]) != float64(tr.events) || r.Rows[0]["exact"] != true || r.Rows[0]["source"] != SourceBatch {
		t.Errorf("partial day: %v, want %d events exact", r.Rows, tr.events)
	}
	// exact:true reads raw.
	r = e.query(t, `{"dataset":"events","metrics":["users"],"dimensions":["device"],"filters":[{"dimension":"country","op":"in","values":["DE","FR"]}],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T12:00:00Z","granularity":"hour","exact":true}`)
	for _, row := range r.Rows {
		if row["exact"] != true || row["source"] != SourceRaw {
			t.Errorf("exact:true: %v", row)
		}
	}
}
