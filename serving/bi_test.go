package serving

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// biEvents are generated events without duplicate deliveries (so that the speed side, which
// counts what raw received, agrees with the deduplicated truth for counts and sums), plus
// country "ZZ" whose events carry no value (revenue NULL) and "ZERO" whose values are 0.
func biEvents() []event {
	var out []event
	seen := map[string]bool{}
	for _, e := range genEvents(mustDay("2024-03-05"), testNow.Add(-time.Hour), 20, 7) {
		if !seen[e.id] {
			seen[e.id] = true
			out = append(out, e)
		}
	}
	zero := 0.0
	for i, d := range []string{"2024-03-06", "2024-03-09"} {
		for j := 0; j < 3; j++ {
			t := mustDay(d).Add(time.Duration(10+j) * time.Hour)
			out = append(out,
				event{id: fmt.Sprintf("zz-%d-%d", i, j), event: "view", country: "ZZ", device: "web", user: "uz", t: t},
				event{id: fmt.Sprintf("zero-%d-%d", i, j), event: "view", country: "ZERO", device: "web", user: "u0", value: &zero, t: t})
		}
	}
	return out
}

// biConfig adds ratios over a distinct count and over a sum that may be NULL or 0.
func biConfig(c *config.Config) {
	d := &c.Datasets[0]
	d.Metrics = append(d.Metrics,
		config.Metric{Name: "revenue_per_user", Type: "ratio", Numerator: "revenue", Denominator: "users"},
		config.Metric{Name: "events_per_revenue", Type: "ratio", Numerator: "events", Denominator: "revenue"})
}

// group is the truth of one (bucket, dimension values) group.
type group struct {
	t       time.Time
	key     string
	events  int
	users   map[string]bool
	revenue *float64
}

// groups computes the truth per day (or hour) and the value of dim ("" for none), from the
// deduplicated events in [from, to) that keep accepts.
func (e *testEnv) groups(from, to time.Time, hourly bool, dim func(event) string, keep func(event) bool) []*group {
	seen := map[string]bool{}
	m := map[string]*group{}
	for _, ev := range e.evs {
		k := ledger.DayOf(ev.t).String() + ev.id
		if ev.t.Before(from) || !ev.t.Before(to) || seen[k] || (keep != nil && !keep(ev)) {
			continue
		}
		seen[k] = true
		b := ledger.DayOf(ev.t)
		if hourly {
			b = ev.t.Truncate(time.Hour)
		}
		key := ""
		if dim != nil {
			key = dim(ev)
		}
		g := m[b.String()+"|"+key]
		if g == nil {
			g = &group{t: b, key: key, users: map[string]bool{}}
			m[b.String()+"|"+key] = g
		}
		g.events++
		g.users[ev.user] = true
		if ev.value != nil {
			v := *ev.value
			if g.revenue != nil {
				v += *g.revenue
			}
			g.revenue = &v
		}
	}
	out := make([]*group, 0, len(m))
	for _, g := range m {
		out = append(out, g)
	}
	// The API's order for order_by -events: events descending, then time, then the dimension.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.events != b.events {
			return a.events > b.events
		}
		if !a.t.Equal(b.t) {
			return a.t.Before(b.t)
		}
		return a.key < b.key
	})
	return out
}

func rowKey(row map[string]any, dim string) string {
	k := row["time"].(string)
	if dim != "" {
		k += "|" + row[dim].(string)
	}
	return k
}

func groupKey(g *group, dim string) string {
	k := g.t.Format(time.RFC3339)
	if dim != "" {
		k += "|" + g.key
	}
	return k
}

func sameFloat(got any, want *float64) bool {
	if want == nil {
		return got == nil
	}
	f, ok := got.(float64)
	return ok && math.Abs(f-*want) <= 1e-9*math.Max(1, math.Abs(*want))
}

// TestHavingFiltersOffset checks having, prefix and contains, and offset paging against totals
// computed from the events, over a range that spans the batch boundary (two statements merged
// in Go) and one inside the batch side.
func TestHavingFiltersOffset(t *testing.T) {
	e := newEnvWith(t, nil, biEvents())
	country := func(ev event) string { return ev.country }
	from, to := mustDay("2024-03-05"), mustDay("2024-03-11")
	all := e.groups(from, to, false, country, nil)
	counts := make([]int, len(all))
	for i, g := range all {
		counts[i] = g.events
	}
	slices.Sort(counts)
	threshold := counts[len(counts)/2] // about half the groups pass

	// Having after the merge: exactly the (day, country) groups with events >= threshold.
	r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":["events","revenue"],"dimensions":["country"],"having":[{"metric":"events","op":"gte","value":%d}],"from":"2024-03-05","to":"2024-03-11"}`, threshold))
	got := map[string]map[string]any{}
	for _, row := range r.Rows {
		got[rowKey(row, "country")] = row
	}
	n := 0
	for _, g := range all {
		row, ok := got[groupKey(g, "country")]
		if g.events < threshold {
			if ok {
				t.Errorf("having events >= %d kept %v", threshold, row)
			}
			continue
		}
		n++
		if !ok || num(row["events"]) != float64(g.events) || !sameFloat(row["revenue"], g.revenue) {
			t.Errorf("%s: got %v, want events %d revenue %v", groupKey(g, "country"), row, g.events, g.revenue)
		}
	}
	if n != len(r.Rows) || n == 0 || n == len(all) {
		t.Errorf("having kept %d rows, want %d of %d", len(r.Rows), n, len(all))
	}
	// Having on a ratio whose parts are not requested, and NULL comparing with nothing: ZZ
	// has no revenue, so neither lt nor gte keeps it.
	for _, op := range []string{"lt", "gte"} {
		r = e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":["events"],"dimensions":["country"],"having":[{"metric":"revenue_per_event","op":%q,"value":25}],"from":"2024-03-05","to":"2024-03-11"}`, op))
		for _, row := range r.Rows {
			g := findGroup(all, row, "country")
			if g == nil || g.revenue == nil || (op == "lt") != (*g.revenue/float64(g.events) < 25) {
				t.Errorf("having revenue_per_event %s 25 kept %v (truth %+v)", op, row, g)
			}
		}
	}

	// prefix and contains, values bound.
	for _, c := range []struct{ op, v, want string }{{"prefix", "it", "it's"}, {"contains", "'", "it's"}, {"contains", "E", "DE ZERO"}, {"prefix", "Z", "ZERO ZZ"}, {"prefix", "t", ""}} {
		r = e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":["events"],"dimensions":["country"],"filters":[{"dimension":"country","op":%q,"values":[%q]}],"from":"2024-03-05","to":"2024-03-11","granularity":"all"}`, c.op, c.v))
		var names []string
		for _, row := range r.Rows {
			names = append(names, row["country"].(string))
			tr := e.truth(from, to, func(ev event) bool { return ev.country == row["country"] })
			if num(row["events"]) != float64(tr.events) {
				t.Errorf("%s %q: %v, want %d events", c.op, c.v, row, tr.events)
			}
		}
		slices.Sort(names)
		if strings.Join(names, " ") != c.want {
			t.Errorf("%s %q: countries %v, want %s", c.op, c.v, names, c.want)
		}
	}
	// A filter on a dimension not requested: the total of the countries containing E.
	r = e.query(t, `{"dataset":"events","metrics":["events"],"filters":[{"dimension":"country","op":"contains","values":["E"]}],"from":"2024-03-05","to":"2024-03-11","granularity":"all"}`)
	if tr := e.truth(from, to, func(ev event) bool { return strings.Contains(ev.country, "E") }); len(r.Rows) != 1 || num(r.Rows[0]["events"]) != float64(tr.events) {
		t.Errorf("contains E on a dimension not requested: %v, want %d", r.Rows, tr.events)
	}

	// Offset paging: the pages, concatenated, are the whole answer in the API's stable order
	// (events descending, ties by time then country), which the truth reproduces.
	base := `{"dataset":"events","metrics":["events"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11","order_by":"-events"`
	whole := e.query(t, base+"}")
	if len(whole.Rows) != len(all) || whole.Meta.Truncated {
		t.Fatalf("whole answer: %d rows (truncated %v), want %d", len(whole.Rows), whole.Meta.Truncated, len(all))
	}
	for i, g := range all {
		if rowKey(whole.Rows[i], "country") != groupKey(g, "country") || num(whole.Rows[i]["events"]) != float64(g.events) {
			t.Fatalf("row %d: %v, want %s with %d events", i, whole.Rows[i], groupKey(g, "country"), g.events)
		}
	}
	var paged []map[string]any
	for off := 0; ; off += 7 {
		p := e.query(t, fmt.Sprintf(`%s,"limit":7,"offset":%d}`, base, off))
		paged = append(paged, p.Rows...)
		if more := off+7 < len(all); p.Meta.Truncated != more {
			t.Errorf("offset %d: truncated %v, want %v", off, p.Meta.Truncated, more)
		}
		if !p.Meta.Truncated {
			break
		}
		if off > len(all) {
			t.Fatal("paging does not end")
		}
	}
	if len(paged) != len(whole.Rows) {
		t.Fatalf("pages hold %d rows, the whole answer %d", len(paged), len(whole.Rows))
	}
	for i := range paged {
		if rowKey(paged[i], "country") != rowKey(whole.Rows[i], "country") {
			t.Errorf("paged row %d is %s, the whole answer's %s", i, rowKey(paged[i], "country"), rowKey(whole.Rows[i], "country"))
		}
	}
	// Again, every page's batch side from the cache: a miss ran both sides as one statement
	// (flat) and cached the batch side's rows, cut as its own statement would cut them.
	for off := 0; off < len(all); off += 7 {
		p := e.query(t, fmt.Sprintf(`%s,"limit":7,"offset":%d}`, base, off))
		if !p.Meta.Cached {
			t.Errorf("offset %d: the batch side was not cached", off)
		}
		for i, row := range p.Rows {
			if rowKey(row, "country") != rowKey(whole.Rows[off+i], "country") || num(row["events"]) != num(whole.Rows[off+i]["events"]) {
				t.Errorf("cached page at offset %d, row %d: %v, the whole answer's %v", off, i, row, whole.Rows[off+i])
			}
		}
	}
	// A page past the end is empty, not an error.
	if p := e.query(t, fmt.Sprintf(`%s,"limit":7,"offset":%d}`, base, len(all)+3)); len(p.Rows) != 0 || p.Meta.Truncated {
		t.Errorf("past the end: %v", p.Rows)
	}
}

func findGroup(all []*group, row map[string]any, dim string) *group {
	for _, g := range all {
		if groupKey(g, dim) == rowKey(row, dim) {
			return g
		}
	}
	return nil
}

// TestRatioMetrics: a ratio is its parts' merged values divided, null where the denominator is
// 0 or null, and exact exactly where both parts are.
func TestRatioMetrics(t *testing.T) {
	e := newEnvWith(t, biConfig, biEvents())
	country := func(ev event) string { return ev.country }
	all := e.groups(mustDay("2024-03-05"), mustDay("2024-03-11"), false, country, nil)
	r := e.query(t, `{"dataset":"events","metrics":["revenue_per_event","events_per_revenue","revenue_per_user"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11"}`)
	if len(r.Rows) != len(all) {
		t.Fatalf("%d rows, want %d", len(r.Rows), len(all))
	}
	nulls := 0
	for _, row := range r.Rows {
		g := findGroup(all, row, "country")
		if g == nil {
			t.Fatalf("no truth for %v", row)
		}
		if _, ok := row["events"]; ok {
			t.Errorf("a part that was not requested is in the row: %v", row)
		}
		var perEvent, perRevenue, perUser *float64
		if g.revenue != nil {
			v := *g.revenue / float64(g.events)
			perEvent = &v
			if *g.revenue != 0 {
				w := float64(g.events) / *g.revenue
				perRevenue = &w
			}
			u := *g.revenue / float64(len(g.users))
			perUser = &u
		}
		if perRevenue == nil {
			nulls++
		}
		if !sameFloat(row["revenue_per_event"], perEvent) || !sameFloat(row["events_per_revenue"], perRevenue) || !sameFloat(row["revenue_per_user"], perUser) {
			t.Errorf("%s: %v, want %v %v %v", groupKey(g, "country"), row, ptr(perEvent), ptr(perRevenue), ptr(perUser))
		}
		// Batch days read the country set: every part exact. Speed days are approximate.
		if wantExact := g.t.Before(mustDay("2024-03-09")); row["exact"] != wantExact {
			t.Errorf("%s: exact %v, want %v", groupKey(g, "country"), row["exact"], wantExact)
		}
	}
	if nulls < 4 {
		t.Errorf("want null ratios for ZZ (no revenue) and ZERO (revenue 0) on two days each, got %d", nulls)
	}
	// Users per country filtered by device: no stored set answers users exactly, so a ratio over
	// users is approximate while the ratio of count and sum stays exact. Asked in one query, the
	// row is approximate: it holds the approximate one.
	q := `{"dataset":"events","metrics":[%s],"dimensions":["country"],"filters":[{"dimension":"device","op":"eq","values":["ios"]}],"from":"2024-03-06","to":"2024-03-08"}`
	ios := func(ev event) bool { return ev.device == "ios" }
	truthIOS := e.groups(mustDay("2024-03-06"), mustDay("2024-03-08"), false, country, ios)
	for _, c := range []struct {
		metrics string
		exact   bool
	}{{`"revenue_per_event"`, true}, {`"revenue_per_user"`, false}, {`"revenue_per_event","revenue_per_user"`, false}} {
		r = e.query(t, fmt.Sprintf(q, c.metrics))
		if len(r.Rows) == 0 {
			t.Fatalf("%s: no rows", c.metrics)
		}
		for _, row := range r.Rows {
			g := findGroup(truthIOS, row, "country")
			if row["exact"] != c.exact || g == nil {
				t.Errorf("%s: %v, want exact %v", c.metrics, row, c.exact)
				continue
			}
			if v, ok := row["revenue_per_event"]; ok && g.revenue != nil && !sameFloat(v, ptrTo(*g.revenue/float64(g.events))) {
				t.Errorf("%s: revenue_per_event %v, want %v", c.metrics, v, *g.revenue/float64(g.events))
			}
		}
	}
	// exact:true makes it exact from raw.
	r = e.query(t, fmt.Sprintf(strings.Replace(q, `"from"`, `"exact":true,"from"`, 1), `"revenue_per_user"`))
	for _, row := range r.Rows {
		g := findGroup(truthIOS, row, "country")
		if g == nil || row["exact"] != true || g.revenue != nil && !sameFloat(row["revenue_per_user"], ptrTo(*g.revenue/float64(len(g.users)))) {
			t.Errorf("exact revenue_per_user: %v, truth %+v", row, g)
		}
	}
	// Ordered by a ratio: NULLs last, descending values before.
	r = e.query(t, `{"dataset":"events","metrics":["events_per_revenue"],"dimensions":["country"],"from":"2024-03-06","to":"2024-03-07","order_by":"-events_per_revenue"}`)
	for i := 1; i < len(r.Rows); i++ {
		a, b := r.Rows[i-1]["events_per_revenue"], r.Rows[i]["events_per_revenue"]
		if a == nil && b != nil || a != nil && b != nil && num(a) < num(b) {
			t.Errorf("order by -events_per_revenue: %v before %v", a, b)
		}
	}
	// The datasets endpoint lists the ratios with their parts.
	var ds struct {
		Datasets []DatasetInfo `json:"datasets"`
	}
	e.do(t, "GET", "/api/v1/datasets", "", "", &ds)
	var found []string
	for _, m := range ds.Datasets[0].Metrics {
		if m.Type == "ratio" {
			found = append(found, fmt.Sprintf("%s=%s/%s:%v", m.Name, m.Numerator, m.Denominator, m.ExactRollup))
		}
	}
	if got := strings.Join(found, " "); got != "revenue_per_event=revenue/events:true revenue_per_user=revenue/users:false events_per_revenue=events/revenue:true" {
		t.Errorf("ratios in /api/v1/datasets: %s", got)
	}
}

func ptr(f *float64) any {
	if f == nil {
		return nil
	}
	return *f
}

func ptrTo(f float64) *float64 { return &f }

// TestMachineAnswers: meta.columns, the CSV headers, and an error code for every kind of
// refusal.
func TestMachineAnswers(t *testing.T) {
	e := newEnvWith(t, func(c *config.Config) { c.Serving.MaxRows = 50 }, biEvents())
	r := e.query(t, `{"dataset":"events","metrics":["events","revenue_per_event","users"],"dimensions":["country"],"from":"2024-03-08","to":"2024-03-10"}`)
	var meta struct {
		Meta struct {
			Columns []Column `json:"columns"`
		} `json:"meta"`
	}
	e.do(t, "POST", "/api/v1/query", "", `{"dataset":"events","metrics":["events","revenue_per_event","users"],"dimensions":["country"],"from":"2024-03-08","to":"2024-03-10"}`, &meta)
	var cols []string
	for _, c := range meta.Meta.Columns {
		cols = append(cols, fmt.Sprintf("%s:%s:%v", c.Name, c.Type, c.Nullable))
	}
	if got := strings.Join(cols, " "); got != "time:timestamp:false country:string:false events:integer:false revenue_per_event:number:true users:integer:false source:string:false exact:boolean:false" {
		t.Errorf("meta.columns: %s", got)
	}
	for _, row := range r.Rows {
		if len(row) != len(cols) {
			t.Errorf("row %v has other columns than %s", row, cols)
		}
	}

	// CSV: the header line is the columns; truncation and completeness in headers.
	csvReq := func(body string) (*httptest.ResponseRecorder, [][]string) {
		w := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/api/v1/query?format=csv", strings.NewReader(body))
		e.http.ServeHTTP(w, req)
		recs, err := csv.NewReader(bytes.NewReader(w.Body.Bytes())).ReadAll()
		if w.Code != 200 || err != nil {
			t.Fatalf("csv: %d %v %s", w.Code, err, w.Body.String())
		}
		return w, recs
	}
	w, recs := csvReq(`{"dataset":"events","metrics":["events"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11","limit":3}`)
	if h := w.Header(); h.Get("X-Lambda-Truncated") != "true" || h.Get("X-Lambda-Complete") != "true" || h.Get("X-Lambda-Exact") != "true" || h.Get("X-Lambda-Batch-Watermark") != "2024-03-08" {
		t.Errorf("csv headers of a cut answer: %v", h)
	}
	if len(recs) != 4 || strings.Join(recs[0], ",") != "time,country,events,source,exact" {
		t.Errorf("csv: %v", recs)
	}
	w, _ = csvReq(`{"dataset":"events","metrics":["events"],"from":"2024-03-09","to":"2024-03-11"}`)
	if h := w.Header(); h.Get("X-Lambda-Truncated") != "false" || h.Get("X-Lambda-Exact") != "false" {
		t.Errorf("csv headers of a whole speed answer: %v", h)
	}
	// Every refusal has a code.
	ok := `"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"`
	f := func(method, path, body, code string, status int) {
		t.Helper()
		var r struct{ Error, Field, Code string }
		got := e.do(t, method, path, "", body, &r)
		if got != status || r.Code != code || r.Error == "" {
			t.Errorf("%s %s %s: %d %+v, want %d code %s", method, path, body, got, r, status, code)
		}
	}
	f("POST", "/api/v1/query", `{"dataset":`, CodeMalformed, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"sql":"x"}`, CodeMalformed, 400)
	f("GET", "/api/v1/query?dataset=events&metrics=events&from=2024-03-05&to=2024-03-07&offset=x", "", CodeMalformed, 400)
	f("GET", "/api/v1/query?dataset=events&metrics=events&from=2024-03-05&to=2024-03-07&having=[{", "", CodeMalformed, 400)
	f("POST", "/api/v1/query", `{"metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`, CodeMissing, 400)
	f("POST", "/api/v1/query", `{"dataset":"nope","metrics":["events"],"from":"2024-03-05","to":"2024-03-07"}`, CodeUnknownDataset, 404)
	f("POST", "/api/v1/query", `{"dataset":"events","metrics":["nope"],"from":"2024-03-05","to":"2024-03-07"}`, CodeUnknownMetric, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"having":[{"metric":"nope","op":"gt","value":1}]}`, CodeUnknownMetric, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"dimensions":["city"]}`, CodeUnknownDimension, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"filters":[{"dimension":"country","op":"like","values":["x"]}]}`, CodeUnknownOperator, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"having":[{"metric":"events","op":">","value":1}]}`, CodeUnknownOperator, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"having":[{"metric":"events","op":"gt"}]}`, CodeMissing, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"filters":[{"dimension":"country","op":"prefix","values":["a","b"]}]}`, CodeInvalid, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"offset":-1}`, CodeInvalid, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"offset":1000001}`, CodeTooManyRows, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"limit":51}`, CodeTooManyRows, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"order_by":"users"}`, CodeInvalid, 400)
	f("POST", "/api/v1/query", `{`+ok+`,"granularity":"second"}`, CodeUnknownGranularity, 400)
	f("POST", "/api/v1/query", `{"dataset":"events","metrics":["events"],"from":"1970-01-01","to":"2100-01-01","granularity":"minute"}`, CodeTooManyBuckets, 400)
	f("POST", "/api/v1/query", `{"dataset":"events","metrics":["events"],"from":"2024-03-07","to":"2024-03-05"}`, CodeBadRange, 400)
	f("POST", "/api/v1/query", `{"dataset":"events","metrics":["events"],"from":"soon","to":"2024-03-05"}`, CodeBadRange, 400)
	f("POST", "/api/v1/query", `{"dataset":"events","metrics":["users"],"from":"2023-01-01","to":"2023-03-01","granularity":"month","exact":true}`, CodeRawRetention, 400)
	f("POST", "/api/v1/query?format=xml", `{`+ok+`}`, CodeUnknownFormat, 400)
	f("GET", "/api/v1/nope", "", CodeNotFound, 404)
	f("DELETE", "/api/v1/query", "", CodeMethodNotAllowed, 405)
	f("GET", "/api/v1/values?dataset=events", "", CodeMissing, 400)
	f("GET", "/api/v1/values?dataset=events&dimension=city", "", CodeUnknownDimension, 400)
	f("GET", "/api/v1/values?dataset=nope&dimension=country", "", CodeUnknownDataset, 404)
	f("GET", "/api/v1/values?dataset=events&dimension=country&limit=5000", "", CodeInvalid, 400)
	f("GET", "/api/v1/values?dataset=events&dimension=country&from=x", "", CodeBadRange, 400)

	// The boundary moves back before days the speed view no longer holds: incomplete.
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.Exec(context.Background(), fmt.Sprintf("INSERT INTO %s (dataset, watermark, run_id, at, at_us) SELECT 'events', toDate('2024-03-01'), 'r', now(), toUInt64(?)", g.T(schema.BatchWatermarks)), time.Now().UnixMicro()+1e9); err != nil {
		t.Fatal(err)
	}
	w, _ = csvReq(`{"dataset":"events","metrics":["events"],"from":"2024-03-02","to":"2024-03-11","granularity":"all"}`)
	if h := w.Header(); h.Get("X-Lambda-Complete") != "false" {
		t.Errorf("csv headers of an incomplete answer: %v", h)
	}
}

// lockedBuffer is a log sink the server writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestInternalErrorHidesClickHouse: a query ClickHouse refuses is a 500 that says what failed
// and the request id, never ClickHouse's text; the log line with that id has the cause.
func TestInternalErrorHidesClickHouse(t *testing.T) {
	e := newEnv(t, nil)
	var logs lockedBuffer
	srv, err := New(e.cfg, Options{Conn: e.conn, Now: func() time.Time { return testNow }, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	g := schema.NewGenerator(e.cfg)
	if err := e.conn.Exec(context.Background(), "DROP TABLE "+g.T(schema.Hourly("events"))); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/api/v1/query", strings.NewReader(`{"dataset":"events","metrics":["events"],"from":"2024-03-06T10:00:00Z","to":"2024-03-06T12:00:00Z","granularity":"hour"}`))
	req.Header.Set("X-Request-Id", "req-internal-1")
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, req)
	var r struct{ Error, Field, Code string }
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusInternalServerError || r.Code != CodeInternal || !strings.Contains(r.Error, "cannot run the query") || !strings.Contains(r.Error, "req-internal-1") {
		t.Errorf("got %d %+v, want 500 internal naming what failed and the request id", w.Code, r)
	}
	for _, leak := range []string{"events_hourly", "Exception", "code:", e.cfg.ClickHouse.Database} {
		if strings.Contains(w.Body.String(), leak) {
			t.Errorf("the answer leaks %q: %s", leak, w.Body.String())
		}
	}
	if l := logs.String(); !strings.Contains(l, "request_id=req-internal-1") || !strings.Contains(l, "events_hourly") {
		t.Errorf("the log lacks the cause under the request id:\n%s", l)
	}
}

// TestValues: a dimension's values by frequency over a range, from the stored sets and speed.
func TestValues(t *testing.T) {
	e := newEnvWith(t, nil, biEvents())
	get := func(q string) ValuesResponse {
		t.Helper()
		var v ValuesResponse
		if code := e.do(t, "GET", "/api/v1/values?"+q, "", "", &v); code != 200 {
			t.Fatalf("values %s: %d", q, code)
		}
		return v
	}
	from, to := mustDay("2024-03-05"), mustDay("2024-03-11")
	truth := map[string]int{}
	for _, g := range e.groups(from, to, false, func(ev event) string { return ev.country }, nil) {
		truth[g.key] += g.events
	}
	v := get("dataset=events&dimension=country&from=2024-03-05&to=2024-03-11")
	if len(v.Values) != len(truth) || v.Meta.Metric != "events" || v.Meta.Truncated {
		t.Fatalf("values: %+v, want %d countries", v, len(truth))
	}
	for i, x := range v.Values {
		if x.Count == nil || int(*x.Count) != truth[x.Value] {
			t.Errorf("%s: count %v, want %d", x.Value, x.Count, truth[x.Value])
		}
		if i > 0 && (*v.Values[i-1].Count < *x.Count || *v.Values[i-1].Count == *x.Count && v.Values[i-1].Value > x.Value) {
			t.Errorf("not by frequency: %s (%d) before %s (%d)", v.Values[i-1].Value, *v.Values[i-1].Count, x.Value, *x.Count)
		}
		if x.Exact {
			t.Errorf("%s: counted over speed days too, yet exact", x.Value)
		}
	}
	// The batch side reads the country set of the daily table; speed after the boundary.
	var tables []string
	for _, s := range v.Meta.Sources {
		tables = append(tables, s.Table)
		if s.Table == TableDaily && (s.Grouping == nil || *s.Grouping != "country") {
			t.Errorf("values read daily grouping %v, want country", s.Grouping)
		}
	}
	if strings.Join(tables, ",") != "daily,speed" {
		t.Errorf("values read %v, want daily then speed", tables)
	}
	// Exact over sealed days; prefix and limit.
	v = get("dataset=events&dimension=country&from=2024-03-05&to=2024-03-09&prefix=Z&limit=1")
	tr := map[string]int{}
	for _, g := range e.groups(from, mustDay("2024-03-09"), false, func(ev event) string { return ev.country }, nil) {
		tr[g.key] += g.events
	}
	want := "ZERO"
	if tr["ZZ"] > tr["ZERO"] {
		want = "ZZ"
	}
	if len(v.Values) != 1 || v.Values[0].Value != want || int(*v.Values[0].Count) != tr[want] || !v.Values[0].Exact || !v.Meta.Truncated {
		t.Errorf("prefix Z limit 1: %+v, want %s %d exact, truncated", v, want, tr[want])
	}
	// Defaults: the last 30 days up to now.
	if v = get("dataset=events&dimension=device"); len(v.Values) != 3 {
		t.Errorf("devices over the last 30 days: %+v", v.Values)
	}
}

// TestSetViewsForgetful: an analyst who sums a grouping set's view without any filter gets the
// true total (the trap of <ds>_lambda, which holds every set, is shown too), and each set's
// view gives what the API gives, ratio included, per day and per hour.
func TestSetViewsForgetful(t *testing.T) {
	e := newEnvWith(t, nil, biEvents())
	g := schema.NewGenerator(e.cfg)
	ctx := context.Background()
	ds, _ := e.cfg.Dataset("events")
	tr := e.truth(mustDay("2024-03-05"), mustDay("2024-03-11"), nil)
	sum := func(sql string) (uint64, float64) {
		t.Helper()
		var n uint64
		var rev *float64
		if err := e.conn.QueryRow(ctx, sql).Scan(&n, &rev); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n, *rev
	}
	var forgetful []string
	for _, set := range ds.GroupingSets() {
		for _, hourly := range []bool{false, true} {
			// What Superset or Metabase send for "sum of events": no grouping filter.
			q := fmt.Sprintf("SELECT sum(events), sum(revenue) FROM %s", g.T(schema.LambdaSet("events", set, hourly)))
			forgetful = append(forgetful, q)
			n, rev := sum(q)
			if int(n) != tr.events || math.Abs(rev-tr.revenue) > 1e-6*tr.revenue {
				t.Errorf("%s: %d events, revenue %f; want %d, %f", q, n, rev, tr.events, tr.revenue)
			}
		}
	}
	// The trap, kept for those who filter: every event once per grouping set.
	if n, _ := sum(fmt.Sprintf("SELECT sum(events), sum(revenue) FROM %s", g.T(schema.Lambda("events")))); int(n) != tr.events*len(ds.GroupingSets()) {
		t.Errorf("unfiltered <ds>_lambda: %d, want %d x %d sets", n, tr.events, len(ds.GroupingSets()))
	}
	chtest.RequireChDB(t, append(schema.Statements(e.cfg), forgetful...))

	// Each set's view agrees with the API row by row, the ratio computed from the row.
	for _, c := range []struct {
		set    []string
		hourly bool
	}{{[]string{}, false}, {[]string{"country"}, false}, {[]string{"event", "country", "device"}, false}, {[]string{"device"}, true}} {
		view := schema.LambdaSet("events", c.set, c.hourly)
		gran, tcol, from, to := "day", "day", "2024-03-05", "2024-03-11"
		where := "day >= toDate('2024-03-05') AND day < toDate('2024-03-11')"
		if c.hourly {
			gran, tcol, from, to = "hour", "hour", "2024-03-08T12:00:00Z", "2024-03-10T11:00:00Z"
			where = "hour >= toDateTime('2024-03-08 12:00:00', 'UTC') AND hour < toDateTime('2024-03-10 11:00:00', 'UTC')"
		}
		dims, _ := json.Marshal(c.set)
		r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":["events","revenue","revenue_per_event"],"dimensions":%s,"from":%q,"to":%q,"granularity":%q}`, dims, from, to, gran))
		api := map[string]string{}
		for _, row := range r.Rows {
			k := row["time"].(string)
			for _, d := range c.set {
				k += "|" + row[d].(string)
			}
			api[k] = fmt.Sprintf("%v %.6f %.9f %v %v", num(row["events"]), num(row["revenue"]), num(row["revenue_per_event"]), row["source"], row["exact"])
		}
		key := "formatDateTime(toDateTime(" + tcol + ", 'UTC'), '%Y-%m-%dT%H:%M:%SZ', 'UTC')"
		for _, d := range c.set {
			key = "concat(" + key + ", '|', " + schema.Q(d) + ")"
		}
		q := fmt.Sprintf("SELECT %s, events, revenue, revenue_per_event, source, exact FROM %s WHERE %s", key, g.T(view), where)
		rows, err := e.conn.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		n := 0
		for rows.Next() {
			var k, src string
			var ev uint64
			var rev, ratio *float64
			var ex uint8
			if err := rows.Scan(&k, &ev, &rev, &ratio, &src, &ex); err != nil {
				t.Fatal(err)
			}
			n++
			got := fmt.Sprintf("%v %.6f %.9f %v %v", float64(ev), deref(rev), deref(ratio), src, ex == 1)
			if api[k] != got {
				t.Errorf("%s %s: view %s, api %s", view, k, got, api[k])
			}
		}
		rows.Close()
		if n != len(api) || n == 0 {
			t.Errorf("%s: %d rows, the API %d", view, n, len(api))
		}
	}
}

func deref(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}
