package batchlayer

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/shared/schema"
	"github.com/lambda-platform/lambda/shared/watermark"
)

// state is what ClickHouse says about a dataset's days.
type state struct {
	rawDays   []time.Time          // days with raw rows
	succeeded map[time.Time]string // days with a successful run: the newest such run id
	runs      map[time.Time]succeededRun
	dirty     map[time.Time]bool // dirty days inside the lookback
	watermark time.Time          // computed: last exact day (zero: none)
	wmRunID   string
}

// succeededRun is the newest successful run of a day.
type succeededRun struct {
	runID   string
	rowsOut uint64
}

type plan struct {
	st  state
	due []time.Time
}

// lookbackStart is the first day whose late rows are corrected automatically.
func lookbackStart(d *dataset, now time.Time) time.Time {
	return dayOf(now.Add(-d.d.BatchConf.Lookback.D()))
}

func (l *Layer) readState(ctx context.Context, d *dataset, now time.Time) (state, error) {
	st := state{succeeded: map[time.Time]string{}, runs: map[time.Time]succeededRun{}, dirty: map[time.Time]bool{}}
	parts, err := l.partitionDays(ctx, d, schema.Raw(d.d.Name))
	if err != nil {
		return st, err
	}
	st.rawDays = parts
	rows, err := l.conn.Query(ctx, d.q.succeededDays())
	if err != nil {
		return st, fmt.Errorf("cannot read batch runs of %s: %w", d.d.Name, err)
	}
	for rows.Next() {
		var day time.Time
		var r succeededRun
		if err := rows.Scan(&day, &r.runID, &r.rowsOut); err != nil {
			rows.Close()
			return st, fmt.Errorf("cannot read batch runs of %s: %w", d.d.Name, err)
		}
		st.succeeded[dayOf(day)] = r.runID
		st.runs[dayOf(day)] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("cannot read batch runs of %s: %w", d.d.Name, err)
	}
	dirty, err := watermark.DirtyDays(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name, lookbackStart(d, now), l.cfg.ClickHouse.InsertTimeout.D())
	if err != nil {
		return st, err
	}
	for _, day := range dirty {
		st.dirty[dayOf(day)] = true
	}
	// The watermark: the last day D such that every day up to D with raw data has a
	// successful run and is not dirty. Days without raw data that were run count too, so that
	// an empty day does not hold the watermark back.
	days := append([]time.Time{}, st.rawDays...)
	for day := range st.succeeded {
		days = append(days, day)
	}
	for _, day := range sortDays(days) {
		if _, ok := st.succeeded[day]; !ok || st.dirty[day] {
			break
		}
		st.watermark, st.wmRunID = day, st.succeeded[day]
	}
	return st, nil
}

// partitionDays lists the days a table partitioned by toYYYYMMDD holds rows for (on every
// shard in cluster mode).
func (l *Layer) partitionDays(ctx context.Context, d *dataset, table string) ([]time.Time, error) {
	if l.cl != nil && schema.Sharded(table) {
		return l.clusterPartitionDays(ctx, d, table)
	}
	days, err := partitionDaysOn(ctx, l.conn, d.q.partitions(table))
	if err != nil {
		return nil, fmt.Errorf("cannot list partitions of %s: %w", table, err)
	}
	return days, nil
}

func partitionDaysOn(ctx context.Context, conn driver.Conn, query string) ([]time.Time, error) {
	rows, err := conn.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []time.Time
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		day, err := time.Parse("20060102", p)
		if err != nil {
			continue // not a day partition
		}
		out = append(out, day)
	}
	return out, rows.Err()
}

// plan works out which days are due at now: every sealed day after the watermark in day order,
// then every sealed dirty day inside the lookback.
func (l *Layer) plan(ctx context.Context, d *dataset, now time.Time) (plan, error) {
	st, err := l.readState(ctx, d, now)
	if err != nil {
		return plan{}, err
	}
	p := plan{st: st}
	swm, _, err := watermark.Speed(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name, now)
	if err != nil {
		return p, err
	}
	// A day is sealed when its end plus grace has passed and the speed layer has consumed past
	// its end; otherwise a lagging consumer would let a partial day be sealed.
	sealed := func(day time.Time) bool {
		end := day.AddDate(0, 0, 1)
		return !end.Add(d.d.BatchConf.Grace.D()).After(now) && !swm.IsZero() && !swm.Before(end)
	}
	var first time.Time
	switch {
	case !st.watermark.IsZero():
		first = st.watermark.AddDate(0, 0, 1)
	case len(st.rawDays) > 0:
		first = st.rawDays[0]
	}
	seen := map[time.Time]bool{}
	if !first.IsZero() {
		for day := first; sealed(day); day = day.AddDate(0, 0, 1) {
			if _, ok := st.succeeded[day]; ok && !st.dirty[day] {
				continue // exact already, past a day that holds the watermark back
			}
			p.due = append(p.due, day)
			seen[day] = true
		}
	}
	var dirty []time.Time
	for day := range st.dirty {
		if !seen[day] && sealed(day) && !day.Before(lookbackStart(d, now)) {
			dirty = append(dirty, day)
		}
	}
	p.due = append(p.due, sortDays(dirty)...)
	return p, nil
}

// updateWatermark computes the watermark and appends it to batch_watermarks when it changed.
func (l *Layer) updateWatermark(ctx context.Context, d *dataset) (state, error) {
	name := d.d.Name
	st, err := l.readState(ctx, d, l.now().UTC())
	if err != nil {
		return st, err
	}
	old, ok, err := watermark.Batch(ctx, l.conn, l.cfg.ClickHouse.Database, name)
	if err != nil {
		return st, err
	}
	if l.cl != nil && !st.watermark.IsZero() && (!ok || st.watermark.After(old)) {
		// The watermark moves past a day only once every node holds the day's run.
		from := old
		if !ok {
			from = time.Unix(0, 0).UTC()
		}
		upTo, why, err := l.verifiedUpTo(ctx, d, from, st.watermark, st.runs)
		if err != nil {
			return st, err
		}
		if upTo.Before(st.watermark) {
			l.log.Info("batch watermark held back until every node has the days", "dataset", name,
				"watermark", fmtDay(st.watermark, true), "verified_to", fmtDay(upTo, upTo.Year() > 1970), "reason", why)
			l.setPending(name, true)
			st.watermark = upTo
			st.wmRunID = st.succeeded[upTo]
			if upTo.Year() <= 1970 {
				st.watermark, st.wmRunID = time.Time{}, ""
			}
		} else {
			l.setPending(name, false)
		}
	}
	if st.watermark.IsZero() {
		l.m.watermark.WithLabelValues(name).Set(0)
	} else {
		l.m.watermark.WithLabelValues(name).Set(float64(st.watermark.AddDate(0, 0, 1).Unix()))
	}
	if (ok && old.Equal(st.watermark)) || (!ok && st.watermark.IsZero()) {
		return st, nil
	}
	wm := st.watermark
	if wm.IsZero() {
		wm = time.Unix(0, 0).UTC() // "no exact day" for watermark.Batch
	}
	at, atUS := l.stamp()
	b, err := l.conn.PrepareBatch(ctx, d.q.insertWatermark())
	if err != nil {
		return st, fmt.Errorf("cannot insert watermark into %s: %w", schema.BatchWatermarks, err)
	}
	defer b.Close()
	if err := b.Append(name, wm, st.wmRunID, at, atUS); err != nil {
		return st, fmt.Errorf("cannot insert watermark into %s: %w", schema.BatchWatermarks, err)
	}
	if err := b.Send(); err != nil {
		return st, fmt.Errorf("cannot insert watermark into %s: %w", schema.BatchWatermarks, err)
	}
	l.log.Info("batch watermark moved", "dataset", name, "from", fmtDay(old, ok), "to", fmtDay(st.watermark, !st.watermark.IsZero()))
	return st, nil
}

func fmtDay(t time.Time, ok bool) string {
	if !ok {
		return "none"
	}
	return t.Format(time.DateOnly)
}

// retention drops raw partitions older than raw_retention and speed partitions at or before the
// watermark minus the speed retention, never a day after the watermark.
func (l *Layer) retention(ctx context.Context, d *dataset, now time.Time) error {
	wm, ok, err := watermark.Batch(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name)
	if err != nil || !ok {
		return err
	}
	drop := func(table string, keep func(day time.Time) bool) error {
		days, err := l.partitionDays(ctx, d, table)
		if err != nil {
			return err
		}
		for _, day := range days {
			if day.After(wm) || keep(day) {
				continue
			}
			var err error
			if l.cl != nil {
				err = l.clusterDropPartition(ctx, d, table, day)
			} else {
				err = l.conn.Exec(ctx, d.q.dropPartition(table, day))
			}
			if err != nil {
				return fmt.Errorf("cannot drop partition %s of %s: %w", partitionID(day), table, err)
			}
			l.log.Info("dropped partition past retention", "dataset", d.d.Name, "table", table, "day", day.Format(time.DateOnly))
		}
		return nil
	}
	rawCut := now.Add(-d.d.RawRetention.D())
	if err := drop(schema.Raw(d.d.Name), func(day time.Time) bool { return day.AddDate(0, 0, 1).After(rawCut) }); err != nil {
		return err
	}
	speedCut := wm.AddDate(0, 0, 1).Add(-d.d.SpeedConf.Retention.D())
	return drop(schema.Speed(d.d.Name), func(day time.Time) bool { return day.AddDate(0, 0, 1).After(speedCut) })
}

// Run is one batch run with its current state.
type Run struct {
	RunID      string    `json:"run_id"`
	Day        time.Time `json:"day"`
	Status     string    `json:"status"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	RowsRaw    uint64    `json:"rows_raw"`
	RowsDedup  uint64    `json:"rows_dedup"`
	RowsOut    uint64    `json:"rows_out"`
	Error      string    `json:"error,omitempty"`
	Host       string    `json:"host"`
}

// Drift is how far the speed view of a day was from the exact value of a metric.
type Drift struct {
	Day      time.Time `json:"day"`
	Metric   string    `json:"metric"`
	Speed    *float64  `json:"speed_value"`
	Exact    *float64  `json:"exact_value"`
	AbsError *float64  `json:"abs_error"`
	RelError *float64  `json:"rel_error"`
	RunID    string    `json:"run_id"`
}

// Status is the state of one dataset's batch view.
type Status struct {
	Dataset string `json:"dataset"`
	// Watermark is the last exact day, zero when none.
	Watermark      time.Time   `json:"watermark"`
	SpeedWatermark time.Time   `json:"speed_watermark"`
	Due            []time.Time `json:"due"`   // days the next tick would recompute
	Dirty          []time.Time `json:"dirty"` // days inside the lookback with late rows
	Runs           []Run       `json:"runs"`  // newest first
	Drift          []Drift     `json:"drift"` // of the newest day with drift
}

// Status reports every dataset's watermark, due and dirty days, last runs and drift.
func (l *Layer) Status(ctx context.Context) ([]Status, error) {
	var out []Status
	now := l.now().UTC()
	for _, name := range l.names() {
		d := l.ds[name]
		p, err := l.plan(ctx, d, now)
		if err != nil {
			return nil, err
		}
		s := Status{Dataset: name, Due: p.due}
		wm, ok, err := watermark.Batch(ctx, l.conn, l.cfg.ClickHouse.Database, name)
		if err != nil {
			return nil, err
		}
		if ok {
			s.Watermark = wm
		}
		if s.SpeedWatermark, _, err = watermark.Speed(ctx, l.conn, l.cfg.ClickHouse.Database, name, now); err != nil {
			return nil, err
		}
		for day := range p.st.dirty {
			s.Dirty = append(s.Dirty, day)
		}
		s.Dirty = sortDays(s.Dirty)
		if s.Runs, err = l.lastRuns(ctx, d, 10); err != nil {
			return nil, err
		}
		if s.Drift, err = l.lastDrift(ctx, d); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (l *Layer) lastRuns(ctx context.Context, d *dataset, n int) ([]Run, error) {
	rows, err := l.conn.Query(ctx, d.q.lastRuns(n))
	if err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", d.d.Name, err)
	}
	defer rows.Close()
	var out []Run
	for rows.Next() {
		var r Run
		if err := rows.Scan(&r.RunID, &r.Day, &r.Status, &r.StartedAt, &r.FinishedAt, &r.RowsRaw, &r.RowsDedup, &r.RowsOut, &r.Error, &r.Host); err != nil {
			return nil, fmt.Errorf("cannot read batch runs of %s: %w", d.d.Name, err)
		}
		if r.FinishedAt.Unix() <= 0 {
			r.FinishedAt = time.Time{}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (l *Layer) lastDrift(ctx context.Context, d *dataset) ([]Drift, error) {
	rows, err := l.conn.Query(ctx, d.q.lastDrift())
	if err != nil {
		return nil, fmt.Errorf("cannot read drift of %s: %w", d.d.Name, err)
	}
	defer rows.Close()
	var out []Drift
	for rows.Next() {
		var r Drift
		if err := rows.Scan(&r.Day, &r.Metric, &r.Speed, &r.Exact, &r.AbsError, &r.RelError, &r.RunID); err != nil {
			return nil, fmt.Errorf("cannot read drift of %s: %w", d.d.Name, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// metrics are the lambda_batch_* metrics.
type metrics struct {
	runs      *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	rows      *prometheus.CounterVec
	watermark *prometheus.GaugeVec
	due       *prometheus.GaugeVec
	drift     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lambda_batch_runs_total",
			Help: "Batch runs (one dataset and day) by final status."}, []string{"dataset", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lambda_batch_run_duration_seconds",
			Help:    "Duration of batch runs, from started to swapped in (or failed).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16)}, []string{"dataset"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lambda_batch_rows_written_total",
			Help: "Rows swapped into <ds>_daily."}, []string{"dataset"}),
		watermark: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_watermark_timestamp_seconds",
			Help: "End of the last exact day (the batch boundary) as a Unix time; 0 when no day is exact."}, []string{"dataset"}),
		due: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_due_days",
			Help: "Days due at the last tick (sealed days after the watermark plus dirty days)."}, []string{"dataset"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_drift_ratio",
			Help: "Relative error of the speed view against the exact value for the last sealed day."}, []string{"dataset", "metric"}),
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.duration, m.rows, m.watermark, m.due, m.drift)
	}
	return m
}
