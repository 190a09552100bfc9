package ledger

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Drift is how far the speed view of a day was from the exact value of a metric, written when
// a run makes the day exact.
type Drift struct {
	Day      time.Time `json:"day"`
	Metric   string    `json:"metric"`
	Speed    *float64  `json:"speed_value"`
	Exact    *float64  `json:"exact_value"`
	AbsError *float64  `json:"abs_error"`
	RelError *float64  `json:"rel_error"`
	RunID    string    `json:"run_id"`
}

// NewDrift compares a metric's speed value with its exact value. Either may be missing (NULL,
// or not finite): then there is no error to report.
func NewDrift(day time.Time, metric string, speed, exact *float64, runID string) Drift {
	d := Drift{Day: day, Metric: metric, Speed: finite(speed), Exact: finite(exact), RunID: runID}
	if d.Speed == nil || d.Exact == nil {
		return d
	}
	a := math.Abs(*d.Speed - *d.Exact)
	d.AbsError = &a
	switch {
	case *d.Exact != 0:
		r := a / math.Abs(*d.Exact)
		d.RelError = &r
	case a == 0:
		r := 0.0
		d.RelError = &r
	}
	return d
}

func finite(v *float64) *float64 {
	if v == nil || math.IsNaN(*v) || math.IsInf(*v, 0) {
		return nil
	}
	return v
}

// RecordDrift appends a day's drift rows to <ds>_drift.
func RecordDrift(ctx context.Context, conn driver.Conn, db, ds string, rows []Drift, at time.Time) error {
	table := DriftTable(ds)
	b, err := conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (day, metric, speed_value, exact_value, abs_error, rel_error, run_id, at)", t(db, table)))
	if err != nil {
		return fmt.Errorf("cannot insert drift into %s: %w", table, err)
	}
	defer b.Close()
	for _, r := range rows {
		if err := b.Append(r.Day, r.Metric, r.Speed, r.Exact, r.AbsError, r.RelError, r.RunID, at); err != nil {
			return fmt.Errorf("cannot insert drift into %s: %w", table, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cannot insert drift into %s: %w", table, err)
	}
	return nil
}

// ReadDrift returns the newest drift of every metric per day from since on, newest day first.
func ReadDrift(ctx context.Context, conn driver.Conn, db, ds string, since time.Time) ([]Drift, error) {
	q := fmt.Sprintf(`SELECT day, metric, argMax(speed_value, at), argMax(exact_value, at), argMax(abs_error, at), argMax(rel_error, at), argMax(run_id, at)
FROM %s WHERE day >= %s GROUP BY day, metric ORDER BY day DESC, metric`, t(db, DriftTable(ds)), dateLit(since))
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("cannot read drift of %s: %w", ds, err)
	}
	defer rows.Close()
	var out []Drift
	for rows.Next() {
		var r Drift
		if err := rows.Scan(&r.Day, &r.Metric, &r.Speed, &r.Exact, &r.AbsError, &r.RelError, &r.RunID); err != nil {
			return nil, fmt.Errorf("cannot read drift of %s: %w", ds, err)
		}
		r.Day = DayOf(r.Day)
		out = append(out, r)
	}
	return out, rows.Err()
}
