package batchlayer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// RollupMargin is how long ago an hour must have ended to be rolled up: events a few seconds
// late (a flush interval, producers' clocks) would otherwise change an hour just rolled up, and
// the API would read its minutes again until the next rollup.
const RollupMargin = 5 * time.Minute

// rollupLocks makes the rollups of one dataset sequential within the process (they do not wait
// for its runs: a run rewrites sealed days, a rollup reads the days after the boundary).
var rollupLocks sync.Map // dataset name → *sync.Mutex

// RollupSpeed rolls the completed hours of every day after the boundary up from <ds>_speed's
// minutes into <ds>_speed_hourly, one row per hour, grouping set (those within the speed
// dimensions) and combination, and records each day's rollup in speed_rollups: the API reads
// hour and coarser buckets of those days from it, for the hours no flush has changed since
// (shared/ledger's Rollup). A day is rolled up again when an hour completed or a flush changed
// one of its hours since its newest rollup; each rollup replaces the day's partition whole,
// copying the hours of the newest rollup that are still current and rolling up the rest. The
// rows are states of the speed view (approximate), like the minutes they come from.
func (l *Layer) RollupSpeed(ctx context.Context, name string) error {
	d, err := l.dataset(name)
	if err != nil {
		return err
	}
	if l.lease != nil && !l.lease.Held(name) {
		return nil
	}
	mu, _ := rollupLocks.LoadOrStore(l.cfg.ClickHouse.Database+"."+name, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	loc := d.d.Location()
	now := l.now().UTC()
	hourTo := ledger.HourStart(now.Add(-RollupMargin), loc)
	first := ledger.DayIn(now.Add(-d.d.SpeedConf.Retention.D()), loc)
	wm, ok, err := ledger.Boundary(ctx, l.conn, l.cfg.ClickHouse.Database, name)
	if err != nil {
		return err
	}
	if ok && !wm.Before(first) {
		first = wm.AddDate(0, 0, 1)
	}
	// The snapshot is ClickHouse's clock (the clock of speed_flushes.flushed_at) before the
	// minutes are read, and before what is current of the newest rollups is: every flush
	// recorded before it is either in what the minutes give or has made the hours it touched
	// stale (and they are rolled up again).
	var snapshot time.Time
	if err := l.conn.QueryRow(ctx, "SELECT now()").Scan(&snapshot); err != nil {
		return err
	}
	layout := schema.SpeedHourlyLayout(d.d)
	done, err := ledger.ReadSpeedRollups(ctx, l.conn, l.cfg.ClickHouse.Database, name, first, loc, layout)
	if err != nil {
		return err
	}
	var sets []string
	for _, s := range schema.SpeedSets(d.d) {
		sets = append(sets, config.GroupingName(s))
	}
	var errs []error
	for day := first; ledger.DayStart(day, loc).Before(hourTo); day = day.AddDate(0, 0, 1) {
		end := minTime(ledger.DayEnd(day, loc), hourTo)
		// The hours the newest rollup holds that are current are kept; the others are rolled up.
		keep := ledger.DayStart(day, loc)
		if r, ok := done[day]; ok && slices.Equal(r.Sets, sets) {
			if r.HourTo.Equal(end) && r.Valid.Equal(end) {
				l.m.rolledTo.WithLabelValues(name).Set(float64(end.Unix()))
				continue
			}
			keep = minTime(r.Valid, end)
		}
		if err := l.rollupDay(ctx, d, day, keep, end, snapshot, sets, layout); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			l.m.rollups.WithLabelValues(name, "failed").Inc()
			errs = append(errs, fmt.Errorf("cannot roll up %s of %s: %w", day.Format(time.DateOnly), schema.Speed(name), err))
			continue
		}
		l.m.rollups.WithLabelValues(name, "ok").Inc()
		l.m.rolledTo.WithLabelValues(name).Set(float64(end.Unix()))
	}
	if ok {
		errs = append(errs, l.rollupRests(ctx, d, wm))
	}
	return errors.Join(errs...)
}

// rollupRests writes, for each sealed day up to the boundary wm within ledger.RestDays, the rest
// of the day from each hour into <ds>_hourly_rest (schema.HourlyRestSelect, from the day's
// <ds>_hourly rows), when the day's newest successful run is not the one its rows come from
// (rest_rollups), and drops the older days' rows. Like the speed rollup it replaces the day's
// partition and records it after; the API reads the rows only for the run they name.
func (l *Layer) rollupRests(ctx context.Context, d *dataset, wm time.Time) error {
	name, loc := d.d.Name, d.d.Location()
	first := ledger.DayIn(l.now().Add(-ledger.RestDays*24*time.Hour), loc)
	if err := l.dropDays(ctx, d, schema.HourlyRest(name), func(day time.Time) bool { return day.Before(first) }); err != nil {
		return err
	}
	days, err := ledger.ReadDays(ctx, l.conn, l.cfg.ClickHouse.Database, name)
	if err != nil {
		return err
	}
	runs := days.Runs()
	done, err := ledger.ReadRests(ctx, l.conn, l.cfg.ClickHouse.Database, name, first)
	if err != nil {
		return err
	}
	layout := schema.HourlyRestLayout(d.d)
	var errs []error
	for day := first; !day.After(wm); day = day.AddDate(0, 0, 1) {
		run := runs[day].Run
		if run == "" || done[day].Current(run, layout) {
			continue
		}
		if err := l.rollupRest(ctx, d, day, run, layout); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Errorf("cannot roll up the rest of %s of %s: %w", day.Format(time.DateOnly), schema.Hourly(name), err))
		}
	}
	return errors.Join(errs...)
}

// rollupRest builds a day's rest rows, swaps them in as the day's partition of
// <ds>_hourly_rest and records them with the run they come from (run when there are none).
func (l *Layer) rollupRest(ctx context.Context, d *dataset, day time.Time, run, layout string) error {
	q, name := d.q, d.d.Name
	var hours []time.Time
	for h := q.start(day); h.Before(q.end(day)); h = h.Add(time.Hour) {
		hours = append(hours, h)
	}
	rows, err := l.replaceDay(ctx, d, schema.HourlyRest(name), "rest", day, func(staging string) (uint64, error) {
		if err := l.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s)\n%s", staging, quoteAll(schema.HourlyRestColumns(d.d)), q.g.HourlyRestSelect(d.d, hours))); err != nil {
			return 0, err
		}
		// One INSERT … SELECT reads one set of the partition's parts, which a run replaces
		// whole: the rows come from one run, the one they name.
		var rows, runs uint64
		var from string
		if err := l.conn.QueryRow(ctx, "SELECT count(), uniqExact(run_id), any(run_id) FROM "+staging).Scan(&rows, &runs, &from); err != nil {
			return 0, err
		}
		if runs > 1 {
			return 0, fmt.Errorf("the hours of %d runs were read", runs)
		}
		if rows > 0 {
			run = from
		}
		return rows, nil
	})
	if err != nil {
		return err
	}
	_, us := l.stamp()
	if err := l.record(ctx, q, schema.RestRollups, "dataset, day, run_id, rows, layout, at_us", name, day, run, rows, layout, us); err != nil {
		return err
	}
	l.log.Debug("rolled up the rest of a day's hours", "dataset", name, "day", day.Format(time.DateOnly), "run_id", run, "rows", rows)
	return nil
}

// replaceDay builds a day's partition of target in a staging table shaped like it
// (<ds>_daily_stage_<kind>_<day>, which leftover cleanup knows): fill writes it (given its
// qualified name) and returns its rows. The partition is then swapped in (dropped when there
// are no rows: REPLACE PARTITION from an empty table would keep the old one), and in cluster
// mode every node's replica must hold it before replaceDay returns, since the API reads its own
// node. The staging table is dropped after.
func (l *Layer) replaceDay(ctx context.Context, d *dataset, target, kind string, day time.Time, fill func(staging string) (uint64, error)) (rows uint64, err error) {
	q := d.q
	staging := fmt.Sprintf("%s%s_%s", stagingPrefix(d.d.Name), kind, partitionID(day))
	engine, err := q.stagingEngine(ctx, l.conn, target)
	if err != nil {
		return 0, err
	}
	if err := l.conn.Exec(ctx, q.dropTable(staging)); err != nil {
		return 0, err
	}
	if err := l.conn.Exec(ctx, createLike(q.g.T(staging), q.g.T(target), engine)); err != nil {
		return 0, fmt.Errorf("cannot create %s: %w", staging, err)
	}
	defer func() {
		if derr := l.conn.Exec(context.WithoutCancel(ctx), q.dropTable(staging)); derr != nil && err == nil {
			err = fmt.Errorf("cannot drop %s: %w", staging, derr)
		}
	}()
	if rows, err = fill(q.g.T(staging)); err != nil {
		return 0, err
	}
	swap := q.swapTo(q.g.T(target), staging, day)
	if rows == 0 {
		swap = q.dropPartition(target, day)
	}
	if err := l.conn.Exec(ctx, swap); err != nil {
		return 0, fmt.Errorf("cannot swap in %s: %w", target, err)
	}
	if l.cl != nil {
		if err := l.syncTable(ctx, q, target); err != nil {
			return 0, err
		}
	}
	return rows, nil
}

// rollupDay builds the day's hours before end: those before keep copied from
// <ds>_speed_hourly (current since the newest rollup), the others rolled up from the minutes,
// swaps them in as the day's partition and records them with the snapshot.
func (l *Layer) rollupDay(ctx context.Context, d *dataset, day, keep, end, snapshot time.Time, sets []string, layout string) error {
	q, name := d.q, d.d.Name
	target := schema.SpeedHourly(name)
	rows, err := l.replaceDay(ctx, d, target, "rollup", day, func(staging string) (uint64, error) {
		start := q.start(day)
		cols := quoteAll(schema.SpeedHourlyColumns(d.d))
		if keep.After(start) {
			// With their values: computed again, they would cost what the copy saves.
			all := quoteAll(append(schema.SpeedHourlyColumns(d.d), schema.SpeedHourlyValueColumns(d.d)...))
			sql := fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %s FROM %s WHERE hour >= toDateTime(%d, 'UTC') AND hour < toDateTime(%d, 'UTC')",
				staging, all, all, q.g.T(target), start.Unix(), keep.Unix())
			if err := l.conn.Exec(ctx, sql); err != nil {
				return 0, fmt.Errorf("cannot copy the current hours: %w", err)
			}
		}
		for _, set := range schema.SpeedSets(d.d) {
			sql := fmt.Sprintf("INSERT INTO %s (%s)\n%s", staging, cols, q.g.SpeedHourlySelect(d.d, set, keep, end))
			if err := l.conn.Exec(ctx, sql); err != nil {
				return 0, fmt.Errorf("cannot roll up grouping set %q: %w", config.GroupingName(set), err)
			}
		}
		// The day so far at the end of each hour, each from the one before.
		for h := keep; h.Before(end); h = h.Add(time.Hour) {
			sql := fmt.Sprintf("INSERT INTO %s (%s)\n%s", staging, cols, q.g.SpeedPrefixSelect(d.d, staging, start, h))
			if err := l.conn.Exec(ctx, sql); err != nil {
				return 0, fmt.Errorf("cannot roll up the day so far at %s: %w", h.Format(time.RFC3339), err)
			}
		}
		var rows uint64
		err := l.conn.QueryRow(ctx, q.countRows(staging)).Scan(&rows)
		return rows, err
	})
	if err != nil {
		return err
	}
	_, us := l.stamp()
	if err := l.record(ctx, q, schema.SpeedRollups, "dataset, day, hour_to, snapshot, sets, rows, at_us, layout", name, day, end, snapshot, sets, rows, us, layout); err != nil {
		return err
	}
	l.log.Debug("rolled up speed hours", "dataset", name, "day", day.Format(time.DateOnly), "hour_to", end, "rows", rows)
	return nil
}

// record appends one row (values in the order of cols) to a bookkeeping table.
func (l *Layer) record(ctx context.Context, q *queries, table, cols string, values ...any) error {
	b, err := l.conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (%s) VALUES", q.g.T(table), cols))
	if err != nil {
		return err
	}
	if err := b.Append(values...); err != nil {
		_ = b.Abort()
		return err
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cannot record the rollup in %s: %w", table, err)
	}
	return nil
}

// syncTable waits, bounded, for every node's replica of a table replicated on every node to
// apply its replication queue; a node down or lagging is an error.
func (l *Layer) syncTable(ctx context.Context, q *queries, table string) error {
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return err
	}
	if len(live) < len(all) {
		return fmt.Errorf("%d of %d nodes are down: the rollup is not recorded until every replica holds it", len(all)-len(live), len(all))
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(live))
	for i, n := range live {
		wg.Go(func() {
			if err := n.conn.Exec(ctx, "SYSTEM SYNC REPLICA "+q.g.T(table)); err != nil {
				errs[i] = fmt.Errorf("replica of %s on %s: %w", table, n.Addr, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dropRollups drops the partitions of <ds>_speed_hourly up to the boundary day wm: those days
// are read from the batch tables.
func (l *Layer) dropRollups(ctx context.Context, d *dataset, wm time.Time) error {
	return l.dropDays(ctx, d, schema.SpeedHourly(d.d.Name), func(day time.Time) bool { return !day.After(wm) })
}

// dropDays drops the day partitions of table for which drop holds.
func (l *Layer) dropDays(ctx context.Context, d *dataset, table string, drop func(day time.Time) bool) error {
	days, err := partitionDaysOn(ctx, l.conn, d.q.partitions(table))
	if err != nil {
		return fmt.Errorf("cannot list partitions of %s: %w", table, err)
	}
	for _, day := range days {
		if !drop(day) {
			continue
		}
		if err := l.conn.Exec(ctx, d.q.dropPartition(table, day)); err != nil {
			return fmt.Errorf("cannot drop partition %s of %s: %w", partitionID(day), table, err)
		}
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
