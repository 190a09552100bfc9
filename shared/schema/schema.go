// Package schema generates and applies the ClickHouse objects of the platform.
//
// Every statement runs on ClickHouse 18.16 (Debian's package) and on current ClickHouse: no
// LowCardinality, DateTime64, TTL, query parameters or GROUPING SETS; every UNION ALL branch casts
// to one type. Names are predictable: <ds>_raw, <ds>_speed (+ <ds>_speed_mv feeding it),
// <ds>_daily, <ds>_rejects, <ds>_drift, <ds>_lambda, and the shared speed_flushes, batch_runs
// and batch_watermarks.
//
// # Cluster mode
//
// With clickhouse.cluster set, every statement runs ON CLUSTER and the tables are replicated
// (ZooKeeper paths under clickhouse.zookeeper_path), in two kinds:
//
//   - Sharded: <ds>_raw, <ds>_speed and <ds>_rejects are Replicated*MergeTree tables named
//     <name>_local on every node, path <zookeeper_path>/{shard}/<db>/<name>_local, replica
//     {replica}, with a Distributed table under the user-facing name. Raw is sharded by
//     cityHash64(id), so every copy of an event lands on one shard and per-shard dedup is
//     global dedup. <ds>_speed_mv feeds <ds>_speed_local from <ds>_raw_local on each node, so
//     speed rows sit on their raw rows' shard; readers merge -State columns across shards.
//   - Everywhere: <ds>_daily, <ds>_drift and the shared tables are one ReplicatedMergeTree with a
//     replica on every node (path <zookeeper_path>/all/<db>/<name>, replica {shard}-{replica}, so
//     the {replica} macro need only be unique within a shard). They are small, every node reads
//     them locally, and one REPLACE PARTITION on one node swaps a day in on all of them.
package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Kind says what an object is.
type Kind string

// Object kinds.
const (
	Database Kind = "database"
	Table    Kind = "table"
	View     Kind = "view"
)

// Column is a table column.
type Column struct {
	Name    string
	Type    string
	Default string // DEFAULT expression, if any
}

// Object is one ClickHouse object with the statement that creates it.
type Object struct {
	Name    string // unqualified name
	Kind    Kind
	Columns []Column // tables only
	// Key lists the columns of the sorting key: they cannot be dropped, and a change to them
	// in an aggregating table needs a rebuild.
	Key []string
	// Create is the CREATE statement. Tables use IF NOT EXISTS; views are recreated when their
	// statement changes.
	Create string
	// Rebuild, for a table of states whose key or columns changed, is a statement that refills
	// it from the master dataset after it was recreated (the speed view), "" for none.
	Rebuild string
	// Granularity is the table's index granularity, 0 for the server's default.
	Granularity int
	// Relayout marks a table whose rows migrate copies into a new table when its sorting key
	// or granularity changed (a table with Rebuild is rebuilt instead when its key changed).
	Relayout bool
	// Fill, for a materialized view created where its source already holds rows, is the
	// statement that brings its target up to date with them (run once, right after the view
	// is created together with FillTarget, the table it feeds).
	Fill, FillTarget string
	// Dataset is the dataset the object belongs to, "" for shared objects.
	Dataset string
}

// Q quotes an identifier the configuration validated.
func Q(s string) string { return metric.QuoteIdent(s) }

// Names of the per-dataset objects.
func Raw(ds string) string     { return ds + "_raw" }
func Speed(ds string) string   { return ds + "_speed" }
func SpeedMV(ds string) string { return ds + "_speed_mv" }
func Daily(ds string) string   { return ds + "_daily" }
func Hourly(ds string) string  { return ds + "_hourly" }

// SpeedHourly names the hourly rollup of <ds>_speed's unsealed days, per grouping set.
func SpeedHourly(ds string) string { return ds + "_speed_hourly" }

// HourlyRest names the rows of the rest of each sealed day from each hour, per grouping set,
// rolled up from <ds>_hourly.
func HourlyRest(ds string) string { return ds + "_hourly_rest" }
func Rejects(ds string) string    { return ds + "_rejects" }
func Drift(ds string) string      { return ds + "_drift" }
func Lambda(ds string) string     { return ds + "_lambda" }

// RawDays and RawDaysMV name the table of raw rows per day and the view feeding it (owned by
// shared/ledger, whose rules read it).
func RawDays(ds string) string   { return ledger.RawDays(ds) }
func RawDaysMV(ds string) string { return ledger.RawDaysMV(ds) }

// Names of the shared objects; the bookkeeping tables are shared/ledger's.
const (
	SpeedFlushes    = ledger.SpeedFlushes
	BatchRuns       = ledger.BatchRuns
	BatchWatermarks = ledger.BatchWatermarks
	SpeedRollups    = ledger.SpeedRollups
	RestRollups     = ledger.RestRollups
	SchemaObjects   = "schema_objects"
)

// Local is the name of the per-node table behind a Distributed table in cluster mode.
func Local(name string) string { return name + "_local" }

// Generator produces the objects of a configuration.
type Generator struct {
	DB string
	// Cluster is the cluster of cluster mode, "" for a single server.
	Cluster string
	// ZooKeeperPath prefixes the replicated tables' paths in cluster mode.
	ZooKeeperPath string
}

// NewGenerator returns a generator for the configuration's database (and cluster).
func NewGenerator(cfg *config.Config) *Generator {
	return &Generator{DB: cfg.ClickHouse.Database, Cluster: cfg.ClickHouse.Cluster,
		ZooKeeperPath: strings.TrimRight(cfg.ClickHouse.ZooKeeperPath, "/")}
}

// OnCluster is " ON CLUSTER <cluster>" in cluster mode, "" otherwise: the clause every DDL
// statement carries.
func (g *Generator) OnCluster() string {
	if g.Cluster == "" {
		return ""
	}
	return " ON CLUSTER " + Q(g.Cluster)
}

// Sharded reports whether a table is sharded in cluster mode (a Distributed table over
// <name>_local), as opposed to replicated on every node.
func Sharded(name string) bool {
	for _, suffix := range []string{"_raw", "_raw_days", "_speed", "_rejects"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

// LocalT is the table holding a sharded table's rows on one node: <name>_local in cluster mode,
// the table itself otherwise. Partitions are listed and dropped on it.
func (g *Generator) LocalT(name string) string {
	if g.Cluster != "" && Sharded(name) {
		return g.T(Local(name))
	}
	return g.T(name)
}

// T qualifies a table name with the database.
func (g *Generator) T(name string) string { return Q(g.DB) + "." + Q(name) }

// Objects returns every object of the configuration in creation order: the database, the
// shared tables, then per dataset its tables and views.
func (g *Generator) Objects(cfg *config.Config) []Object {
	out := []Object{{Name: g.DB, Kind: Database, Create: "CREATE DATABASE IF NOT EXISTS " + Q(g.DB) + g.OnCluster()}}
	out = append(out, g.shared()...)
	for i := range cfg.Datasets {
		out = append(out, g.Dataset(&cfg.Datasets[i])...)
	}
	return out
}

// table is a table's object. engine is a MergeTree-family engine name and rest the clauses after
// it; in cluster mode the engine becomes its Replicated variant with a replica on every node.
func (g *Generator) table(name, ds string, cols []Column, engine, rest string, key []string) Object {
	if g.Cluster != "" {
		engine = fmt.Sprintf("Replicated%s('%s/all/%s/%s', '{shard}-{replica}')", engine, g.ZooKeeperPath, g.DB, name)
	}
	return g.createTable(name, ds, cols, engine+" "+rest, key)
}

// shardedTables are, in cluster mode, <name>_local (replicated within its shard) and <name>, a
// Distributed table over it with the sharding key; a single table otherwise.
func (g *Generator) shardedTables(name, ds string, cols []Column, engine, rest string, key []string, shardKey string) []Object {
	if g.Cluster == "" {
		return []Object{g.createTable(name, ds, cols, engine+" "+rest, key)}
	}
	local := g.createTable(Local(name), ds, cols,
		fmt.Sprintf("Replicated%s('%s/{shard}/%s/%s', '{replica}') %s", engine, g.ZooKeeperPath, g.DB, Local(name), rest), key)
	dist := g.createTable(name, ds, cols, fmt.Sprintf("Distributed(%s, %s, %s, %s)", Q(g.Cluster), Q(g.DB), Q(Local(name)), shardKey), nil)
	return []Object{local, dist}
}

func (g *Generator) createTable(name, ds string, cols []Column, engine string, key []string) Object {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s%s\n(\n", g.T(name), g.OnCluster())
	for i, c := range cols {
		fmt.Fprintf(&b, "    %s %s", Q(c.Name), c.Type)
		if c.Default != "" {
			fmt.Fprintf(&b, " DEFAULT %s", c.Default)
		}
		if i < len(cols)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, ")\nENGINE = %s", engine)
	return Object{Name: name, Kind: Table, Columns: cols, Key: key, Create: b.String(), Dataset: ds}
}

func orderBy(key []string) string {
	q := make([]string, len(key))
	for i, k := range key {
		q[i] = Q(k)
	}
	return "ORDER BY (" + strings.Join(q, ", ") + ")"
}

const utc = "DateTime('UTC')"

func (g *Generator) shared() []Object {
	flushes := []Column{
		{Name: "dataset", Type: "String"}, {Name: "topic", Type: "String"},
		{Name: "partition", Type: "Int32"}, {Name: "first_offset", Type: "Int64"},
		{Name: "last_offset", Type: "Int64"}, {Name: "high_watermark", Type: "Int64"},
		{Name: "raw_rows", Type: "UInt64"}, {Name: "rejected_rows", Type: "UInt64"},
		{Name: "duplicate_rows", Type: "UInt64"}, {Name: "late_rows", Type: "UInt64"},
		{Name: "max_event_time", Type: utc}, {Name: "consumer", Type: "String"},
		{Name: "flushed_at", Type: utc, Default: "now()"},
		// The oldest event time the flush wrote to raw (1970 for a heartbeat): the hours of
		// <ds>_speed_hourly that a flush after their rollup changed (shared/ledger).
		{Name: "min_event_time", Type: utc},
	}
	fkey := []string{"dataset", "partition", "flushed_at"}
	runs := []Column{
		{Name: "dataset", Type: "String"}, {Name: "day", Type: "Date"},
		{Name: "run_id", Type: "String"}, {Name: "status", Type: "String"},
		{Name: "at", Type: utc}, {Name: "at_us", Type: "UInt64"},
		{Name: "started_at", Type: utc}, {Name: "finished_at", Type: utc},
		{Name: "rows_raw", Type: "UInt64"}, {Name: "rows_dedup", Type: "UInt64"},
		{Name: "rows_out", Type: "UInt64"}, {Name: "error", Type: "String"},
		{Name: "host", Type: "String"},
		// What else the run swapped in with the day: rows of <ds>_hourly, and rows of the
		// day's <ds>_speed partition rewritten from deduplicated raw.
		{Name: "rows_hourly", Type: "UInt64"}, {Name: "rows_speed", Type: "UInt64"},
	}
	rkey := []string{"dataset", "day", "run_id", "at_us"}
	marks := []Column{
		{Name: "dataset", Type: "String"}, {Name: "watermark", Type: "Date"},
		{Name: "run_id", Type: "String"}, {Name: "at", Type: utc}, {Name: "at_us", Type: "UInt64"},
	}
	mkey := []string{"dataset", "at_us"}
	rollups := []Column{
		{Name: "dataset", Type: "String"}, {Name: "day", Type: "Date"},
		{Name: "hour_to", Type: utc}, {Name: "snapshot", Type: utc},
		{Name: "sets", Type: "Array(String)"}, {Name: "rows", Type: "UInt64"},
		{Name: "at_us", Type: "UInt64"}, {Name: "layout", Type: "String"},
	}
	ukey := []string{"dataset", "day", "at_us"}
	rests := []Column{
		{Name: "dataset", Type: "String"}, {Name: "day", Type: "Date"},
		{Name: "run_id", Type: "String"}, {Name: "rows", Type: "UInt64"},
		{Name: "layout", Type: "String"}, {Name: "at_us", Type: "UInt64"},
	}
	objs := []Column{
		{Name: "object", Type: "String"}, {Name: "statement_hash", Type: "String"},
		{Name: "at", Type: utc, Default: "now()"},
	}
	return []Object{
		g.table(SpeedFlushes, "", flushes, "MergeTree", "PARTITION BY toYYYYMM(flushed_at) "+orderBy(fkey), fkey),
		g.table(BatchRuns, "", runs, "MergeTree", "PARTITION BY toYYYYMM(day) "+orderBy(rkey), rkey),
		g.table(BatchWatermarks, "", marks, "MergeTree", "PARTITION BY toYYYYMM(at) "+orderBy(mkey), mkey),
		g.table(SpeedRollups, "", rollups, "MergeTree", "PARTITION BY toYYYYMM(day) "+orderBy(ukey), ukey),
		g.table(RestRollups, "", rests, "MergeTree", "PARTITION BY toYYYYMM(day) "+orderBy(ukey), ukey),
		g.table(SchemaObjects, "", objs, "MergeTree", "ORDER BY (object, at)", []string{"object", "at"}),
	}
}

// RawColumns returns the columns of <ds>_raw.
func RawColumns(d *config.Dataset) []Column {
	cols := []Column{{Name: "id", Type: "String"}, {Name: "time", Type: utc}}
	for _, n := range d.DimensionNames() {
		cols = append(cols, Column{Name: n, Type: "String"})
	}
	for _, c := range d.ValueColumns() {
		cols = append(cols, Column{Name: c.Name, Type: c.Type})
	}
	return append(cols,
		Column{Name: "_topic", Type: "String"},
		Column{Name: "_partition", Type: "Int32"},
		Column{Name: "_offset", Type: "Int64"},
		// _late marks corrections: events for days the batch had sealed. They go to raw only.
		Column{Name: "_late", Type: "UInt8"},
		Column{Name: "_ingested_at", Type: utc, Default: "now()"},
	)
}

// Dataset returns the objects of one dataset in creation order.
func (g *Generator) Dataset(d *config.Dataset) []Object {
	ds := d.Name
	specs := d.Specs()
	dims := d.DimensionNames()

	rawKey := []string{"time", "id"}
	raw := g.shardedTables(Raw(ds), ds, RawColumns(d), "MergeTree", "PARTITION BY toYYYYMMDD(time"+Zone(d)+") "+orderBy(rawKey), rawKey, "cityHash64(`id`)")

	speedCols := append([]Column{{Name: "minute", Type: utc}}, speedStates(d)...)
	// Speed rows are placed by the materialized view, on their raw rows' shard; the sharding
	// key only serves inserts into the Distributed table, which the platform does not make.
	speed := g.shardedTables(Speed(ds), ds, speedCols, "AggregatingMergeTree", speedClauses(d), SpeedKey(d), "rand()")
	speed[0].Granularity, speed[0].Relayout = SpeedGranularity, true
	speed[0].Rebuild = g.SpeedSelect(d, fmt.Sprintf("INSERT INTO %s ", g.T(Speed(ds))),
		fmt.Sprintf("_late = 0 AND time >= now() - %d", int64(d.SpeedConf.Retention.D().Seconds())), g.T(Raw(ds)))

	// In cluster mode the view is on each node, from the node's raw rows to its speed rows:
	// an insert lands on one replica of a shard, which aggregates it; replication copies both.
	mv := Object{Name: SpeedMV(ds), Kind: View, Dataset: ds,
		Create: fmt.Sprintf("CREATE MATERIALIZED VIEW %s%s TO %s AS\n", g.T(SpeedMV(ds)), g.OnCluster(), g.LocalT(Speed(ds))) +
			g.SpeedSelect(d, "", "_late = 0", g.LocalT(Raw(ds)))}

	// Raw rows per day, counted at every insert into raw (shared/ledger's rules read it): a
	// SummingMergeTree sharded as raw, fed by a view on each node's raw rows.
	daysCols := []Column{{Name: "day", Type: "Date"}, {Name: "rows", Type: "UInt64"}}
	rawDays := g.shardedTables(RawDays(ds), ds, daysCols, "SummingMergeTree", "PARTITION BY toYYYYMMDD(day) ORDER BY (day)", []string{"day"}, "rand()")
	daysMV := Object{Name: RawDaysMV(ds), Kind: View, Dataset: ds,
		Create: fmt.Sprintf("CREATE MATERIALIZED VIEW %s%s TO %s AS\n%s", g.T(RawDaysMV(ds)), g.OnCluster(), g.LocalT(RawDays(ds)), ledger.RawDaysSelect(g.LocalT(Raw(ds)), d.Location())),
		Fill:   fmt.Sprintf("INSERT INTO %s (day, rows) %s", g.T(RawDays(ds)), ledger.RawDaysSelect(g.T(Raw(ds)), d.Location())), FillTarget: rawDays[0].Name}

	dailyCols := []Column{{Name: "day", Type: "Date"}, {Name: "grouping", Type: "String"}}
	for _, n := range dims {
		dailyCols = append(dailyCols, Column{Name: n, Type: "String"})
	}
	for _, s := range specs {
		dailyCols = append(dailyCols, Column{Name: s.Name, Type: s.ValueType()})
	}
	for _, s := range specs {
		if s.HasDailyState() {
			dailyCols = append(dailyCols, Column{Name: s.StateColumn(), Type: s.StateType()})
		}
	}
	dailyCols = append(dailyCols, Column{Name: "run_id", Type: "String"})
	daily := g.table(Daily(ds), ds, dailyCols, "MergeTree", dailyClauses(d), DailyKey(d))
	daily.Granularity, daily.Relayout = RollupGranularity, true
	// Exact hourly rows of the same grouping sets, written by the same run as the day (hour
	// and coarser sub-day buckets of sealed days are read from them).
	hourlyCols := append([]Column{{Name: "hour", Type: utc}}, dailyCols[1:]...)
	hourly := g.table(Hourly(ds), ds, hourlyCols, "MergeTree", hourlyClauses(d), HourlyKey(d))
	hourly.Granularity, hourly.Relayout = RollupGranularity, true

	// The completed hours of the days after the boundary, per grouping set the speed view can
	// compute, rolled up from <ds>_speed's minutes by the batch layer (batchlayer/rollup.go):
	// hour and coarser buckets of today read a state per hour and set instead of one per
	// minute and combination. Rows with prefix = 1 hold the day so far: from the day's start to
	// the end of their hour, which a bucket holding the whole day so far reads as one state.
	// speed_rollups says which hours are current.
	speedHourly := g.table(SpeedHourly(ds), ds, speedHourlyCols(d), "MergeTree", speedHourlyClauses(d), SpeedHourlyKey(d))
	speedHourly.Granularity, speedHourly.Relayout = SpeedHourlyGranularity, true

	// The rest of each recent sealed day from each of its hours, per grouping set, rolled up
	// from <ds>_hourly by the batch layer (batchlayer/rollup.go): the part of a bucket that
	// starts inside a sealed day and runs past its end (yesterday's part of "the last 24 hours"
	// as one bucket) reads one row per combination instead of the day's remaining hours.
	// rest_rollups says which run each day's rows come from.
	hourlyRest := g.table(HourlyRest(ds), ds, hourlyRestCols(d), "MergeTree", dayClauses("hour"+Zone(d), HourlyKey(d), SpeedHourlyGranularity), HourlyKey(d))
	hourlyRest.Granularity, hourlyRest.Relayout = SpeedHourlyGranularity, true

	rejCols := []Column{
		{Name: "payload", Type: "String"}, {Name: "reason", Type: "String"}, {Name: "detail", Type: "String"},
		{Name: "_topic", Type: "String"}, {Name: "_partition", Type: "Int32"}, {Name: "_offset", Type: "Int64"},
		{Name: "_ingested_at", Type: utc, Default: "now()"},
	}
	rejKey := []string{"_ingested_at", "_partition", "_offset"}
	rejects := g.shardedTables(Rejects(ds), ds, rejCols, "MergeTree", "PARTITION BY toYYYYMM(_ingested_at) "+orderBy(rejKey), rejKey,
		"cityHash64(`_topic`, `_partition`, `_offset`)")

	driftCols := []Column{
		{Name: "day", Type: "Date"}, {Name: "metric", Type: "String"},
		{Name: "speed_value", Type: "Nullable(Float64)"}, {Name: "exact_value", Type: "Nullable(Float64)"},
		{Name: "abs_error", Type: "Nullable(Float64)"}, {Name: "rel_error", Type: "Nullable(Float64)"},
		{Name: "run_id", Type: "String"}, {Name: "at", Type: utc, Default: "now()"},
	}
	driftKey := []string{"day", "metric", "at"}
	drift := g.table(Drift(ds), ds, driftCols, "MergeTree", "PARTITION BY toYYYYMM(day) "+orderBy(driftKey), driftKey)

	out := append(raw, rawDays...)
	out = append(out, daysMV)
	out = append(out, speed...)
	out = append(out, mv, daily, hourly, speedHourly, hourlyRest)
	out = append(out, rejects...)
	out = append(out, drift)
	// The views: <ds>_lambda and <ds>_lambda_hourly with every grouping set, then each set's
	// own view, which an analyst can sum without knowing about grouping.
	for _, gr := range []grain{"day", "hour"} {
		name := Lambda(ds)
		if gr == "hour" {
			name = LambdaHourly(ds)
		}
		out = append(out, Object{Name: name, Kind: View, Dataset: ds, Create: g.lambdaView(d, gr, nil, false)})
	}
	for _, gr := range []grain{"day", "hour"} {
		for _, set := range d.GroupingSets() {
			out = append(out, Object{Name: LambdaSet(ds, set, gr == "hour"), Kind: View, Dataset: ds, Create: g.lambdaView(d, gr, set, true)})
		}
	}
	return out
}

// RollupGranularity is the index granularity of the rollup tables, <ds>_daily and <ds>_hourly,
// whose sorting keys start with the grouping set. Their rows are few (a day of <ds>_hourly is
// hours × the combinations of every set) but large: each holds sketch states of up to 65,536
// hashes. With ClickHouse's default of 8,192 rows a granule, a day of hours is one granule, and a
// query of one grouping set reads and deserializes every set's states (at 5M events a day, 15
// hours of the total's distinct count took 550 ms, most of it other sets' states). With small
// granules led by the set, it reads its own set's rows. 16 rather than 64: a few hours of one
// set are a few rows, and every row of the granules read is deserialized (at 5M events a day,
// four hours of the twelve countries' states took 146 ms with 64-row granules, 70 with 16, 58
// with 4). The index is in memory, for tables kept for good: 16 keeps it at a sixteenth of the
// rows (about 80 KB for a week of the demo's sets), 4 would quadruple it.
const RollupGranularity = 16

// SpeedHourlyGranularity is the index granularity of <ds>_speed_hourly. A query reads one row of
// the day so far per combination, or a few hours, and each row's distinct-count state holds up
// to 65,536 hashes (2-5 ms to deserialize): with RollupGranularity's 64 rows, the row of the
// day so far of the total at 20:00 was read with the 19 before it (at 5M events a day, 100 ms
// instead of 9; 150 ms instead of 33 for the twelve countries). The table holds only the few
// days after the boundary, so its index stays small at any volume; <ds>_daily and <ds>_hourly,
// kept for good, have RollupGranularity.
const SpeedHourlyGranularity = 4

// DailyKey is the sorting key of <ds>_daily.
func DailyKey(d *config.Dataset) []string {
	return append([]string{"grouping", "day"}, d.DimensionNames()...)
}

func dailyClauses(d *config.Dataset) string {
	return rollupClauses("day", DailyKey(d))
}

// HourlyKey is the sorting key of <ds>_hourly.
func HourlyKey(d *config.Dataset) []string {
	return append([]string{"grouping", "hour"}, d.DimensionNames()...)
}

func hourlyClauses(d *config.Dataset) string {
	return rollupClauses("hour"+Zone(d), HourlyKey(d))
}

func rollupClauses(timeCol string, key []string) string {
	return dayClauses(timeCol, key, RollupGranularity)
}

func dayClauses(timeCol string, key []string, granularity int) string {
	return fmt.Sprintf("PARTITION BY toYYYYMMDD(%s) %s SETTINGS index_granularity = %d", timeCol, orderBy(key), granularity)
}

var replicatedRE = regexp.MustCompile(`^Replicated(\w+)\(\s*'(?:[^'\\]|\\.)*'\s*,\s*'(?:[^'\\]|\\.)*'\s*\)`)

// PlainEngine is a replicated table's engine_full (system.tables) without its replication: the
// engine of a staging table that swaps partitions into it.
func PlainEngine(engineFull string) (string, error) {
	m := replicatedRE.FindStringSubmatchIndex(engineFull)
	if m == nil {
		return "", fmt.Errorf("engine %q is not a replicated MergeTree with its path and replica", engineFull)
	}
	return engineFull[m[2]:m[3]] + engineFull[m[1]:], nil
}

// HourlyStagingEngine is StagingEngine for <ds>_hourly.
func HourlyStagingEngine(d *config.Dataset) string { return "MergeTree " + hourlyClauses(d) }

// StagingEngine is the engine of a table a day of <ds>_daily is computed into before it is
// swapped in: a plain MergeTree with the partitioning and sorting key of <ds>_daily, which
// REPLACE PARTITION requires; in cluster mode the plain table swaps into the replicated one.
func StagingEngine(d *config.Dataset) string { return "MergeTree " + dailyClauses(d) }

// SpeedKey is the sorting key of <ds>_speed.
func SpeedKey(d *config.Dataset) []string {
	return append([]string{"minute"}, d.SpeedDimensions()...)
}

// SpeedHourlyKey is the sorting key of <ds>_speed_hourly.
func SpeedHourlyKey(d *config.Dataset) []string {
	return append([]string{"grouping", "prefix", "hour"}, d.SpeedDimensions()...)
}

func speedHourlyClauses(d *config.Dataset) string {
	return dayClauses("hour"+Zone(d), SpeedHourlyKey(d), SpeedHourlyGranularity)
}

// SpeedHourlyStagingEngine is the engine of a table a day of <ds>_speed_hourly is rolled up
// into before it is swapped in (on one server; in cluster mode the batch layer reads the
// target's own engine).
func SpeedHourlyStagingEngine(d *config.Dataset) string { return "MergeTree " + speedHourlyClauses(d) }

// SpeedHourlyColumns are the columns of <ds>_speed_hourly in the order SpeedHourlySelect
// fills them: all but the value columns, which are computed.
func SpeedHourlyColumns(d *config.Dataset) []string {
	cols := append([]string{"hour", "grouping", "prefix"}, d.SpeedDimensions()...)
	for _, s := range d.Specs() {
		cols = append(cols, s.Name)
	}
	for _, c := range d.PresenceColumns() {
		cols = append(cols, metric.PresenceColumn(c))
	}
	return cols
}

// speedStates are the columns of <ds>_speed after minute: the speed dimensions, each metric's
// state, the presence states.
func speedStates(d *config.Dataset) []Column {
	var cols []Column
	for _, n := range d.SpeedDimensions() {
		cols = append(cols, Column{Name: n, Type: "String"})
	}
	for _, s := range d.Specs() {
		cols = append(cols, Column{Name: s.Name, Type: s.StateType()})
	}
	for _, c := range d.PresenceColumns() {
		cols = append(cols, Column{Name: metric.PresenceColumn(c), Type: metric.PresenceType})
	}
	return cols
}

// speedHourlyCols are the columns of <ds>_speed_hourly: <ds>_speed's states per hour, grouping
// set and prefix, and each metric's value beside its state (SpeedHourlyValueColumns), computed
// from it when a row is written: a query whose buckets are the rows (hours of the grouping set
// it asks for) reads the numbers, and finalizing a distinct count's state costs more than
// reading the rest of the row.
func speedHourlyCols(d *config.Dataset) []Column {
	cols := append([]Column{{Name: "hour", Type: utc}, {Name: "grouping", Type: "String"}, {Name: "prefix", Type: "UInt8"}}, speedStates(d)...)
	for _, s := range d.Specs() {
		cols = append(cols, Column{Name: metric.ValueColumn(s.Name), Type: s.ValueType(), Default: s.FinalValue(Q(s.Name), Q(metric.PresenceColumn(s.Column)))})
	}
	return cols
}

// SpeedHourlyLayout fingerprints the columns of <ds>_speed_hourly (names, types, defaults) and
// the zone of its days.
// speed_rollups records it with each rollup: a rollup made with other columns (a metric added
// since, whose state the table's old rows lack) is not read, and the next rollup of its day is
// made whole.
func SpeedHourlyLayout(d *config.Dataset) string { return layout(d, speedHourlyCols(d)) }

// layout fingerprints a table of the dataset's days: the zone that cuts them, and its columns'
// names, types and defaults.
func layout(d *config.Dataset, cols []Column) string {
	h := sha256.New()
	fmt.Fprintf(h, "zone %s\n", Zone(d))
	for _, c := range cols {
		fmt.Fprintf(h, "%s %s %s\n", c.Name, c.Type, c.Default)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// hourlyRestCols are the columns of <ds>_hourly_rest: <ds>_hourly's without the values of the
// metrics that have a state (a distinct count's or a quantile's exact value cannot be made from
// hours; avg's is its state's), and run_id, the run whose hours they come from.
func hourlyRestCols(d *config.Dataset) []Column {
	cols := []Column{{Name: "hour", Type: utc}, {Name: "grouping", Type: "String"}}
	for _, n := range d.DimensionNames() {
		cols = append(cols, Column{Name: n, Type: "String"})
	}
	for _, s := range d.Specs() {
		if s.HasDailyState() {
			cols = append(cols, Column{Name: s.StateColumn(), Type: s.StateType()})
		} else {
			cols = append(cols, Column{Name: s.Name, Type: s.ValueType()})
		}
	}
	return append(cols, Column{Name: "run_id", Type: "String"})
}

// HourlyRestColumns are the columns of <ds>_hourly_rest in the order HourlyRestSelect fills them.
func HourlyRestColumns(d *config.Dataset) []string {
	var out []string
	for _, c := range hourlyRestCols(d) {
		out = append(out, c.Name)
	}
	return out
}

// HourlyRestLayout fingerprints the columns of <ds>_hourly_rest, as SpeedHourlyLayout does
// <ds>_speed_hourly's: rest_rollups records it, and rows of another layout are not read.
func HourlyRestLayout(d *config.Dataset) string { return layout(d, hourlyRestCols(d)) }

// HourlyRestSelect rolls the hours of <ds>_hourly in [start, end) (a sealed day's local hours)
// up into the rest of the day from each hour (hours lists their starts): per hour h, grouping
// set and combination, the rows of the hours from h on, counts and sums added, minimums and
// maximums taken, states merged; in the order of HourlyRestColumns. Its columns carry no
// aliases (a state merged into a column of the same name would be a cyclic alias).
func (g *Generator) HourlyRestSelect(d *config.Dataset, hours []time.Time) string {
	starts := make([]string, len(hours))
	for i, h := range hours {
		starts[i] = fmt.Sprintf("toDateTime(%d, 'UTC')", h.Unix())
	}
	sel := []string{"h", "grouping"}
	group := []string{"h", "grouping"}
	for _, n := range d.DimensionNames() {
		sel = append(sel, Q(n))
		group = append(group, Q(n))
	}
	for _, s := range d.Specs() {
		if s.HasDailyState() {
			sel = append(sel, s.MergeStateExpr(Q(s.StateColumn())))
		} else {
			sel = append(sel, s.Combine(Q(s.Name)))
		}
	}
	sel = append(sel, "any(run_id)")
	end := hours[len(hours)-1].Add(time.Hour)
	return fmt.Sprintf("SELECT\n    %s\nFROM %s\nARRAY JOIN arrayFilter(x -> x <= hour, [%s]) AS h\nWHERE hour >= toDateTime(%d, 'UTC') AND hour < toDateTime(%d, 'UTC')\nGROUP BY %s",
		strings.Join(sel, ",\n    "), g.T(Hourly(d.Name)), strings.Join(starts, ", "), hours[0].Unix(), end.Unix(), strings.Join(group, ", "))
}

// SpeedHourlyValueColumns are the value columns of <ds>_speed_hourly, one per metric
// (metric.ValueColumn), which their DEFAULT computes from the row's states.
func SpeedHourlyValueColumns(d *config.Dataset) []string {
	var cols []string
	for _, s := range d.Specs() {
		cols = append(cols, metric.ValueColumn(s.Name))
	}
	return cols
}

// SpeedHourlySelect rolls the minutes of <ds>_speed in [from, to) up into the dataset's local
// hours for one grouping set, in the order of SpeedHourlyColumns: the dimensions outside the
// set are ”. from and to are local hours. Its columns carry no aliases: a state merged into
// a column of the same name would be a cyclic alias.
func (g *Generator) SpeedHourlySelect(d *config.Dataset, set []string, from, to time.Time) string {
	sel := []string{LocalHour("minute", Zone(d)) + " AS h", "'" + config.GroupingName(set) + "'", "toUInt8(0)"}
	group := []string{"h"}
	for _, n := range d.SpeedDimensions() {
		if contains(set, n) {
			sel = append(sel, Q(n))
			group = append(group, Q(n))
		} else {
			sel = append(sel, "''")
		}
	}
	for _, s := range d.Specs() {
		sel = append(sel, s.MergeStateExpr(Q(s.Name)))
	}
	for _, c := range d.PresenceColumns() {
		sel = append(sel, "sumMergeState("+Q(metric.PresenceColumn(c))+")")
	}
	return fmt.Sprintf("SELECT\n    %s\nFROM %s\nWHERE minute >= toDateTime(%d, 'UTC') AND minute < toDateTime(%d, 'UTC')\nGROUP BY %s",
		strings.Join(sel, ",\n    "), g.T(Speed(d.Name)), from.Unix(), to.Unix(), strings.Join(group, ", "))
}

// SpeedPrefixSelect is the day so far up to the end of the hour starting at h, for every
// grouping set, from table (shaped like <ds>_speed_hourly, holding the day's hour rows and its
// prefix rows up to the hour before h): the prefix row of the hour before (none for the day's
// first hour, dayStart) merged with the hour's rows, in the order of SpeedHourlyColumns.
func (g *Generator) SpeedPrefixSelect(d *config.Dataset, table string, dayStart, h time.Time) string {
	sel := []string{fmt.Sprintf("toDateTime(%d, 'UTC')", h.Unix()), "grouping", "toUInt8(1)"}
	group := []string{"grouping"}
	for _, n := range d.SpeedDimensions() {
		sel = append(sel, Q(n))
		group = append(group, Q(n))
	}
	for _, s := range d.Specs() {
		sel = append(sel, s.MergeStateExpr(Q(s.Name)))
	}
	for _, c := range d.PresenceColumns() {
		sel = append(sel, "sumMergeState("+Q(metric.PresenceColumn(c))+")")
	}
	where := fmt.Sprintf("prefix = 0 AND hour = toDateTime(%d, 'UTC')", h.Unix())
	if h.After(dayStart) {
		where = fmt.Sprintf("(prefix = 1 AND hour = toDateTime(%d, 'UTC')) OR (%s)", h.Add(-time.Hour).Unix(), where)
	}
	return fmt.Sprintf("SELECT\n    %s\nFROM %s\nWHERE %s\nGROUP BY %s", strings.Join(sel, ",\n    "), table, where, strings.Join(group, ", "))
}

// SpeedGranularity is the index granularity of <ds>_speed. A minute holds a row per combination
// of the speed dimensions (96 in the demo data), so ClickHouse's default of 8,192 rows a granule
// spans an hour and a half: a query of the minutes of a partial hour (the first bucket of "the
// last 24 hours by hour") read and deserialized 8 times the states it needed (at 5M events a
// day, 85-140 ms for 21 minutes; 20 ms with 1,024).
const SpeedGranularity = 1024

func speedClauses(d *config.Dataset) string {
	return fmt.Sprintf("PARTITION BY toYYYYMMDD(minute%s) %s SETTINGS index_granularity = %d", Zone(d), orderBy(SpeedKey(d)), SpeedGranularity)
}

// SpeedStagingEngine is the engine of a table a day of <ds>_speed is rewritten into before it is
// swapped in: a plain AggregatingMergeTree with the partitioning and sorting key of <ds>_speed
// (of <ds>_speed_local in cluster mode, which is replicated).
func SpeedStagingEngine(d *config.Dataset) string { return "AggregatingMergeTree " + speedClauses(d) }

// SpeedSelect is the per-minute aggregation of raw rows (the table or subquery from, with raw's
// column names) into speed states, in the column order of <ds>_speed: the materialized view's
// query, the rebuild after a key change, and the batch layer's rewrite of a sealed day from
// deduplicated raw all use it, so that a minute means the same in each.
func (g *Generator) SpeedSelect(d *config.Dataset, prefix, where, from string) string {
	sel := []string{"toStartOfMinute(time) AS minute"}
	group := []string{"minute"}
	for _, n := range d.SpeedDimensions() {
		sel = append(sel, Q(n))
		group = append(group, Q(n))
	}
	for _, s := range d.Specs() {
		sel = append(sel, s.StateExpr()+" AS "+Q(s.Name))
	}
	for _, c := range d.PresenceColumns() {
		sel = append(sel, metric.PresenceStateExpr(c)+" AS "+Q(metric.PresenceColumn(c)))
	}
	return fmt.Sprintf("%sSELECT\n    %s\nFROM %s\nWHERE %s\nGROUP BY %s", prefix,
		strings.Join(sel, ",\n    "), from, where, strings.Join(group, ", "))
}

// GroupingArray is the ARRAY JOIN literal of grouping sets over the given dimensions. The empty
// set is written as an array holding one empty string, so that the literal's type is
// Array(Array(String)) on every version; GroupingExpr filters the empty string out.
func GroupingArray(sets [][]string) string {
	parts := make([]string, len(sets))
	for i, s := range sets {
		if len(s) == 0 {
			parts[i] = "['']"
			continue
		}
		q := make([]string, len(s))
		for j, n := range s {
			q[j] = "'" + n + "'"
		}
		parts[i] = "[" + strings.Join(q, ", ") + "]"
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// GroupingExpr is the grouping column computed from an ARRAY JOIN of GroupingArray as gd.
const GroupingExpr = "arrayStringConcat(arrayFilter(x -> x != '', gd), ',')"

// SpeedSets returns the dataset's grouping sets that the speed view can compute (those within
// the speed dimensions).
func SpeedSets(d *config.Dataset) [][]string {
	sdims := d.SpeedDimensions()
	var out [][]string
	for _, s := range d.GroupingSets() {
		ok := true
		for _, n := range s {
			if !contains(sdims, n) {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// OtherSets returns the dataset's grouping sets that the speed view cannot compute (a
// dimension outside speed.dimensions): after the boundary they come from deduplicated raw.
func OtherSets(d *config.Dataset) [][]string {
	speed := SpeedSets(d)
	var out [][]string
	for _, s := range d.GroupingSets() {
		if !slices.ContainsFunc(speed, func(x []string) bool { return slices.Equal(x, s) }) {
			out = append(out, s)
		}
	}
	return out
}

// DedupRaw is the deduplicated master dataset: the rows of raw (a qualified table) where
// where holds, keeping the first-ingested copy of each id within its day (of the dataset's zone
// loc), as the batch layer keeps it, with the columns cols (expressions with their aliases). The
// order makes a rerun pick the same rows.
func DedupRaw(cols []string, raw, where string, loc *time.Location) string {
	return fmt.Sprintf(`SELECT
    %s
FROM %s
WHERE %s
ORDER BY _ingested_at, _partition, _offset
LIMIT 1 BY toDate(time%s), id`, strings.Join(cols, ",\n    "), raw, where, ledger.ZoneArg(loc))
}

// Zone is the time zone argument of the dataset's date functions: "" for UTC, ", 'Zone/Name'"
// otherwise (ledger.ZoneArg). toYYYYMMDD(hour, 'America/New_York') partitions by local day, so a
// local day is one partition a batch run replaces; toStartOfHour(time, zone) is a local hour.
func Zone(d *config.Dataset) string { return ledger.ZoneArg(d.Location()) }

// indent indents every line of a subquery but the first.
func indent(sql, by string) string { return strings.ReplaceAll(sql, "\n", "\n"+by) }

// LambdaHourly names the hourly variant of <ds>_lambda.
func LambdaHourly(ds string) string { return ds + "_lambda_hourly" }

// LambdaSet names the view of one grouping set: <ds>_lambda_total for the day's total,
// <ds>_lambda_by_<dims joined by _> otherwise (<ds>_lambda_hourly_… per hour). Such a view holds
// one set only, so summing it without a filter counts every event once.
func LambdaSet(ds string, set []string, hourly bool) string {
	if hourly {
		return LambdaHourly(ds) + "_" + config.GroupingViewSuffix(set)
	}
	return Lambda(ds) + "_" + config.GroupingViewSuffix(set)
}

// grain is a view's time column: "day" (<ds>_lambda, from <ds>_daily) or "hour"
// (<ds>_lambda_hourly, from <ds>_hourly).
type grain string

// of is the grain's bucket of a DateTime column in the dataset's zone (zone: Zone(d)).
func (gr grain) of(col, zone string) string {
	if gr == "hour" {
		return LocalHour(col, zone)
	}
	return "toDate(" + col + zone + ")"
}

// LocalHour is the hour of a DateTime('UTC') column in a zone (zone: Zone(d), "" for UTC), as
// DateTime('UTC'): toStartOfHour(col) for UTC (the same instants in every zone a whole number of
// hours from UTC), and the zone's own hours (from :30) in the others, cast back to the column
// type every branch of a view or union shares.
func LocalHour(col, zone string) string {
	if zone == "" {
		return "toStartOfHour(" + col + ")"
	}
	return "toDateTime(toStartOfHour(" + col + zone + "), 'UTC')"
}

// metricCols are a view branch's metric columns in config order: each stored metric's value
// from value(spec), each ratio computed from its parts' values in the same row.
func metricCols(d *config.Dataset, value func(metric.Spec) string) []string {
	specs := map[string]metric.Spec{}
	for _, s := range d.Specs() {
		specs[s.Name] = s
	}
	var out []string
	for _, m := range d.Metrics {
		if r, ok := d.RatioOf(m.Name); ok {
			out = append(out, metric.RatioExpr(value(specs[r.Numerator]), value(specs[r.Denominator]))+" AS "+Q(r.Name))
			continue
		}
		out = append(out, value(specs[m.Name])+" AS "+Q(m.Name))
	}
	return out
}

// lambdaView is <ds>_lambda (per day) or <ds>_lambda_hourly (per hour), with set nil: per
// bucket, dimensions and grouping, the batch rows up to the boundary (exact when they are
// the rows of the day's newest successful run and the day is not dirty: ledger.ExactRunsSQL),
// and after it the speed rows re-aggregated per grouping set (approximate) and, for the
// sets with a dimension the speed view does not keep, deduplicated raw (exact), as the API reads
// them. perSet makes it the view of one set (LambdaSet): the same rows of that set only, without
// the grouping column and the dimensions outside the set.
func (g *Generator) lambdaView(d *config.Dataset, gr grain, set []string, perSet bool) string {
	ds := d.Name
	sdims := d.SpeedDimensions()
	wm := ledger.BoundarySQL(g.DB, ds)
	name, table, day := Lambda(ds), Daily(ds), "day"
	if gr == "hour" {
		name, table, day = LambdaHourly(ds), Hourly(ds), "toDate(hour"+Zone(d)+")"
	}
	dims, sets := d.DimensionNames(), d.GroupingSets()
	if perSet {
		name, dims, sets = LambdaSet(ds, set, gr == "hour"), set, [][]string{set}
	}

	batch := []string{string(gr)}
	if !perSet {
		batch = append(batch, "grouping")
	}
	for _, n := range dims {
		batch = append(batch, Q(n))
	}
	batch = append(batch, metricCols(d, func(s metric.Spec) string { return s.Cast(Q(s.Name)) })...)
	batch = append(batch, "'batch' AS source", "toUInt8(("+day+", run_id) IN ("+ledger.ExactRunsSQL(g.DB, ds)+")) AS exact")
	batchWhere := day + " <= " + wm
	if perSet {
		batchWhere += " AND grouping = '" + config.GroupingName(set) + "'"
	}
	sql := fmt.Sprintf(`CREATE VIEW %s%s AS
SELECT
    %s
FROM %s
WHERE %s`, g.T(name), g.OnCluster(), strings.Join(batch, ",\n    "), g.T(table), batchWhere)

	if speedSets := intersect(sets, SpeedSets(d)); len(speedSets) > 0 {
		inner := []string{"minute"}
		for _, n := range sdims {
			if !perSet || contains(set, n) {
				inner = append(inner, Q(n)+" AS "+Q("d_"+n))
			}
		}
		for _, s := range d.Specs() {
			inner = append(inner, Q(s.Name)+" AS "+Q("s_"+s.Name))
		}
		for _, c := range d.PresenceColumns() {
			inner = append(inner, Q(metric.PresenceColumn(c))+" AS "+Q("p_"+c))
		}
		outer := []string{gr.of("minute", Zone(d)) + " AS " + string(gr)}
		group := []string{string(gr)}
		if !perSet {
			outer = append(outer, GroupingExpr+" AS grouping")
			group = append(group, "grouping")
		}
		for _, n := range dims {
			switch {
			case perSet:
				outer = append(outer, Q("d_"+n)+" AS "+Q(n))
				group = append(group, Q(n))
			case contains(sdims, n):
				outer = append(outer, fmt.Sprintf("if(has(gd, '%s'), %s, '') AS %s", n, Q("d_"+n), Q(n)))
				group = append(group, Q(n))
			default:
				outer = append(outer, "'' AS "+Q(n))
			}
		}
		outer = append(outer, metricCols(d, func(s metric.Spec) string { return s.ValueFromStates(Q("s_"+s.Name), Q("p_"+s.Column)) })...)
		outer = append(outer, "'speed' AS source", "materialize(toUInt8(0)) AS exact")
		arrayJoin := ""
		if !perSet {
			arrayJoin = "\nARRAY JOIN " + GroupingArray(speedSets) + " AS gd"
		}
		sql += fmt.Sprintf(`
UNION ALL
SELECT
    %s
FROM
(
    SELECT
        %s
    FROM %s
    WHERE toDate(minute%s) > %s
)%s
GROUP BY %s`, strings.Join(outer, ",\n    "), strings.Join(inner, ",\n        "), g.T(Speed(ds)), Zone(d), wm, arrayJoin, strings.Join(group, ", "))
	}
	if other := intersect(sets, OtherSets(d)); len(other) > 0 {
		sql += "\nUNION ALL\n" + g.rawSetsSelect(d, other, gr, "toDate(time"+Zone(d)+") > "+wm, perSet)
	}
	return sql
}

// intersect returns the sets of a that b holds too, in a's order.
func intersect(a, b [][]string) [][]string {
	var out [][]string
	for _, s := range a {
		if slices.ContainsFunc(b, func(x []string) bool { return slices.Equal(x, s) }) {
			out = append(out, s)
		}
	}
	return out
}

// rawSetsSelect computes the grouping sets sets exactly from deduplicated raw rows where where
// holds, per bucket, in the shape of the view's rows (perSet: of the one set's view).
func (g *Generator) rawSetsSelect(d *config.Dataset, sets [][]string, gr grain, where string, perSet bool) string {
	dims := d.DimensionNames()
	if perSet {
		dims = sets[0]
	}
	inner := []string{"id", "time"}
	for _, n := range dims {
		inner = append(inner, Q(n)+" AS "+Q("d_"+n))
	}
	for _, c := range d.ValueColumns() {
		inner = append(inner, Q(c.Name)+" AS "+Q("v_"+c.Name))
	}
	outer := []string{gr.of("time", Zone(d)) + " AS " + string(gr)}
	group := []string{string(gr)}
	if !perSet {
		outer = append(outer, GroupingExpr+" AS grouping")
		group = append(group, "grouping")
	}
	for _, n := range dims {
		if perSet {
			outer = append(outer, Q("d_"+n)+" AS "+Q(n))
		} else {
			outer = append(outer, fmt.Sprintf("if(has(gd, '%s'), %s, '') AS %s", n, Q("d_"+n), Q(n)))
		}
		group = append(group, Q(n))
	}
	outer = append(outer, metricCols(d, func(s metric.Spec) string {
		in := s
		if in.Column != "" {
			in.Column = "v_" + in.Column
		}
		return s.Cast(in.ExactExpr())
	})...)
	// Exact where the speed layer has consumed the whole bucket (what comes after may still be
	// arriving), as the API flags its raw rows.
	end := "toDateTime(day, 'UTC') + 86400"
	if z := Zone(d); z != "" {
		end = "toDateTime(day + 1" + z + ")" // the next local midnight: days of 23 or 25 hours
	}
	if gr == "hour" {
		end = "hour + 3600"
	}
	outer = append(outer, "'raw' AS source", fmt.Sprintf("toUInt8(%s <= toStartOfMinute(%s)) AS exact", end, ledger.SpeedWatermarkSQL(g.DB, d.Name)))
	arrayJoin := ""
	if !perSet {
		arrayJoin = "\nARRAY JOIN " + GroupingArray(sets) + " AS gd"
	}
	return fmt.Sprintf(`SELECT
    %s
FROM
(
    %s
)%s
GROUP BY %s`, strings.Join(outer, ",\n    "), indent(DedupRaw(inner, g.T(Raw(d.Name)), where, d.Location()), "    "),
		arrayJoin, strings.Join(group, ", "))
}
