package batchlayer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// days reads the ledger's days of the events dataset.
func (e *env) days() ledger.Days {
	e.t.Helper()
	days, err := ledger.ReadDays(context.Background(), e.conn, e.cfg.ClickHouse.Database, "events")
	if err != nil {
		e.t.Fatal(err)
	}
	return days
}

// staleFlush records speed progress that says lag 0, written an hour ago by ClickHouse's clock:
// its owner died since.
func (e *env) staleFlush(part int32, lastOffset int64, newest time.Time) {
	e.t.Helper()
	q := fmt.Sprintf(`INSERT INTO %s (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer, flushed_at)
SELECT 'events', 'events', %d, 0, %d, %d, 1, 0, 0, 0, toDateTime('%s', 'UTC'), 'test', now() - 3600`,
		e.g.T(schema.SpeedFlushes), part, lastOffset, lastOffset+1, newest.UTC().Format(time.DateTime))
	if err := e.conn.Exec(context.Background(), q); err != nil {
		e.t.Fatal(err)
	}
}

// A run right after its rows arrived counts: the day is exact at once (issue: a day whose
// newest row was ingested within insert_timeout before the run used to count as dirty).
func TestFreshRunIsExact(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(21, 22))
	evs := gen(rng, d1, 500, 0.02, "f")
	for i := range evs {
		evs[i].ing = time.Now().UTC() // ingested just now
	}
	e.insertRaw(evs)
	e.setNow(d2.Add(time.Hour))
	if err := e.layer(Options{}).RunDays(context.Background(), "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	days := e.days()
	if !days.Exact().Equal(d1) || len(days.Dirty(time.Time{})) != 0 || e.watermark() != "2024-03-01" {
		t.Fatalf("after a run right after ingestion: exact %v dirty %v boundary %s", days.Exact(), days.Dirty(time.Time{}), e.watermark())
	}
	e.requireExact(evs, d1)
}

// Rows that arrive while a run reads its day leave the day dirty (the run cannot know whether
// it read them); the next tick recomputes it, and then it is exact with them.
func TestRowsDuringRunLeaveDayDirty(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(23, 24))
	evs := gen(rng, d1, 500, 0.02, "r")
	e.insertRaw(evs)
	more := gen(rng, d1, 50, 0, "r2")
	e.flush(0, 10, 11, d2.Add(2*time.Hour))
	e.setNow(d2.Add(time.Hour))
	inserted := false
	l := e.layer(Options{BeforeSwap: func(context.Context, string, time.Time) error {
		if !inserted {
			inserted = true
			e.insertRaw(more)
		}
		return nil
	}})
	ctx := context.Background()
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if dirty := e.days().Dirty(time.Time{}); !slices.Equal(dirty, []time.Time{d1}) {
		t.Fatalf("dirty days after rows arrived during the run: %v, want [%s]", dirty, d1.Format(time.DateOnly))
	}
	if e.watermark() != "2024-03-01" {
		t.Errorf("boundary %s: a covered day stays on the daily side", e.watermark())
	}
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if days := e.days(); !days.Exact().Equal(d1) {
		t.Fatalf("after the rerun: exact watermark %v, dirty %v", days.Exact(), days.Dirty(time.Time{}))
	}
	e.requireExact(append(evs, more...), d1)
}

// A dead speed layer holds the days its partitions had not consumed past: a ledger row saying
// lag 0 counts only while it is fresh.
func TestDeadSpeedLayerHoldsSealing(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(25, 26))
	e.insertRaw(append(gen(rng, d1, 200, 0, "d"), gen(rng, d2, 200, 0, "d")...))
	// Partition 0 consumed up to day 2 noon and said lag 0, an hour ago; its consumer died.
	e.staleFlush(0, 100, d2.Add(12*time.Hour))
	e.setNow(d3.Add(6 * time.Hour))
	l := e.layer(Options{})
	ctx := context.Background()
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-01" {
		t.Fatalf("boundary %s with a dead consumer at day 2 noon, want 2024-03-01", got)
	}
	// The consumer is back and caught up: a fresh heartbeat.
	e.flush(0, 100, 101, d2.Add(12*time.Hour))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-02" {
		t.Fatalf("boundary %s after the consumer came back, want 2024-03-02", got)
	}
}

// A day with raw rows and no successful run below the boundary (history loaded into raw) is
// never exact, does not move the boundary back, and is run at the next tick whatever its age.
func TestUnrunDayBelowBoundary(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(27, 28))
	e.insertRaw(append(gen(rng, d3, 200, 0, "u"), gen(rng, d4, 200, 0, "u")...))
	e.flush(0, 10, 11, d5.Add(2*time.Hour))
	e.setNow(d5.Add(3 * time.Hour))
	l := e.layer(Options{})
	ctx := context.Background()
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-04" {
		t.Fatalf("boundary %s, want 2024-03-04", got)
	}
	old := gen(rng, d1, 300, 0.02, "old")
	e.insertRaw(old)
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st[0].Unrun, []time.Time{d1}) || !st[0].Exact.IsZero() || !slices.Contains(st[0].Due, d1) {
		t.Fatalf("status with an unrun old day: unrun %v exact %v due %v", st[0].Unrun, st[0].Exact, st[0].Due)
	}
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if got := e.watermark(); got != "2024-03-04" {
		t.Errorf("boundary %s after the backfill, want 2024-03-04", got)
	}
	if days := e.days(); !days.Exact().Equal(d4) {
		t.Errorf("exact watermark %v after the backfill ran, want %v", days.Exact(), d4)
	}
	e.requireExact(old, d1)
}

// A dirty day older than the lookback is not recomputed automatically, but it is not exact
// either: it holds the exact watermark and is listed for an operator.
func TestDirtyOutsideLookback(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(29, 30))
	evs := append(gen(rng, d1, 200, 0, "o"), gen(rng, d2, 200, 0, "o")...)
	e.insertRaw(evs)
	e.flush(0, 10, 11, d3.Add(2*time.Hour))
	e.setNow(d3.Add(3 * time.Hour))
	l := e.layer(Options{})
	ctx := context.Background()
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	// Days later (the lookback is 48h), a late row for day 1.
	e.insertRaw(gen(rng, d1, 1, 0, "late"))
	e.setNow(d5.Add(3 * time.Hour))
	e.flush(0, 20, 21, d5.Add(2*time.Hour))
	if err := l.Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st[0].Outside, []time.Time{d1}) || !st[0].Exact.IsZero() || slices.Contains(st[0].Due, d1) {
		t.Fatalf("outside the lookback: listed %v, exact %v, due %v", st[0].Outside, st[0].Exact, st[0].Due)
	}
	if runs := e.runs()["2024-03-01"]; len(runs) != 1 {
		t.Errorf("day 1 ran %d times, want once", len(runs))
	}
	// `lambda batch run` fixes it.
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	if days := e.days(); days.Exact().Before(d2) {
		t.Errorf("exact watermark %v after the rerun", days.Exact())
	}
}

// A batch process killed between the swap and `succeeded`: the day holds the new run's rows,
// batch_runs does not name it. The day is not exact by a run that never succeeded (it has no
// successful run: unrun), and the next tick repairs it.
func TestKilledBetweenSwapAndSucceeded(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(31, 32))
	evs := gen(rng, d1, 400, 0.02, "k")
	e.insertRaw(evs)
	e.flush(0, 10, 11, d2.Add(2*time.Hour))
	e.setNow(d2.Add(time.Hour))
	ctx := context.Background()
	kctx, kill := context.WithCancel(ctx)
	l := e.layer(Options{AfterSwap: func(context.Context, string, time.Time) { kill() }})
	if err := l.RunDays(kctx, "events", d1, d1, nil); err == nil {
		t.Fatal("the killed run reported success")
	}
	if _, ids := e.daily(d1); len(ids) != 1 {
		t.Fatalf("daily holds runs %v, want the swapped one", ids)
	}
	days := e.days()
	if k, _ := days.Get(d1); k.HasRun() || !k.Unrun || !days.Exact().IsZero() {
		t.Fatalf("day after a kill between swap and success: %+v", k)
	}
	if err := e.layer(Options{}).Tick(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if days := e.days(); !days.Exact().Equal(d1) {
		t.Fatalf("exact watermark %v after the next tick", days.Exact())
	}
	e.requireExact(evs, d1)
}

// Health: a scheduler whose ticks stop is unhealthy; one that ticks, or that is not scheduling
// (a backfill), is healthy.
func TestTickHealth(t *testing.T) {
	sched, err := cron.ParseStandard("@every 1m")
	if err != nil {
		t.Fatal(err)
	}
	var tl tickLog
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	none := func(string) bool { return false }
	if err := tl.check(start.Add(time.Hour), none); err != nil {
		t.Errorf("not scheduling: %v", err)
	}
	tl.start(start, map[string]cron.Schedule{"events": sched})
	if err := tl.check(start.Add(90*time.Second), none); err != nil {
		t.Errorf("within a period and the slack: %v", err)
	}
	if err := tl.check(start.Add(4*time.Minute), none); err == nil {
		t.Error("no tick for 4 periods of 1m: healthy")
	}
	if err := tl.check(start.Add(4*time.Minute), func(string) bool { return true }); err != nil {
		t.Errorf("another process holds the lease: %v", err)
	}
	done := tl.begin("events", newHealthMetrics())
	if err := tl.check(time.Now().Add(time.Hour), none); err != nil {
		t.Errorf("a tick is running: %v", err)
	}
	done()
	if err := tl.check(time.Now().Add(30*time.Second), none); err != nil {
		t.Errorf("just ticked: %v", err)
	}
}
