package batchlayer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// recorder is a connection that remembers every statement sent without arguments, so that a
// test can replay a run's statements on another server (chDB).
type recorder struct {
	driver.Conn
	mu    sync.Mutex
	stmts []string
}

func (r *recorder) add(q string, args []any) {
	if len(args) > 0 {
		return
	}
	r.mu.Lock()
	r.stmts = append(r.stmts, q)
	r.mu.Unlock()
}

func (r *recorder) Exec(ctx context.Context, q string, args ...any) error {
	r.add(q, args)
	return r.Conn.Exec(ctx, q, args...)
}

func (r *recorder) Query(ctx context.Context, q string, args ...any) (driver.Rows, error) {
	r.add(q, args)
	return r.Conn.Query(ctx, q, args...)
}

func (r *recorder) QueryRow(ctx context.Context, q string, args ...any) driver.Row {
	r.add(q, args)
	return r.Conn.QueryRow(ctx, q, args...)
}

func (r *recorder) statements() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.stmts)
}

// Datasets of the golden comparison besides the demo one: every metric type (two distinct-count
// keys, two quantiles of one column, one of a column with a value that holds a third of the
// values, a sum exact to the cent, a ratio, which stores nothing), fewer speed dimensions, an extra grouping set; and one without a count, with a
// dotted field.
const (
	fullYAML = `
datasets:
  - name: full
    topic: full
    id_field: id
    time_field: ts
    dimensions: [{name: event}, {name: country}, {name: device}]
    metrics:
      - {name: n, type: count}
      - {name: users, type: uniq, field: user_id}
      - {name: sessions, type: uniq, field: session}
      - {name: total, type: sum, field: amount}
      - {name: low, type: min, field: amount}
      - {name: high, type: max, field: amount}
      - {name: mean, type: avg, field: amount}
      - {name: p50, type: quantile, field: amount, level: 0.5}
      - {name: p99, type: quantile, field: amount, level: 0.99}
      - {name: lat_p90, type: quantile, field: latency, level: 0.9}
      - {name: cents, type: sum, field: amount, decimals: 2}
      - {name: per_n, type: ratio, numerator: cents, denominator: n}
    speed: {dimensions: [event, country]}
    batch: {grouping_sets: [[event, country]]}
`
	payYAML = `
datasets:
  - name: pay
    topic: pay
    id_field: id
    time_field: ts
    dimensions: [{name: shop, field: shop}, {name: method, field: m.kind}, {name: region, field: region}]
    metrics:
      - {name: total, type: sum, field: amount}
      - {name: avg_amount, type: avg, field: amount}
      - {name: top, type: max, field: amount}
      - {name: low, type: min, field: amount}
    batch: {grouping_sets: [[shop, method]]}
`
)

// newEnvYAML is newEnv for a configuration of its own (nil: the demo), on the single server or
// on the local cluster; conn, when set, wraps the test's connection (to record statements).
func newEnvYAML(t *testing.T, yaml string, cluster bool) *env {
	t.Helper()
	var base *config.Config
	if yaml != "" {
		var err error
		if base, err = config.Parse("test.yaml", []byte(yaml), nil); err != nil {
			t.Fatal(err)
		}
	}
	var cfg *config.Config
	var conn driver.Conn
	if cluster {
		cfg = chtest.ClusterConfig(t, base)
		conn = chtest.NewCluster(t, cfg)
	} else {
		cfg = chtest.Config(t, base)
		conn = chtest.New(t, cfg)
	}
	if _, err := schema.Migrate(context.Background(), conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cfg: cfg, conn: conn, g: schema.NewGenerator(cfg)}
}

// rawSQL generates n raw rows of a day for any dataset, the same on every server: skewed
// dimensions with ” among them, distinct-count keys missing one time in ten, numbers NULL one
// time in seventeen and in quarters (sums are exact in any order), one number column holding 5
// a third of the time (hot), every 5th row a second copy of an id two rows back with other
// content, ingested earlier (so the copy wins) or in the same second or later at a later offset,
// and every 50th row late (_late = 1).
func rawSQL(g *schema.Generator, d *config.Dataset, day time.Time, n, seed int) string {
	// The day in the dataset's zone: from its local midnight, 23 or 25 hours long when the
	// clocks change.
	start := ledger.DayStart(day, d.Location())
	secs := int64(ledger.DayEnd(day, d.Location()).Sub(start) / time.Second)
	cols := []string{"id", "time"}
	exprs := []string{
		fmt.Sprintf("concat('s%d-', toString(if(number %% 5 = 2, toUInt64(number - 2), number)))", seed),
		fmt.Sprintf("toDateTime('%s', 'UTC') + intDiv(number * %d, %d)", start.Format(time.DateTime), secs-1, n),
	}
	for i, name := range d.DimensionNames() {
		cols = append(cols, name)
		exprs = append(exprs, fmt.Sprintf("['a', 'a', 'b', 'c', 'd', ''][1 + intDiv(cityHash64(number, %d, %d) %% 36, 6) * (cityHash64(number, %d, %d) %% 6) %% 6]", seed, i, seed, i+50))
	}
	for i, c := range d.ValueColumns() {
		cols = append(cols, c.Name)
		h := fmt.Sprintf("cityHash64(number, %d, %d)", seed, 100+i)
		switch {
		case c.Type == metric.KeyType:
			exprs = append(exprs, fmt.Sprintf("if(%s %% 10 = 0, '', concat('k', toString(%s %% %d)))", h, h, 200+100*i))
		case i == len(d.ValueColumns())-1 && len(d.ValueColumns()) > 2:
			exprs = append(exprs, fmt.Sprintf("if(%s %% 17 = 0, NULL, if(%s %% 3 = 0, 5., toFloat64(%s %% 4000) / 4))", h, h, h))
		default:
			exprs = append(exprs, fmt.Sprintf("if(%s %% 17 = 0, NULL, toFloat64(%s %% 4000) / 4)", h, h))
		}
	}
	cols = append(cols, "_topic", "_partition", "_offset", "_late", "_ingested_at")
	exprs = append(exprs, "'t'", "toInt32(number % 4)", fmt.Sprintf("toInt64(intDiv(number, 4) + %d)", seed*1_000_000), "toUInt8(number % 50 = 3)",
		fmt.Sprintf("toDateTime('%s', 'UTC') + intDiv(if(number %% 5 = 2 AND number %% 2 = 0, toUInt64(number - 4), number), 3)", start.Format(time.DateTime)))
	return fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM system.numbers LIMIT %d", g.T(schema.Raw(d.Name)), quoteAll(cols), strings.Join(exprs, ", "), n)
}

// rowStrings are statements listing a table's rows of a day as sorted strings: values as text,
// states finalized (their bytes depend on insertion order), without run_id. kind is "daily",
// "hourly" or "speed".
func rowStrings(g *schema.Generator, d *config.Dataset, table, kind string, day time.Time) string {
	var cols []string
	where := fmt.Sprintf("day = %s", dateLit(day))
	switch kind {
	case "daily", "hourly":
		first := "toString(day)"
		if kind == "hourly" {
			first, where = "toString(hour)", fmt.Sprintf("toDate(hour%s) = %s", schema.Zone(d), dateLit(day))
		}
		cols = append(cols, first, "grouping")
		cols = append(cols, d.DimensionNames()...)
		for _, s := range d.Specs() {
			cols = append(cols, fmt.Sprintf("ifNull(toString(%s), 'NULL')", schema.Q(s.Name)))
		}
		for _, s := range d.Specs() {
			if s.HasDailyState() {
				cols = append(cols, fmt.Sprintf("toString(finalizeAggregation(%s))", schema.Q(s.StateColumn())))
			}
		}
	case "speed":
		// Merged per minute and dimensions: the rows of a key may sit in several parts, or
		// on several shards.
		where = fmt.Sprintf("toDate(minute%s) = %s", schema.Zone(d), dateLit(day))
		cols = append(cols, "toString(minute)")
		cols = append(cols, d.SpeedDimensions()...)
		for _, s := range d.Specs() {
			cols = append(cols, fmt.Sprintf("toString(%s)", s.MergeExpr(schema.Q(s.Name))))
		}
		for _, c := range d.PresenceColumns() {
			cols = append(cols, fmt.Sprintf("toString(sumMerge(%s))", schema.Q(metric.PresenceColumn(c))))
		}
		return fmt.Sprintf("SELECT arrayStringConcat([%s], '|') AS r FROM %s WHERE %s GROUP BY minute, %s ORDER BY r", strings.Join(cols, ", "),
			table, where, quoteAll(d.SpeedDimensions()))
	}
	return fmt.Sprintf("SELECT arrayStringConcat([%s], '|') AS r FROM %s WHERE %s ORDER BY r", strings.Join(cols, ", "), table, where)
}

func (e *env) strings(q string) []string {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), q)
	if err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// sameRows reports the first differences between two sorted row lists.
func sameRows(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) == 0 {
		t.Errorf("%s: no rows", what)
	}
	if slices.Equal(got, want) {
		return
	}
	t.Errorf("%s: %d rows, reference %d", what, len(got), len(want))
	shown := 0
	for i := 0; i < max(len(got), len(want)) && shown < 5; i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("%s row %d:\n got %s\nwant %s", what, i, g, w)
			shown++
		}
	}
}

// references fills tables ref_daily, ref_hourly and ref_speed with the single-query reference of
// the day (recompute, recomputeHourly, recomputeSpeed) and returns the statements.
func references(g *schema.Generator, q *queries, day time.Time) []string {
	ds := q.d.Name
	return []string{
		fmt.Sprintf("CREATE TABLE %s AS %s ENGINE = %s", g.T("ref_daily"), g.T(schema.Daily(ds)), schema.StagingEngine(q.d)),
		fmt.Sprintf("CREATE TABLE %s AS %s ENGINE = %s", g.T("ref_hourly"), g.T(schema.Hourly(ds)), schema.HourlyStagingEngine(q.d)),
		fmt.Sprintf("CREATE TABLE %s AS %s ENGINE = %s", g.T("ref_speed"), g.LocalT(schema.Speed(ds)), schema.SpeedStagingEngine(q.d)),
		q.recompute("ref_daily", day, "ref"),
		q.recomputeHourly("ref_hourly", day, "ref"),
		q.recomputeSpeed("ref_speed", day),
	}
}

// TestGoldenAgainstSingleQuery compares, for several datasets, the rows a run swaps into
// <ds>_daily, <ds>_hourly and the day's <ds>_speed partition with the single queries that
// compute them in memory (the recompute runs made before bounded memory): byte for byte for
// values (numbers are quarters, so sums do not depend on order), finalized for states. It runs
// with the default batch.max_memory, where the exact passes fit in the aggregate pass, and with
// 1 MiB, which splits every part of the run into many passes (id buckets, time chunks, key
// buckets, value ranges, a range of one hot value). The second run's statements are replayed on
// a current ClickHouse (chDB), where the same comparison must hold.
func TestGoldenAgainstSingleQuery(t *testing.T) {
	f := func(t *testing.T, yaml string, d1 time.Time, memory config.ByteSize, chdb bool) {
		e := newEnvYAML(t, yaml, false)
		rec := &recorder{Conn: e.conn}
		e.cfg.Batch.MaxMemory = memory
		d := &e.cfg.Datasets[0]
		raw := []string{rawSQL(e.g, d, d1, 9000, 1), rawSQL(e.g, d, d1, 700, 2)}
		for _, s := range raw {
			if err := e.conn.Exec(context.Background(), s); err != nil {
				t.Fatal(err)
			}
		}
		e.setNow(d1.AddDate(0, 0, 2))
		l, err := New(e.cfg, Options{Conn: rec, Now: e.clock})
		if err != nil {
			t.Fatal(err)
		}
		steps := map[string]int{}
		if err := l.RunDays(context.Background(), d.Name, d1, d1, func(p Progress) { steps[p.Phase] = max(steps[p.Phase], p.Steps) }); err != nil {
			t.Fatal(err)
		}
		if memory < 2<<20 {
			for _, ph := range []string{PhaseDedup, PhaseAggregate, PhaseExact} {
				if want := map[bool]int{true: 2, false: 3}[ph == PhaseAggregate]; phaseOf(d, ph) && steps[ph] < want {
					t.Errorf("phase %s ran %d passes with batch.max_memory %s, want several", ph, steps[ph], memory)
				}
			}
		} else if steps[PhaseExact] != 0 {
			t.Errorf("passes with the default batch.max_memory: %v, want the exact values in the aggregate pass", steps)
		}
		q := newQueries(e.cfg, d)
		refs := references(e.g, q, d1)
		for _, s := range refs {
			if err := e.conn.Exec(context.Background(), s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		checks := []struct{ kind, table, ref string }{
			{"daily", schema.Daily(d.Name), "ref_daily"}, {"hourly", schema.Hourly(d.Name), "ref_hourly"}, {"speed", schema.Speed(d.Name), "ref_speed"},
		}
		var outs []string
		for _, c := range checks {
			got, want := rowStrings(e.g, d, e.g.T(c.table), c.kind, d1), rowStrings(e.g, d, e.g.T(c.ref), c.kind, d1)
			sameRows(t, "18.16 "+c.table, e.strings(got), e.strings(want))
			outs = append(outs, got, want)
		}
		if !chdb {
			return
		}
		stmts := append(schema.Statements(e.cfg), raw...)
		stmts = append(stmts, rec.statements()...)
		stmts = append(stmts, refs...)
		res := chtest.RequireChDB(t, append(stmts, outs...))
		if t.Failed() {
			return
		}
		res = res[len(stmts):]
		for i, c := range checks {
			lines := func(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
			sameRows(t, "chDB "+c.table, lines(res[2*i].Out), lines(res[2*i+1].Out))
		}
	}
	// A dataset in New York on the day its clocks fall back (25 hours, in time chunks too).
	zoned := allTypesYAML + "    time_zone: America/New_York\n"
	fallBack := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name, yaml string
		day        time.Time
	}{{"demo", "", d1}, {"every_metric", fullYAML, d1}, {"no_count", payYAML, d1}, {"new_york", zoned, fallBack}} {
		t.Run(c.name+"/default_memory", func(t *testing.T) { f(t, c.yaml, c.day, 2<<30, false) })
		t.Run(c.name+"/1MiB", func(t *testing.T) { f(t, c.yaml, c.day, 1<<20, true) })
	}
}

// phaseOf reports whether a dataset's runs have passes of a phase.
func phaseOf(d *config.Dataset, phase string) bool {
	for _, s := range d.Specs() {
		if phase == PhaseExact && (s.Type == metric.Uniq || s.Type == metric.Quantile) {
			return true
		}
	}
	return phase == PhaseDedup || phase == PhaseAggregate
}

func TestRangeBounds(t *testing.T) {
	f := func(sample, want []float64, points map[int]float64) {
		t.Helper()
		got, pts := rangeBounds(sample)
		if !slices.Equal(got, want) || len(pts) != len(points) {
			t.Errorf("rangeBounds(%v) = %v %v, want %v %v", sample, got, pts, want, points)
			return
		}
		for k, v := range points {
			if pts[k] != v {
				t.Errorf("rangeBounds(%v): points %v, want %v", sample, pts, points)
			}
		}
	}
	f([]float64{1, 2, 3, 4, 5, 6, 7}, []float64{2, 4, 6}, nil)
	// 5 holds a large share: a range of its own, [5, next after 5).
	next := 5 + 8.881784197001252e-16
	f([]float64{1, 2, 5, 5, 5, 6, 7}, []float64{2, 5, next, 6}, map[int]float64{2: 5})
	f([]float64{3, 3, 3}, []float64{3, 3 + 4.440892098500626e-16}, map[int]float64{1: 3})
}

func TestMemoryRetry(t *testing.T) {
	j := &job{l: &Layer{log: discardLog()}, d: &dataset{d: &config.Dataset{Name: "x"}}, day: d1}
	n, runs := 1, 0
	err := j.retry(context.Background(), "test", func() error {
		runs++
		if n < 8 {
			return fmt.Errorf("cannot run: %w", &proto.Exception{Code: 241, Message: "Memory limit (for query) exceeded"})
		}
		return nil
	}, func() { n *= 2 })
	if err != nil || n != 8 || runs != 4 {
		t.Errorf("retry: err %v, split %d after %d runs; want nil, 8, 4", err, n, runs)
	}
	n, runs = 1, 0
	err = j.retry(context.Background(), "test", func() error { runs++; return &proto.Exception{Code: 241} }, func() { n *= 2 })
	if err == nil || runs != memoryRetries+1 {
		t.Errorf("retry gives up after %d runs (err %v), want %d", runs, err, memoryRetries+1)
	}
	runs = 0
	if err := j.retry(context.Background(), "test", func() error { runs++; return errors.New("syntax error") }, func() {}); err == nil || runs != 1 {
		t.Errorf("other errors are not retried: %d runs, %v", runs, err)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// allTypesYAML is the demo dataset with every metric type, for the ground truth of hours and
// minutes.
const allTypesYAML = `
datasets:
  - name: events
    topic: events
    id_field: event_id
    time_field: ts
    dimensions: [{name: event, field: event}, {name: country, field: country}, {name: device, field: device}]
    metrics:
      - {name: events, type: count}
      - {name: users, type: uniq, field: user_id}
      - {name: revenue, type: sum, field: value}
      - {name: low, type: min, field: value}
      - {name: high, type: max, field: value}
      - {name: mean, type: avg, field: value}
      - {name: value_p95, type: quantile, field: value, level: 0.95}
`

// bucket is the truth of one group of a time bucket.
type bucket struct {
	n             uint64
	users         map[string]bool
	sum, min, max float64
	present       uint64
	hasVal        bool
}

func (b *bucket) add(e event) {
	b.n++
	if e.user != "" {
		b.users[e.user] = true
	}
	if e.value != nil {
		v := *e.value
		if !b.hasVal || v < b.min {
			b.min = v
		}
		if !b.hasVal || v > b.max {
			b.max = v
		}
		b.sum += v
		b.present++
		b.hasVal = true
	}
}

func (b *bucket) String(withUsers bool) string {
	f := func(v float64) string {
		if !b.hasVal {
			return "NULL"
		}
		return fmt.Sprint(v)
	}
	s := fmt.Sprintf("n=%d sum=%s min=%s max=%s avg=%s", b.n, f(b.sum), f(b.min), f(b.max), f(b.sum/float64(max(b.present, 1))))
	if withUsers {
		s += fmt.Sprintf(" users=%d", len(b.users))
	}
	return s
}

// truth computes, from the events of a day (the first-ingested copy of each id), every hour
// bucket of every grouping set and every minute bucket of every dimension value.
func truth(evs []event, day time.Time, loc *time.Location) (hours, minutes map[string]*bucket) {
	first := map[string]event{}
	for _, e := range evs {
		if !ledger.DayIn(e.t, loc).Equal(day) {
			continue
		}
		f, ok := first[e.id]
		if !ok || e.ing.Before(f.ing) || (e.ing.Equal(f.ing) && (e.part < f.part || (e.part == f.part && e.off < f.off))) {
			first[e.id] = e
		}
	}
	hours, minutes = map[string]*bucket{}, map[string]*bucket{}
	get := func(m map[string]*bucket, k string) *bucket {
		if m[k] == nil {
			m[k] = &bucket{users: map[string]bool{}}
		}
		return m[k]
	}
	sets := [][]string{{}, {"event"}, {"country"}, {"device"}, {"event", "country", "device"}}
	for _, e := range first {
		dims := map[string]string{"event": e.ev, "country": e.country, "device": e.device}
		for _, s := range sets {
			k := []string{e.t.Truncate(time.Hour).Format(time.DateTime), strings.Join(s, ",")}
			for _, n := range []string{"event", "country", "device"} {
				if slices.Contains(s, n) {
					k = append(k, dims[n])
				} else {
					k = append(k, "")
				}
			}
			get(hours, strings.Join(k, "|")).add(e)
		}
		get(minutes, strings.Join([]string{e.t.Truncate(time.Minute).Format(time.DateTime), e.ev, e.country, e.device}, "|")).add(e)
	}
	return hours, minutes
}

// requireHoursAndMinutes checks every hour row of <ds>_hourly and every minute of <ds>_speed
// of a day against the truth: count, sum, min, max, avg and (hours) distinct users, exactly;
// the hours all of run runID, and batch_runs' rows_hourly and rows_speed of the run equal to
// what the tables hold.
func (e *env) requireHoursAndMinutes(evs []event, day time.Time, runID string) {
	e.t.Helper()
	loc := e.cfg.Datasets[0].Location()
	zone := schema.Zone(&e.cfg.Datasets[0])
	hours, minutes := truth(evs, day, loc)
	got := map[string]string{}
	runs := map[string]bool{}
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(`SELECT toString(hour), grouping, event, country, device, events, users,
    revenue, low, high, mean, run_id FROM %s WHERE toDate(hour%s) = %s`, e.g.T(schema.Hourly("events")), zone, dateLit(day)))
	if err != nil {
		e.t.Fatal(err)
	}
	for rows.Next() {
		var h, g, ev, c, dv, run string
		var n, users uint64
		var sum, lo, hi, mean *float64
		if err := rows.Scan(&h, &g, &ev, &c, &dv, &n, &users, &sum, &lo, &hi, &mean, &run); err != nil {
			e.t.Fatal(err)
		}
		f := func(p *float64) string {
			if p == nil {
				return "NULL"
			}
			return fmt.Sprint(*p)
		}
		got[strings.Join([]string{h, g, ev, c, dv}, "|")] = fmt.Sprintf("n=%d sum=%s min=%s max=%s avg=%s users=%d", n, f(sum), f(lo), f(hi), f(mean), users)
		runs[run] = true
	}
	rows.Close()
	if len(runs) != 1 || !runs[runID] {
		e.t.Errorf("%s: hours of runs %v, want only %s", day.Format(time.DateOnly), runs, runID)
	}
	compareBuckets(e.t, "hour", got, hours, true)

	got = map[string]string{}
	rows, err = e.conn.Query(context.Background(), fmt.Sprintf(`SELECT toString(minute), event, country, device, countMerge(events),
    if(sumMerge(_n_value) = 0, NULL, sumMerge(revenue)), if(sumMerge(_n_value) = 0, NULL, minMerge(low)), if(sumMerge(_n_value) = 0, NULL, maxMerge(high)),
    if(isNaN(avgMerge(mean)), NULL, avgMerge(mean))
FROM %s WHERE toDate(minute%s) = %s GROUP BY minute, event, country, device`, e.g.T(schema.Speed("events")), zone, dateLit(day)))
	if err != nil {
		e.t.Fatal(err)
	}
	for rows.Next() {
		var m, ev, c, dv string
		var n uint64
		var sum, lo, hi, mean *float64
		if err := rows.Scan(&m, &ev, &c, &dv, &n, &sum, &lo, &hi, &mean); err != nil {
			e.t.Fatal(err)
		}
		f := func(p *float64) string {
			if p == nil {
				return "NULL"
			}
			return fmt.Sprint(*p)
		}
		got[strings.Join([]string{m, ev, c, dv}, "|")] = fmt.Sprintf("n=%d sum=%s min=%s max=%s avg=%s", n, f(sum), f(lo), f(hi), f(mean))
	}
	rows.Close()
	compareBuckets(e.t, "minute", got, minutes, false)

	var hourly, speed, inHourly, inSpeed uint64
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf("SELECT argMax(rows_hourly, at_us), argMax(rows_speed, at_us) FROM %s WHERE run_id = '%s'",
		e.g.T(schema.BatchRuns), runID)).Scan(&hourly, &speed); err != nil {
		e.t.Fatal(err)
	}
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s WHERE toDate(hour%s) = %s", e.g.T(schema.Hourly("events")), zone, dateLit(day))).Scan(&inHourly); err != nil {
		e.t.Fatal(err)
	}
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM %s WHERE toDate(minute%s) = %s", e.g.T(schema.Speed("events")), zone, dateLit(day))).Scan(&inSpeed); err != nil {
		e.t.Fatal(err)
	}
	if hourly == 0 || hourly != inHourly || speed == 0 || speed != inSpeed {
		e.t.Errorf("batch_runs of %s: rows_hourly %d (table %d), rows_speed %d (table %d)", runID, hourly, inHourly, speed, inSpeed)
	}
}

func compareBuckets(t *testing.T, what string, got map[string]string, want map[string]*bucket, users bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d %s buckets, want %d", len(got), what, len(want))
	}
	bad := 0
	for k, w := range want {
		if g := got[k]; g != w.String(users) {
			if bad++; bad <= 5 {
				t.Errorf("%s [%s]: got %q, want %q", what, k, g, w.String(users))
			}
		}
	}
}

// lastRun is the newest successful run of a day.
func (e *env) lastRun(day time.Time) string {
	e.t.Helper()
	k, ok := e.days().Get(day)
	if !ok || k.Run == "" {
		e.t.Fatalf("no successful run of %s", day.Format(time.DateOnly))
	}
	return k.Run
}

// TestHoursAndMinutesGroundTruth checks every hour bucket and every speed minute of sealed days
// against the truth computed in Go (duplicates removed, first-ingested copy kept), with the
// default and a tiny batch.max_memory; then late events (raw only, as the speed layer writes
// them for sealed days) make a day dirty, and its rerun replaces its hours and its minutes,
// which now count the late events.
func TestHoursAndMinutesGroundTruth(t *testing.T) {
	for _, memory := range []config.ByteSize{2 << 30, 1 << 20} {
		t.Run(memory.String(), func(t *testing.T) {
			e := newEnvYAML(t, allTypesYAML, false)
			e.cfg.Batch.MaxMemory = memory
			rng := rand.New(rand.NewPCG(21, 22))
			evs := append(gen(rng, d1, 3000, 0.05, "h"), gen(rng, d2, 2000, 0.05, "h")...)
			for i := range evs {
				if i%13 == 0 {
					evs[i].user = "" // a missing key adds nothing to uniq
				}
			}
			e.insertRaw(evs)
			e.flush(0, 10, 11, d3)
			l := e.layer(Options{})
			e.setNow(d3.Add(time.Hour))
			ctx := context.Background()
			if err := l.Tick(ctx, "events"); err != nil {
				t.Fatal(err)
			}
			e.requireHoursAndMinutes(evs, d1, e.lastRun(d1))
			e.requireHoursAndMinutes(evs, d2, e.lastRun(d2))
			first := e.lastRun(d1)
			d2Hours := e.strings(rowStrings(e.g, &e.cfg.Datasets[0], e.g.T(schema.Hourly("events")), "hourly", d2))

			late := gen(rng, d1, 200, 0.05, "late")
			for i := range late {
				late[i].late, late[i].ing = true, d3.Add(2*time.Hour)
			}
			e.insertRaw(late)
			evs = append(evs, late...)
			e.setNow(d3.Add(3 * time.Hour))
			if err := l.Tick(ctx, "events"); err != nil {
				t.Fatal(err)
			}
			if e.lastRun(d1) == first {
				t.Fatal("day 1 was not rerun after late events")
			}
			e.requireHoursAndMinutes(evs, d1, e.lastRun(d1))
			e.requireExact(evs, d1)
			if got := e.strings(rowStrings(e.g, &e.cfg.Datasets[0], e.g.T(schema.Hourly("events")), "hourly", d2)); !slices.Equal(got, d2Hours) {
				t.Error("the hours of day 2 changed with the rerun of day 1")
			}
		})
	}
}

// TestFamiliesRetry runs two families of passes as one pool: one ClickHouse refuses for memory
// until it is split in four; it is split further and run again with the family whose pass was
// cancelled, while a family that finished keeps its generation.
func TestFamiliesRetry(t *testing.T) {
	j := &job{l: &Layer{log: discardLog()}, d: &dataset{d: &config.Dataset{Name: "x"}}, day: d1, gens: map[string]int{},
		workers: []worker{{name: "test"}}, conc: 1, report: func(string, int, int) {}}
	var mu sync.Mutex
	runs := map[string][]int{} // family -> generations its passes ran with
	split := 1
	mk := func(name string, fail func() bool, n func() int) *family {
		return &family{name: name, double: func() { split *= 2 }, passes: func(ctx context.Context, gen int) ([]task, error) {
			var ts []task
			for range n() {
				ts = append(ts, task{w: 0, run: func(ctx context.Context, w int) error {
					mu.Lock()
					runs[name] = append(runs[name], gen)
					mu.Unlock()
					if fail() {
						return &proto.Exception{Code: 241, Message: "Memory limit (for query) exceeded"}
					}
					return nil
				}})
			}
			return ts, nil
		}}
	}
	ok := mk("ok", func() bool { return false }, func() int { return 1 })
	big := mk("big", func() bool { return split < 4 }, func() int { return split })
	if err := j.runFamilies(context.Background(), []*family{ok, big}); err != nil {
		t.Fatal(err)
	}
	if split != 4 || !slices.Equal(runs["ok"], []int{1}) || len(runs["big"]) == 0 || runs["big"][len(runs["big"])-1] != j.gens["big"] {
		t.Errorf("split %d, runs %v, gens %v", split, runs, j.gens)
	}
	if err := j.runFamilies(context.Background(), []*family{mk("never", func() bool { return true }, func() int { return 1 })}); !memoryLimited(err) {
		t.Errorf("a family that never fits: %v", err)
	}
}
