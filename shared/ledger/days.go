package ledger

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// RawDaysSelect is the materialized view's query from <ds>_raw (the table raw, qualified) into
// <ds>_raw_days: the rows of every insert block per day of the dataset's zone loc. 18.16 pushes
// an INSERT … SELECT block to its views before converting it to the table's types, hence the
// casts.
func RawDaysSelect(raw string, loc *time.Location) string {
	zone := "'UTC'"
	if z := ZoneArg(loc); z != "" {
		zone = z[2:]
	}
	return fmt.Sprintf("SELECT toDate(toDateTime(time), %s) AS day, count() AS rows FROM %s GROUP BY day", zone, raw)
}

// RawRowsSQL counts the rows raw holds for one day, as <ds>_raw_days knows them. A run takes
// it before and after it reads the day.
func RawRowsSQL(db, ds string, day time.Time) string {
	return fmt.Sprintf("SELECT sum(rows) FROM %s WHERE day = %s", t(db, RawDays(ds)), dateLit(day))
}

// DaysSQL gives one row per day that raw holds rows for or that has a successful run:
// day, raw_rows, has_run, run_id, rows_read, rows_out, rows_hourly, rows_speed, dirty, unrun. It is the rule of dirty
// and unrun days; Go (ReadDays) and the <ds>_lambda view both run it.
//
//   - dirty: the newest successful run read another number of rows than raw holds now. A day
//     whose raw partition is gone (retention) is not dirty: its daily rows are the record.
//   - unrun: raw holds rows and no run succeeded.
func DaysSQL(db, ds string) string {
	return fmt.Sprintf(`SELECT day, sum(r_raw) AS raw_rows, max(r_has) AS has_run, max(r_run) AS run_id, max(r_read) AS rows_read, max(r_out) AS rows_out,
    max(r_hourly) AS rows_hourly, max(r_speed) AS rows_speed,
    toUInt8(has_run = 1 AND raw_rows > 0 AND raw_rows != rows_read) AS dirty,
    toUInt8(has_run = 0 AND raw_rows > 0) AS unrun
FROM
(
    SELECT day, toUInt64(sum(rows)) AS r_raw, toUInt8(0) AS r_has, '' AS r_run, toUInt64(0) AS r_read, toUInt64(0) AS r_out,
        toUInt64(0) AS r_hourly, toUInt64(0) AS r_speed
    FROM %s GROUP BY day
    UNION ALL
    SELECT day, toUInt64(0), toUInt8(1), s_run, toUInt64(s_read), toUInt64(s_out), toUInt64(s_hourly), toUInt64(s_speed)
    FROM (%s)
)
GROUP BY day`, t(db, RawDays(ds)), SucceededSQL(db, ds))
}

// DirtyDaysSQL lists the dataset's dirty days (see DaysSQL), for `day NOT IN (…)`.
func DirtyDaysSQL(db, ds string) string {
	return fmt.Sprintf("SELECT day FROM (%s) WHERE dirty = 1", DaysSQL(db, ds))
}

// ExactRunsSQL lists (day, run_id) for the days whose batch rows are exact (Day.Exact): the day's
// newest successful run, when the day is not dirty. A view flags a row of <ds>_daily or
// <ds>_hourly exact when its own (day, run_id) is listed, so that rows swapped in by a run whose
// success was never written (killed between the swap and `succeeded`) or by an older run are
// not, whichever of the rows and the ledger the query happened to read first: ClickHouse takes
// a query's table snapshot when it builds the pipeline and reads an IN subquery in a SELECT
// list later, so a swap and its success can fall in between.
func ExactRunsSQL(db, ds string) string {
	return fmt.Sprintf("SELECT day, run_id FROM (%s) WHERE has_run = 1 AND dirty = 0", DaysSQL(db, ds))
}

// Day is what the ledger knows of one day of a dataset.
type Day struct {
	Day time.Time
	// RawRows is how many rows raw holds for the day now.
	RawRows uint64
	// Run is the newest successful run ("" when none); RowsRead the raw rows it read, RowsOut
	// the rows it wrote to <ds>_daily.
	Run               string
	RowsRead, RowsOut uint64
	// RowsHourly and RowsSpeed are what that run wrote to <ds>_hourly and to the day's
	// rewritten <ds>_speed partition (0 for runs that did not: hour and minute buckets of the
	// day then come from raw).
	RowsHourly, RowsSpeed uint64
	Dirty, Unrun          bool
}

// HasRun reports whether a run of the day succeeded.
func (d Day) HasRun() bool { return d.Run != "" }

// Exact reports whether the day's batch rows are exact: its newest successful run read every
// row raw holds for it.
func (d Day) Exact() bool { return d.HasRun() && !d.Dirty }

// Days are the known days of a dataset in day order.
type Days []Day

// ReadDays reads every day raw holds rows for or that has a successful run (DaysSQL).
func ReadDays(ctx context.Context, conn driver.Conn, db, ds string) (Days, error) {
	rows, err := conn.Query(ctx, DaysSQL(db, ds)+"\nORDER BY day")
	if err != nil {
		return nil, fmt.Errorf("cannot read the days of %s: %w", ds, err)
	}
	defer rows.Close()
	var out Days
	for rows.Next() {
		var d Day
		var has, dirty, unrun uint8
		if err := rows.Scan(&d.Day, &d.RawRows, &has, &d.Run, &d.RowsRead, &d.RowsOut, &d.RowsHourly, &d.RowsSpeed, &dirty, &unrun); err != nil {
			return nil, fmt.Errorf("cannot read the days of %s: %w", ds, err)
		}
		d.Day, d.Dirty, d.Unrun = DayOf(d.Day), dirty == 1, unrun == 1
		out = append(out, d)
	}
	return out, rows.Err()
}

// Get returns the day's entry, false when the ledger knows nothing of it (no raw rows, no run).
func (ds Days) Get(day time.Time) (Day, bool) {
	i, ok := slices.BinarySearchFunc(ds, day, func(d Day, t time.Time) int { return d.Day.Compare(t) })
	if !ok {
		return Day{}, false
	}
	return ds[i], true
}

// Exact is the exact watermark: the last day D such that every day up to D with raw rows has
// a successful run and is not dirty; zero when none. Days with a run and no raw rows count as
// exact, so that an empty day does not hold it back.
func (ds Days) Exact() time.Time {
	var wm time.Time
	for _, d := range ds {
		if !d.Exact() {
			break
		}
		wm = d.Day
	}
	return wm
}

// Covered is the last day D such that every day up to D with raw rows has had a successful
// run, dirty or not; zero when none. The persisted boundary advances to it and never moves
// back (see Boundary).
func (ds Days) Covered() time.Time {
	var wm time.Time
	for _, d := range ds {
		if !d.HasRun() {
			break
		}
		wm = d.Day
	}
	return wm
}

// Dirty lists the dirty days from since on (every one when since is zero).
func (ds Days) Dirty(since time.Time) []time.Time {
	var out []time.Time
	for _, d := range ds {
		if d.Dirty && !d.Day.Before(since) {
			out = append(out, d.Day)
		}
	}
	return out
}

// Unrun lists the days with raw rows and no successful run.
func (ds Days) Unrun() []time.Time {
	var out []time.Time
	for _, d := range ds {
		if d.Unrun {
			out = append(out, d.Day)
		}
	}
	return out
}

// Runs maps every day with a successful run to its newest one.
func (ds Days) Runs() map[time.Time]Day {
	out := make(map[time.Time]Day, len(ds))
	for _, d := range ds {
		if d.HasRun() {
			out[d.Day] = d
		}
	}
	return out
}
