package batchlayer

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

type runResult struct {
	runID                                              string
	rowsRaw, rowsDedup, rowsOut, rowsHourly, rowsSpeed uint64
	plan                                               split
	// speed are the speed view's totals of the day before the run replaced its minutes (nil
	// when there is no drift to record).
	speed []*float64
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

// runDay recomputes one day of a dataset; the caller holds d.mu. progress, when not nil, hears
// of every pass of the run (phase, passes done, passes in the phase).
func (l *Layer) runDay(ctx context.Context, d *dataset, day time.Time, progress func(phase string, step, steps int)) (runResult, error) {
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
	tr := l.m.track(name)
	report := func(phase string, step, steps int) {
		tr.phase(phase, step, steps)
		if progress != nil {
			progress(phase, step, steps)
		}
	}
	err := l.compute(ctx, d, day, staging, &res, report)
	tr.done()
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
	log.Info("batch run succeeded", "rows_raw", res.rowsRaw, "rows_dedup", res.rowsDedup, "rows", res.rowsOut,
		"rows_hourly", res.rowsHourly, "rows_speed", res.rowsSpeed, "plan", res.plan.String(), "took", took.Round(time.Millisecond))
	if err := l.drift(ctx, d, day, res); err != nil {
		log.Warn("cannot record drift", "err", err)
	}
	return res, nil
}

// compute recomputes the day into staging tables (the day, its hours, its speed minutes) with
// the engine (engine.go), swaps them in and drops them. In cluster mode the day and its hours
// are assembled on the first shard's worker and swapped into its replicas of <ds>_daily and
// <ds>_hourly (replication carries them to every node); each shard's speed minutes are swapped
// into its own <ds>_speed_local.
func (l *Layer) compute(ctx context.Context, d *dataset, day time.Time, staging string, res *runResult, report func(string, int, int)) error {
	q := d.q
	name := d.d.Name
	daily := schema.Daily(name)
	workers, err := l.workers(ctx, d)
	if err != nil {
		return err
	}
	j := &job{l: l, d: d, q: q, day: day, stage: staging, runID: res.runID, workers: workers, gens: map[string]int{},
		res: res, report: report}
	// The run's budget: batch.max_memory, never above what the server allows the user (its
	// profile's max_memory_usage; 0: no limit). Every query carries it as its limit (at least
	// queryMemoryFloor: a tiny budget still plans tiny passes, but a query needs its buffers).
	budget := int64(l.cfg.Batch.MaxMemory)
	var server uint64
	if err := workers[0].conn.QueryRow(ctx, "SELECT toUInt64(value) FROM system.settings WHERE name = 'max_memory_usage'").Scan(&server); err != nil {
		return fmt.Errorf("cannot read the server's max_memory_usage: %w", err)
	}
	if server > 0 && int64(server) < budget {
		budget = int64(server)
	}
	j.limit = max(budget, queryMemoryFloor)
	j.conc = workerConcurrency
	if l.cl != nil {
		j.conc = 1
	}
	// Two passes at once on a server share the budget, each planned for half its share. In
	// cluster mode the shards share what one server would use, so that a node holds about half
	// of it: each runs one pass at a time, and a node running a pass also holds its own shard's
	// part of it (remote() reads its own rows too), hence one share more than there are shards.
	j.target = max(budget/int64(2*workerConcurrency), 1)
	if l.cl != nil {
		j.target = max(budget/int64(2*workerConcurrency*(len(workers)+1)), 1)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if err := j.dropTables(cctx, func(string) bool { return true }); err != nil {
			l.log.Warn("cannot drop staging tables", "dataset", name, "staging", staging, "err", err)
		}
	}()
	w0 := workers[0]
	engine, err := q.stagingEngine(ctx, w0.conn, schema.Daily(name))
	if err != nil {
		return err
	}
	if err := w0.conn.Exec(ctx, q.createStaging(staging, engine)); err != nil {
		return fmt.Errorf("cannot create staging table %s: %w", staging, err)
	}
	// What the run reads: raw's rows of the day, counted before and after the computation.
	// Raw is append-only: equal counts mean the run read exactly these rows. Rows that arrive
	// meanwhile leave the day dirty (raw holds more than the run read), so it is recomputed,
	// and reported approximate until then.
	db := l.cfg.ClickHouse.Database
	if err := l.conn.QueryRow(ctx, ledger.RawRowsSQL(db, name, day)).Scan(&res.rowsRaw); err != nil {
		return fmt.Errorf("cannot count raw rows: %w", err)
	}
	if j.rewriteSpeed, err = l.keepsSpeed(ctx, d, day); err != nil {
		return err
	}
	if err := j.dedup(ctx); err != nil {
		return err
	}
	if res.rowsDedup > 0 {
		for _, step := range []func(context.Context) error{j.aggregate, j.exact} {
			if err := step(ctx); err != nil {
				return err
			}
		}
		if err := j.assemble(ctx, staging); err != nil {
			return err
		}
	}
	res.plan = j.plan
	var after uint64
	if err := l.conn.QueryRow(ctx, ledger.RawRowsSQL(db, name, day)).Scan(&after); err != nil {
		return fmt.Errorf("cannot count raw rows: %w", err)
	}
	if after != res.rowsRaw {
		l.log.Info("rows arrived during the run: the day stays dirty and is recomputed at the next tick",
			"dataset", name, "day", day.Format(time.DateOnly), "rows_before", res.rowsRaw, "rows_after", after)
	}
	if err := w0.conn.QueryRow(ctx, q.countDay(staging, day)).Scan(&res.rowsOut); err != nil {
		return fmt.Errorf("cannot count rows of %s: %w", staging, err)
	}
	if res.rowsOut > 0 {
		if err := w0.conn.QueryRow(ctx, q.countRows(q.g.T(hourlyStage(staging)))).Scan(&res.rowsHourly); err != nil {
			return fmt.Errorf("cannot count rows of %s: %w", hourlyStage(staging), err)
		}
	}
	speedRows := make([]uint64, len(workers))
	if j.rewriteSpeed && res.rowsOut > 0 {
		for i, w := range workers {
			if err := w.conn.QueryRow(ctx, q.countRows(q.g.T(speedStage(staging)))).Scan(&speedRows[i]); err != nil {
				return fmt.Errorf("cannot count rows of %s on %s: %w", speedStage(staging), w.name, err)
			}
			res.rowsSpeed += speedRows[i]
		}
	}
	if res.rowsOut == 0 {
		var old uint64
		if err := w0.conn.QueryRow(ctx, q.countDay(daily, day)).Scan(&old); err != nil {
			return fmt.Errorf("cannot count rows of %s: %w", daily, err)
		}
		if old > 0 {
			return fmt.Errorf("refusing to replace %d rows of %s with an empty recompute (raw holds %d rows for the day)", old, daily, res.rowsRaw)
		}
	}
	if l.hook != nil {
		if err := l.hook(ctx, name, day); err != nil {
			return err
		}
	}
	if l.lease != nil {
		// Another process may have taken the lease while this run computed: its runs of the
		// day would interleave with this one. Confirm ownership just before the swaps.
		if err := l.lease.check(ctx, name); err != nil {
			return err
		}
	}
	if res.rowsOut == 0 {
		return nil // nothing to swap, nothing to replace; current servers refuse an empty source
	}
	// How far the speed view was from the day, read before its minutes are replaced.
	if err := l.readSpeedTotals(ctx, d, day, res); err != nil {
		return err
	}
	report(PhaseSwap, 0, 1)
	// The speed minutes and the hours first, the day last: `succeeded` (after every swap) is
	// what readers go by.
	for i, w := range workers {
		if speedRows[i] == 0 {
			continue
		}
		target := q.g.LocalT(schema.Speed(name))
		if err := w.conn.Exec(ctx, q.swapTo(target, speedStage(staging), day)); err != nil {
			return fmt.Errorf("cannot replace partition %s of %s on %s: %w", partitionID(day), target, w.name, err)
		}
	}
	if res.rowsHourly > 0 {
		if err := w0.conn.Exec(ctx, q.swapTo(q.g.T(schema.Hourly(name)), hourlyStage(staging), day)); err != nil {
			return fmt.Errorf("cannot replace partition %s of %s: %w", partitionID(day), schema.Hourly(name), err)
		}
	}
	if err := w0.conn.Exec(ctx, q.swap(staging, day)); err != nil {
		return fmt.Errorf("cannot replace partition %s of %s: %w", partitionID(day), daily, err)
	}
	if l.cl != nil {
		l.syncReplicas(ctx, d)
	}
	report(PhaseSwap, 1, 1)
	if l.after != nil {
		l.after(ctx, name, day)
	}
	return nil
}

// keepsSpeed reports whether the run rewrites the day's <ds>_speed partition: not for a day the
// speed retention drops (at or before the boundary, older than speed.retention before it).
func (l *Layer) keepsSpeed(ctx context.Context, d *dataset, day time.Time) (bool, error) {
	wm, ok, err := ledger.Boundary(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name)
	if err != nil || !ok || day.After(wm) {
		return err == nil, err
	}
	cut := d.q.end(wm).Add(-d.d.SpeedConf.Retention.D())
	return d.q.end(day).After(cut), nil
}

// readSpeedTotals reads the speed view's totals of the day for its drift, unless an earlier run
// rewrote the day's minutes already (they are the batch's then, not the speed layer's).
func (l *Layer) readSpeedTotals(ctx context.Context, d *dataset, day time.Time, res *runResult) error {
	db := l.cfg.ClickHouse.Database
	var rewritten uint64
	q := fmt.Sprintf("SELECT max(s_speed) FROM (%s) WHERE day = %s", ledger.SucceededSQL(db, d.d.Name), dateLit(day))
	if err := l.conn.QueryRow(ctx, q).Scan(&rewritten); err != nil {
		return fmt.Errorf("cannot read the runs of %s: %w", day.Format(time.DateOnly), err)
	}
	if rewritten > 0 {
		return nil
	}
	specs := d.d.Specs()
	var n uint64
	vals := make([]*float64, len(specs))
	dest := []any{&n}
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	if err := l.conn.QueryRow(ctx, d.q.speedTotals(day)).Scan(dest...); err != nil {
		return fmt.Errorf("cannot read speed totals of %s: %w", schema.Speed(d.d.Name), err)
	}
	if n > 0 {
		res.speed = vals
	}
	return nil
}

func (l *Layer) recordRun(ctx context.Context, d *dataset, day time.Time, res runResult, status string, started, finished time.Time, errText string) error {
	at, atUS := l.stamp()
	return ledger.RecordRun(ctx, l.conn, l.cfg.ClickHouse.Database, ledger.Run{Dataset: d.d.Name, Day: day, RunID: res.runID,
		Status: status, At: at, AtUS: atUS, StartedAt: started, FinishedAt: finished, RowsRead: res.rowsRaw,
		RowsDedup: res.rowsDedup, RowsOut: res.rowsOut, RowsHourly: res.rowsHourly, RowsSpeed: res.rowsSpeed,
		Error: errText, Host: l.host})
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

// drift writes, per metric, how far the speed view of the day (read before the run replaced
// its minutes) was from the exact value. Days the speed view held nothing of (backfills of old
// days) and reruns of days whose minutes an earlier run rewrote have no drift.
func (l *Layer) drift(ctx context.Context, d *dataset, day time.Time, res runResult) error {
	if res.speed == nil {
		return nil
	}
	specs := d.d.Specs()
	exact, err := l.totals(ctx, l.conn, d, schema.Daily(d.d.Name), day)
	if err != nil {
		return err
	}
	rows := make([]ledger.Drift, len(specs))
	for i, s := range specs {
		rows[i] = ledger.NewDrift(day, s.Name, res.speed[i], exact[i], res.runID)
		if r := rows[i].RelError; r != nil {
			l.m.drift.WithLabelValues(d.d.Name, s.Name).Set(*r)
		}
	}
	return ledger.RecordDrift(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name, rows, l.now().UTC())
}
