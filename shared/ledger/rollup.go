package ledger

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Rollup is the newest rollup of a day's completed hours of <ds>_speed into <ds>_speed_hourly
// (written by the batch layer for the days after the boundary), and how much of it is current.
//
// The rule: a rollup is a copy of <ds>_speed's minutes as they were at Snapshot (ClickHouse's
// clock when it began reading them). The speed layer writes a flush's ledger row after the
// flush's rows, so every flush recorded before Snapshot is in the copy; a flush recorded at or
// after it (flushed_at has whole seconds: the same second counts as after) may not be, and its
// events, from its min_event_time on, may change the hours they fall in. The rollup is current
// for the day's hours before Valid: HourTo, or the start of the first hour such a flush wrote
// events to. A flush row that does not say (written before min_event_time existed: 1970) counts
// as touching the whole day.
type Rollup struct {
	Day      time.Time // a Date (see DayIn)
	HourTo   time.Time // the rollup holds the day's hours before HourTo
	Snapshot time.Time
	Sets     []string // the grouping sets it holds, as in <ds>_daily's grouping column
	Rows     uint64
	Valid    time.Time
	// Layout fingerprints the table's columns when the rollup was made (schema's
	// SpeedHourlyLayout).
	Layout string
}

// HourStart is the start of the local hour (in loc) holding t, as an instant.
func HourStart(t time.Time, loc *time.Location) time.Time {
	l := t.In(loc)
	return t.Add(-time.Duration(l.Minute())*time.Minute - time.Duration(l.Second())*time.Second - time.Duration(l.Nanosecond())).UTC()
}

// valid applies the rule: touched is the oldest event time (clipped to the day's start) of the
// n flushes recorded since the snapshot that wrote events before HourTo and not before the
// day's start.
func (r Rollup) valid(n uint64, touched time.Time, loc *time.Location) time.Time {
	if n == 0 || !touched.Before(r.HourTo) {
		return r.HourTo
	}
	return HourStart(touched, loc)
}

// rollupsSQL gives the newest rollup of each day of a dataset from a day on (bound).
func rollupsSQL(db string) string {
	return fmt.Sprintf(`SELECT day, argMax(hour_to, at_us), argMax(snapshot, at_us), argMax(sets, at_us), argMax(rows, at_us), argMax(layout, at_us)
FROM %s WHERE dataset = ? AND day >= toDate(?) GROUP BY day ORDER BY day`, t(db, SpeedRollups))
}

// touchedSQL gives, per rollup (one branch each), the number of flushes since its snapshot that
// wrote events into its hours, and the oldest such event time clipped to the day's start.
func touchedSQL(db, ds string, rs []Rollup, loc *time.Location) string {
	branches := make([]string, len(rs))
	for i, r := range rs {
		start := DayStart(r.Day, loc).Unix()
		branches[i] = fmt.Sprintf(`SELECT toDate('%s') AS day, count() AS n, toDateTime(min(greatest(toUInt32(min_event_time), %d)), 'UTC') AS touched
FROM %s WHERE dataset = %s AND flushed_at >= toDateTime(%d, 'UTC') AND raw_rows > late_rows
    AND min_event_time < toDateTime(%d, 'UTC') AND max_event_time >= toDateTime(%d, 'UTC')`,
			r.Day.Format(time.DateOnly), start, t(db, SpeedFlushes), lit(ds), r.Snapshot.Unix(), r.HourTo.Unix(), start)
	}
	return strings.Join(branches, "\nUNION ALL\n")
}

// ReadSpeedRollups returns the newest rollup of each day from since on (a Date) with the hours that
// are current (Valid), by day. loc is the dataset's zone. A day whose newest rollup was made with
// another layout than layout (the table's columns changed since: its rows lack a metric, or a
// value) is left out: nothing of it may be read.
func ReadSpeedRollups(ctx context.Context, conn driver.Conn, db, ds string, since time.Time, loc *time.Location, layout string) (map[time.Time]Rollup, error) {
	rows, err := conn.Query(ctx, rollupsSQL(db), ds, since.Format(time.DateOnly))
	if err != nil {
		return nil, fmt.Errorf("cannot read the speed rollups of %s: %w", ds, err)
	}
	var rs []Rollup
	for rows.Next() {
		var r Rollup
		if err := rows.Scan(&r.Day, &r.HourTo, &r.Snapshot, &r.Sets, &r.Rows, &r.Layout); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cannot read the speed rollups of %s: %w", ds, err)
		}
		r.Day, r.HourTo, r.Snapshot = DayOf(r.Day), r.HourTo.UTC(), r.Snapshot.UTC()
		if r.Layout == layout {
			rs = append(rs, r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the speed rollups of %s: %w", ds, err)
	}
	out := make(map[time.Time]Rollup, len(rs))
	if len(rs) == 0 {
		return out, nil
	}
	byDay := make(map[time.Time]*Rollup, len(rs))
	for i := range rs {
		rs[i].Valid = rs[i].HourTo
		byDay[rs[i].Day] = &rs[i]
	}
	trows, err := conn.Query(ctx, touchedSQL(db, ds, rs, loc))
	if err != nil {
		return nil, fmt.Errorf("cannot read the flushes after the speed rollups of %s: %w", ds, err)
	}
	for trows.Next() {
		var day, touched time.Time
		var n uint64
		if err := trows.Scan(&day, &n, &touched); err != nil {
			trows.Close()
			return nil, fmt.Errorf("cannot read the flushes after the speed rollups of %s: %w", ds, err)
		}
		if r := byDay[DayOf(day)]; r != nil {
			r.Valid = r.valid(n, touched.UTC(), loc)
		}
	}
	trows.Close()
	if err := trows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the flushes after the speed rollups of %s: %w", ds, err)
	}
	for _, r := range rs {
		out[r.Day] = r
	}
	return out, nil
}
