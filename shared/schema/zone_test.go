package schema_test

import (
	"context"
	"strings"
	"testing"

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
