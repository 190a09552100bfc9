package batchlayer

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

type runResult struct {
	runID                       string
	rowsRaw, rowsDedup, rowsOut uint64
}

// Run statuses in batch_runs.
const (
	StatusStarted   = ledger.StatusStarted
	StatusSucceeded = ledger.StatusSucceeded
	StatusFailed    = ledger.StatusFailed
)

// cleanupTimeout bounds the bookkeeping done after ctx was cancelled: recording the failure and
// dropping the staging table.
const cleanupTimeout = 30 * time.Second

// runDay recomputes one day of a dataset; the caller holds d.mu.
func (l *Layer) runDay(ctx context.Context, d *dataset, day time.Time) (runResult, error) {
	name := d.d.Name
	started, _ := l.stamp()
	res := runResult{runID: newRunID(started, day)}
	log := l.log.With("dataset", name, "day", day.Format(time.DateOnly), "run_id", res.runID)
	t0 := time.Now()
	if err := l.recordRun(ctx, d, day, res, StatusStarted, started, time.Time{}, ""); err != nil {
		l.m.runs.WithLabelValues(name, StatusFailed).Inc()
		return res, err
	}
	staging := stagingName(name, res.runID)
	err := l.compute(ctx, d, day, staging, &res)
	dropCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	took := time.Since(t0)
	l.m.duration.WithLabelValues(name).Observe(took.Seconds())
	if err != nil {
		l.m.runs.WithLabelValues(name, StatusFailed).Inc()
		err = fmt.Errorf("cannot recompute %s of %s (run %s): %w", day.Format(time.DateOnly), name, res.runID, err)
		if rerr := l.recordRun(dropCtx, d, day, res, StatusFailed, started, l.now().UTC(), err.Error()); rerr != nil {
			log.Error("cannot record failed run", "err", rerr)
		}
		log.Error("batch run failed", "err", err, "took", took.Round(time.Millisecond))
		return res, err
	}
	if err := l.recordRun(ctx, d, day, res, StatusSucceeded, started, l.now().UTC(), ""); err != nil {
		// The day is swapped in but not recorded: it stays out of the watermark and is
		// recomputed at the next tick.
		l.m.runs.WithLabelValues(name, StatusFailed).Inc()
		return res, err
	}
	l.m.runs.WithLabelValues(name, StatusSucceeded).Inc()
	l.m.rows.WithLabelValues(name).Add(float64(res.rowsOut))
	log.Info("batch run succeeded", "rows_raw", res.rowsRaw, "rows_dedup", res.rowsDedup, "rows", res.rowsOut, "took", took.Round(time.Millisecond))
	if err := l.drift(ctx, d, day, res.runID); err != nil {
		log.Warn("cannot record drift", "err", err)
	}
	return res, nil
}

// compute fills the staging table, swaps it in and drops it. In cluster mode the staging table
// lives on one node (the initiator), which aggregates the shards' partial results into it and
// swaps it into its replica of <ds>_daily (see cluster.go).
func (l *Layer) compute(ctx context.Context, d *dataset, day time.Time, staging string, res *runResult) error {
	q := d.q
	daily := schema.Daily(d.d.Name)
	conn, source := l.conn, ""
	if l.cl != nil {
		var cleanup func()
		var err error
		conn, source, cleanup, err = l.prepareCluster(ctx, d, day, staging)
		defer cleanup()
		if err != nil {
			return err
		}
	} else {
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if err := l.conn.Exec(cctx, q.dropTable(staging)); err != nil {
				l.log.Warn("cannot drop staging table", "dataset", d.d.Name, "table", staging, "err", err)
			}
		}()
	}
	if err := conn.Exec(ctx, q.createStaging(staging)); err != nil {
		return fmt.Errorf("cannot create staging table %s: %w", staging, err)
	}
	// What the run reads: raw's rows of the day, counted before and after the aggregation.
	// Raw is append-only: equal counts mean the aggregation read exactly these rows. Rows that
	// arrive meanwhile leave the day dirty (raw holds more than the run read), so it is
	// recomputed, and reported approximate until then.
	db := l.cfg.ClickHouse.Database
	if err := l.conn.QueryRow(ctx, ledger.RawRowsSQL(db, d.d.Name, day)).Scan(&res.rowsRaw); err != nil {
		return fmt.Errorf("cannot count raw rows: %w", err)
	}
	settings := clickhouse.Settings{}
	if n := l.cfg.Batch.MaxThreads; n > 0 {
		settings["max_threads"] = n
	}
	sql := q.recompute(staging, day, res.runID)
	if l.cl != nil {
		maps.Copy(settings, l.clusterSettings())
		sql = q.aggregate(staging, q.g.T(source), day, res.runID)
	}
	if err := conn.Exec(clickhouse.Context(ctx, clickhouse.WithSettings(settings)), sql); err != nil {
		return fmt.Errorf("cannot insert recompute into %s: %w", staging, err)
	}
	var after uint64
	if err := l.conn.QueryRow(ctx, ledger.RawRowsSQL(db, d.d.Name, day)).Scan(&after); err != nil {
		return fmt.Errorf("cannot count raw rows: %w", err)
	}
	if after != res.rowsRaw {
		l.log.Info("rows arrived during the run: the day stays dirty and is recomputed at the next tick",
			"dataset", d.d.Name, "day", day.Format(time.DateOnly), "rows_before", res.rowsRaw, "rows_after", after)
	}
	if err := conn.QueryRow(ctx, q.countDay(staging, day)).Scan(&res.rowsOut); err != nil {
		return fmt.Errorf("cannot count rows of %s: %w", staging, err)
	}
	if i := hasCount(d.d.Specs()); i >= 0 && res.rowsOut > 0 {
		vals, err := l.totals(ctx, conn, d, staging, day)
		if err != nil {
			return err
		}
		if vals[i] != nil {
			res.rowsDedup = uint64(*vals[i])
		}
	} else if res.rowsRaw > 0 {
		if err := l.conn.QueryRow(ctx, q.countDedup(day)).Scan(&res.rowsDedup); err != nil {
			return fmt.Errorf("cannot count deduplicated rows: %w", err)
		}
	}
	if res.rowsOut == 0 {
		var old uint64
		if err := conn.QueryRow(ctx, q.countDay(daily, day)).Scan(&old); err != nil {
			return fmt.Errorf("cannot count rows of %s: %w", daily, err)
		}
		if old > 0 {
			return fmt.Errorf("refusing to replace %d rows of %s with an empty recompute (raw holds %d rows for the day)", old, daily, res.rowsRaw)
		}
	}
	if l.hook != nil {
		if err := l.hook(ctx, d.d.Name, day); err != nil {
			return err
		}
	}
	if l.lease != nil {
		// Another process may have taken the lease while this run computed: its runs of the
		// day would interleave with this one. Confirm ownership just before the swap.
		if err := l.lease.check(ctx, d.d.Name); err != nil {
			return err
		}
	}
	if res.rowsOut == 0 {
		return nil // nothing to swap, nothing to replace; current servers refuse an empty source
	}
	if err := conn.Exec(ctx, q.swap(staging, day)); err != nil {
		return fmt.Errorf("cannot replace partition %s of %s: %w", partitionID(day), daily, err)
	}
	if l.cl != nil {
		l.syncDaily(ctx, d)
	}
	if l.after != nil {
		l.after(ctx, d.d.Name, day)
	}
	return nil
}

func (l *Layer) recordRun(ctx context.Context, d *dataset, day time.Time, res runResult, status string, started, finished time.Time, errText string) error {
	at, atUS := l.stamp()
	return ledger.RecordRun(ctx, l.conn, l.cfg.ClickHouse.Database, ledger.Run{Dataset: d.d.Name, Day: day, RunID: res.runID,
		Status: status, At: at, AtUS: atUS, StartedAt: started, FinishedAt: finished, RowsRead: res.rowsRaw,
		RowsDedup: res.rowsDedup, RowsOut: res.rowsOut, Error: errText, Host: l.host})
}

// totals reads the day total of every metric from a daily-shaped table through conn.
func (l *Layer) totals(ctx context.Context, conn driver.Conn, d *dataset, table string, day time.Time) ([]*float64, error) {
	n := len(d.d.Specs())
	vals := make([]*float64, n)
	dest := make([]any, n)
	for i := range vals {
		dest[i] = &vals[i]
	}
	rows, err := conn.Query(ctx, d.q.totals(table, day))
	if err != nil {
		return nil, fmt.Errorf("cannot read day totals from %s: %w", table, err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("cannot read day totals from %s: %w", table, err)
		}
	}
	return vals, rows.Err()
}

// drift writes, per metric, how far the speed view of the day was from the exact value. Days
// the speed view holds nothing of (backfills of old days) have no drift.
func (l *Layer) drift(ctx context.Context, d *dataset, day time.Time, runID string) error {
	specs := d.d.Specs()
	exact, err := l.totals(ctx, l.conn, d, schema.Daily(d.d.Name), day)
	if err != nil {
		return err
	}
	var n uint64
	speed := make([]*float64, len(specs))
	dest := []any{&n}
	for i := range speed {
		dest = append(dest, &speed[i])
	}
	if err := l.conn.QueryRow(ctx, d.q.speedTotals(day)).Scan(dest...); err != nil {
		return fmt.Errorf("cannot read speed totals of %s: %w", schema.Speed(d.d.Name), err)
	}
	if n == 0 {
		return nil
	}
	rows := make([]ledger.Drift, len(specs))
	for i, s := range specs {
		rows[i] = ledger.NewDrift(day, s.Name, speed[i], exact[i], runID)
		if r := rows[i].RelError; r != nil {
			l.m.drift.WithLabelValues(d.d.Name, s.Name).Set(*r)
		}
	}
	return ledger.RecordDrift(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name, rows, l.now().UTC())
}
