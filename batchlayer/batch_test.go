package batchlayer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// env is one test's ClickHouse database with the demo schema and an injectable clock.
type env struct {
	t    *testing.T
	cfg  *config.Config
	conn driver.Conn
	g    *schema.Generator
	mu   sync.Mutex
	now  time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	if _, err := schema.Migrate(context.Background(), conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cfg: cfg, conn: conn, g: schema.NewGenerator(cfg)}
}

func (e *env) setNow(t time.Time) { e.mu.Lock(); e.now = t; e.mu.Unlock() }
func (e *env) clock() time.Time   { e.mu.Lock(); defer e.mu.Unlock(); return e.now }

func (e *env) layer(opts Options) *Layer {
	e.t.Helper()
	opts.Conn = e.conn
	if opts.Now == nil {
		opts.Now = e.clock
	}
	l, err := New(e.cfg, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

type event struct {
	id                  string
	t                   time.Time
	ev, country, device string
	user                string
	value               *float64
	part                int32
	off                 int64
	ing                 time.Time
	late                bool // a correction for a sealed day: raw only (_late = 1)
}

var (
	d1 = time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	d2 = d1.AddDate(0, 0, 1)
	d3 = d1.AddDate(0, 0, 2)
	d4 = d1.AddDate(0, 0, 3)
	d5 = d1.AddDate(0, 0, 4)
)

// gen makes n events for a day with skewed dimensions, about 3% NULL values and dupRate
// duplicates, ingested up to 10 minutes after their time. A duplicate is ingested later and
// differs in content, so keeping the wrong copy changes the totals.
func gen(rng *rand.Rand, day time.Time, n int, dupRate float64, idPrefix string) []event {
	pick := func(xs []string) string {
		i := int(math.Floor(float64(len(xs)) * rng.Float64() * rng.Float64())) // skewed to the first
		return xs[i]
	}
	events := []string{"view", "click", "buy", "signup"}
	countries := []string{"us", "de", "fr", "jp", "br", ""}
	devices := []string{"web", "ios", "android"}
	var out []event
	var off int64
	for i := range n {
		t := day.Add(time.Duration(rng.Int64N(int64(24 * time.Hour))))
		var v *float64
		if rng.Float64() > 0.03 {
			x := float64(rng.IntN(4000)) / 4 // quarters: sums are exact in any order
			v = &x
		}
		off++
		e := event{id: fmt.Sprintf("%s-%d-%d", idPrefix, day.Day(), i), t: t, ev: pick(events), country: pick(countries),
			device: pick(devices), user: fmt.Sprintf("u%d", rng.IntN(300)), value: v, part: int32(rng.IntN(3)), off: off,
			ing: t.Add(time.Second + time.Duration(rng.Int64N(int64(10*time.Minute))))}
		out = append(out, e)
		if rng.Float64() < dupRate {
			dup := e
			dup.ev, dup.country = "dup", "zz"
			x := 1e6
			dup.value = &x
			off++
			dup.off = off
			if rng.IntN(2) == 0 {
				dup.ing = e.ing.Add(time.Minute)
			} // else same ingestion time, later offset in the same partition
			out = append(out, dup)
		}
	}
	return out
}

func (e *env) insertRaw(evs []event) {
	e.t.Helper()
	ctx := context.Background()
	cols := "id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at"
	byDay := map[time.Time][]event{}
	for _, ev := range evs {
		byDay[ledger.DayOf(ev.t)] = append(byDay[ledger.DayOf(ev.t)], ev)
	}
	for _, evs := range byDay {
		b, err := e.conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (%s)", e.g.T(schema.Raw("events")), cols))
		if err != nil {
			e.t.Fatal(err)
		}
		for _, ev := range evs {
			var late uint8
			if ev.late {
				late = 1
			}
			if err := b.Append(ev.id, ev.t, ev.ev, ev.country, ev.device, ev.user, ev.value, "events", ev.part, ev.off, late, ev.ing); err != nil {
				e.t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			e.t.Fatal(err)
		}
	}
}

// flush records speed progress on a partition, written now by ClickHouse's clock: lag 0 in a
// fresh ledger row makes the partition count as caught up (now, by the test's clock).
func (e *env) flush(part int32, lastOffset, highWatermark int64, newest time.Time) {
	e.t.Helper()
	b, err := e.conn.PrepareBatch(context.Background(), fmt.Sprintf(
		"INSERT INTO %s (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer)",
		e.g.T(schema.SpeedFlushes)))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := b.Append("events", "events", part, int64(0), lastOffset, highWatermark, uint64(1), uint64(0), uint64(0), uint64(0), newest, "test"); err != nil {
		e.t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		e.t.Fatal(err)
	}
}

type row struct {
	events, users uint64
	revenue, p95  *float64
}

func (r row) String() string {
	f := func(p *float64) string {
		if p == nil {
			return "NULL"
		}
		return fmt.Sprint(*p)
	}
	return fmt.Sprintf("{events %d users %d revenue %s p95 %s}", r.events, r.users, f(r.revenue), f(r.p95))
}

// expected computes every grouping set of a day in Go, independently of ClickHouse.
func expected(evs []event, day time.Time) map[string]row { return expectedIn(evs, day, time.UTC) }

// expectedIn is expected for the local day of a dataset in the zone loc.
func expectedIn(evs []event, day time.Time, loc *time.Location) map[string]row {
	first := map[string]event{}
	for _, e := range evs {
		if !ledger.DayIn(e.t, loc).Equal(day) {
			continue
		}
		f, ok := first[e.id]
		less := e.ing.Before(f.ing) || (e.ing.Equal(f.ing) && (e.part < f.part || (e.part == f.part && e.off < f.off)))
		if !ok || less {
			first[e.id] = e
		}
	}
	type acc struct {
		n     uint64
		users map[string]bool
		vals  []float64
	}
	accs := map[string]*acc{}
	sets := [][]string{{}, {"event"}, {"country"}, {"device"}, {"event", "country", "device"}}
	for _, e := range first {
		dims := map[string]string{"event": e.ev, "country": e.country, "device": e.device}
		for _, s := range sets {
			k := []string{strings.Join(s, ",")}
			for _, n := range []string{"event", "country", "device"} {
				if slices.Contains(s, n) {
					k = append(k, dims[n])
				} else {
					k = append(k, "")
				}
			}
			key := strings.Join(k, "|")
			a := accs[key]
			if a == nil {
				a = &acc{users: map[string]bool{}}
				accs[key] = a
			}
			a.n++
			if e.user != "" { // a missing key adds nothing
				a.users[e.user] = true
			}
			if e.value != nil {
				a.vals = append(a.vals, *e.value)
			}
		}
	}
	out := map[string]row{}
	for k, a := range accs {
		r := row{events: a.n, users: uint64(len(a.users))}
		if len(a.vals) > 0 {
			sum := 0.0
			for _, v := range a.vals {
				sum += v
			}
			sort.Float64s(a.vals)
			p := a.vals[int(0.95*float64(len(a.vals)))] // quantileExact: the element at floor(level*n)
			r.revenue, r.p95 = &sum, &p
		}
		out[k] = r
	}
	return out
}

func (e *env) daily(day time.Time) (map[string]row, []string) {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT grouping, event, country, device, events, users, revenue, value_p95, run_id FROM %s WHERE day = toDate('%s')",
		e.g.T(schema.Daily("events")), day.Format(time.DateOnly)))
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]row{}
	var runIDs []string
	for rows.Next() {
		var g, ev, c, dv, id string
		var r row
		if err := rows.Scan(&g, &ev, &c, &dv, &r.events, &r.users, &r.revenue, &r.p95, &id); err != nil {
			e.t.Fatal(err)
		}
		out[strings.Join([]string{g, ev, c, dv}, "|")] = r
		if !slices.Contains(runIDs, id) {
			runIDs = append(runIDs, id)
		}
	}
	return out, runIDs
}

func eqf(a, b *float64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func (e *env) requireExact(evs []event, day time.Time) {
	e.t.Helper()
	want := expectedIn(evs, day, e.cfg.Datasets[0].Location())
	got, _ := e.daily(day)
	if len(got) != len(want) {
		e.t.Errorf("%s: %d rows in daily, want %d", day.Format(time.DateOnly), len(got), len(want))
	}
	bad := 0
	for k, w := range want {
		g, ok := got[k]
		if !ok || g.events != w.events || g.users != w.users || !eqf(g.revenue, w.revenue) || !eqf(g.p95, w.p95) {
			if bad++; bad <= 5 {
				e.t.Errorf("%s [%s]: got %v (present %v), want %v", day.Format(time.DateOnly), k, g, ok, w)
			}
		}
	}
}

// checksum hashes the day's rows with states finalized (state bytes depend on insertion
// order) and without run_id.
func (e *env) checksum(day time.Time) string {
	e.t.Helper()
	var n, h uint64
	q := fmt.Sprintf(`SELECT count(), groupBitXor(cityHash64(day, grouping, event, country, device, events, users,
    ifNull(revenue, -1), ifNull(value_p95, -1), finalizeAggregation(users_state), finalizeAggregation(value_p95_state)))
FROM %s WHERE day = toDate('%s')`, e.g.T(schema.Daily("events")), day.Format(time.DateOnly))
	if err := e.conn.QueryRow(context.Background(), q).Scan(&n, &h); err != nil {
		e.t.Fatal(err)
	}
	return fmt.Sprintf("%d/%x", n, h)
}

func (e *env) watermark() string {
	e.t.Helper()
	wm, ok, err := ledger.Boundary(context.Background(), e.conn, e.cfg.ClickHouse.Database, "events")
	if err != nil {
		e.t.Fatal(err)
	}
	return fmtDay(wm, ok)
}

// runs returns, per day, the states of its runs in order.
func (e *env) runs() map[string][]string {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT day, argMax(status, at_us) AS s, min(at_us) AS t FROM %s WHERE dataset = 'events' GROUP BY day, run_id ORDER BY t",
		e.g.T(schema.BatchRuns)))
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var d time.Time
		var s string
		var at uint64
		if err := rows.Scan(&d, &s, &at); err != nil {
			e.t.Fatal(err)
		}
		out[d.Format(time.DateOnly)] = append(out[d.Format(time.DateOnly)], s)
	}
	return out
}

func TestExactness(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(1, 2))
	evs := append(gen(rng, d1, 4000, 0.05, "a"), gen(rng, d2, 3000, 0.05, "a")...)
	// The same id on two days is two events: dedup is within the day.
	evs = append(evs, event{id: "a-1-0", t: d2.Add(time.Hour), ev: "view", country: "us", device: "web", user: "u1", part: 0, off: 99999, ing: d2.Add(2 * time.Hour)})
	e.insertRaw(evs)
	e.setNow(d3.Add(time.Hour))
	l := e.layer(Options{})
	var progress []Progress
	phases := map[string]bool{}
	if err := l.RunDays(context.Background(), "events", d1, d2, func(p Progress) {
		if p.Phase != "" {
			phases[p.Phase] = true
			if p.Done != 0 && p.Day.Equal(d1) || p.Step > p.Steps {
				t.Errorf("progress during day 1: %+v", p)
			}
			return
		}
		progress = append(progress, p)
	}); err != nil {
		t.Fatal(err)
	}
	for _, ph := range []string{PhaseDedup, PhaseAggregate, PhaseAssemble, PhaseSwap} {
		if !phases[ph] {
			t.Errorf("no progress reported for phase %s (got %v)", ph, phases)
		}
	}
	e.requireExact(evs, d1)
	e.requireExact(evs, d2)
	if len(progress) != 2 || progress[1].Done != 2 || progress[1].Total != 2 || progress[0].RowsDedup != 4000 || progress[0].RowsRaw <= 4000 {
		t.Errorf("progress: %+v", progress)
	}
	_, ids := e.daily(d1)
	if len(ids) != 1 || !strings.Contains(ids[0], "20240301") {
		t.Errorf("run ids in daily: %v", ids)
	}
	var raw, dedup, out uint64
	var st string
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf(
		"SELECT argMax(status, at_us), argMax(rows_raw, at_us), argMax(rows_dedup, at_us), argMax(rows_out, at_us) FROM %s WHERE run_id = '%s'",
		e.g.T(schema.BatchRuns), ids[0])).Scan(&st, &raw, &dedup, &out); err != nil {
		t.Fatal(err)
	}
	want := expected(evs, d1)
	var rawD1 uint64
	for _, ev := range evs {
		if ledger.DayOf(ev.t).Equal(d1) {
			rawD1++
		}
	}
	if st != StatusSucceeded || dedup != 4000 || out != uint64(len(want)) || raw != rawD1 {
		t.Errorf("batch_runs: status %s raw %d dedup %d out %d (want dedup 4000, out %d)", st, raw, dedup, out, len(want))
	}
	if got := e.watermark(); got != "2024-03-02" {
		t.Errorf("watermark %s, want 2024-03-02", got)
	}
	// Drift: the speed view counted the duplicates the batch removed.
	var sv, ev *float64
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf(
		"SELECT speed_value, exact_value FROM %s WHERE day = toDate('2024-03-01') AND metric = 'events'", e.g.T(schema.Drift("events")))).Scan(&sv, &ev); err != nil {
		t.Fatal(err)
	}
	if sv == nil || ev == nil || *ev != 4000 || *sv != float64(raw) {
		t.Errorf("drift of events: speed %v exact %v, want %d and 4000", sv, ev, raw)
	}
}

func TestCatchUpAfterDowntime(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var evs []event
	for _, d := range []time.Time{d1, d2, d3, d4} {
		evs = append(evs, gen(rng, d, 500, 0.02, "c")...)
	}
	e.insertRaw(evs)
	e.flush(0, 100, 101, d4) // partition 0 caught up: counts as now
	l := e.layer(Options{})
	ctx := context.Background()

	// Day 3 ends at d4 00:00; with 30m grace it is not due at 00:20.
	e.setNow(d4.Add(20 * time.Minute))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-02" {
		t.Fatalf("watermark %s after the first tick, want 2024-03-02", got)
	}
	// Partition 1 lags at day 3 noon: day 3 is not sealed however late it is.
	e.flush(1, 50, 80, d3.Add(12*time.Hour))
	e.setNow(d5.Add(40 * time.Minute))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-02" {
		t.Fatalf("watermark %s with a lagging partition, want 2024-03-02", got)
	}
	// Partition 1 catches up; the scheduler starts after days of downtime and catches up at once.
	e.flush(1, 79, 80, d5)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(rctx) }()
	deadline := time.Now().Add(60 * time.Second)
	for e.watermark() != "2024-03-04" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-04" {
		t.Fatalf("watermark %s after catch-up, want 2024-03-04", got)
	}
	runs := e.runs()
	for _, d := range []string{"2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"} {
		if !slices.Equal(runs[d], []string{StatusSucceeded}) {
			t.Errorf("runs of %s: %v, want one succeeded", d, runs[d])
		}
	}
	for _, d := range []time.Time{d1, d2, d3, d4} {
		e.requireExact(evs, d)
	}
	// Day order: the catch-up ran day 3 before day 4.
	var order []time.Time
	rows, err := e.conn.Query(ctx, fmt.Sprintf("SELECT day FROM %s WHERE status = 'started' ORDER BY at_us", e.g.T(schema.BatchRuns)))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d time.Time
		_ = rows.Scan(&d)
		order = append(order, d)
	}
	rows.Close()
	if !slices.IsSortedFunc(order, func(a, b time.Time) int { return a.Compare(b) }) {
		t.Errorf("runs not in day order: %v", order)
	}
}

func TestDirtyDayRerun(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(5, 6))
	evs := append(gen(rng, d1, 800, 0.02, "l"), gen(rng, d2, 800, 0.02, "l")...)
	e.insertRaw(evs)
	e.flush(0, 10, 11, d3)
	l := e.layer(Options{})
	ctx := context.Background()
	e.setNow(d3.Add(time.Hour))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	before := e.checksum(d2)
	// Late rows for day 1 arrive after its run.
	late := gen(rng, d1, 50, 0, "late")
	for i := range late {
		late[i].ing = d3.Add(2 * time.Hour)
	}
	e.insertRaw(late)
	evs = append(evs, late...)
	e.setNow(d3.Add(3 * time.Hour))
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || !slices.EqualFunc(st[0].Dirty, []time.Time{d1}, time.Time.Equal) || !slices.EqualFunc(st[0].Due, []time.Time{d1}, time.Time.Equal) {
		t.Fatalf("status: dirty %v due %v, want day 1", st[0].Dirty, st[0].Due)
	}
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	e.requireExact(evs, d1)
	if got := e.checksum(d2); got != before {
		t.Errorf("day 2 changed: %s -> %s", before, got)
	}
	runs := e.runs()
	if len(runs["2024-03-01"]) != 2 || len(runs["2024-03-02"]) != 1 {
		t.Errorf("runs: %v, want day 1 twice and day 2 once", runs)
	}
	if got := e.watermark(); got != "2024-03-02" {
		t.Errorf("watermark %s, want 2024-03-02", got)
	}
	// Nothing is due any more.
	if st, err := l.Status(ctx); err != nil || len(st[0].Due) != 0 || len(st[0].Dirty) != 0 {
		t.Errorf("status after the rerun: %+v, %v", st, err)
	}
}

func TestRerunIdentical(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(7, 8))
	e.insertRaw(gen(rng, d1, 5000, 0.03, "r"))
	e.setNow(d2.Add(time.Hour))
	l := e.layer(Options{})
	ctx := context.Background()
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	first := e.checksum(d1)
	_, ids1 := e.daily(d1)
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.checksum(d1); got != first {
		t.Errorf("rerun changed the day: %s -> %s", first, got)
	}
	_, ids2 := e.daily(d1)
	if len(ids2) != 1 || slices.Equal(ids1, ids2) {
		t.Errorf("run ids %v then %v: want one new run id", ids1, ids2)
	}
}

func TestKilledBeforeSwap(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(9, 10))
	evs := gen(rng, d1, 1000, 0.02, "k")
	e.insertRaw(evs)
	e.setNow(d2.Add(time.Hour))
	ctx := context.Background()
	if err := e.layer(Options{}).RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	before := e.checksum(d1)
	more := gen(rng, d1, 100, 0, "k2")
	e.insertRaw(more)

	kctx, kill := context.WithCancel(ctx)
	l := e.layer(Options{BeforeSwap: func(context.Context, string, time.Time) error { kill(); return nil }})
	err := l.RunDays(kctx, "events", d1, d1, nil)
	if err == nil {
		t.Fatal("killed run succeeded")
	}
	if got := e.checksum(d1); got != before {
		t.Errorf("killed run changed the day: %s -> %s", before, got)
	}
	var n uint64
	if err := e.conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name LIKE '%%stage%%'", e.cfg.ClickHouse.Database)).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d staging tables left (%v)", n, err)
	}
	if runs := e.runs()["2024-03-01"]; !slices.Equal(runs, []string{StatusSucceeded, StatusFailed}) {
		t.Errorf("runs %v, want succeeded then failed", runs)
	}
	// The next run repairs the day.
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	e.requireExact(append(evs, more...), d1)
}

func TestRefuseEmptySwap(t *testing.T) {
	e := newEnv(t)
	e.insertRaw(gen(rand.New(rand.NewPCG(1, 1)), d1, 300, 0, "e"))
	e.setNow(d2.Add(time.Hour))
	ctx := context.Background()
	l := e.layer(Options{})
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	before := e.checksum(d1)
	if err := e.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION 20240301", e.g.T(schema.Raw("events")))); err != nil {
		t.Fatal(err)
	}
	err := l.RunDays(ctx, "events", d1, d1, nil)
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("want a refusal, got %v", err)
	}
	if got := e.checksum(d1); got != before {
		t.Errorf("day changed: %s -> %s", before, got)
	}
}

func TestConcurrentRunsDoNotInterleave(t *testing.T) {
	e := newEnv(t)
	e.insertRaw(gen(rand.New(rand.NewPCG(2, 2)), d1, 500, 0, "p"))
	l := e.layer(Options{Now: time.Now, BeforeSwap: func(context.Context, string, time.Time) error {
		time.Sleep(300 * time.Millisecond)
		return nil
	}})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = l.RunDays(context.Background(), "events", d1, d1, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT run_id, min(at_us), max(at_us), argMax(status, at_us) FROM %s GROUP BY run_id ORDER BY min(at_us)", e.g.T(schema.BatchRuns)))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var prevEnd uint64
	n := 0
	for rows.Next() {
		var id, st string
		var from, to uint64
		if err := rows.Scan(&id, &from, &to, &st); err != nil {
			t.Fatal(err)
		}
		if from <= prevEnd {
			t.Errorf("run %s started at %d before the previous run ended at %d", id, from, prevEnd)
		}
		if st != StatusSucceeded {
			t.Errorf("run %s: %s", id, st)
		}
		prevEnd = to
		n++
	}
	if n != 3 {
		t.Errorf("%d runs, want 3", n)
	}
	if got, _ := e.daily(d1); len(got) != len(expected(gen(rand.New(rand.NewPCG(2, 2)), d1, 500, 0, "p"), d1)) {
		t.Errorf("daily holds %d rows after concurrent runs", len(got))
	}
}

func TestFailingRunIsRetried(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(4, 4))
	var evs []event
	for _, d := range []time.Time{d1, d2, d3} {
		evs = append(evs, gen(rng, d, 300, 0.02, "f")...)
	}
	e.insertRaw(evs)
	e.flush(0, 10, 11, d4)
	fail := true
	reg := prometheus.NewRegistry()
	l := e.layer(Options{Registerer: reg, BeforeSwap: func(_ context.Context, _ string, day time.Time) error {
		if fail && day.Equal(d2) {
			return errors.New("clickhouse went away")
		}
		return nil
	}})
	ctx := context.Background()
	e.setNow(d4.Add(time.Hour))
	err := l.Tick(ctx, "events")
	if err == nil || !strings.Contains(err.Error(), "clickhouse went away") {
		t.Fatalf("tick: %v", err)
	}
	if got := e.watermark(); got != "2024-03-01" {
		t.Errorf("watermark %s after the failure, want 2024-03-01", got)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var failed *Run
	for i, r := range st[0].Runs {
		if r.Status == StatusFailed {
			failed = &st[0].Runs[i]
		}
	}
	if failed == nil || !failed.Day.Equal(d2) || !strings.Contains(failed.Error, "clickhouse went away") || failed.FinishedAt.IsZero() {
		t.Fatalf("failed run in status: %+v", failed)
	}
	fail = false
	e.setNow(d4.Add(2 * time.Hour))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-03" {
		t.Errorf("watermark %s after the retry, want 2024-03-03", got)
	}
	runs := e.runs()
	if !slices.Equal(runs["2024-03-02"], []string{StatusFailed, StatusSucceeded}) || len(runs["2024-03-03"]) != 1 {
		t.Errorf("runs: %v", runs)
	}
	e.requireExact(evs, d2)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "status" {
					key += "/" + lp.GetValue()
				}
			}
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				got[key] = m.Gauge.GetValue()
			}
		}
	}
	if got["lambda_batch_runs_total/succeeded"] != 3 || got["lambda_batch_runs_total/failed"] != 1 ||
		got["lambda_batch_watermark_timestamp_seconds"] != float64(d4.Unix()) {
		t.Errorf("metrics: %v", got)
	}
}

func TestRetention(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(6, 6))
	var evs []event
	for _, d := range []time.Time{d1, d2, d3, d4} {
		evs = append(evs, gen(rng, d, 100, 0, "t")...)
	}
	e.insertRaw(evs)
	cfg := *e.cfg
	ds := cfg.Datasets[0]
	ds.RawRetention = config.Duration(48 * time.Hour)
	ds.SpeedConf.Retention = config.Duration(24 * time.Hour)
	ds.BatchConf.Lookback = config.Duration(24 * time.Hour)
	cfg.Datasets = []config.Dataset{ds}
	e.cfg = &cfg
	e.flush(0, 10, 11, d5)
	l := e.layer(Options{})
	// The batch covers days 1-3 only (day 4 is not sealed at d5 00:10).
	e.setNow(d5.Add(10 * time.Minute))
	if err := l.Tick(context.Background(), "events"); err != nil {
		t.Fatal(err)
	}
	days := func(table string) []string {
		ps, err := l.partitionDays(context.Background(), l.ds["events"], table)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.Format("0102"))
		}
		return out
	}
	// Raw older than 48h (days ending at or before d3 00:10): days 1 and 2. Speed at or before
	// watermark (day 3) minus 24h: days 1 and 2.
	if got := days("events_raw"); !slices.Equal(got, []string{"0303", "0304"}) {
		t.Errorf("raw days %v", got)
	}
	if got := days("events_speed"); !slices.Equal(got, []string{"0303", "0304"}) {
		t.Errorf("speed days %v", got)
	}
	if got := e.watermark(); got != "2024-03-03" {
		t.Errorf("watermark %s", got)
	}
}

// TestQueryShapesChDB runs every statement of the batch layer on a current ClickHouse.
func TestQueryShapesChDB(t *testing.T) {
	cfg := chtest.Config(t, nil)
	d := &cfg.Datasets[0]
	q := newQueries(cfg, d)
	stmts := schema.Statements(cfg)
	stage := stagingName(d.Name, newRunID(time.Now(), d1))
	stmts = append(stmts,
		fmt.Sprintf(`INSERT INTO %s (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at)
SELECT toString(number %% 90), toDateTime('2024-03-01 00:00:00', 'UTC') + number * 60, toString(number %% 7), toString(number %% 3), '',
    toString(number %% 11), if(number %% 10 = 0, NULL, toFloat64(number)), 'events', 0, toInt64(number), 0, now()
FROM system.numbers LIMIT 100`, q.g.T(schema.Raw(d.Name))),
		q.createStaging(stage, ""),
		q.recompute(stage, d1, "r1"),
		ledger.RawRowsSQL(q.db, d.Name, d1), fmt.Sprintf("SELECT uniqExact(id) FROM %s", q.g.T(schema.Raw(d.Name))), q.countDay(stage, d1), q.totals(stage, d1), q.speedTotals(d1),
		q.swap(stage, d1), q.dropTable(stage),
		q.partitions(schema.Raw(d.Name)), q.stagingTables(),
	)
	// The speed rollup: hour rows of a set, the day so far, the swap.
	rstage := stagingPrefix(d.Name) + "rollup_20240301"
	rcols := quoteAll(schema.SpeedHourlyColumns(d))
	stmts = append(stmts, createLike(q.g.T(rstage), q.g.T(schema.SpeedHourly(d.Name)), ""))
	for _, set := range schema.SpeedSets(d) {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO %s (%s)\n%s", q.g.T(rstage), rcols, q.g.SpeedHourlySelect(d, set, d1, d1.Add(2*time.Hour))))
	}
	for _, h := range []time.Time{d1, d1.Add(time.Hour)} {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO %s (%s)\n%s", q.g.T(rstage), rcols, q.g.SpeedPrefixSelect(d, q.g.T(rstage), d1, h)))
	}
	stmts = append(stmts, q.swapTo(q.g.T(schema.SpeedHourly(d.Name)), rstage, d1), q.dropTable(rstage),
		fmt.Sprintf("SELECT toUInt64(countMerge(events)) FROM %s WHERE prefix = 1 AND hour = toDateTime('2024-03-01 01:00:00', 'UTC') AND grouping = ''", q.g.T(schema.SpeedHourly(d.Name))))
	// The rest of the day from each hour, from the day's hours.
	var hours []time.Time
	for h := d1; h.Before(d1.AddDate(0, 0, 1)); h = h.Add(time.Hour) {
		hours = append(hours, h)
	}
	stmts = append(stmts, q.recomputeHourly(schema.Hourly(d.Name), d1, "r1"),
		fmt.Sprintf("INSERT INTO %s (%s)\n%s", q.g.T(schema.HourlyRest(d.Name)), quoteAll(schema.HourlyRestColumns(d)), q.g.HourlyRestSelect(d, hours)),
		fmt.Sprintf("SELECT sum(events), any(run_id) FROM %s WHERE grouping = 'country' AND hour = toDateTime('2024-03-01 01:00:00', 'UTC')", q.g.T(schema.HourlyRest(d.Name))),
		q.dropPartition(schema.Raw(d.Name), d1))
	res := chtest.RequireChDB(t, stmts)
	if out := res[len(res)-2].Out; strings.TrimSpace(out) != "30\tr1" {
		t.Errorf("the rest of the day from 01:00 on chDB: %q, want the 30 deduplicated events of raw from 01:00 of run r1", out)
	}
	res = append(res[:len(res)-4:len(res)-4], res[len(res)-1])
	if out := res[len(res)-2].Out; strings.TrimSpace(out) != "100" {
		t.Errorf("the day so far at 02:00 from the rollup on chDB: %q events, want the 100 of raw", out)
	}
	res = res[:len(res)-len(schema.SpeedSets(d))-6]
	if out := res[len(res)-10].Out; strings.TrimSpace(out) != "100" {
		t.Errorf("raw rows of the day on chDB: %q", out)
	}
	if out := res[len(res)-9].Out; strings.TrimSpace(out) != "90" {
		t.Errorf("distinct ids on chDB: %q", out)
	}
	if out := res[len(res)-7].Out; !strings.HasPrefix(out, "90\t") {
		t.Errorf("day totals of the staging table on chDB: %q", out)
	}
}

// A dataset without a count metric, with a dotted field and an extra grouping set: recompute still runs on both servers.
func TestOtherDatasetShape(t *testing.T) {
	base, err := config.Parse("pay.yaml", []byte(payYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := chtest.Config(t, base)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	g := schema.NewGenerator(cfg)
	if err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, time, shop, method, region, amount, _topic, _partition, _offset, _late, _ingested_at)
SELECT toString(number %% 900), toDateTime('2024-03-01 00:00:00', 'UTC') + number * 60, toString(number %% 7), toString(number %% 3), toString(number %% 2),
    if(number %% 10 = 0, NULL, toFloat64(number %% 100)), 'pay', 0, toInt64(number), 0, toDateTime('2024-03-01 00:00:00', 'UTC') + number
FROM system.numbers LIMIT 1000`, g.T(schema.Raw("pay")))); err != nil {
		t.Fatal(err)
	}
	l, err := New(cfg, Options{Conn: conn, Now: func() time.Time { return d3 }})
	if err != nil {
		t.Fatal(err)
	}
	var got Progress
	if err := l.RunDays(ctx, "pay", d1, d1, func(p Progress) { got = p }); err != nil {
		t.Fatal(err)
	}
	// 1000 minutes from midnight stay in day 1; ids repeat after 900.
	if got.RowsRaw != 1000 || got.RowsDedup != 900 || got.RowsOut == 0 {
		t.Errorf("progress %+v", got)
	}
	var sets uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT uniqExact(grouping) FROM %s WHERE grouping IN ('', 'shop', 'shop,method', 'shop,method,region')", g.T(schema.Daily("pay")))).Scan(&sets); err != nil || sets != 4 {
		t.Errorf("grouping sets: %d (%v)", sets, err)
	}
	q := newQueries(cfg, &cfg.Datasets[0])
	stage := stagingName("pay", "x")
	chtest.RequireChDB(t, append(schema.Statements(cfg), q.createStaging(stage, ""), q.recompute(stage, d1, "r")))
}
