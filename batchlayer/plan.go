package batchlayer

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// state is what the ledger says about a dataset's days.
type state struct {
	days ledger.Days
	// exact is the exact watermark: the last day up to which every day with raw rows has a
	// successful run and is not dirty (zero: none).
	exact time.Time
	// covered is where the boundary may advance to: the last day up to which every day with
	// raw rows has had a successful run (zero: none).
	covered time.Time
}

type plan struct {
	st  state
	due []time.Time
	// outside are dirty days older than the lookback: reported approximate until an operator
	// reruns them (`lambda batch run`), not recomputed automatically.
	outside []time.Time
}

// lookbackStart is the first day whose late rows are corrected automatically.
func lookbackStart(d *dataset, now time.Time) time.Time {
	return ledger.DayIn(now.Add(-d.d.BatchConf.Lookback.D()), d.d.Location())
}

func (l *Layer) readState(ctx context.Context, d *dataset) (state, error) {
	days, err := ledger.ReadDays(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name)
	if err != nil {
		return state{}, err
	}
	return state{days: days, exact: days.Exact(), covered: days.Covered()}, nil
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

// plan works out which days are due at now, in this order: every sealed day after the exact
// watermark that is not exact (catch-up after downtime, retries of failed runs), then every
// sealed dirty day inside the lookback and every sealed day with raw rows and no successful
// run (a backfill of older history), oldest first.
func (l *Layer) plan(ctx context.Context, d *dataset, now time.Time) (plan, error) {
	st, err := l.readState(ctx, d)
	if err != nil {
		return plan{}, err
	}
	p := plan{st: st}
	swm, err := l.speedWatermark(ctx, d, now, true)
	if err != nil {
		return p, err
	}
	// A day is sealed when its end plus grace has passed and the speed layer has consumed past
	// its end; otherwise a lagging (or dead) consumer would let a partial day be sealed.
	sealed := func(day time.Time) bool {
		end := d.q.end(day)
		return !end.Add(d.d.BatchConf.Grace.D()).After(now) && !swm.IsZero() && !swm.Before(end)
	}
	lookback := lookbackStart(d, now)
	var first time.Time
	switch {
	case !st.exact.IsZero():
		first = st.exact.AddDate(0, 0, 1)
	case len(st.days) > 0:
		first = st.days[0].Day
	}
	seen := map[time.Time]bool{}
	if !first.IsZero() {
		for day := first; sealed(day); day = day.AddDate(0, 0, 1) {
			k, known := st.days.Get(day)
			switch {
			case known && k.Exact():
				continue // exact already, past a day that holds the watermark back
			case known && k.Dirty && day.Before(lookback):
				continue // outside the lookback: listed below, not recomputed automatically
			}
			p.due = append(p.due, day)
			seen[day] = true
		}
	}
	var more []time.Time
	for _, k := range st.days {
		switch {
		case seen[k.Day] || !sealed(k.Day):
		case k.Unrun, k.Dirty && !k.Day.Before(lookback):
			more = append(more, k.Day)
		case k.Dirty:
			p.outside = append(p.outside, k.Day)
		}
	}
	p.due = append(p.due, sortDays(more)...)
	return p, nil
}

// speedWatermark reads the dataset's speed watermark. With kafka, Kafka's own offsets are the
// evidence of which partitions are caught up (read with a short timeout; when Kafka cannot be
// reached the ledger's heartbeats are, see ledger.Speed).
func (l *Layer) speedWatermark(ctx context.Context, d *dataset, now time.Time, kafka bool) (time.Time, error) {
	var offsets map[int32]ledger.KafkaOffsets
	if kafka && len(l.cfg.Kafka.Brokers) > 0 {
		kctx, cancel := context.WithTimeout(ctx, kafkaTimeout)
		sc, err := l.saramaConfig()
		if err == nil {
			offsets, err = ledger.ReadKafka(kctx, l.cfg.Kafka.Brokers, sc, d.d.Topic, l.cfg.Kafka.GroupPrefix+"-"+d.d.Name)
		}
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return time.Time{}, ctx.Err()
			}
			l.log.Warn("cannot read offsets from kafka: sealing on the ledger's heartbeats", "dataset", d.d.Name, "err", err)
			offsets = nil
		}
	}
	swm, _, err := ledger.Speed(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name, now, offsets)
	return swm, err
}

// kafkaTimeout bounds reading the consumer group's offsets when sealing.
const kafkaTimeout = 10 * time.Second

// updateWatermark advances the persisted boundary to the covered days (it never moves back)
// and appends it to batch_watermarks when it changed. In cluster mode it advances only as far
// as every node holds the days' runs.
func (l *Layer) updateWatermark(ctx context.Context, d *dataset) (state, error) {
	name := d.d.Name
	st, err := l.readState(ctx, d)
	if err != nil {
		return st, err
	}
	old, ok, err := ledger.Boundary(ctx, l.conn, l.cfg.ClickHouse.Database, name)
	if err != nil {
		return st, err
	}
	next := ledger.NextBoundary(old, ok, st.covered)
	if l.cl != nil && !next.IsZero() && (!ok || next.After(old)) {
		// The boundary moves past a day only once every node holds the day's run.
		from := old
		if !ok {
			from = time.Unix(0, 0).UTC()
		}
		upTo, why, err := l.verifiedUpTo(ctx, d, from, next, st.days.Runs())
		if err != nil {
			return st, err
		}
		if upTo.Before(next) {
			l.log.Info("batch watermark held back until every node has the days", "dataset", name,
				"watermark", fmtDay(next, true), "verified_to", fmtDay(upTo, upTo.Year() > 1970), "reason", why)
			l.setPending(name, true)
			next = upTo
			if upTo.Year() <= 1970 {
				next = time.Time{}
			}
		} else {
			l.setPending(name, false)
		}
	}
	l.m.gauges(name, next, st.exact, d.d.Location())
	if (ok && old.Equal(next)) || (!ok && next.IsZero()) {
		return st, nil
	}
	at, atUS := l.stamp()
	runID := ""
	if k, ok := st.days.Get(next); ok {
		runID = k.Run
	}
	if err := ledger.AppendBoundary(ctx, l.conn, l.cfg.ClickHouse.Database, name, next, runID, at, atUS); err != nil {
		return st, err
	}
	l.log.Info("batch watermark moved", "dataset", name, "from", fmtDay(old, ok), "to", fmtDay(next, !next.IsZero()))
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
	wm, ok, err := ledger.Boundary(ctx, l.conn, l.cfg.ClickHouse.Database, d.d.Name)
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
	keepRaw := func(day time.Time) bool { return d.q.end(day).After(rawCut) }
	if err := drop(schema.Raw(d.d.Name), keepRaw); err != nil {
		return err
	}
	// The count of a day's raw rows goes with them (ledger: a day whose raw is gone is not
	// dirty, its daily rows are the record).
	if err := drop(schema.RawDays(d.d.Name), keepRaw); err != nil {
		return err
	}
	speedCut := d.q.end(wm).Add(-d.d.SpeedConf.Retention.D())
	if err := drop(schema.Speed(d.d.Name), func(day time.Time) bool { return d.q.end(day).After(speedCut) }); err != nil {
		return err
	}
	// The hours rolled up from speed, once the batch tables answer their day.
	return l.dropRollups(ctx, d, wm)
}

// Run is one batch run with its current state.
type Run = ledger.Run

// Drift is how far the speed view of a day was from the exact value of a metric.
type Drift = ledger.Drift

// Status is the state of one dataset's batch view.
type Status struct {
	Dataset string `json:"dataset"`
	// Watermark is the persisted boundary: the last day read from <ds>_daily, zero when none.
	Watermark time.Time `json:"watermark"`
	// Exact is the exact watermark: every day up to it with raw rows has a successful run that
	// read every row; zero when none.
	Exact          time.Time   `json:"exact_watermark"`
	SpeedWatermark time.Time   `json:"speed_watermark"`
	Due            []time.Time `json:"due"`   // days the next tick would recompute
	Dirty          []time.Time `json:"dirty"` // days whose raw rows changed after their run
	// Outside are the dirty days older than the lookback, which only `lambda batch run`
	// recomputes; Unrun the days with raw rows and no successful run.
	Outside []time.Time `json:"dirty_outside_lookback"`
	Unrun   []time.Time `json:"unrun"`
	Runs    []Run       `json:"runs"`  // newest first
	Drift   []Drift     `json:"drift"` // of the newest day with drift
}

// Status reports every dataset's watermarks, due and dirty days, last runs and drift.
func (l *Layer) Status(ctx context.Context) ([]Status, error) {
	var out []Status
	now := l.now().UTC()
	db := l.cfg.ClickHouse.Database
	for _, name := range l.names() {
		d := l.ds[name]
		p, err := l.plan(ctx, d, now)
		if err != nil {
			return nil, err
		}
		s := Status{Dataset: name, Due: p.due, Exact: p.st.exact, Dirty: p.st.days.Dirty(time.Time{}),
			Outside: p.outside, Unrun: p.st.days.Unrun()}
		wm, ok, err := ledger.Boundary(ctx, l.conn, db, name)
		if err != nil {
			return nil, err
		}
		if ok {
			s.Watermark = wm
		}
		if s.SpeedWatermark, err = l.speedWatermark(ctx, d, now, true); err != nil {
			return nil, err
		}
		if s.Runs, err = ledger.LastRuns(ctx, l.conn, db, name, 10); err != nil {
			return nil, err
		}
		drift, err := ledger.ReadDrift(ctx, l.conn, db, name, time.Time{})
		if err != nil {
			return nil, err
		}
		for _, r := range drift {
			if r.Day.Equal(drift[0].Day) {
				s.Drift = append(s.Drift, r)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// metrics are the lambda_batch_* metrics.
type metrics struct {
	// phase is 1 for the phase the dataset's running run is in, 0 for the others (all 0 between
	// runs); phaseDur observes every phase of every run; passes counts passes done.
	phase     *prometheus.GaugeVec
	phaseDur  *prometheus.HistogramVec
	progress  *prometheus.GaugeVec
	started   *prometheus.GaugeVec
	runs      *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	rows      *prometheus.CounterVec
	watermark *prometheus.GaugeVec
	due       *prometheus.GaugeVec
	drift     *prometheus.GaugeVec
	exact     *prometheus.GaugeVec
	// rollups counts speed rollups of a day by status; rolledTo is where the newest one's hours
	// end.
	rollups  *prometheus.CounterVec
	rolledTo *prometheus.GaugeVec
	health   *healthMetrics
}

// gauges sets the boundary and exact watermark gauges (end of the day in the dataset's zone
// loc, Unix time; 0: none).
func (m *metrics) gauges(ds string, boundary, exact time.Time, loc *time.Location) {
	end := func(day time.Time) float64 {
		if day.IsZero() {
			return 0
		}
		return float64(ledger.DayEnd(day, loc).Unix())
	}
	m.watermark.WithLabelValues(ds).Set(end(boundary))
	m.exact.WithLabelValues(ds).Set(end(exact))
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
	m.exact = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_exact_watermark_timestamp_seconds",
		Help: "End of the exact watermark day (every day up to it exact; dirty and unrun days hold it back) as a Unix time; 0 when none."}, []string{"dataset"})
	m.phase = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_run_phase",
		Help: "1 for the phase the dataset's running batch run is in (dedup, aggregate, exact, assemble, swap), 0 for the others and between runs."}, []string{"dataset", "phase"})
	m.phaseDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lambda_batch_run_phase_duration_seconds",
		Help:    "Duration of each phase of batch runs.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 16)}, []string{"dataset", "phase"})
	m.progress = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_run_phase_progress_ratio",
		Help: "Share of the passes of the running run's phase that are done (0 between runs)."}, []string{"dataset"})
	m.started = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_run_start_timestamp_seconds",
		Help: "Start of the dataset's running batch run as a Unix time (0 between runs): its duration so far is time() minus this."}, []string{"dataset"})
	m.rollups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lambda_batch_speed_rollups_total",
		Help: "Rollups of a day's completed hours after the boundary into <ds>_speed_hourly, by status (ok, failed)."}, []string{"dataset", "status"})
	m.rolledTo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_speed_rollup_timestamp_seconds",
		Help: "End of the hours the newest speed rollup holds, as a Unix time."}, []string{"dataset"})
	m.health = newHealthMetrics()
	if reg != nil {
		reg.MustRegister(m.runs, m.duration, m.rows, m.watermark, m.due, m.drift, m.exact, m.phase, m.phaseDur, m.progress, m.started, m.rollups, m.rolledTo)
		m.health.register(reg)
	}
	return m
}

// tracker follows one run's phases in the metrics.
type tracker struct {
	m     *metrics
	ds    string
	cur   string
	since time.Time
}

// track starts following a run of dataset ds.
func (m *metrics) track(ds string) *tracker {
	for _, p := range phases {
		m.phase.WithLabelValues(ds, p).Set(0)
	}
	m.started.WithLabelValues(ds).Set(float64(time.Now().UnixNano()) / 1e9)
	m.progress.WithLabelValues(ds).Set(0)
	return &tracker{m: m, ds: ds}
}

// phase records that the run is at step of steps of phase p.
func (t *tracker) phase(p string, step, steps int) {
	if p != t.cur {
		t.end()
		t.cur, t.since = p, time.Now()
		t.m.phase.WithLabelValues(t.ds, p).Set(1)
	}
	if steps > 0 {
		t.m.progress.WithLabelValues(t.ds).Set(float64(step) / float64(steps))
	}
}

func (t *tracker) end() {
	if t.cur == "" {
		return
	}
	t.m.phaseDur.WithLabelValues(t.ds, t.cur).Observe(time.Since(t.since).Seconds())
	t.m.phase.WithLabelValues(t.ds, t.cur).Set(0)
	t.cur = ""
}

// done records the end of the run.
func (t *tracker) done() {
	t.end()
	t.m.started.WithLabelValues(t.ds).Set(0)
	t.m.progress.WithLabelValues(t.ds).Set(0)
}
