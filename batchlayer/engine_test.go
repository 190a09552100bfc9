package batchlayer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
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
// values), fewer speed dimensions, an extra grouping set; and one without a count, with a
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
// dimensions with '' among them, distinct-count keys missing one time in ten, numbers NULL one
// time in seventeen and in quarters (sums are exact in any order), one number column holding 5
// a third of the time (hot), every 25th row a second copy of an id seven rows back with other
// content, ingested earlier (so the copy wins) or in the same second at a later offset, and
// every 50th row late (_late = 1).
func rawSQL(g *schema.Generator, d *config.Dataset, day time.Time, n, seed int) string {
	cols := []string{"id", "time"}
	exprs := []string{
		fmt.Sprintf("concat('s%d-', toString(if(number %% 25 = 7, toUInt64(number - 7), number)))", seed),
		fmt.Sprintf("toDateTime('%s 00:00:00', 'UTC') + intDiv(number * 86399, %d)", day.Format(time.DateOnly), n),
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
		fmt.Sprintf("toDateTime('%s 00:00:00', 'UTC') + intDiv(if(number %% 25 = 7 AND number %% 2 = 0, toUInt64(number - 9), number), 3)", day.Format(time.DateOnly)))
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
			first, where = "toString(hour)", fmt.Sprintf("toDate(hour) = %s", dateLit(day))
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
		where = fmt.Sprintf("toDate(minute) = %s", dateLit(day))
		cols = append(cols, "toString(minute)")
		cols = append(cols, d.SpeedDimensions()...)
		for _, s := range d.Specs() {
			cols = append(cols, fmt.Sprintf("toString(finalizeAggregation(%s))", schema.Q(s.Name)))
		}
		for _, c := range d.PresenceColumns() {
			cols = append(cols, fmt.Sprintf("toString(finalizeAggregation(%s))", schema.Q(metric.PresenceColumn(c))))
		}
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
	f := func(t *testing.T, yaml string, memory config.ByteSize, chdb bool) {
		e := newEnvYAML(t, yaml, false)
		rec := &recorder{Conn: e.conn}
		e.cfg.Batch.MaxMemory = memory
		d := &e.cfg.Datasets[0]
		raw := []string{rawSQL(e.g, d, d1, 6000, 1), rawSQL(e.g, d, d1, 700, 2)}
		for _, s := range raw {
			if err := e.conn.Exec(context.Background(), s); err != nil {
				t.Fatal(err)
			}
		}
		e.setNow(d3)
		l, err := New(e.cfg, Options{Conn: rec, Now: e.clock})
		if err != nil {
			t.Fatal(err)
		}
		steps := map[string]int{}
		if err := l.RunDays(context.Background(), d.Name, d1, d1, func(p Progress) { steps[p.Phase] = max(steps[p.Phase], p.Steps) }); err != nil {
			t.Fatal(err)
		}
		if memory < 2<<20 {
			for _, ph := range []string{PhaseDedup, PhaseAggregate, PhaseDistinct, PhaseQuantile} {
				if phaseOf(d, ph) && steps[ph] < 3 {
					t.Errorf("phase %s ran %d passes with batch.max_memory %s, want several", ph, steps[ph], memory)
				}
			}
		} else if steps[PhaseDistinct] != 0 || steps[PhaseQuantile] != 0 {
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
	for _, c := range []struct {
		name, yaml string
	}{{"demo", ""}, {"every_metric", fullYAML}, {"no_count", payYAML}} {
		t.Run(c.name+"/default_memory", func(t *testing.T) { f(t, c.yaml, 2<<30, false) })
		t.Run(c.name+"/1MiB", func(t *testing.T) { f(t, c.yaml, 1<<20, true) })
	}
}

// phaseOf reports whether a dataset's runs have passes of a phase.
func phaseOf(d *config.Dataset, phase string) bool {
	for _, s := range d.Specs() {
		if (phase == PhaseDistinct && s.Type == metric.Uniq) || (phase == PhaseQuantile && s.Type == metric.Quantile) {
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
