package ledger_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

var (
	d1 = time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	d2 = d1.AddDate(0, 0, 1)
	d3 = d1.AddDate(0, 0, 2)
	d4 = d1.AddDate(0, 0, 3)
)

func rawInsert(db string, day time.Time, n int, idPrefix string) string {
	return fmt.Sprintf(`INSERT INTO %s.events_raw (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late)
SELECT concat('%s', toString(number)), toDateTime('%s', 'UTC') + number * 60, 'view', 'DE', 'ios', toString(number %% 5), toFloat64(number), 'events', 0, toInt64(number), 0
FROM system.numbers LIMIT %d`, "`"+db+"`", idPrefix, day.Format(time.DateTime), n)
}

func runInsert(db string, day time.Time, run, status string, read uint64, atUS int) string {
	return fmt.Sprintf(`INSERT INTO %s.batch_runs (dataset, day, run_id, status, at, at_us, started_at, finished_at, rows_raw, rows_dedup, rows_out, error, host)
SELECT 'events', toDate('%s'), '%s', '%s', now(), %d, now(), now(), %d, 0, 1, '', 'test'`, "`"+db+"`", day.Format(time.DateOnly), run, status, atUS, read)
}

// TestDaysOnClickHouse checks the rule of dirty and unrun days on 18.16 (the Go form reads the
// SQL form), that every insert into raw is counted, and the ledger's SQL on chDB.
func TestDaysOnClickHouse(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := cfg.ClickHouse.Database
	stmts := []string{
		rawInsert(db, d1, 100, "a"), rawInsert(db, d2, 50, "b"), rawInsert(db, d3, 10, "c"),
		// d1: the run read every row. d2: it read 40 of the 50 rows (late rows came after).
		// d3: no successful run, only a failed one. d4: a run of an empty day.
		runInsert(db, d1, "r1", ledger.StatusStarted, 0, 1), runInsert(db, d1, "r1", ledger.StatusSucceeded, 100, 2),
		runInsert(db, d2, "r2", ledger.StatusSucceeded, 40, 3),
		runInsert(db, d3, "r3", ledger.StatusFailed, 10, 4),
		runInsert(db, d4, "r4", ledger.StatusSucceeded, 0, 5),
	}
	for _, s := range stmts {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	days, err := ledger.ReadDays(ctx, conn, db, "events")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range days {
		got = append(got, fmt.Sprintf("%s raw=%d run=%s read=%d dirty=%v unrun=%v", d.Day.Format(time.DateOnly), d.RawRows, d.Run, d.RowsRead, d.Dirty, d.Unrun))
	}
	want := []string{
		"2024-03-01 raw=100 run=r1 read=100 dirty=false unrun=false",
		"2024-03-02 raw=50 run=r2 read=40 dirty=true unrun=false",
		"2024-03-03 raw=10 run= read=0 dirty=false unrun=true",
		"2024-03-04 raw=0 run=r4 read=0 dirty=false unrun=false",
	}
	if !slices.Equal(got, want) {
		t.Errorf("days:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if e := days.Exact(); !e.Equal(d1) {
		t.Errorf("exact watermark %v, want %v", e, d1)
	}
	if c := days.Covered(); !c.Equal(d2) {
		t.Errorf("covered %v, want %v", c, d2)
	}
	// The SQL form the view uses lists the same dirty days.
	var sqlDirty []time.Time
	rows, err := conn.Query(ctx, ledger.DirtyDaysSQL(db, "events"))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d time.Time
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		sqlDirty = append(sqlDirty, d.UTC())
	}
	rows.Close()
	if !slices.EqualFunc(sqlDirty, days.Dirty(time.Time{}), time.Time.Equal) {
		t.Errorf("DirtyDaysSQL %v, Go %v", sqlDirty, days.Dirty(time.Time{}))
	}

	// A late row for d1, however recent, makes it dirty; a rerun that read it makes it exact.
	if err := conn.Exec(ctx, rawInsert(db, d1.Add(time.Hour), 1, "late")); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, ledger.RawRowsSQL(db, "events", d1)).Scan(&n); err != nil || n != 101 {
		t.Fatalf("raw rows of d1: %d, %v", n, err)
	}
	if days, _ = ledger.ReadDays(ctx, conn, db, "events"); !slices.Equal(days.Dirty(time.Time{}), []time.Time{d1, d2}) {
		t.Errorf("dirty after a late row: %v", days.Dirty(time.Time{}))
	}
	if err := conn.Exec(ctx, runInsert(db, d1, "r5", ledger.StatusSucceeded, 101, 6)); err != nil {
		t.Fatal(err)
	}
	if days, _ = ledger.ReadDays(ctx, conn, db, "events"); !slices.Equal(days.Dirty(time.Time{}), []time.Time{d2}) {
		t.Errorf("dirty after the rerun: %v", days.Dirty(time.Time{}))
	}

	runs, err := ledger.LastRuns(ctx, conn, db, "events", 10)
	if err != nil || len(runs) != 5 || runs[0].RunID != "r5" || runs[0].RowsRead != 101 || runs[len(runs)-1].RunID != "r1" || runs[len(runs)-1].Status != ledger.StatusSucceeded {
		t.Errorf("last runs %+v, %v", runs, err)
	}

	// Boundary and drift round trips.
	if err := ledger.AppendBoundary(ctx, conn, db, "events", d2, "r2", time.Now(), 1); err != nil {
		t.Fatal(err)
	}
	if b, ok, err := ledger.Boundary(ctx, conn, db, "events"); err != nil || !ok || !b.Equal(d2) {
		t.Errorf("boundary %v %v %v", b, ok, err)
	}
	v := func(f float64) *float64 { return &f }
	if err := ledger.RecordDrift(ctx, conn, db, "events", []ledger.Drift{ledger.NewDrift(d2, "events", v(45), v(50), "r2")}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if dr, err := ledger.ReadDrift(ctx, conn, db, "events", d1); err != nil || len(dr) != 1 || *dr[0].RelError != 0.1 {
		t.Errorf("drift %+v %v", dr, err)
	}

	// Every statement of the ledger on a current ClickHouse.
	chdb := schema.Statements(cfg)
	chdb = append(chdb, rawInsert(db, d1, 100, "a"), rawInsert(db, d2, 50, "b"),
		runInsert(db, d1, "r1", ledger.StatusSucceeded, 100, 2), runInsert(db, d2, "r2", ledger.StatusSucceeded, 40, 3),
		ledger.DaysSQL(db, "events")+" ORDER BY day", ledger.DirtyDaysSQL(db, "events"), ledger.RawRowsSQL(db, "events", d1),
		"SELECT "+ledger.BoundarySQL(db, "events"))
	res := chtest.RequireChDB(t, chdb)
	if out := res[len(res)-4].Out; !strings.Contains(out, "2024-03-01\t100\t1\tr1\t100\t1\t0\t0\t0\t0") || !strings.Contains(out, "2024-03-02\t50\t1\tr2\t40\t1\t0\t0\t1\t0") {
		t.Errorf("days on chDB:\n%s", out)
	}
	if out := res[len(res)-3].Out; strings.TrimSpace(out) != "2024-03-02" {
		t.Errorf("dirty days on chDB: %q", out)
	}
}

// TestSpeedHeartbeatAge checks that a partition counts as caught up only while its newest
// ledger row is fresh by ClickHouse's clock.
func TestSpeedHeartbeatAge(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := "`" + cfg.ClickHouse.Database + "`"
	newest := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Second)
	ins := func(part int, ageSeconds int, hw int) {
		t.Helper()
		q := fmt.Sprintf(`INSERT INTO %s.speed_flushes (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer, flushed_at)
SELECT 'events', 'events', %d, 0, 99, %d, 100, 0, 0, 0, toDateTime('%s', 'UTC'), 'test', now() - %d`, db, part, hw, newest.Format(time.DateTime), ageSeconds)
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	ins(0, 1, 100)
	ins(1, 2, 100)
	now := time.Now().UTC()
	wm, parts, err := ledger.Speed(ctx, conn, cfg.ClickHouse.Database, "events", now, nil)
	if err != nil || !wm.Equal(now) || len(parts) != 2 || !parts[0].CaughtUp || parts[0].Evidence != "heartbeat" {
		t.Fatalf("fresh heartbeats: %v %+v %v", wm, parts, err)
	}
	// Partition 2's owner died an hour ago, its last row saying lag 0.
	ins(2, 3600, 100)
	wm, parts, err = ledger.Speed(ctx, conn, cfg.ClickHouse.Database, "events", now, nil)
	if err != nil || !wm.Equal(newest) || len(parts) != 3 || parts[2].CaughtUp || !parts[1].CaughtUp {
		t.Fatalf("stale heartbeat: watermark %v (want %v) %+v %v", wm, newest, parts, err)
	}
	// The SQL form (the views) says the same.
	var sqlWM time.Time
	if err := conn.QueryRow(ctx, "SELECT "+ledger.SpeedWatermarkSQL(cfg.ClickHouse.Database, "events")).Scan(&sqlWM); err != nil || !sqlWM.Equal(newest) {
		t.Errorf("SpeedWatermarkSQL %v (%v), want %v", sqlWM, err, newest)
	}
	db = cfg.ClickHouse.Database
	rday := time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC)
	rs := []ledger.Rollup{{Day: rday, HourTo: rday.Add(13 * time.Hour), Snapshot: rday.Add(14 * time.Hour)}, {Day: rday.AddDate(0, 0, 1), HourTo: rday.Add(30 * time.Hour), Snapshot: rday.Add(31 * time.Hour)}}
	chtest.RequireChDB(t, append(schema.Statements(cfg), "SELECT "+ledger.SpeedWatermarkSQL(db, "events"),
		strings.Replace(strings.Replace(ledger.RollupsSQL(db), "?", "'events'", 1), "?", "'2024-03-01'", 1),
		ledger.TouchedSQL(db, "events", rs, time.UTC),
		strings.Replace(strings.Replace(ledger.RestsSQL(db), "?", "'events'", 1), "?", "'2024-03-01'", 1)))
}
