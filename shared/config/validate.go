package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/lambda-platform/lambda/shared/metric"
)

var identRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// reserved are column names the platform uses in its tables; dimensions and metrics cannot
// take them.
var reserved = []string{"id", "time", "day", "minute", "grouping", "source", "exact",
	"dataset", "run_id", "payload", "reason", "topic", "partition", "offset"}

// minBatchMemory is the smallest batch.max_memory: a query's fixed buffers alone take about
// this much.
const minBatchMemory = 1 << 20

// CronParser parses batch schedules: five fields or a descriptor such as @daily, in UTC.
var CronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// SchedulePeriod returns the longest gap between two activations of a schedule over four weeks.
func SchedulePeriod(s cron.Schedule) time.Duration {
	t := s.Next(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	var longest time.Duration
	for end := t.Add(28 * 24 * time.Hour); t.Before(end); {
		n := s.Next(t)
		if n.IsZero() {
			break
		}
		longest = max(longest, n.Sub(t))
		t = n
	}
	return longest
}

// Validate checks the configuration and returns every problem (Problems), each naming file and
// field, for a configuration built in code; Load and Parse validate what they read, with lines.
func (c *Config) Validate() error {
	ps := append(c.secureProblems(false), c.problems()...)
	if len(ps) == 0 {
		return nil
	}
	return finish(c.File, nil, c, ps)
}

// problems checks the configuration; fields are paths without dataset names.
func (c *Config) problems() []Problem {
	var errs []Problem
	add := func(field, format string, args ...any) {
		errs = append(errs, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if len(c.ClickHouse.Addr) == 0 {
		add("clickhouse.addr", "at least one address is required")
	}
	if !identRE.MatchString(c.ClickHouse.Database) {
		add("clickhouse.database", "%q is not a valid name: use [a-z][a-z0-9_]*", c.ClickHouse.Database)
	}
	if c.ClickHouse.Cluster != "" && !regexp.MustCompile(`^[A-Za-z0-9_]+$`).MatchString(c.ClickHouse.Cluster) {
		add("clickhouse.cluster", "%q is not a valid cluster name", c.ClickHouse.Cluster)
	}
	if l := c.Batch.Lease; len(l.ZooKeeper) > 0 {
		if !regexp.MustCompile(`^(/[A-Za-z0-9_.-]+)+$`).MatchString(l.Path) {
			add("batch.lease.path", "%q is not a ZooKeeper path: use /name/name…", l.Path)
		}
		if l.SessionTimeout.D() < time.Second {
			add("batch.lease.session_timeout", "must be at least 1s, got %s", l.SessionTimeout.D())
		}
	}
	if c.Batch.MaxMemory < minBatchMemory {
		add("batch.max_memory", "must be at least %s, got %s", ByteSize(minBatchMemory), c.Batch.MaxMemory)
	}
	if len(c.Kafka.Brokers) == 0 {
		add("kafka.brokers", "at least one broker is required")
	}
	if c.Serving.Listen == "" {
		add("serving.listen", "an address is required")
	}
	for name, v := range map[string]int64{
		"speed.flush_rows": int64(c.Speed.FlushRows), "speed.flush_bytes": int64(c.Speed.FlushBytes),
		"speed.dedup_max_ids": int64(c.Speed.DedupMaxIDs), "speed.max_event_bytes": int64(c.Speed.MaxEventBytes),
		"serving.max_rows": int64(c.Serving.MaxRows), "serving.max_buckets": int64(c.Serving.MaxBuckets),
		"serving.max_body_bytes": c.Serving.MaxBodyBytes, "clickhouse.max_open_conns": int64(c.ClickHouse.MaxOpenConns),
	} {
		if v <= 0 {
			add(name, "must be positive, got %d", v)
		}
	}
	for name, v := range map[string]Duration{
		"speed.flush_interval": c.Speed.FlushInterval, "speed.dedup_window": c.Speed.DedupWindow,
		"speed.future_skew": c.Speed.FutureSkew, "speed.retry_max": c.Speed.RetryMax,
		"serving.query_timeout": c.Serving.QueryTimeout, "clickhouse.query_timeout": c.ClickHouse.QueryTimeout,
		"clickhouse.insert_timeout": c.ClickHouse.InsertTimeout, "clickhouse.dial_timeout": c.ClickHouse.DialTimeout,
	} {
		if v <= 0 {
			add(name, "must be a positive duration, got %s", v.D())
		}
	}
	if len(c.Datasets) == 0 {
		add("datasets", "at least one dataset is required")
	}
	names := map[string]int{}
	for i := range c.Datasets {
		d := &c.Datasets[i]
		p := fmt.Sprintf("datasets[%d]", i)
		if !identRE.MatchString(d.Name) {
			add(p+".name", "%q is not a valid name: use [a-z][a-z0-9_]*", d.Name)
		} else if j, dup := names[d.Name]; dup {
			add(p+".name", "dataset %q is already declared by datasets[%d]", d.Name, j)
		} else {
			names[d.Name] = i
		}
		for _, e := range d.validate() {
			add(p+"."+e.field, "%s", e.msg)
		}
	}
	return errs
}

type fieldError struct{ field, msg string }

// validateRatio checks a ratio metric: its parts are two stored metrics of the dataset (a ratio
// of ratios would need their parts' parts; declare it from those), and it reads no field.
func (d *Dataset) validateRatio(p string, m Metric, add func(field, format string, args ...any)) {
	if m.Field != "" {
		add(p+".field", "a ratio takes no field: it divides two metrics (numerator, denominator)")
	}
	if m.Level != 0 {
		add(p+".level", "only a quantile takes a level")
	}
	if m.Decimals != 0 {
		add(p+".decimals", "only a sum takes decimals (an exact decimal sum, e.g. 2 for money)")
	}
	for _, part := range []struct{ key, name string }{{"numerator", m.Numerator}, {"denominator", m.Denominator}} {
		if part.name == "" {
			add(p+"."+part.key, "a ratio needs a %s: the name of a metric of the dataset", part.key)
			continue
		}
		i := slices.IndexFunc(d.Metrics, func(x Metric) bool { return x.Name == part.name })
		switch {
		case i < 0:
			add(p+"."+part.key, "unknown metric %q", part.name)
		case d.Metrics[i].Type == string(metric.Ratio):
			add(p+"."+part.key, "%q is a ratio itself: a ratio divides two stored metrics", part.name)
		}
	}
}

func (d *Dataset) validate() []fieldError {
	var errs []fieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldError{field, fmt.Sprintf(format, args...)})
	}
	if d.Topic == "" {
		add("topic", "a topic is required")
	}
	if d.IDField == "" {
		add("id_field", "an id field is required (events without it get an id from topic/partition/offset)")
	}
	if d.TimeField == "" {
		add("time_field", "a time field is required")
	}
	used := map[string]string{} // column name -> what uses it
	claim := func(field, name, what string) {
		switch {
		case !identRE.MatchString(name):
			add(field, "%q is not a valid name: use [a-z][a-z0-9_]*", name)
		case slices.Contains(reserved, name) || strings.HasPrefix(name, "_") || strings.HasSuffix(name, "_state"):
			add(field, "%q is reserved (reserved: %s, names starting with _ or ending in _state)", name, strings.Join(reserved, ", "))
		case used[name] != "":
			add(field, "%q is already used by %s", name, used[name])
		default:
			used[name] = what
		}
	}
	if len(d.Dimensions) == 0 {
		add("dimensions", "at least one dimension is required")
	}
	for j := range d.Dimensions {
		dim := &d.Dimensions[j]
		if dim.Field == "" {
			dim.Field = dim.Name
		}
		claim(fmt.Sprintf("dimensions[%d].name", j), dim.Name, fmt.Sprintf("dimensions[%d]", j))
	}
	if len(d.Metrics) == 0 {
		add("metrics", "at least one metric is required")
	}
	fieldKind := map[string]string{}
	for j, m := range d.Metrics {
		p := fmt.Sprintf("metrics[%d]", j)
		claim(p+".name", m.Name, p)
		if m.Type == string(metric.Ratio) {
			d.validateRatio(p, m, add)
			continue
		}
		if !metric.Known(m.Type) {
			add(p+".type", "unknown metric type %q (known: count, sum, min, max, avg, uniq, quantile, ratio)", m.Type)
			continue
		}
		if m.Numerator != "" || m.Denominator != "" {
			add(p+".numerator", "only a ratio takes a numerator and a denominator")
		}
		switch {
		case m.Decimals != 0 && m.Type != string(metric.Sum):
			add(p+".decimals", "only a sum takes decimals (an exact decimal sum, e.g. 2 for money)")
		case m.Decimals < 0 || m.Decimals > 9:
			add(p+".decimals", "decimals must be 1 to 9, got %d (values are summed as 64-bit integers of that scale)", m.Decimals)
		}
		if m.Type == string(metric.Quantile) {
			if m.Level <= 0 || m.Level >= 1 {
				add(p+".level", "a quantile needs 0 < level < 1, got %g", m.Level)
			}
		} else if m.Level != 0 {
			add(p+".level", "only a quantile takes a level")
		}
		if m.Type == string(metric.Count) {
			if m.Field != "" {
				add(p+".field", "a count takes no field")
			}
			continue
		}
		if m.Field == "" {
			add(p+".field", "a %s metric needs a field", m.Type)
			continue
		}
		kind := "number"
		if m.Type == string(metric.Uniq) {
			kind = "key"
		}
		col := ColumnName(m.Field)
		if k, ok := fieldKind[col]; ok && k != kind {
			add(p+".field", "field %q is used both as a distinct-count key and as a number; declare two fields", m.Field)
		}
		fieldKind[col] = kind
	}
	for j, m := range d.Metrics {
		// "sum(amount) AS amount" makes ClickHouse read the alias inside the aggregate: a metric
		// may not be named like the raw column of a metric field.
		if _, ok := fieldKind[m.Name]; ok {
			add(fmt.Sprintf("metrics[%d].name", j), "%q is also the raw column of a metric field; name the metric differently (e.g. %q)", m.Name, m.Name+"_"+m.Type)
		}
	}
	for col := range fieldKind {
		if u := used[col]; strings.HasPrefix(u, "dimensions[") {
			add("metrics", "the raw column %q of a metric field collides with %s", col, u)
		}
		if slices.Contains(reserved, col) {
			add("metrics", "the raw column %q of a metric field is reserved", col)
		}
	}
	views := map[string]string{}
	for _, set := range d.GroupingSets() {
		name, set := GroupingViewSuffix(set), GroupingName(set)
		if other, dup := views[name]; dup {
			add("batch.grouping_sets", "the grouping sets %q and %q both make the view <dataset>_lambda_%s: rename a dimension", other, set, name)
		}
		views[name] = set
	}
	for j, n := range d.SpeedConf.Dimensions {
		if !d.HasDimension(n) {
			add(fmt.Sprintf("speed.dimensions[%d]", j), "unknown dimension %q", n)
		}
	}
	for j, set := range d.BatchConf.GroupingSets {
		for k, n := range set {
			if !d.HasDimension(n) {
				add(fmt.Sprintf("batch.grouping_sets[%d][%d]", j, k), "unknown dimension %q", n)
			}
		}
	}
	sched, err := CronParser.Parse(d.BatchConf.Schedule)
	if err != nil {
		add("batch.schedule", "invalid cron spec %q: %v", d.BatchConf.Schedule, err)
	}
	if d.BatchConf.SpeedRollup != "off" {
		if _, err := CronParser.Parse(d.BatchConf.SpeedRollup); err != nil {
			add("batch.speed_rollup", "invalid cron spec %q (or \"off\"): %v", d.BatchConf.SpeedRollup, err)
		}
	}
	for name, v := range map[string]Duration{"speed.retention": d.SpeedConf.Retention, "batch.grace": d.BatchConf.Grace,
		"batch.lookback": d.BatchConf.Lookback, "raw_retention": d.RawRetention} {
		if v < 0 {
			add(name, "must not be negative, got %s", v.D())
		}
	}
	if _, err := LoadZone(d.TimeZone); err != nil {
		add("time_zone", "%v", err)
	}
	if d.BatchConf.Lookback >= d.RawRetention {
		add("batch.lookback", "%s must be shorter than raw_retention (%s): days outside raw cannot be recomputed",
			d.BatchConf.Lookback.D(), d.RawRetention.D())
	}
	if err == nil {
		need := 24*time.Hour + d.BatchConf.Grace.D() + SchedulePeriod(sched)
		if d.SpeedConf.Retention.D() < need {
			add("speed.retention", "%s is shorter than 24h + batch.grace + one schedule period (%s): a missed batch run would leave a hole",
				d.SpeedConf.Retention.D(), need)
		}
	}
	return errs
}
