package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Run statuses in batch_runs. The current state of a run is argMax(status, at_us) per run id.
const (
	StatusStarted   = "started"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
)

// Run is one batch run of a (dataset, day): an event of batch_runs when written, the run's
// current state when read.
type Run struct {
	Dataset string    `json:"-"`
	Day     time.Time `json:"day"`
	RunID   string    `json:"run_id"`
	Status  string    `json:"status"`
	// At is when this event (or, read back, the run's newest event) was written; AtUS its
	// microseconds, strictly increasing per writer so that argMax(…, at_us) never ties.
	At        time.Time `json:"at"`
	AtUS      uint64    `json:"-"`
	StartedAt time.Time `json:"started_at"`
	// FinishedAt is zero while the run has not finished.
	FinishedAt time.Time `json:"finished_at"`
	// RowsRead is how many rows raw held for the day when the run read it (column rows_raw):
	// the run saw every one of them, and the day is dirty once raw holds another number.
	RowsRead  uint64 `json:"rows_raw"`
	RowsDedup uint64 `json:"rows_dedup"`
	RowsOut   uint64 `json:"rows_out"`
	// RowsHourly and RowsSpeed are the rows the run swapped into <ds>_hourly and into the
	// day's <ds>_speed partition (rewritten from deduplicated raw).
	RowsHourly uint64 `json:"rows_hourly"`
	RowsSpeed  uint64 `json:"rows_speed"`
	Error      string `json:"error,omitempty"`
	Host       string `json:"host"`
}

// Duration is how long the run took, or has been running, at its newest event.
func (r Run) Duration() time.Duration {
	if r.FinishedAt.IsZero() {
		return r.At.Sub(r.StartedAt)
	}
	return r.FinishedAt.Sub(r.StartedAt)
}

// RecordRun appends one event of a run to batch_runs.
func RecordRun(ctx context.Context, conn driver.Conn, db string, r Run) error {
	b, err := conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (dataset, day, run_id, status, at, at_us, started_at, finished_at, rows_raw, rows_dedup, rows_out, rows_hourly, rows_speed, error, host)", t(db, BatchRuns)))
	if err != nil {
		return fmt.Errorf("cannot insert run into %s: %w", BatchRuns, err)
	}
	defer b.Close()
	finished := r.FinishedAt
	if finished.IsZero() {
		finished = Epoch
	}
	if err := b.Append(r.Dataset, r.Day, r.RunID, r.Status, r.At, r.AtUS, r.StartedAt, finished,
		r.RowsRead, r.RowsDedup, r.RowsOut, r.RowsHourly, r.RowsSpeed, r.Error, r.Host); err != nil {
		return fmt.Errorf("cannot insert run into %s: %w", BatchRuns, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cannot insert run into %s: %w", BatchRuns, err)
	}
	return nil
}

// SucceededSQL gives, per day of a dataset with a successful run, the newest such run: run_id,
// rows_read, rows_out. The rule "the day's last successful run" is this query.
func SucceededSQL(db, ds string) string {
	return fmt.Sprintf(`SELECT day, argMax(run_id, at_us) AS s_run, argMax(rows_raw, at_us) AS s_read, argMax(rows_out, at_us) AS s_out,
    argMax(rows_hourly, at_us) AS s_hourly, argMax(rows_speed, at_us) AS s_speed
FROM %s WHERE dataset = %s AND status = %s GROUP BY day`, t(db, BatchRuns), lit(ds), lit(StatusSucceeded))
}

// lastRunsSQL gives the newest runs of a dataset with their current state.
func lastRunsSQL(db, ds string, n int) string {
	return fmt.Sprintf(`SELECT run_id, any(day), argMax(status, at_us), max(at), min(started_at), argMax(finished_at, at_us),
    argMax(rows_raw, at_us), argMax(rows_dedup, at_us), argMax(rows_out, at_us), argMax(rows_hourly, at_us), argMax(rows_speed, at_us),
    argMax(error, at_us), any(host)
FROM %s WHERE dataset = %s GROUP BY run_id ORDER BY max(at_us) DESC LIMIT %d`, t(db, BatchRuns), lit(ds), n)
}

// LastRuns returns the n newest runs of a dataset with their current state, newest first.
func LastRuns(ctx context.Context, conn driver.Conn, db, ds string, n int) ([]Run, error) {
	rows, err := conn.Query(ctx, lastRunsSQL(db, ds, n))
	if err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds, err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		r := Run{Dataset: ds}
		if err := rows.Scan(&r.RunID, &r.Day, &r.Status, &r.At, &r.StartedAt, &r.FinishedAt, &r.RowsRead, &r.RowsDedup, &r.RowsOut, &r.RowsHourly, &r.RowsSpeed, &r.Error, &r.Host); err != nil {
			return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds, err)
		}
		r.Day, r.At, r.StartedAt, r.FinishedAt = DayOf(r.Day), r.At.UTC(), r.StartedAt.UTC(), r.FinishedAt.UTC()
		if !r.FinishedAt.After(Epoch) {
			r.FinishedAt = time.Time{}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
