package schema_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
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
	golden(t, demo(t), "testdata/demo.golden.sql")
}

// TestGoldenCluster is the demo schema in cluster mode: ON CLUSTER everywhere, Replicated local
// tables and Distributed tables.
func TestGoldenCluster(t *testing.T) {
	cfg := demo(t)
	cfg.ClickHouse.Cluster = "lambda"
	golden(t, cfg, "testdata/demo.cluster.golden.sql")
}

func golden(t *testing.T, cfg *config.Config, file string) {
	t.Helper()
	got := strings.Join(schema.Statements(cfg), ";\n\n") + ";\n"
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
	// Every view answers on an empty schema, and with speed rows (every column computed,
	// ratios included).
	for _, rows := range []bool{false, true} {
		if rows {
			if err := conn.Exec(ctx, "INSERT INTO `"+cfg.ClickHouse.Database+"`.events_raw (id, time, event, country, device, user_id, value) SELECT 'a', now(), 'view', 'de', 'ios', 'u1', 1.5 UNION ALL SELECT 'b', now(), 'buy', 'fr', 'web', 'u2', NULL"); err != nil {
				t.Fatal(err)
			}
		}
		for _, name := range viewNames(cfg) {
			q := "SELECT * FROM `" + cfg.ClickHouse.Database + "`.`" + name + "`"
			r, err := conn.Query(ctx, q)
			if err != nil {
				t.Errorf("%s: %v", q, err)
				continue
			}
			n := 0
			for r.Next() {
				n++
			}
			if err := r.Err(); err != nil || (rows && n == 0) {
				t.Errorf("%s: %d rows, %v", q, n, err)
			}
			r.Close()
		}
	}
}

// viewNames are the views (not materialized) a configuration makes.
func viewNames(cfg *config.Config) []string {
	var out []string
	for _, o := range schema.NewGenerator(cfg).Objects(cfg) {
		if o.Kind == schema.View && strings.HasPrefix(o.Create, "CREATE VIEW") {
			out = append(out, o.Name)
		}
	}
	return out
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
	// The new dimension has its grouping set's views.
	if err := conn.QueryRow(ctx, "SELECT count() FROM `"+db+"`.events_lambda_by_os").Scan(&n); err != nil {
		t.Errorf("the view of the new dimension's set: %v", err)
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
	// The views of the removed dimension's sets are gone; the others stay.
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name IN ('events_lambda_by_os', 'events_lambda_hourly_by_os', 'events_lambda_by_event_country_device_os')", db).Scan(&n); err != nil || n != 0 {
		t.Errorf("views of the removed dimension's sets: %d left, err %v", n, err)
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = 'events_lambda_by_country'", db).Scan(&n); err != nil || n != 1 {
		t.Errorf("events_lambda_by_country: %d, err %v", n, err)
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
	stmts = append(stmts, "INSERT INTO lambda.events_raw (id, time, event, country, device, user_id, value) SELECT 'a', now(), 'view', 'de', 'ios', 'u1', 1.5 UNION ALL SELECT 'b', now(), 'buy', 'fr', 'web', 'u2', NULL")
	for _, name := range viewNames(demo(t)) {
		// Every column, ratios included, over the speed rows the insert made.
		stmts = append(stmts, "SELECT throwIf(count() = 0), groupArray(tuple(*)) FROM lambda.`"+name+"`")
	}
	chtest.RequireChDB(t, stmts)
}

// TestMigrateCluster migrates the demo schema onto the local cluster (2 shards x 2 replicas)
// twice, checks every node has every object, that raw rows land on their shard and feed speed
// there through the view on the local tables, and that a change to a table is refused with a
// message naming it.
func TestMigrateCluster(t *testing.T) {
	cfg := chtest.ClusterConfig(t, nil)
	conn := chtest.NewCluster(t, cfg)
	ctx := context.Background()
	db := cfg.ClickHouse.Database
	ran, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ran {
		if !strings.Contains(s, "ON CLUSTER `lambda`") && !strings.HasPrefix(s, "INSERT") {
			t.Errorf("not ON CLUSTER: %s", firstLine(s))
		}
	}
	nodes := make([]driver.Conn, len(cfg.ClickHouse.Addr))
	for i, a := range cfg.ClickHouse.Addr {
		c, err := chconn.OpenNode(ctx, cfg.ClickHouse, a, 2)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		nodes[i] = c
	}
	want := map[string]string{
		"events_raw_local": "ReplicatedMergeTree", "events_raw": "Distributed",
		"events_speed_local": "ReplicatedAggregatingMergeTree", "events_speed": "Distributed", "events_speed_mv": "MaterializedView",
		"events_daily": "ReplicatedMergeTree", "events_rejects_local": "ReplicatedMergeTree", "events_rejects": "Distributed",
		"events_drift": "ReplicatedMergeTree", "events_lambda": "View", "events_lambda_hourly": "View", "events_hourly": "ReplicatedMergeTree",
		"events_raw_days_local": "ReplicatedSummingMergeTree", "events_raw_days": "Distributed", "events_raw_days_mv": "MaterializedView",
		"speed_flushes": "ReplicatedMergeTree", "batch_runs": "ReplicatedMergeTree", "batch_watermarks": "ReplicatedMergeTree", "schema_objects": "ReplicatedMergeTree",
	}
	for i, c := range nodes {
		for name, engine := range want {
			var got string
			if err := c.QueryRow(ctx, "SELECT engine FROM system.tables WHERE database = ? AND name = ?", db, name).Scan(&got); err != nil || got != engine {
				t.Errorf("node %s: %s has engine %q (err %v), want %s", chtest.ClusterNodes[i], name, got, err, engine)
			}
		}
	}

	// 1000 events through the Distributed raw table: each shard holds a part, both replicas
	// of a shard the same part, and speed holds every event once across the shards.
	if err := conn.Exec(ctx, "INSERT INTO `"+db+"`.events_raw (id, time, event, country, device, user_id, value) SELECT toString(number), now(), 'view', 'de', 'ios', toString(number % 7), number FROM system.numbers LIMIT 1000"); err != nil {
		t.Fatal(err)
	}
	counts := make([]uint64, len(nodes))
	for i, c := range nodes {
		// The view's rows replicate on their own: a read through the Distributed speed table
		// may reach the other replica of a shard.
		for _, table := range []string{"events_raw_local", "events_speed_local"} {
			if err := c.Exec(ctx, "SYSTEM SYNC REPLICA `"+db+"`."+table); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.QueryRow(ctx, "SELECT count() FROM `"+db+"`.events_raw_local").Scan(&counts[i]); err != nil {
			t.Fatal(err)
		}
	}
	if counts[0] != counts[1] || counts[2] != counts[3] || counts[0]+counts[2] != 1000 || counts[0] == 0 || counts[2] == 0 {
		t.Errorf("rows per node (s1r1 s1r2 s2r1 s2r2) = %v: want two shards, each replicated, adding to 1000", counts)
	}
	for _, c := range nodes {
		// The other replica of a shard fetches its speed part by replication (the view fires
		// only where the insert landed): wait for it before reading across the shards.
		for _, table := range []string{"events_speed_local", "events_raw_days_local"} {
			if err := c.Exec(ctx, "SYSTEM SYNC REPLICA `"+db+"`."+table); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, c := range nodes {
		var n, users uint64
		if err := c.QueryRow(ctx, "SELECT countMerge(events), uniqMerge(users) FROM `"+db+"`.events_speed").Scan(&n, &users); err != nil || n != 1000 || users != 7 {
			t.Errorf("node %s: speed has %d events, %d users (err %v), want 1000, 7", chtest.ClusterNodes[i], n, users, err)
		}
	}

	// Idempotent: a second run creates nothing.
	ran, err = schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ran {
		if !strings.HasPrefix(s, "CREATE DATABASE IF NOT EXISTS") {
			t.Errorf("second migrate changed something: %s", firstLine(s))
		}
	}
	// A new dimension would alter tables: refused, naming the table and the change.
	up := *cfg
	up.Datasets = append([]config.Dataset(nil), cfg.Datasets...)
	d := &up.Datasets[0]
	d.Dimensions = append(append([]config.Dimension(nil), d.Dimensions...), config.Dimension{Name: "os", Field: "ctx.os"})
	_, err = schema.Migrate(ctx, conn, &up, schema.MigrateOptions{})
	if err == nil || !strings.Contains(err.Error(), "events_raw_local needs ADD COLUMN `os` String") || !strings.Contains(err.Error(), "cluster mode") {
		t.Errorf("adding a dimension in cluster mode: %v", err)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// TestClusterStatementsOnCurrentClickHouse runs the cluster schema through chDB with what chDB
// cannot have taken out: no ON CLUSTER, plain MergeTree engines for the Replicated ones, and a
// Merge table over the local table for each Distributed one (reads alike). The views and the
// materialized view on the local tables run as generated.
func TestClusterStatementsOnCurrentClickHouse(t *testing.T) {
	cfg := demo(t)
	cfg.ClickHouse.Cluster = "lambda"
	var stmts []string
	replicated := regexp.MustCompile(`Replicated(\w*MergeTree)\('[^']*', '[^']*'\)`)
	distributed := regexp.MustCompile("Distributed\\(`lambda`, `lambda`, `(\\w+)`, [^\\n]*\\)$")
	for _, s := range schema.Statements(cfg) {
		s = strings.ReplaceAll(s, " ON CLUSTER `lambda`", "")
		s = replicated.ReplaceAllString(s, "$1")
		s = distributed.ReplaceAllString(s, "Merge(`lambda`, '^$1$$')")
		if strings.Contains(s, "CLUSTER") || strings.Contains(s, "Replicated") || strings.Contains(s, "Distributed") {
			t.Fatalf("statement not rewritten for chDB:\n%s", s)
		}
		stmts = append(stmts, s)
	}
	chtest.RequireChDB(t, append(stmts,
		"INSERT INTO lambda.events_raw_local (id, time, event, country, device, user_id, value) SELECT toString(number), now(), 'view', 'de', 'ios', toString(number % 7), number FROM numbers(100)",
		"SELECT throwIf(countMerge(events) != 100) FROM lambda.events_speed",
		"SELECT count() FROM lambda.events_lambda"))
}

// oldLayout is a rollup table's CREATE statement as versions before RollupGranularity made it:
// sorted by time first, the server's default granularity.
func oldLayout(create, timeCol string) string {
	create = strings.Replace(create, "ORDER BY (`grouping`, `"+timeCol+"`", "ORDER BY (`"+timeCol+"`, `grouping`", 1)
	return strings.Replace(create, fmt.Sprintf(" SETTINGS index_granularity = %d", schema.RollupGranularity), "", 1)
}

// TestMigrateRelayout upgrades rollup tables of the old layout (time first in the sorting key,
// 8192 rows a granule) and a speed table of the old granularity: migrate copies their rows into
// the new layout, keeps every row, feeds speed from raw again, and does nothing the next time.
func TestMigrateRelayout(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	db := cfg.ClickHouse.Database
	rollups := map[string]string{"events_daily": "day", "events_hourly": "hour"}
	for _, o := range schema.NewGenerator(cfg).Objects(cfg) {
		timeCol, ok := rollups[o.Name]
		if !ok {
			continue
		}
		old := oldLayout(o.Create, timeCol)
		if old == o.Create {
			t.Fatalf("%s: the test's old layout is the new one:\n%s", o.Name, o.Create)
		}
		for _, sql := range []string{
			"DROP TABLE `" + db + "`.`" + o.Name + "`",
			old,
			// Rows of two days and two sets, states included.
			fmt.Sprintf("INSERT INTO `%s`.`%s` (`%s`, grouping, country, events, users, users_state, run_id) SELECT toDate('2026-03-01') + number %% 2, if(number %% 3 = 0, '', 'country'), if(number %% 3 = 0, '', toString(number %% 5)), number, 1, uniqState(toString(number)), 'r1' FROM (SELECT number FROM system.numbers LIMIT 30) GROUP BY number",
				db, o.Name, timeCol),
		} {
			if err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	digest := func(table string) (n, sum, uniq uint64) {
		t.Helper()
		q := fmt.Sprintf("SELECT count(), sum(events), uniqMerge(users_state) FROM `%s`.`%s`", db, table)
		if err := conn.QueryRow(ctx, q).Scan(&n, &sum, &uniq); err != nil {
			t.Fatal(err)
		}
		return n, sum, uniq
	}
	before := map[string][3]uint64{}
	for table := range rollups {
		n, s, u := digest(table)
		before[table] = [3]uint64{n, s, u}
	}

	ran, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(ran, "\n")
	for table, timeCol := range rollups {
		if !strings.Contains(joined, "RENAME TABLE `"+db+"`.`"+table+"` TO") {
			t.Errorf("%s was not copied into the new layout; ran:\n%s", table, joined)
		}
		n, s, u := digest(table)
		if got := [3]uint64{n, s, u}; got != before[table] || n != 30 {
			t.Errorf("%s: rows, sum, uniq %v after the copy, %v before", table, got, before[table])
		}
		var key, engine string
		if err := conn.QueryRow(ctx, "SELECT sorting_key, engine_full FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&key, &engine); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(strings.ReplaceAll(key, "`", ""), "grouping, "+timeCol) || schema.Granularity(engine) != schema.RollupGranularity {
			t.Errorf("%s: sorting key %q, engine %q after the copy", table, key, engine)
		}
	}
	// <ds>_speed of the old granularity: copied with its states, and its view feeds it after.
	for _, o := range schema.NewGenerator(cfg).Objects(cfg) {
		if o.Name != "events_speed" {
			continue
		}
		old := strings.Replace(o.Create, fmt.Sprintf(" SETTINGS index_granularity = %d", schema.SpeedGranularity), "", 1)
		for _, sql := range []string{
			"DROP TABLE `" + db + "`.events_speed_mv",
			"DROP TABLE `" + db + "`.events_speed",
			old,
			"INSERT INTO `" + db + "`.events_speed (minute, event, country, device, events, users) SELECT toDateTime('2026-03-01 00:00:00', 'UTC') + number * 60, 'view', 'de', 'ios', countState(), uniqState(toString(number)) FROM (SELECT number FROM system.numbers LIMIT 10) GROUP BY number",
		} {
			if err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, "INSERT INTO `"+db+"`.events_raw (id, time, event, country, device, user_id, value) SELECT 'a', now(), 'view', 'de', 'ios', 'u1', 1.5"); err != nil {
		t.Fatal(err)
	}
	var speedEvents, speedUsers uint64
	var engine string
	if err := conn.QueryRow(ctx, "SELECT countMerge(events), uniqMerge(users) FROM `"+db+"`.events_speed").Scan(&speedEvents, &speedUsers); err != nil || speedEvents != 11 || speedUsers != 11 {
		t.Errorf("events_speed after the copy and an insert into raw: %d events, %d users, err %v (want 11, 11)", speedEvents, speedUsers, err)
	}
	if err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = ? AND name = 'events_speed'", db).Scan(&engine); err != nil || schema.Granularity(engine) != schema.SpeedGranularity {
		t.Errorf("events_speed's engine after the copy: %q, %v", engine, err)
	}

	var left uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name LIKE '%relayout%'", db).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d tables of the copy left, err %v", left, err)
	}
	// The views read the renamed tables.
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM `"+db+"`.events_lambda_hourly_by_country").Scan(&n); err != nil {
		t.Errorf("the hourly view after the copy: %v", err)
	}
	ran, err = schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ran {
		if !strings.Contains(s, "IF NOT EXISTS") {
			t.Errorf("migrate after the copy changed something: %s", s)
		}
	}
}

func TestGranularityAndPlainEngine(t *testing.T) {
	for full, want := range map[string]int{
		"MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (day, grouping) SETTINGS index_granularity = 8192": 8192,
		"MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (grouping, day) SETTINGS index_granularity = 64":   64,
		"MergeTree ORDER BY x SETTINGS index_granularity_bytes = 10485760, index_granularity = 256":         256,
		"MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (day, grouping)":                                   8192,
	} {
		if got := schema.Granularity(full); got != want {
			t.Errorf("Granularity(%q) = %d, want %d", full, got, want)
		}
	}
	full := "ReplicatedMergeTree('/clickhouse/lambda/all/db/events_daily', '{shard}-{replica}') PARTITION BY toYYYYMMDD(day) ORDER BY (grouping, day) SETTINGS index_granularity = 64"
	if got, err := schema.PlainEngine(full); err != nil || got != "MergeTree PARTITION BY toYYYYMMDD(day) ORDER BY (grouping, day) SETTINGS index_granularity = 64" {
		t.Errorf("PlainEngine = %q, %v", got, err)
	}
	if _, err := schema.PlainEngine("MergeTree ORDER BY x"); err == nil {
		t.Error("PlainEngine of a plain engine: no error")
	}
}
