// Package ledger is the platform's bookkeeping, and the one owner of the rules derived from it.
//
// The facts live in ClickHouse tables the layers append to:
//
//   - speed_flushes: per flush and Kafka partition, the offsets the speed layer committed, the
//     broker's end offset it saw and the newest event time; idle partitions write heartbeats.
//   - <ds>_raw_days: how many rows <ds>_raw holds per day, kept by a materialized view on raw
//     (so every insert into raw counts, whoever makes it: speed, import, a hand-made INSERT).
//   - batch_runs: run events (started, succeeded, failed) with the raw rows each run read.
//   - batch_watermarks: the persisted batch boundary, where <ds>_daily ends and <ds>_speed
//     begins.
//   - <ds>_drift: how far the speed view was from the exact values of a sealed day.
//
// The rules, each written once here, with its SQL form beside it where a view needs it:
//
//   - A day is dirty when raw now holds another number of rows for it than its newest
//     successful run read (DaysSQL). Raw is append-only, so the counts differ exactly when rows
//     arrived (or were deleted) after the run read the day, however recently; no clock is
//     compared with another.
//   - A day is unrun when raw holds rows for it and no run succeeded.
//   - The exact watermark is the last day D such that every day up to D with raw rows has a
//     successful run and is not dirty (Days.Exact).
//   - The boundary is persisted and never moves back: it advances to the last day D such that
//     every day up to D with raw rows has had a successful run (Days.Covered); a day turning
//     dirty stays on the daily side, flagged approximate, until its rerun.
//   - The speed watermark is the minimum over partitions of the newest committed event time,
//     where a partition counts as caught up ("now") only on evidence: Kafka's own offsets (the
//     group's committed offset is the partition's end offset), or, without them, a fresh
//     heartbeat of its owner saying lag 0 (Speed).
package ledger

import (
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/metric"
)

// Names of the bookkeeping tables shared by every dataset.
const (
	SpeedFlushes    = "speed_flushes"
	BatchRuns       = "batch_runs"
	BatchWatermarks = "batch_watermarks"
	SpeedRollups    = "speed_rollups"
	RestRollups     = "rest_rollups"
)

// RawDays is the name of a dataset's table of raw rows per day; RawDaysMV feeds it.
func RawDays(ds string) string { return ds + "_raw_days" }

// RawDaysMV is the materialized view that counts every insert into <ds>_raw into RawDays.
func RawDaysMV(ds string) string { return ds + "_raw_days_mv" }

// Drift is the name of a dataset's drift table.
func DriftTable(ds string) string { return ds + "_drift" }

// DayOf is the UTC day holding t, at midnight.
func DayOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// DayIn is the day holding t in the zone loc (a dataset's time zone), as a Date: midnight UTC
// of the local calendar date, the value ClickHouse's Date columns read as. Every day of the
// ledger is such a date; DayStart and DayEnd give the instants it spans. DayIn(t, time.UTC) is
// DayOf(t).
func DayIn(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// DayStart is the instant the day (a Date, see DayIn) begins in loc: its local midnight, in UTC.
func DayStart(day time.Time, loc *time.Location) time.Time {
	return time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, loc).UTC()
}

// DayEnd is the instant the day ends in loc, the next day's start: 23 or 25 hours after its
// start on the days a zone with daylight saving changes its clocks.
func DayEnd(day time.Time, loc *time.Location) time.Time {
	return DayStart(day.AddDate(0, 0, 1), loc)
}

// ZoneArg is the time zone argument of ClickHouse's date functions for loc: "" for UTC (the
// zone of the DateTime('UTC') columns, so that a UTC dataset's SQL is what it was before time
// zones), ", 'America/New_York'" otherwise: toDate(time, 'America/New_York') is the local date.
func ZoneArg(loc *time.Location) string {
	if loc == nil || loc == time.UTC || loc.String() == "UTC" {
		return ""
	}
	return ", " + lit(loc.String())
}

// Epoch is the zero of DateTime columns: a time column holding it means "none".
var Epoch = time.Unix(0, 0).UTC()

// t qualifies a table name with the database.
func t(db, name string) string { return metric.QuoteIdent(db) + "." + metric.QuoteIdent(name) }

// lit is a string literal. Dataset names and run ids are validated or generated, so this only
// guards against surprises.
func lit(s string) string { return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'" }

// dateLit is a Date literal.
func dateLit(day time.Time) string { return "toDate('" + day.UTC().Format(time.DateOnly) + "')" }
