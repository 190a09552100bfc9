// Package config holds the one YAML configuration of the platform: where ClickHouse and Kafka
// are, how the layers behave, and the datasets, which are declared here and nowhere in code.
//
// Load decodes strictly (unknown keys are errors), applies defaults and environment overrides,
// and validates. Every validation error names the file, the dataset and the field, for example
// `lambda.yaml: datasets[1].metrics[2].type: unknown metric type "avgg"`.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// DemoYAML is the built-in demo configuration used when no file is given.
//
//go:embed demo.yaml
var DemoYAML []byte

// Config is the whole configuration.
type Config struct {
	ClickHouse ClickHouse `yaml:"clickhouse"`
	Kafka      Kafka      `yaml:"kafka"`
	Speed      Speed      `yaml:"speed"`
	Batch      Batch      `yaml:"batch"`
	Serving    Serving    `yaml:"serving"`
	Datasets   []Dataset  `yaml:"datasets"`

	// File is where the configuration was read from ("<demo>" for the built-in one).
	File string `yaml:"-"`
	// Version identifies the configuration's content; caches key on it.
	Version string `yaml:"-"`

	// env maps the fields the environment set to the variable that set them.
	env map[string]string
}

// ClickHouse says how to reach ClickHouse.
type ClickHouse struct {
	Addr     []string `yaml:"addr"`
	Database string   `yaml:"database"`
	Username string   `yaml:"username"`
	Password string   `yaml:"password"`
	// PasswordFile names a file holding the password (a mounted secret); one trailing newline
	// is ignored. Load reads it into Password.
	PasswordFile string `yaml:"password_file"`
	// TLS, when enabled, speaks TLS to the native secure port (9440 by convention).
	TLS TLS `yaml:"tls"`
	// Cluster, when set, makes migrate create replicated local tables ON CLUSTER and
	// Distributed tables under the user-facing names.
	Cluster string `yaml:"cluster"`
	// ZooKeeperPath is the prefix of the replicated tables' ZooKeeper paths in cluster mode.
	ZooKeeperPath string `yaml:"zookeeper_path"`
	// HTTPAddr is the HTTP interface, used only by benchmarks and tools; the platform itself
	// speaks the native protocol.
	HTTPAddr     string   `yaml:"http_addr"`
	DialTimeout  Duration `yaml:"dial_timeout"`
	QueryTimeout Duration `yaml:"query_timeout"`
	// InsertTimeout bounds one insert; the batch layer subtracts it when it looks for late rows.
	InsertTimeout Duration `yaml:"insert_timeout"`
	MaxOpenConns  int      `yaml:"max_open_conns"`
}

// Kafka says how to reach Kafka.
type Kafka struct {
	Brokers  []string `yaml:"brokers"`
	ClientID string   `yaml:"client_id"`
	// GroupPrefix prefixes the consumer group of each dataset: "<prefix>-<dataset>".
	GroupPrefix string `yaml:"group_prefix"`
	// Version is the Kafka protocol version sarama speaks, e.g. "2.8.0".
	Version string `yaml:"version"`
	TLS     TLS    `yaml:"tls"`
	SASL    SASL   `yaml:"sasl"`
}

// Speed configures the speed layer process.
type Speed struct {
	MetricsListen string   `yaml:"metrics_listen"`
	FlushRows     int      `yaml:"flush_rows"`
	FlushBytes    int      `yaml:"flush_bytes"`
	FlushInterval Duration `yaml:"flush_interval"`
	// DedupWindow is how long an id is remembered; DedupMaxIDs caps the memory it takes.
	DedupWindow   Duration `yaml:"dedup_window"`
	DedupMaxIDs   int      `yaml:"dedup_max_ids"`
	MaxEventBytes int      `yaml:"max_event_bytes"`
	// FutureSkew is how far in the future an event time may be before it is rejected.
	FutureSkew Duration `yaml:"future_skew"`
	// RetryMax caps the backoff between insert retries.
	RetryMax Duration `yaml:"retry_max"`
}

// Batch configures the batch layer process.
type Batch struct {
	MetricsListen string `yaml:"metrics_listen"`
	// MaxThreads is ClickHouse's max_threads for the recompute query; 0 leaves the server's.
	MaxThreads int `yaml:"max_threads"`
	// MaxMemory is the per-query memory limit (ClickHouse's max_memory_usage) of a run's
	// queries. A run splits a day into as many passes (id buckets, key buckets, value ranges,
	// time chunks) as it needs for each query's estimate to stay within half of it, so the
	// memory a day takes is bounded by this setting, not by the day's size.
	MaxMemory ByteSize `yaml:"max_memory"`
	// Lease, when its ZooKeeper is set, lets several `lambda batch` processes run: per dataset
	// one holds the lease and schedules, the others wait to take over.
	Lease Lease `yaml:"lease"`
}

// Lease is the batch scheduler's lease in ZooKeeper (or ClickHouse Keeper, which speaks its
// protocol): an ephemeral node <Path>/<database>/<dataset>, held for the life of a session.
type Lease struct {
	// ZooKeeper lists the ensemble's client addresses; empty disables the lease (run exactly one
	// `lambda batch` then).
	ZooKeeper []string `yaml:"zookeeper"`
	// Path is where the lease nodes live, one per database and dataset.
	Path string `yaml:"path"`
	// SessionTimeout is how long ZooKeeper keeps a silent holder's session: a killed holder's
	// lease passes to another process about this long after it died.
	SessionTimeout Duration `yaml:"session_timeout"`
}

// Serving configures the HTTP API.
type Serving struct {
	Listen       string   `yaml:"listen"`
	APIKeys      []string `yaml:"api_keys"`
	CORSOrigins  []string `yaml:"cors_origins"`
	MaxRows      int      `yaml:"max_rows"`
	MaxBuckets   int      `yaml:"max_buckets"`
	MaxBodyBytes int64    `yaml:"max_body_bytes"`
	QueryTimeout Duration `yaml:"query_timeout"`
	CacheEntries int      `yaml:"cache_entries"`
	// DashboardsDir overrides the embedded dashboards with files from disk.
	DashboardsDir string `yaml:"dashboards_dir"`
}

// Dataset declares one dataset: where its events come from and what is computed of them.
type Dataset struct {
	Name         string      `yaml:"name"`
	Topic        string      `yaml:"topic"`
	IDField      string      `yaml:"id_field"`
	TimeField    string      `yaml:"time_field"`
	Dimensions   []Dimension `yaml:"dimensions"`
	Metrics      []Metric    `yaml:"metrics"`
	SpeedConf    SpeedConf   `yaml:"speed"`
	BatchConf    BatchConf   `yaml:"batch"`
	RawRetention Duration    `yaml:"raw_retention"`
	// TimeZone is the IANA name of the zone whose days the dataset's days are (default UTC):
	// daily partitions, sealing, watermarks, the views' day and the API's day, week and month
	// buckets. Location returns it loaded.
	TimeZone string `yaml:"time_zone"`
}

// Location is the dataset's time zone (TimeZone), UTC when it is unset or invalid (Validate
// refuses an invalid one).
func (d *Dataset) Location() *time.Location {
	loc, err := LoadZone(d.TimeZone)
	if err != nil {
		return time.UTC
	}
	return loc
}

// zones caches loaded time zones by name: a Location is immutable, and loading one reads the
// zone database.
var zones sync.Map

// LoadZone loads an IANA time zone by name ("" and "UTC" are UTC), caching it. A request's
// time_zone is loaded with it too.
func LoadZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	// time.LoadLocation also takes "Local" and paths, which a config must not depend on.
	if name == "Local" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
		return nil, fmt.Errorf("unknown time zone %q: use an IANA name such as America/New_York", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: use an IANA name such as America/New_York", name)
	}
	zones.Store(name, loc)
	return loc, nil
}

// Dimension is a string attribute events are grouped by. Field may be a dotted path.
type Dimension struct {
	Name  string `yaml:"name"`
	Field string `yaml:"field"`
}

// Metric is a value computed over events. Type is one of count, sum, min, max, avg, uniq,
// quantile; every type but count reads Field; quantile needs 0 < Level < 1.
//
// Type ratio is a derived metric: Numerator / Denominator, two other (stored) metrics of the
// dataset. It is stored nowhere; readers compute it from the merged values of its parts.
type Metric struct {
	Name        string  `yaml:"name"`
	Type        string  `yaml:"type"`
	Field       string  `yaml:"field"`
	Level       float64 `yaml:"level"`
	Numerator   string  `yaml:"numerator,omitempty"`
	Denominator string  `yaml:"denominator,omitempty"`
	// Decimals makes a sum exact to that many decimals (money: 2): values rounded to them and
	// summed as integers of that scale, the result a Decimal. 0: a Float64 sum.
	Decimals int `yaml:"decimals,omitempty"`
}

// SpeedConf is a dataset's speed view.
type SpeedConf struct {
	Retention Duration `yaml:"retention"`
	// Dimensions the per-minute aggregates keep; empty keeps all.
	Dimensions []string `yaml:"dimensions"`
}

// BatchConf is a dataset's batch view.
type BatchConf struct {
	Schedule string   `yaml:"schedule"`
	Grace    Duration `yaml:"grace"`
	Lookback Duration `yaml:"lookback"`
	// SpeedRollup is the cron schedule of the rollup of the completed hours after the
	// boundary from <ds>_speed into <ds>_speed_hourly; "off" turns it off.
	SpeedRollup string `yaml:"speed_rollup"`
	// GroupingSets lists extra grouping sets beyond the day total, each dimension alone and
	// all dimensions together.
	GroupingSets [][]string `yaml:"grouping_sets"`
}

// Duration is a time.Duration that YAML reads from strings such as "30m", "48h" or "90d".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size in bytes. In YAML it is a whole number of bytes or a number with a unit:
// B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), e.g. "2GiB".
type ByteSize int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = ByteSize(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (b ByteSize) MarshalYAML() (any, error) { return int64(b), nil }

// String formats the size with the largest binary unit that divides it, e.g. "2GiB".
func (b ByteSize) String() string {
	units := []string{"TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		div := int64(1) << (10 * (len(units) - i))
		if b != 0 && int64(b)%div == 0 {
			return strconv.FormatInt(int64(b)/div, 10) + u
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

var byteUnits = []struct {
	suffix string
	mult   float64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1},
}

// ParseByteSize parses a size such as "2GiB", "512MiB", "1.5GB" or "1048576".
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("invalid size %q: use bytes or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB", s)
	}
	return int64(f * mult), nil
}

// ParseDuration parses a Go duration, or a whole number of days such as "90d".
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return v, nil
}

// Default is the configuration every file is decoded over.
func Default() Config {
	return Config{
		ClickHouse: ClickHouse{
			Addr:          []string{"127.0.0.1:9000"},
			Database:      "lambda",
			Username:      "default",
			ZooKeeperPath: "/clickhouse/lambda",
			HTTPAddr:      "127.0.0.1:8123",
			DialTimeout:   Duration(5 * time.Second),
			QueryTimeout:  Duration(60 * time.Second),
			InsertTimeout: Duration(60 * time.Second),
			MaxOpenConns:  16,
		},
		Kafka: Kafka{
			Brokers:     []string{"127.0.0.1:9092"},
			ClientID:    "lambda",
			GroupPrefix: "lambda",
			Version:     "2.8.0",
		},
		Speed: Speed{
			MetricsListen: "127.0.0.1:9101",
			FlushRows:     200_000,
			FlushBytes:    64 << 20,
			FlushInterval: Duration(time.Second),
			DedupWindow:   Duration(time.Hour),
			DedupMaxIDs:   2_000_000,
			MaxEventBytes: 64 << 10,
			FutureSkew:    Duration(5 * time.Minute),
			RetryMax:      Duration(30 * time.Second),
		},
		Batch: Batch{
			MetricsListen: "127.0.0.1:9102",
			MaxMemory:     2 << 30,
			Lease:         Lease{Path: "/lambda/batch-lease", SessionTimeout: Duration(10 * time.Second)},
		},
		Serving: Serving{
			Listen:       "127.0.0.1:8080",
			MaxRows:      100_000,
			MaxBuckets:   50_000,
			MaxBodyBytes: 1 << 20,
			QueryTimeout: Duration(30 * time.Second),
			CacheEntries: 4096,
		},
	}
}

// datasetDefaults fills what a dataset left out.
func datasetDefaults(d *Dataset) {
	if d.SpeedConf.Retention == 0 {
		d.SpeedConf.Retention = Duration(72 * time.Hour)
	}
	if d.BatchConf.Schedule == "" {
		d.BatchConf.Schedule = "45 0 * * *"
	}
	if d.BatchConf.SpeedRollup == "" {
		d.BatchConf.SpeedRollup = "*/10 * * * *"
	}
	if d.BatchConf.Grace == 0 {
		d.BatchConf.Grace = Duration(30 * time.Minute)
	}
	if d.BatchConf.Lookback == 0 {
		d.BatchConf.Lookback = Duration(48 * time.Hour)
	}
	if d.RawRetention == 0 {
		d.RawRetention = Duration(90 * 24 * time.Hour)
	}
	if d.TimeZone == "" {
		d.TimeZone = "UTC"
	}
}

// Load reads the configuration from path, or the built-in demo configuration when path is
// empty, then applies the environment (see ApplyEnv), reads the password files and validates.
// Its error is Problems: every problem, each with file, line and field.
func Load(path string) (*Config, error) {
	data, name := DemoYAML, "<demo>"
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("cannot read config: %w", err)
		}
		data, name = b, path
	}
	return Parse(name, data, os.LookupEnv)
}

// Parse decodes, applies the environment read through lookup (nil for none), reads the
// password files and validates. Its error is Problems.
func Parse(name string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	cfg, ps := Check(name, data, lookup, true)
	if len(ps) > 0 {
		return nil, ps
	}
	return cfg, nil
}

// Check is Parse that does not stop at the first problem: it returns every problem of the
// file, in file order, each naming file, line and field, and the configuration as far as it
// could be decoded (never nil). readFiles false skips reading the password and TLS files
// (a check on a machine without the secrets). It connects nowhere.
func Check(name string, data []byte, lookup func(string) (string, bool), readFiles bool) (*Config, Problems) {
	cfg := Default()
	cfg.File = name
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return &cfg, finish(name, nil, &cfg, []Problem{syntaxProblem(err)})
	}
	var d decoder
	if len(root.Content) > 0 {
		d.decode(root.Content[0], reflect.ValueOf(&cfg).Elem(), "")
	}
	for i := range cfg.Datasets {
		datasetDefaults(&cfg.Datasets[i])
	}
	ps := d.probs
	if lookup != nil {
		if err := cfg.ApplyEnv(lookup); err != nil {
			var eps Problems
			if errors.As(err, &eps) {
				ps = append(ps, eps...)
			} else {
				ps = append(ps, Problem{Msg: err.Error()})
			}
		}
	}
	// A value that could not be decoded was left at its default or zero: what validation
	// says of that field (or of one inside it) would report it twice. A bad "enabled"
	// stands for its whole section.
	related := func(p Problem) bool {
		return slices.ContainsFunc(d.probs, func(q Problem) bool {
			f := strings.TrimSuffix(q.Field, ".enabled")
			return within(p.Field, f) || within(f, p.Field)
		})
	}
	for _, p := range append(cfg.secureProblems(readFiles), cfg.problems()...) {
		if !related(p) {
			ps = append(ps, p)
		}
	}
	var doc *yaml.Node
	if len(root.Content) > 0 {
		doc = root.Content[0]
	}
	out := finish(name, doc, &cfg, ps)
	b, err := yaml.Marshal(cfg)
	if err != nil {
		out = append(out, Problem{File: name, Msg: "cannot encode config: " + err.Error()})
	}
	cfg.Version = fmt.Sprintf("%016x", fnv64(b))
	return &cfg, out
}

func fnv64(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// ApplyEnv overrides fields from LAMBDA_* environment variables; lists are comma-separated.
// A password from the environment replaces a password_file, and a password_file from the
// environment replaces a password.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	list := func(s string) []string {
		var out []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	ch, k := &c.ClickHouse, &c.Kafka
	strs := []struct {
		env, field string
		p, other   *string // other: the other half of a secret, cleared
	}{
		{"LAMBDA_CLICKHOUSE_DATABASE", "clickhouse.database", &ch.Database, nil},
		{"LAMBDA_CLICKHOUSE_USERNAME", "clickhouse.username", &ch.Username, nil},
		{"LAMBDA_CLICKHOUSE_PASSWORD", "clickhouse.password", &ch.Password, &ch.PasswordFile},
		{"LAMBDA_CLICKHOUSE_PASSWORD_FILE", "clickhouse.password_file", &ch.PasswordFile, &ch.Password},
		{"LAMBDA_CLICKHOUSE_CLUSTER", "clickhouse.cluster", &ch.Cluster, nil},
		{"LAMBDA_CLICKHOUSE_HTTP_ADDR", "clickhouse.http_addr", &ch.HTTPAddr, nil},
		{"LAMBDA_CLICKHOUSE_ZOOKEEPER_PATH", "clickhouse.zookeeper_path", &ch.ZooKeeperPath, nil},
		{"LAMBDA_CLICKHOUSE_TLS_CA_FILE", "clickhouse.tls.ca_file", &ch.TLS.CAFile, nil},
		{"LAMBDA_KAFKA_GROUP_PREFIX", "kafka.group_prefix", &k.GroupPrefix, nil},
		{"LAMBDA_KAFKA_TLS_CA_FILE", "kafka.tls.ca_file", &k.TLS.CAFile, nil},
		{"LAMBDA_KAFKA_SASL_MECHANISM", "kafka.sasl.mechanism", &k.SASL.Mechanism, nil},
		{"LAMBDA_KAFKA_SASL_USERNAME", "kafka.sasl.username", &k.SASL.Username, nil},
		{"LAMBDA_KAFKA_SASL_PASSWORD", "kafka.sasl.password", &k.SASL.Password, &k.SASL.PasswordFile},
		{"LAMBDA_KAFKA_SASL_PASSWORD_FILE", "kafka.sasl.password_file", &k.SASL.PasswordFile, &k.SASL.Password},
		{"LAMBDA_SERVING_LISTEN", "serving.listen", &c.Serving.Listen, nil},
		{"LAMBDA_SPEED_METRICS_LISTEN", "speed.metrics_listen", &c.Speed.MetricsListen, nil},
		{"LAMBDA_BATCH_METRICS_LISTEN", "batch.metrics_listen", &c.Batch.MetricsListen, nil},
	}
	lists := []struct {
		env, field string
		p          *[]string
	}{
		{"LAMBDA_CLICKHOUSE_ADDR", "clickhouse.addr", &ch.Addr},
		{"LAMBDA_KAFKA_BROKERS", "kafka.brokers", &k.Brokers},
		{"LAMBDA_API_KEYS", "serving.api_keys", &c.Serving.APIKeys},
		{"LAMBDA_SERVING_CORS_ORIGINS", "serving.cors_origins", &c.Serving.CORSOrigins},
		{"LAMBDA_BATCH_LEASE_ZOOKEEPER", "batch.lease.zookeeper", &c.Batch.Lease.ZooKeeper},
	}
	bools := []struct {
		env, field string
		p          *bool
	}{
		{"LAMBDA_CLICKHOUSE_TLS_ENABLED", "clickhouse.tls.enabled", &ch.TLS.Enabled},
		{"LAMBDA_KAFKA_TLS_ENABLED", "kafka.tls.enabled", &k.TLS.Enabled},
	}
	set := func(env, field string) {
		if c.env == nil {
			c.env = map[string]string{}
		}
		c.env[field] = env
	}
	for _, e := range strs {
		if v, ok := lookup(e.env); ok {
			*e.p = v
			if e.other != nil {
				*e.other = ""
			}
			set(e.env, e.field)
		}
	}
	for _, e := range lists {
		if v, ok := lookup(e.env); ok {
			*e.p = list(v)
			set(e.env, e.field)
		}
	}
	var ps Problems
	for _, e := range bools {
		if v, ok := lookup(e.env); ok {
			set(e.env, e.field)
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				ps = append(ps, Problem{Field: e.field, Msg: fmt.Sprintf("want true or false, got %q", v)})
				continue
			}
			*e.p = b
		}
	}
	if v, ok := lookup("LAMBDA_BATCH_MAX_MEMORY"); ok {
		set("LAMBDA_BATCH_MAX_MEMORY", "batch.max_memory")
		n, err := ParseByteSize(v)
		if err != nil {
			ps = append(ps, Problem{Field: "batch.max_memory", Msg: err.Error()})
		} else {
			c.Batch.MaxMemory = ByteSize(n)
		}
	}
	if len(ps) > 0 {
		return ps
	}
	return nil
}

// within reports whether field is inner or a field inside it.
func within(field, inner string) bool {
	return field == inner || strings.HasPrefix(field, inner+".") || strings.HasPrefix(field, inner+"[")
}

// FromEnv returns the environment variable that set field (or a field enclosing it), "" when
// none did.
func (c *Config) FromEnv(field string) string {
	for f, k := range c.env {
		if within(field, f) {
			return k
		}
	}
	return ""
}

// Dataset returns the dataset with the given name.
func (c *Config) Dataset(name string) (*Dataset, bool) {
	for i := range c.Datasets {
		if c.Datasets[i].Name == name {
			return &c.Datasets[i], true
		}
	}
	return nil, false
}
