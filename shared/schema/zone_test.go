package schema_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// inZone sets every dataset's time zone.
func inZone(cfg *config.Config, zone string) *config.Config {
	for i := range cfg.Datasets {
		cfg.Datasets[i].TimeZone = zone
	}
	return cfg
}

// TestGoldenZone is the demo schema of a dataset in New York: local days partition raw, hourly
// and speed, count raw's days and cut the views' days; a UTC dataset's SQL (demo.golden.sql)
// carries no zone at all.
func TestGoldenZone(t *testing.T) {
	golden(t, inZone(demo(t), "America/New_York"), "testdata/demo.new_york.golden.sql")
}

// TestZoneStatementsOnCurrentClickHouse runs the zoned statements through chDB, and
// TestZoneViews runs them on 18.16, each with rows of a 23-hour day in every view.
func TestZoneStatementsOnCurrentClickHouse(t *testing.T) {
	cfg := inZone(demo(t), "America/New_York")
	stmts := schema.Statements(cfg)
	stmts = append(stmts, "INSERT INTO lambda.events_raw (id, time, event, country, device, user_id, value) SELECT 'a', toDateTime('2026-03-08 04:59:59', 'UTC'), 'view', 'de', 'ios', 'u1', 1.5 UNION ALL SELECT 'b', toDateTime('2026-03-09 03:59:59', 'UTC'), 'buy', 'fr', 'web', 'u2', NULL",
		"SELECT throwIf(groupArray((day, rows)) != [(toDate('2026-03-07'), toUInt64(1)), (toDate('2026-03-08'), toUInt64(1))]) FROM (SELECT day, sum(rows) AS rows FROM lambda.events_raw_days GROUP BY day ORDER BY day)",
		"SELECT throwIf(groupArray(_partition_id) != ['20260307', '20260308']) FROM (SELECT DISTINCT _partition_id FROM lambda.events_speed ORDER BY _partition_id)")
	for _, name := range viewNames(cfg) {
		stmts = append(stmts, "SELECT throwIf(count() = 0), groupArray(tuple(*)) FROM lambda.`"+name+"`")
	}
	chtest.RequireChDB(t, stmts)
}

func TestZoneViews(t *testing.T) {
	cfg := chtest.Config(t, nil)
	inZone(cfg, "America/New_York")
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := "`" + cfg.ClickHouse.Database + "`"
	if err := conn.Exec(ctx, "INSERT INTO "+db+".events_raw (id, time, event, country, device, user_id, value) SELECT 'a', toDateTime('2026-03-08 04:59:59', 'UTC'), 'view', 'de', 'ios', 'u1', 1.5 UNION ALL SELECT 'b', toDateTime('2026-03-09 03:59:59', 'UTC'), 'buy', 'fr', 'web', 'u2', NULL"); err != nil {
		t.Fatal(err)
	}
	var days []string
	rows, err := conn.Query(ctx, "SELECT toString(day) FROM "+db+".events_lambda WHERE grouping = '' ORDER BY day")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		days = append(days, d)
	}
	rows.Close()
	if strings.Join(days, ",") != "2026-03-07,2026-03-08" {
		t.Fatalf("the view's local days: %v", days)
	}
	for _, name := range viewNames(cfg) {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".`"+name+"`").Scan(&n); err != nil || n == 0 {
			t.Errorf("%s: %d rows, %v", name, n, err)
		}
	}
}

// TestMigrateZoneChange: a dataset made in UTC, with raw rows, a run and a boundary, is
// migrated to New York. Migrate refuses, naming time_zone and --recompute-zone; with
// RecomputeZone it rebuilds the per-day tables in the new zone (raw's day counts and the speed
// minutes from raw) and forgets the dataset's runs and boundary, so that every day is unrun.
func TestMigrateZoneChange(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := "`" + cfg.ClickHouse.Database + "`"
	// 03:00 UTC is the previous day in New York; now() is within the speed retention.
	for _, s := range []string{
		"INSERT INTO " + db + ".events_raw (id, time, event, country, device, user_id, value) SELECT toString(number), toDateTime(toDate(now()), 'UTC') + 3 * 3600 + number, 'view', 'de', 'ios', 'u1', 1.5 FROM system.numbers LIMIT 10",
		"INSERT INTO " + db + ".batch_runs (dataset, day, run_id, status, rows_raw) SELECT 'events', toDate(now()), 'r1', 'succeeded', 10",
		"INSERT INTO " + db + ".batch_watermarks (dataset, watermark, run_id) SELECT 'events', toDate(now()), 'r1'",
	} {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	inZone(cfg, "America/New_York")
	_, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), "datasets[0] (events).time_zone: events keeps its days in UTC, the config says America/New_York") ||
		!strings.Contains(err.Error(), "--recompute-zone") {
		t.Fatalf("a changed zone: %v, want a refusal naming time_zone and --recompute-zone", err)
	}
	// schema_objects knows a view's newest statement by the second it was recorded in: the
	// views recreated in the new zone must be recorded in a later second than the first ones.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{RecomputeZone: true}); err != nil {
		t.Fatal(err)
	}
	f := func(q, want string) {
		t.Helper()
		var got string
		if err := conn.QueryRow(ctx, q).Scan(&got); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if got != want {
			t.Errorf("%s: %q, want %q", q, got, want)
		}
	}
	f("SELECT partition_key FROM system.tables WHERE database = '"+cfg.ClickHouse.Database+"' AND name = 'events_hourly'", "toYYYYMMDD(hour, 'America/New_York')")
	f("SELECT toString(groupArray((day, rows))) FROM (SELECT day, sum(rows) AS rows FROM "+db+".events_raw_days GROUP BY day)",
		"[('"+time.Now().UTC().AddDate(0, 0, -1).Format(time.DateOnly)+"',10)]")
	f("SELECT toString(countMerge(events)) FROM "+db+".events_speed", "10")
	f("SELECT toString(count()) FROM "+db+".batch_runs WHERE dataset = 'events'", "0")
	f("SELECT toString(count()) FROM "+db+".batch_watermarks WHERE dataset = 'events'", "0")
	f("SELECT toString(sum(events)) FROM "+db+".events_lambda_total", "10")
	// Twice is a no-op; raw rows keep feeding both views.
	if ran, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	} else {
		for _, s := range ran {
			if !strings.Contains(s, "IF NOT EXISTS") {
				t.Errorf("second migrate changed something: %s", s)
			}
		}
	}
	if err := conn.Exec(ctx, "INSERT INTO "+db+".events_raw (id, time, event, country, device, user_id, value) SELECT 'x', now(), 'view', 'de', 'ios', 'u1', 1"); err != nil {
		t.Fatal(err)
	}
	f("SELECT toString(countMerge(events)) FROM "+db+".events_speed", "11")
	f("SELECT toString(sum(rows)) FROM "+db+".events_raw_days", "11")
}
