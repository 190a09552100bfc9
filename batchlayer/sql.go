package batchlayer

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Every statement here embeds its values as literals: dataset names, column names and run ids
// are validated or generated ([a-z0-9_-]), days are formatted from time.Time. So the same text
// runs on ClickHouse 18.16, through chDB in the tests, and in clickhouse-client for the
// benchmark floor; nothing comes from user input.

// queries builds the SQL of one dataset.
type queries struct {
	g  *schema.Generator
	d  *config.Dataset
	db string
}

func newQueries(cfg *config.Config, d *config.Dataset) *queries {
	return &queries{g: schema.NewGenerator(cfg), d: d, db: cfg.ClickHouse.Database}
}

func dateLit(day time.Time) string { return "toDate('" + day.UTC().Format(time.DateOnly) + "')" }

func timeLit(t time.Time) string {
	return "toDateTime('" + t.UTC().Format(time.DateTime) + "', 'UTC')"
}

// partitionID is the partition of a day in every table partitioned by toYYYYMMDD.
func partitionID(day time.Time) string { return day.UTC().Format("20060102") }

func strLit(s string) string { return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'" }

// start and end are the instants a day (a Date) begins and ends in the dataset's zone: a day
// of a zone with daylight saving has 23 or 25 hours.
func (q *queries) start(day time.Time) time.Time { return ledger.DayStart(day, q.d.Location()) }
func (q *queries) end(day time.Time) time.Time   { return ledger.DayEnd(day, q.d.Location()) }

// rawDayWhere selects one day of raw by the sorting key's first column, so that both the
// partition and the primary key prune.
func (q *queries) rawDayWhere(day time.Time) string {
	return fmt.Sprintf("time >= %s AND time < %s", timeLit(q.start(day)), timeLit(q.end(day)))
}

// hourOf is the local hour of a DateTime column in the dataset's zone (schema.LocalHour).
func (q *queries) hourOf(col string) string { return schema.LocalHour(col, schema.Zone(q.d)) }

// stagingName is the staging table of a run.
func stagingName(ds, runID string) string {
	return schema.Daily(ds) + "_stage_" + strings.ReplaceAll(runID, "-", "_")
}

// stagingPrefix starts every staging table name of a dataset (for cleaning up after a crash).
func stagingPrefix(ds string) string { return schema.Daily(ds) + "_stage_" }

// createStaging creates a staging table shaped like <ds>_daily, with engine (stagingEngine)
// when it is not "".
func (q *queries) createStaging(table, engine string) string {
	return createLike(q.g.T(table), q.g.T(schema.Daily(q.d.Name)), engine)
}

func createLike(table, like, engine string) string {
	s := fmt.Sprintf("CREATE TABLE %s AS %s", table, like)
	if engine != "" {
		s += " ENGINE = " + engine
	}
	return s
}

// stagingEngine is the engine of a staging table swapped into target (<ds>_daily, <ds>_hourly
// or <ds>_speed_local): "" (a copy of the target's) on one server. In cluster mode the target is
// replicated, and a copy of its engine would register a replica: staging is a plain MergeTree
// with the target's partitioning, sorting key and granularity, read from the table itself,
// since a cluster may keep the layout of an earlier version (schema.Migrate does not copy
// replicated tables into a new layout).
func (q *queries) stagingEngine(ctx context.Context, conn driver.Conn, target string) (string, error) {
	if q.g.Cluster == "" {
		return "", nil
	}
	var full string
	sql := "SELECT engine_full FROM system.tables WHERE database = ? AND name = ?"
	if err := conn.QueryRow(ctx, sql, q.db, target).Scan(&full); err != nil {
		return "", fmt.Errorf("cannot read the engine of %s: %w", target, err)
	}
	return schema.PlainEngine(full)
}

func (q *queries) dropTable(table string) string {
	return "DROP TABLE IF EXISTS " + q.g.T(table)
}

// dailyColumns lists the columns of <ds>_daily in the order recompute fills them.
func (q *queries) dailyColumns() []string {
	cols := []string{"day", "grouping"}
	cols = append(cols, q.d.DimensionNames()...)
	for _, s := range q.d.Specs() {
		cols = append(cols, s.Name)
	}
	for _, s := range q.d.Specs() {
		if s.HasDailyState() {
			cols = append(cols, s.StateColumn())
		}
	}
	return append(cols, "run_id")
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = schema.Q(n)
	}
	return strings.Join(q, ", ")
}

// recompute is the whole exact computation of one day's rows of <ds>_daily into table in one
// query: deduplicate the day's raw rows (first ingested copy of each id), then one pass over
// every grouping set with ARRAY JOIN. Runs no longer use it (its memory grows with the day, see
// engine.go); it is the reference the engine is tested against and the benchmark's floor.
//
// Inner columns are renamed (d_<dimension>, v_<column>) so that no output alias equals a
// column it is computed from: `sum(value) AS value` is a cyclic alias on some versions.
func (q *queries) recompute(table string, day time.Time, runID string) string {
	return q.aggregateSets(table, "(\n    "+strings.ReplaceAll(q.dedupSelect(q.g.T(schema.Raw(q.d.Name)), day, false), "\n", "\n    ")+"\n)", day, runID, false)
}

// recomputeHourly is recompute at the hour grain: the rows of <ds>_hourly of one day in one
// query, the engine's reference in tests and part of the benchmark's floor.
func (q *queries) recomputeHourly(table string, day time.Time, runID string) string {
	return q.aggregateSets(table, "(\n    "+strings.ReplaceAll(q.dedupSelect(q.g.T(schema.Raw(q.d.Name)), day, true), "\n", "\n    ")+"\n)", day, runID, true)
}

// recomputeSpeed is the day's <ds>_speed partition in one query (the speed view's query over
// the deduplicated rows), the engine's reference in tests and part of the benchmark's floor.
func (q *queries) recomputeSpeed(table string, day time.Time) string {
	return q.g.SpeedSelect(q.d, "INSERT INTO "+q.g.T(table)+" ", "1", "(\n"+q.dedupRows(q.g.T(schema.Raw(q.d.Name)), day)+"\n)")
}

// dedupSelect reads one day of raw rows from table, the first ingested copy of each id, with
// the columns renamed for aggregateSets (and the time as t with withTime).
func (q *queries) dedupSelect(table string, day time.Time, withTime bool) string {
	d := q.d
	inner := []string{"id"}
	if withTime {
		inner = append(inner, "time AS t")
	}
	for _, n := range d.DimensionNames() {
		inner = append(inner, schema.Q(n)+" AS "+schema.Q("d_"+n))
	}
	for _, c := range d.ValueColumns() {
		inner = append(inner, schema.Q(c.Name)+" AS "+schema.Q("v_"+c.Name))
	}
	return fmt.Sprintf(`SELECT
    %s
FROM %s
WHERE %s
ORDER BY _ingested_at, _partition, _offset
LIMIT 1 BY id`, strings.Join(inner, ",\n    "), table, q.rawDayWhere(day))
}

// aggregateSets computes every grouping set of the deduplicated rows of source (a subquery of
// dedupSelect) into table, per day or, with hour, per hour (source then has the time as t).
func (q *queries) aggregateSets(table, source string, day time.Time, runID string, hour bool) string {
	d := q.d
	outer := []string{dateLit(day) + " AS o_day", schema.GroupingExpr + " AS o_grouping"}
	group := []string{"o_grouping"}
	cols := q.dailyColumns()
	if hour {
		outer[0] = q.hourOf("t") + " AS o_hour"
		group = append([]string{"o_hour"}, group...)
		cols = append([]string{"hour"}, cols[1:]...)
	}
	for _, n := range d.DimensionNames() {
		outer = append(outer, fmt.Sprintf("if(has(gd, %s), %s, '') AS %s", strLit(n), schema.Q("d_"+n), schema.Q("o_"+n)))
		group = append(group, schema.Q("o_"+n))
	}
	specs := d.Specs()
	for _, s := range specs {
		outer = append(outer, s.Cast(inputSpec(s).ExactExpr()))
	}
	for _, s := range specs {
		if s.HasDailyState() {
			outer = append(outer, inputSpec(s).StateExpr())
		}
	}
	outer = append(outer, strLit(runID))
	return fmt.Sprintf(`INSERT INTO %s (%s)
SELECT
    %s
FROM %s
ARRAY JOIN %s AS gd
GROUP BY %s`, q.g.T(table), quoteAll(cols),
		strings.Join(outer, ",\n    "), source,
		schema.GroupingArray(d.GroupingSets()), strings.Join(group, ", "))
}

// inputSpec is the spec reading the renamed inner column of recompute.
func inputSpec(s metric.Spec) metric.Spec {
	if s.Column != "" {
		s.Column = "v_" + s.Column
	}
	return s
}

// countDay counts the rows a daily-shaped table holds for a day.
func (q *queries) countDay(table string, day time.Time) string {
	return fmt.Sprintf("SELECT count() FROM %s WHERE day = %s", q.g.T(table), dateLit(day))
}

// totals reads the day total (the empty grouping) of every metric from a daily-shaped table, as
// Nullable(Float64) in config order.
func (q *queries) totals(table string, day time.Time) string {
	sel := []string{}
	for _, s := range q.d.Specs() {
		sel = append(sel, "toNullable(toFloat64("+schema.Q(s.Name)+"))")
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE day = %s AND grouping = ''", strings.Join(sel, ", "), q.g.T(table), dateLit(day))
}

// speedTotals reads the speed view's value of every metric over the day, and how many speed
// rows there were (no rows: no drift to report).
func (q *queries) speedTotals(day time.Time) string {
	sel := []string{"count()"}
	for _, s := range q.d.Specs() {
		sel = append(sel, "toNullable(toFloat64("+s.ValueFromStates(schema.Q(s.Name), schema.Q(metric.PresenceColumn(s.Column)))+"))")
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE minute >= %s AND minute < %s", strings.Join(sel, ", "),
		q.g.T(schema.Speed(q.d.Name)), timeLit(q.start(day)), timeLit(q.end(day)))
}

// swap replaces the day's partition of <ds>_daily with the staging table's.
func (q *queries) swap(staging string, day time.Time) string {
	return fmt.Sprintf("ALTER TABLE %s REPLACE PARTITION %s FROM %s", q.g.T(schema.Daily(q.d.Name)), partitionID(day), q.g.T(staging))
}

// dropPartition drops one day of a table partitioned by toYYYYMMDD.
func (q *queries) dropPartition(table string, day time.Time) string {
	return fmt.Sprintf("ALTER TABLE %s DROP PARTITION %s", q.g.T(table), partitionID(day))
}

// partitions lists the non-empty day partitions of a table.
func (q *queries) partitions(table string) string {
	return fmt.Sprintf("SELECT partition FROM system.parts WHERE database = %s AND table = %s AND active GROUP BY partition HAVING sum(rows) > 0 ORDER BY partition",
		strLit(q.db), strLit(table))
}

// stagingTables lists leftover staging tables of the dataset.
func (q *queries) stagingTables() string {
	return fmt.Sprintf("SELECT name FROM system.tables WHERE database = %s AND startsWith(name, %s)", strLit(q.db), strLit(stagingPrefix(q.d.Name)))
}
