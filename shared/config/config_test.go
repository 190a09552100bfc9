package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBadConfigs(t *testing.T) {
	cases := map[string]string{
		"unknown_key":    "field colour not found",
		"bad_name":       `datasets[0].name: "Events" is not a valid name`,
		"dup_dataset":    `datasets[1].name: dataset "events" is already declared by datasets[0]`,
		"no_topic":       "datasets[0] (events).topic: a topic is required",
		"metric_type":    `datasets[0] (events).metrics[3].type: unknown metric type "avgg"`,
		"quantile_level": "datasets[0] (events).metrics[3].level: a quantile needs 0 < level < 1, got 1.5",
		"no_field":       "datasets[0] (events).metrics[3].field: a max metric needs a field",
		"dup_metric":     `datasets[0] (events).metrics[3].name: "country" is already used by dimensions[0]`,
		"reserved":       `datasets[0] (events).metrics[3].name: "time" is reserved`,
		"field_kinds":    `datasets[0] (events).metrics[3].field: field "user_id" is used both as a distinct-count key and as a number`,
		"cron":           `datasets[0] (events).batch.schedule: invalid cron spec "61 * * * *"`,
		"duration":       `invalid duration "soon"`,
		"lookback":       "datasets[0] (events).batch.lookback: 48h0m0s must be shorter than raw_retention (24h0m0s)",
		"retention":      "datasets[0] (events).speed.retention: 12h0m0s is shorter than 24h + batch.grace + one schedule period (48h30m0s)",
		"speed_dims":     `datasets[0] (events).speed.dimensions[1]: unknown dimension "city"`,
		"grouping_sets":  `datasets[0] (events).batch.grouping_sets[0][1]: unknown dimension "os"`,
		"no_id":          "datasets[0] (events).id_field: an id field is required",
		"database":       `clickhouse.database: "Lambda-DB" is not a valid name`,
		"no_datasets":    "datasets: at least one dataset is required",
		"negative":       "serving.max_rows: must be positive, got -1",
		"not_yaml":       "did not find expected",
		"metric_field":   `datasets[0] (events).metrics[2].name: "value" is also the raw column of a metric field`,
		"lease":          `batch.lease.path: "lambda/lease/" is not a ZooKeeper path`,
		"max_memory":     "batch.max_memory: must be at least 1MiB, got 512KiB",
	}
	files, err := filepath.Glob("testdata/*.bad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(cases) {
		t.Fatalf("%d bad files but %d cases: every file needs a case", len(files), len(cases))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".bad.yaml")
		want, ok := cases[name]
		if !ok {
			t.Errorf("%s: no expected message", f)
			continue
		}
		_, err := Load(f)
		if err == nil {
			t.Errorf("%s: loaded without error, want %q", f, want)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s:\n got: %v\nwant: %s", f, err, want)
		}
		if !strings.HasPrefix(err.Error(), f+": ") {
			t.Errorf("%s: error does not name the file: %v", f, err)
		}
	}
}

func TestGoodConfig(t *testing.T) {
	t.Setenv("LAMBDA_CLICKHOUSE_ADDR", "ch1:9000, ch2:9000")
	t.Setenv("LAMBDA_API_KEYS", "k1,k2")
	t.Setenv("LAMBDA_SERVING_LISTEN", "0.0.0.0:9999")
	cfg, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.ClickHouse.Addr, "|"); got != "ch1:9000|ch2:9000" {
		t.Errorf("addr from env: %q", got)
	}
	if got := strings.Join(cfg.Serving.APIKeys, "|"); got != "k1|k2" {
		t.Errorf("api keys from env: %q", got)
	}
	if cfg.Serving.Listen != "0.0.0.0:9999" || cfg.ClickHouse.Database != "lambda" {
		t.Errorf("listen %q database %q", cfg.Serving.Listen, cfg.ClickHouse.Database)
	}
	d, ok := cfg.Dataset("events")
	if !ok {
		t.Fatal("dataset events missing")
	}
	if d.BatchConf.Grace.D() != 30*time.Minute || d.SpeedConf.Retention.D() != 72*time.Hour || d.RawRetention.D() != 90*24*time.Hour {
		t.Errorf("defaults: %+v %+v %v", d.BatchConf, d.SpeedConf, d.RawRetention.D())
	}
	cols := d.ValueColumns()
	if len(cols) != 2 || cols[0].Name != "user_id" || cols[0].Type != "String" || cols[1].Name != "value" || cols[1].Type != "Nullable(Float64)" {
		t.Errorf("value columns: %+v", cols)
	}
	var sets []string
	for _, s := range d.GroupingSets() {
		sets = append(sets, "["+GroupingName(s)+"]")
	}
	if got := strings.Join(sets, " "); got != "[] [country] [device] [country,device]" {
		t.Errorf("grouping sets: %s", got)
	}
	if cfg.Version == "" {
		t.Error("no version")
	}
}

func TestDemoConfig(t *testing.T) {
	cfg, err := Parse("<demo>", DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Datasets) != 1 || len(cfg.Datasets[0].Metrics) != 4 {
		t.Fatalf("demo: %+v", cfg.Datasets)
	}
}

func TestParseDuration(t *testing.T) {
	f := func(s string, want time.Duration, ok bool) {
		t.Helper()
		got, err := ParseDuration(s)
		if (err == nil) != ok || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v", s, got, err)
		}
	}
	f("90d", 90*24*time.Hour, true)
	f("30m", 30*time.Minute, true)
	f("1h30m", 90*time.Minute, true)
	f("d", 0, false)
	f("-1d", 0, false)
	f("soon", 0, false)
}

func TestParseByteSize(t *testing.T) {
	f := func(s string, want int64, ok bool) {
		t.Helper()
		got, err := ParseByteSize(s)
		if (err == nil) != ok || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v", s, got, err)
		}
	}
	f("2GiB", 2<<30, true)
	f("512 MiB", 512<<20, true)
	f("1.5GB", 1_500_000_000, true)
	f("4096", 4096, true)
	f("10B", 10, true)
	f("lots", 0, false)
	f("-1MiB", 0, false)
	f("2GiBs", 0, false)
	if got := ByteSize(2 << 30).String(); got != "2GiB" {
		t.Errorf("String: %s", got)
	}
	if got := ByteSize(1000).String(); got != "1000B" {
		t.Errorf("String: %s", got)
	}
	cfg, err := Parse("t.yaml", []byte("batch: {max_memory: 3GiB}\n"+minimalYAML), nil)
	if err != nil || cfg.Batch.MaxMemory != 3<<30 {
		t.Errorf("max_memory from YAML: %v, %v", cfg.Batch.MaxMemory, err)
	}
	if cfg, err := Parse("t.yaml", []byte(minimalYAML), nil); err != nil || cfg.Batch.MaxMemory != 2<<30 {
		t.Errorf("default max_memory: %v, %v", cfg.Batch.MaxMemory, err)
	}
	env := func(v string) func(string) (string, bool) {
		return func(k string) (string, bool) { return v, k == "LAMBDA_BATCH_MAX_MEMORY" }
	}
	if cfg, err := Parse("t.yaml", []byte(minimalYAML), env("4GiB")); err != nil || cfg.Batch.MaxMemory != 4<<30 {
		t.Errorf("max_memory from LAMBDA_BATCH_MAX_MEMORY: %v, %v", cfg.Batch.MaxMemory, err)
	}
	if _, err := Parse("t.yaml", []byte(minimalYAML), env("much")); err == nil || !strings.Contains(err.Error(), "LAMBDA_BATCH_MAX_MEMORY") {
		t.Errorf("bad LAMBDA_BATCH_MAX_MEMORY: %v", err)
	}
}

const minimalYAML = `datasets:
  - {name: events, topic: events, id_field: id, time_field: ts, dimensions: [{name: country}], metrics: [{name: events, type: count}]}
`

func TestConfigFileMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("want not-exist error, got %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
