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
	viewAgreesAll(t, e)
}

// viewAgreesAll compares <ds>_lambda with the API for every metric and every grouping set
// (those the speed view keeps and those it does not), per day, batch and speed days alike.
func viewAgreesAll(t *testing.T, e *testEnv) {
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
		r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":[%s],"dimensions":%s,"from":"2024-03-05","to":"2024-03-11","granularity":"day","limit":100000}`,
			strings.Join(names, ","), dimsJSON))
		api := map[string]map[string]any{}
		for _, row := range r.Rows {
			k := row["time"].(string)[:10]
			for _, d := range set {
				k += "|" + row[d].(string)
			}
			api[k] = row
		}
		key := "toString(day)"
		if len(set) > 0 {
			key = "concat(toString(day), '|', arrayStringConcat([" + strings.Join(set, ", ") + "], '|'))"
		}
		cols := []string{key}
		for _, s := range specs {
			cols = append(cols, "toNullable(toFloat64("+schema.Q(s.Name)+"))")
		}
		q := fmt.Sprintf("SELECT %s, source, exact FROM %s WHERE grouping = ? AND day >= '2024-03-05' AND day < '2024-03-11'",
			strings.Join(cols, ", "), g.T(schema.Lambda("events")))
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
