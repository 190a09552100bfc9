package batchlayer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestZoneDaylightSaving runs a dataset in New York over the days its clocks change (2026-03-08
// has 23 hours, 2026-11-01 has 25) and checks every local day of <ds>_daily, every hour of
// <ds>_hourly and every minute of <ds>_speed against the truth computed in Go, each day in a
// partition of its local date.
func TestZoneDaylightSaving(t *testing.T) {
	e := newEnvYAML(t, allTypesYAML+"    time_zone: America/New_York\n", false)
	ny := e.cfg.Datasets[0].Location()
	if ny.String() != "America/New_York" {
		t.Fatalf("zone %v", ny)
	}
	date := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	rng := rand.New(rand.NewPCG(31, 32))
	var evs []event
	for i, s := range []string{"2026-03-07", "2026-03-08", "2026-03-09", "2026-10-31", "2026-11-01", "2026-11-02"} {
		start := ledger.DayStart(date(s), ny)
		// From the local midnight, and two hours later: a 23-hour day spills into the next,
		// the 25th hour of a long day is covered.
		evs = append(evs, gen(rng, start, 1500, 0.05, fmt.Sprintf("z%d", i))...)
		evs = append(evs, gen(rng, start.Add(2*time.Hour), 500, 0.05, fmt.Sprintf("y%d", i))...)
	}
	e.insertRaw(evs)
	l := e.layer(Options{})
	ctx := context.Background()
	for _, r := range [][2]string{{"2026-03-07", "2026-03-09"}, {"2026-10-31", "2026-11-02"}} {
		if err := l.RunDays(ctx, "events", date(r[0]), date(r[1]), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		day   string
		hours int
	}{{"2026-03-07", 24}, {"2026-03-08", 23}, {"2026-03-09", 24}, {"2026-10-31", 24}, {"2026-11-01", 25}, {"2026-11-02", 24}} {
		day := date(c.day)
		e.requireExact(evs, day)
		e.requireHoursAndMinutes(evs, day, e.lastRun(day))
		var hours uint64
		var first, last time.Time
		q := fmt.Sprintf("SELECT count(), min(hour), max(hour) FROM %s WHERE grouping = '' AND toDate(hour, 'America/New_York') = %s",
			e.g.T(schema.Hourly("events")), dateLit(day))
		if err := e.conn.QueryRow(ctx, q).Scan(&hours, &first, &last); err != nil {
			t.Fatal(err)
		}
		if int(hours) != c.hours || !first.Equal(ledger.DayStart(day, ny)) || !last.Equal(ledger.DayEnd(day, ny).Add(-time.Hour)) {
			t.Errorf("%s: %d hours from %v to %v, want %d from the local midnight", c.day, hours, first, last, c.hours)
		}
	}
	// Each local day is one partition of every table the batch replaces.
	for _, table := range []string{schema.Daily("events"), schema.Hourly("events"), schema.Speed("events"), schema.RawDays("events")} {
		var parts []string
		q := "SELECT groupUniqArray(partition) FROM system.parts WHERE database = ? AND table = ? AND active AND partition IN ('20260308', '20261101')"
		if err := e.conn.QueryRow(ctx, q, e.cfg.ClickHouse.Database, table).Scan(&parts); err != nil {
			t.Fatal(err)
		}
		if len(parts) != 2 {
			t.Errorf("%s: partitions %v, want the local days 20260308 and 20261101", table, parts)
		}
	}
}

// TestClusterZone runs New York's 25-hour day on the local cluster with 1 MiB (passes in time
// chunks spread over the shards): its day, hours and minutes exact through the cluster, and the
// watermark moved once every node holds the day.
func TestClusterZone(t *testing.T) {
	e := newEnvYAML(t, allTypesYAML+"    time_zone: America/New_York\n", true)
	e.cfg.Batch.MaxMemory = 1 << 20
	day := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	start := ledger.DayStart(day, e.cfg.Datasets[0].Location())
	rng := rand.New(rand.NewPCG(41, 42))
	evs := append(gen(rng, start, 1500, 0.05, "c"), gen(rng, start.Add(2*time.Hour), 500, 0.05, "d")...)
	e.insertRaw(evs)
	e.setNow(start.Add(72 * time.Hour))
	if err := e.layer(Options{}).RunDays(context.Background(), "events", day, day, nil); err != nil {
		t.Fatal(err)
	}
	e.requireExact(evs, day)
	e.requireHoursAndMinutes(evs, day, e.lastRun(day))
	if got := e.watermark(); got != "2026-11-01" {
		t.Errorf("cluster watermark %s, want 2026-11-01", got)
	}
}

// TestZoneSealing: New York's 2026-03-08 ends at 04:00 UTC on the 9th (a 23-hour day); the
// scheduler seals it 30 minutes (batch.grace) after that, not after the UTC day's end.
func TestZoneSealing(t *testing.T) {
	e := newEnvYAML(t, allTypesYAML+"    time_zone: America/New_York\n", false)
	ny := e.cfg.Datasets[0].Location()
	day := time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC)
	end := ledger.DayEnd(day, ny)
	evs := gen(rand.New(rand.NewPCG(51, 52)), ledger.DayStart(day, ny), 500, 0.05, "s")
	e.insertRaw(evs)
	l := e.layer(Options{})
	ctx := context.Background()
	for _, c := range []struct {
		after time.Duration
		runs  int
	}{{29 * time.Minute, 0}, {31 * time.Minute, 1}} {
		e.flush(0, 10, 11, end) // caught up, by a fresh heartbeat
		e.setNow(end.Add(c.after))
		if err := l.Tick(ctx, "events"); err != nil {
			t.Fatal(err)
		}
		if got := len(e.runs()["2026-03-08"]); got != c.runs {
			t.Fatalf("%v after the local day's end: %d runs of 2026-03-08, want %d (runs %v)", c.after, got, c.runs, e.runs())
		}
	}
	if got := e.runs()["2026-03-08"]; got[0] != "succeeded" {
		t.Fatalf("run of 2026-03-08: %v", got)
	}
	e.requireExact(evs, day)
	if got := e.watermark(); got != "2026-03-08" {
		t.Errorf("watermark %s, want 2026-03-08", got)
	}
}
