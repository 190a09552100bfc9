package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// RestDays is how many days back from today the batch layer keeps the rows of the rest of each
// sealed day from each hour (<ds>_hourly_rest): a range of up to a week that starts inside a
// sealed day (the built-in dashboards' "last 7 days" at the longest) finds them for its first
// day.
const RestDays = 8

// Rest is the newest rollup of a sealed day's hours into <ds>_hourly_rest.
//
// The rule: the rows are the rest of the day from each hour as the run Run wrote its hours
// (the run id the rows carry), with the table's columns of Layout. They answer for the day while
// Run is the day's newest successful run and Layout the table's: a rerun of the day makes them
// stale until the next rollup.
type Rest struct {
	Day    time.Time // a Date (see DayIn)
	Run    string
	Rows   uint64
	Layout string
}

// Current applies the rule for the day's newest successful run and the table's layout.
func (r Rest) Current(run, layout string) bool {
	return run != "" && r.Run == run && r.Layout == layout
}

func restsSQL(db string) string {
	return fmt.Sprintf(`SELECT day, argMax(run_id, at_us), argMax(rows, at_us), argMax(layout, at_us)
FROM %s WHERE dataset = ? AND day >= toDate(?) GROUP BY day ORDER BY day`, t(db, RestRollups))
}

// ReadRests returns the newest rollup into <ds>_hourly_rest of each day from since on (a Date),
// by day.
func ReadRests(ctx context.Context, conn driver.Conn, db, ds string, since time.Time) (map[time.Time]Rest, error) {
	rows, err := conn.Query(ctx, restsSQL(db), ds, since.Format(time.DateOnly))
	if err != nil {
		return nil, fmt.Errorf("cannot read the rest rollups of %s: %w", ds, err)
	}
	defer rows.Close()
	out := map[time.Time]Rest{}
	for rows.Next() {
		var r Rest
		if err := rows.Scan(&r.Day, &r.Run, &r.Rows, &r.Layout); err != nil {
			return nil, fmt.Errorf("cannot read the rest rollups of %s: %w", ds, err)
		}
		r.Day = DayOf(r.Day)
		out[r.Day] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the rest rollups of %s: %w", ds, err)
	}
	return out, nil
}
