package schema_test

import (
	"context"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

var update = flag.Bool("update", false, "rewrite golden files")

func demo(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestGolden(t *testing.T) {
	got := strings.Join(schema.Statements(demo(t)), ";\n\n") + ";\n"
	const file = "testdata/demo.golden.sql"
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("generated SQL differs from %s (rerun with -update and review the diff):\n%s", file, got)
	}
}

func TestMigrateTwice(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	ran, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ran) < 10 {
		t.Fatalf("first migrate ran %d statements", len(ran))
	}
	for _, name := range []string{"events_raw", "events_speed", "events_speed_mv", "events_daily", "events_rejects", "events_drift", "events_lambda", "speed_flushes", "batch_runs", "batch_watermarks"} {
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", cfg.ClickHouse.Database, name).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: exists=%d err=%v", name, n, err)
		}
	}
	ran, err = schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ran {
		if !strings.Contains(s, "IF NOT EXISTS") {
			t.Errorf("second migrate changed something: %s", s)
		}
	}
	// The views answer on an empty schema.
	for _, q := range []string{"SELECT count() FROM `" + cfg.ClickHouse.Database + "`.events_lambda"} {
		var n uint64
		if err := conn.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
}

func TestMigrateUpgrade(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := cfg.ClickHouse.Database
	// Rows in raw feed speed; they must survive the rebuild a new speed dimension causes.
	if err := conn.Exec(ctx, "INSERT INTO `"+db+"`.events_raw (id, time, event, country, device, user_id, value) SELECT 'a', now(), 'view', 'de', 'ios', 'u1', 1.5 UNION ALL SELECT 'b', now(), 'buy', 'fr', 'web', 'u2', 2"); err != nil {
		t.Fatal(err)
	}
	up := *cfg
	up.Datasets = append([]config.Dataset(nil), cfg.Datasets...)
	d := &up.Datasets[0]
	d.Dimensions = append(append([]config.Dimension(nil), d.Dimensions...), config.Dimension{Name: "os", Field: "ctx.os"})
	d.Metrics = append(append([]config.Metric(nil), d.Metrics...), config.Metric{Name: "top", Type: "max", Field: "value"})
	ran, err := schema.Migrate(ctx, conn, &up, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(ran, "\n")
	for _, want := range []string{"events_raw` ADD COLUMN `os` String", "events_daily` ADD COLUMN `top` Nullable(Float64)", "CREATE MATERIALIZED VIEW", "CREATE VIEW"} {
		if !strings.Contains(joined, want) {
			t.Errorf("upgrade did not run %q; ran:\n%s", want, joined)
		}
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT countMerge(events) FROM `"+db+"`.events_speed").Scan(&n); err != nil || n != 2 {
		t.Errorf("speed after rebuild: %d events, err %v (want 2)", n, err)
	}
	// Removing the dimension again is refused, and nothing changes.
	_, err = schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), `has column "os" that the config no longer declares`) || !strings.Contains(err.Error(), "--allow-drop") {
		t.Fatalf("removing a dimension: %v", err)
	}
	cols, err := schema.Columns(ctx, conn, db, "events_raw")
	if err != nil || !containsCol(cols, "os") {
		t.Fatalf("refused migrate changed raw: %v %v", cols, err)
	}
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{AllowDrop: true}); err != nil {
		t.Fatal(err)
	}
	cols, _ = schema.Columns(ctx, conn, db, "events_raw")
	if containsCol(cols, "os") {
		t.Error("--allow-drop kept the column in raw")
	}
}

func containsCol(cols []schema.Column, name string) bool {
	for _, c := range cols {
		if c.Name == name {
			return true
		}
	}
	return false
}

// TestStatementsOnCurrentClickHouse runs every generated statement through chDB, a current
// ClickHouse engine; 18.16 runs them in TestMigrateTwice.
func TestStatementsOnCurrentClickHouse(t *testing.T) {
	stmts := schema.Statements(demo(t))
	chtest.RequireChDB(t, append(stmts, "SELECT count() FROM lambda.events_lambda"))
}
