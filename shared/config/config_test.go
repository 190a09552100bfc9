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
		"unknown_key":    `unknown_key.bad.yaml:14: datasets[0] (events).colour: unknown key "colour" (known here: batch, dimensions,`,
		"typo_key":       `typo_key.bad.yaml:13: datasets[0] (events).raw_retension: unknown key "raw_retension" (did you mean "raw_retention"?)`,
		"not_a_number":   `not_a_number.bad.yaml:3: speed.flush_rows: want a whole number, got "many"`,
		"not_a_list":     `not_a_list.bad.yaml:1: clickhouse.addr: want a list ([a, b], or one item a line starting with -), got "127.0.0.1:9000"`,
		"repeated_key":   `repeated_key.bad.yaml:7: datasets[0] (events).topic: repeated key (first at line 5)`,
		"sasl_mech":      `sasl_mech.bad.yaml:4: kafka.sasl.mechanism: unknown mechanism "SCRAM-SHA-1" (use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)`,
		"sasl_password":  `sasl_password.bad.yaml:4: kafka.sasl.password: SASL PLAIN needs a password: set password_file, or LAMBDA_KAFKA_SASL_PASSWORD`,
		"password_both":  `password_both.bad.yaml:1: clickhouse.password_file: set password or password_file, not both`,
		"password_file":  `password_file.bad.yaml:1: clickhouse.password_file: open testdata/no-such-secret: no such file or directory`,
		"tls_key":        `tls_key.bad.yaml:2: kafka.tls.key_file: a cert_file needs its key_file`,
		"tls_disabled":   `tls_disabled.bad.yaml:1: clickhouse.tls.ca_file: is set but clickhouse.tls.enabled is false: set enabled: true, or remove it`,
		"tls_ca":         `tls_ca.bad.yaml:1: clickhouse.tls.ca_file: testdata/good.yaml holds no PEM certificate`,
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
		"duration":       `duration.bad.yaml:13: datasets[0] (events).batch.grace: invalid duration "soon" (use a number with h, m, s or d: 2160h, 90d, 1h30m)`,
		"lookback":       "datasets[0] (events).batch.lookback: 48h0m0s must be shorter than raw_retention (24h0m0s)",
		"retention":      "datasets[0] (events).speed.retention: 12h0m0s is shorter than 24h + batch.grace + one schedule period (48h30m0s)",
		"speed_dims":     `datasets[0] (events).speed.dimensions[1]: unknown dimension "city"`,
		"grouping_sets":  `datasets[0] (events).batch.grouping_sets[0][1]: unknown dimension "os"`,
		"no_id":          "datasets[0] (events).id_field: an id field is required",
		"database":       `clickhouse.database: "Lambda-DB" is not a valid name`,
		"no_datasets":    "datasets: at least one dataset is required",
		"negative":       "serving.max_rows: must be positive, got -1",
		"not_yaml":       "not_yaml.bad.yaml:3: invalid YAML: did not find expected",
		"metric_field":   `datasets[0] (events).metrics[2].name: "value" is also the raw column of a metric field`,
		"lease":          `batch.lease.path: "lambda/lease/" is not a ZooKeeper path`,
		"max_memory":     "batch.max_memory: must be at least 1MiB, got 512KiB",
		"ratio_field":    "datasets[0] (events).metrics[3].field: a ratio takes no field",
		"ratio_level":    "datasets[0] (events).metrics[3].level: only a quantile takes a level",
		"ratio_missing":  "datasets[0] (events).metrics[3].denominator: a ratio needs a denominator",
		"ratio_unknown":  `datasets[0] (events).metrics[3].denominator: unknown metric "orders"`,
		"ratio_nested":   `datasets[0] (events).metrics[4].numerator: "revenue_per_event" is a ratio itself`,
		"ratio_parts":    "datasets[0] (events).metrics[3].numerator: only a ratio takes a numerator and a denominator",
		"decimals_type":  "datasets[0] (events).metrics[3].decimals: only a sum takes decimals",
		"decimals_range": "datasets[0] (events).metrics[2].decimals: decimals must be 1 to 9, got 12",
		"time_zone":      `time_zone.bad.yaml:13: datasets[0] (events).time_zone: unknown time zone "America/Nowhere": use an IANA name such as America/New_York`,
		"view_names":     `datasets[0] (events).batch.grouping_sets: the grouping sets "country_device" and "country,device" both make the view <dataset>_lambda_by_country_device`,
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
		if !strings.HasPrefix(err.Error(), f+":") {
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
	if d.TimeZone != "UTC" || d.Location() != time.UTC {
		t.Errorf("time_zone default: %q %v", d.TimeZone, d.Location())
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
	// A ratio is a metric of the API, never a stored column.
	if n := len(d.Specs()); n != 3 {
		t.Errorf("want 3 stored metrics, got %d: %+v", n, d.Specs())
	}
	if r, ok := d.RatioOf("revenue_per_user"); !ok || r.Numerator != "revenue" || r.Denominator != "users" || len(d.Ratios()) != 1 {
		t.Errorf("ratio: %+v %v", d.Ratios(), ok)
	}
	if got := strings.Join(d.MetricNames(), ","); got != "events,users,revenue,revenue_per_user" {
		t.Errorf("metric names: %s", got)
	}
}

func TestDemoConfig(t *testing.T) {
	cfg, err := Parse("<demo>", DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Datasets) != 1 || len(cfg.Datasets[0].Specs()) != 4 || len(cfg.Datasets[0].Ratios()) != 1 {
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
	if err != nil {
		t.Fatalf("max_memory from YAML: %v", err)
	}
	if cfg.Batch.MaxMemory != 3<<30 {
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

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	chFile := filepath.Join(dir, "ch")
	if err := os.WriteFile(chFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := `clickhouse: {addr: ["127.0.0.1:9440"], password_file: ` + chFile + `, tls: {enabled: true, server_name: ch.internal}}
kafka:
  brokers: ["127.0.0.1:9093"]
  tls: {enabled: true, insecure_skip_verify: true}
  sasl: {mechanism: scram-sha-512, username: lambda, password: from-yaml}
datasets:
  - {name: events, topic: events, id_field: id, time_field: ts, dimensions: [{name: country}], metrics: [{name: events, type: count}]}
`
	f := func(env map[string]string, check func(c *Config)) {
		t.Helper()
		cfg, err := Parse("secrets.yaml", []byte(yaml), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Fatal(err)
		}
		check(cfg)
	}
	f(nil, func(c *Config) {
		if c.ClickHouse.Password != "s3cret" {
			t.Errorf("clickhouse password from file: %q", c.ClickHouse.Password)
		}
		if c.Kafka.SASL.Mechanism != ScramSHA512 || c.Kafka.SASL.Password != "from-yaml" {
			t.Errorf("sasl: %+v", c.Kafka.SASL)
		}
		tc, err := c.ClickHouse.TLS.Config()
		if err != nil || tc == nil || tc.ServerName != "ch.internal" {
			t.Errorf("clickhouse tls: %+v, %v", tc, err)
		}
	})
	f(map[string]string{"LAMBDA_CLICKHOUSE_PASSWORD": "env-ch", "LAMBDA_KAFKA_SASL_PASSWORD": "env-kafka", "LAMBDA_KAFKA_TLS_ENABLED": "false",
		"LAMBDA_KAFKA_SASL_USERNAME": "svc"}, func(c *Config) {
		if c.ClickHouse.Password != "env-ch" || c.ClickHouse.PasswordFile != "" {
			t.Errorf("clickhouse password from env: %q (file %q)", c.ClickHouse.Password, c.ClickHouse.PasswordFile)
		}
		if c.Kafka.SASL.Password != "env-kafka" || c.Kafka.SASL.Username != "svc" {
			t.Errorf("sasl from env: %+v", c.Kafka.SASL)
		}
	})
	kFile := filepath.Join(dir, "kafka")
	if err := os.WriteFile(kFile, []byte("from-file"), 0o600); err != nil {
		t.Fatal(err)
	}
	f(map[string]string{"LAMBDA_KAFKA_SASL_PASSWORD_FILE": kFile}, func(c *Config) {
		if c.Kafka.SASL.Password != "from-file" {
			t.Errorf("sasl password from the file the environment names: %q", c.Kafka.SASL.Password)
		}
	})

	// A bad value from the environment names the variable, not a line of the file.
	_, err := Parse("secrets.yaml", []byte(yaml), func(k string) (string, bool) {
		if k == "LAMBDA_KAFKA_TLS_ENABLED" {
			return "maybe", true
		}
		return "", false
	})
	if want := `secrets.yaml: kafka.tls.enabled: want true or false, got "maybe" (from LAMBDA_KAFKA_TLS_ENABLED)`; err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// TestCheckEveryProblem: one file with many problems reports each, in file order, with its line.
func TestCheckEveryProblem(t *testing.T) {
	data := `clickhouse:
  addr: 127.0.0.1:9000
  max_open_conns: lots
kafka: {brokers: ["k:9092"], sasl: {mechanism: PLAIN}}
speed: {flush_interval: 1 second}
datasets:
  - name: events
    topic: events
    id_field: event_id
    time_field: ts
    dimensions: [{name: country}, {name: time}]
    metrics:
      - {name: events, type: count}
      - {name: p99, type: quantile, field: value, level: high}
      - {name: users, type: uniqq, field: user_id}
    raw_retention: 90days
    speed: {retention: 72h, dimensionz: [country]}
`
	_, ps := Check("many.yaml", []byte(data), nil, false)
	var got []string
	for _, p := range ps {
		got = append(got, p.Error())
	}
	want := []string{
		`many.yaml:2: clickhouse.addr: want a list ([a, b], or one item a line starting with -), got "127.0.0.1:9000"`,
		`many.yaml:3: clickhouse.max_open_conns: want a whole number, got "lots"`,
		`many.yaml:4: kafka.sasl.password: SASL PLAIN needs a password: set password_file, or LAMBDA_KAFKA_SASL_PASSWORD`,
		`many.yaml:4: kafka.sasl.username: SASL PLAIN needs a username`,
		`many.yaml:5: speed.flush_interval: invalid duration "1 second" (use a number with h, m, s or d: 2160h, 90d, 1h30m)`,
		`many.yaml:11: datasets[0] (events).dimensions[1].name: "time" is reserved (reserved: id, time, day, minute, grouping, source, exact, dataset, run_id, payload, reason, topic, partition, offset, names starting with _ or ending in _state)`,
		`many.yaml:14: datasets[0] (events).metrics[1].level: want a number, got "high"`,
		`many.yaml:15: datasets[0] (events).metrics[2].type: unknown metric type "uniqq" (known: count, sum, min, max, avg, uniq, quantile, ratio)`,
		`many.yaml:16: datasets[0] (events).raw_retention: invalid duration "90days" (use a number with h, m, s or d: 2160h, 90d, 1h30m)`,
		`many.yaml:17: datasets[0] (events).speed.dimensionz: unknown key "dimensionz" (did you mean "dimensions"?)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTimeZone(t *testing.T) {
	f := func(name string, wantErr bool) {
		t.Helper()
		loc, err := LoadZone(name)
		if (err != nil) != wantErr {
			t.Fatalf("LoadZone(%q): %v", name, err)
		}
		if err == nil && name != "" && loc.String() != name {
			t.Fatalf("LoadZone(%q) = %v", name, loc)
		}
	}
	f("", false)
	f("UTC", false)
	f("America/New_York", false)
	f("Asia/Kolkata", false)
	f("America/Nowhere", true)
	f("Local", true)
	f("/etc/localtime", true)
	f("../zoneinfo/UTC", true)
	d := Dataset{TimeZone: "America/New_York"}
	if d.Location().String() != "America/New_York" {
		t.Fatalf("Location: %v", d.Location())
	}
}
