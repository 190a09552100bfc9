// Package config holds the one YAML configuration of the platform: where ClickHouse and Kafka
// are, how the layers behave, and the datasets, which are declared here and nowhere in code.
//
// Load decodes strictly (unknown keys are errors), applies defaults and environment overrides,
// and validates. Every validation error names the file, the dataset and the field, for example
// `lambda.yaml: datasets[1].metrics[2].type: unknown metric type "avgg"`.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
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
}

// ClickHouse says how to reach ClickHouse.
type ClickHouse struct {
	Addr     []string `yaml:"addr"`
	Database string   `yaml:"database"`
	Username string   `yaml:"username"`
	Password string   `yaml:"password"`
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
}

// Dimension is a string attribute events are grouped by. Field may be a dotted path.
type Dimension struct {
	Name  string `yaml:"name"`
	Field string `yaml:"field"`
}

// Metric is a value computed over events. Type is one of count, sum, min, max, avg, uniq,
// quantile; every type but count reads Field; quantile needs 0 < Level < 1.
type Metric struct {
	Name  string  `yaml:"name"`
	Type  string  `yaml:"type"`
	Field string  `yaml:"field"`
	Level float64 `yaml:"level"`
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
			FlushRows:     100_000,
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
	if d.BatchConf.Grace == 0 {
		d.BatchConf.Grace = Duration(30 * time.Minute)
	}
	if d.BatchConf.Lookback == 0 {
		d.BatchConf.Lookback = Duration(48 * time.Hour)
	}
	if d.RawRetention == 0 {
		d.RawRetention = Duration(90 * 24 * time.Hour)
	}
}

// Load reads the configuration from path, or the built-in demo configuration when path is
// empty, then applies the environment (see ApplyEnv) and validates.
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

// Parse decodes, applies the environment read through lookup (nil for none) and validates.
func Parse(name string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cfg.File = name
	for i := range cfg.Datasets {
		datasetDefaults(&cfg.Datasets[i])
	}
	if lookup != nil {
		if err := cfg.ApplyEnv(lookup); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot encode config: %w", err)
	}
	cfg.Version = fmt.Sprintf("%016x", fnv64(out))
	return &cfg, nil
}

func fnv64(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// ApplyEnv overrides fields from LAMBDA_* environment variables. Lists are comma-separated.
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
	str := map[string]*string{
		"LAMBDA_CLICKHOUSE_DATABASE":       &c.ClickHouse.Database,
		"LAMBDA_CLICKHOUSE_USERNAME":       &c.ClickHouse.Username,
		"LAMBDA_CLICKHOUSE_PASSWORD":       &c.ClickHouse.Password,
		"LAMBDA_CLICKHOUSE_CLUSTER":        &c.ClickHouse.Cluster,
		"LAMBDA_CLICKHOUSE_HTTP_ADDR":      &c.ClickHouse.HTTPAddr,
		"LAMBDA_SERVING_LISTEN":            &c.Serving.Listen,
		"LAMBDA_SPEED_METRICS_LISTEN":      &c.Speed.MetricsListen,
		"LAMBDA_BATCH_METRICS_LISTEN":      &c.Batch.MetricsListen,
		"LAMBDA_KAFKA_GROUP_PREFIX":        &c.Kafka.GroupPrefix,
		"LAMBDA_CLICKHOUSE_ZOOKEEPER_PATH": &c.ClickHouse.ZooKeeperPath,
	}
	for k, p := range str {
		if v, ok := lookup(k); ok {
			*p = v
		}
	}
	lists := map[string]*[]string{
		"LAMBDA_CLICKHOUSE_ADDR":       &c.ClickHouse.Addr,
		"LAMBDA_KAFKA_BROKERS":         &c.Kafka.Brokers,
		"LAMBDA_API_KEYS":              &c.Serving.APIKeys,
		"LAMBDA_SERVING_CORS_ORIGINS":  &c.Serving.CORSOrigins,
		"LAMBDA_BATCH_LEASE_ZOOKEEPER": &c.Batch.Lease.ZooKeeper,
	}
	for k, p := range lists {
		if v, ok := lookup(k); ok {
			*p = list(v)
		}
	}
	if v, ok := lookup("LAMBDA_BATCH_MAX_MEMORY"); ok {
		n, err := ParseByteSize(v)
		if err != nil {
			return fmt.Errorf("LAMBDA_BATCH_MAX_MEMORY: %w", err)
		}
		c.Batch.MaxMemory = ByteSize(n)
	}
	return nil
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
