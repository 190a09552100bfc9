// Package batchlayer is the batch layer: a cron scheduler that recomputes exact daily tables
// (<ds>_daily) from the deduplicated master dataset (<ds>_raw) and swaps each day in atomically,
// and keeps the persisted batch watermark, the last day that is exact.
//
// One run recomputes one (dataset, day): it records `started` in batch_runs, computes every
// grouping set of the day in one INSERT … SELECT into a staging table of its own, swaps the
// staging partition into <ds>_daily with ALTER TABLE … REPLACE PARTITION (readers see the old
// day or the new one, never a partial one), drops the staging table, records `succeeded` (or
// `failed` with the error) and writes the day's drift: how far the speed view was from the exact
// values.
//
// robfig/cron never replays missed schedules, so every tick works out from ClickHouse what is
// due: every sealed day after the watermark in day order (catch-up after downtime, retries of
// failed runs), then every dirty day inside the lookback (late rows). A day is sealed when its
// end plus grace has passed and the speed watermark has passed its end too.
package batchlayer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
)

// Options are the dependencies of the batch layer. Every field is optional.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the lambda_batch_* metrics; nil registers nowhere.
	Registerer prometheus.Registerer
	// Now is the clock (time.Now when nil); tests inject it.
	Now func() time.Time
	// Schedule, when set, overrides every dataset's batch.schedule (lambda dev uses
	// "@every 30s").
	Schedule string
	// Conn is the ClickHouse connection; nil opens one from the config (closed by Close).
	Conn driver.Conn
	// BeforeSwap, when set, is called after the staging table is filled and before the swap;
	// an error fails the run. Tests use it to kill a run at the worst moment.
	BeforeSwap func(ctx context.Context, dataset string, day time.Time) error
	// AfterSwap, when set, is called after the swap and before `succeeded` is recorded (with
	// the run's context). Tests use it to kill a run between the two.
	AfterSwap func(ctx context.Context, dataset string, day time.Time)
}

// Layer is the batch layer of every dataset of a configuration.
type Layer struct {
	cfg      *config.Config
	conn     driver.Conn
	ownsConn bool
	log      *slog.Logger
	now      func() time.Time
	schedule string
	hook     func(ctx context.Context, dataset string, day time.Time) error
	after    func(ctx context.Context, dataset string, day time.Time)
	host     string
	m        *metrics
	ds       map[string]*dataset
	// cl is the cluster in cluster mode (clickhouse.cluster set), nil otherwise.
	cl *cluster
	// pending marks datasets whose watermark waits for a node to catch up (cluster mode).
	pendingMu sync.Mutex
	pending   map[string]bool
	// lease is the ZooKeeper lease while Run or RunDays holds a session (batch.lease set).
	lease *lease
	// ticks tells Health whether the scheduler keeps ticking.
	ticks tickLog
}

// watermarkRecheck is how often Run retries a watermark held back until every node has a day.
var watermarkRecheck = 15 * time.Second

func (l *Layer) setPending(name string, v bool) {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	if l.pending == nil {
		l.pending = map[string]bool{}
	}
	l.pending[name] = v
}

func (l *Layer) isPending(name string) bool {
	l.pendingMu.Lock()
	defer l.pendingMu.Unlock()
	return l.pending[name]
}

// recheckWatermarks retries, until ctx is done, the watermarks held back because a node did not
// have a day yet, so that the day becomes exact soon after the node is back rather than at the
// next scheduled tick.
func (l *Layer) recheckWatermarks(ctx context.Context) {
	t := time.NewTicker(watermarkRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, name := range l.names() {
			if !l.isPending(name) || (l.lease != nil && !l.lease.Held(name)) {
				continue
			}
			d := l.ds[name]
			d.mu.Lock()
			if _, err := l.updateWatermark(ctx, d); err != nil && ctx.Err() == nil {
				l.log.Warn("cannot update batch watermark", "dataset", name, "err", err)
			}
			d.mu.Unlock()
		}
	}
}

// lastUS is the newest at_us handed out in this process (see stamp).
var (
	clock  sync.Mutex
	lastUS int64
)

// dataset is the per-dataset state; mu makes runs of one dataset (and so of one day)
// sequential within the process.
type dataset struct {
	d  *config.Dataset
	q  *queries
	mu sync.Mutex
}

// New builds the batch layer. It does not connect: the first query does.
func New(cfg *config.Config, opts Options) (*Layer, error) {
	l := &Layer{cfg: cfg, conn: opts.Conn, log: opts.Logger, now: opts.Now, schedule: opts.Schedule,
		hook: opts.BeforeSwap, after: opts.AfterSwap, ds: map[string]*dataset{}}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.log = l.log.With("layer", "batch")
	if l.now == nil {
		l.now = time.Now
	}
	l.host, _ = os.Hostname()
	for i := range cfg.Datasets {
		d := &cfg.Datasets[i]
		spec := d.BatchConf.Schedule
		if l.schedule != "" {
			spec = l.schedule
		}
		if _, err := cron.ParseStandard(spec); err != nil {
			return nil, fmt.Errorf("invalid batch schedule %q of dataset %s: %w", spec, d.Name, err)
		}
		l.ds[d.Name] = &dataset{d: d, q: newQueries(cfg, d)}
	}
	if l.conn == nil {
		o := chconn.Options(cfg.ClickHouse)
		// One recompute is one long INSERT … SELECT during which the server may send nothing.
		o.ReadTimeout = max(o.ReadTimeout, 2*time.Hour)
		conn, err := clickhouse.Open(o)
		if err != nil {
			return nil, fmt.Errorf("cannot open clickhouse %v: %w", cfg.ClickHouse.Addr, err)
		}
		l.conn, l.ownsConn = conn, true
	}
	if cfg.ClickHouse.Cluster != "" {
		l.cl = newCluster(cfg.ClickHouse, l.conn)
	}
	l.m = newMetrics(opts.Registerer)
	return l, nil
}

// Close closes the connections the layer opened.
func (l *Layer) Close() error {
	if l.cl != nil {
		l.cl.close()
	}
	if l.ownsConn {
		return l.conn.Close()
	}
	return nil
}

func (l *Layer) dataset(name string) (*dataset, error) {
	d, ok := l.ds[name]
	if !ok {
		return nil, fmt.Errorf("unknown dataset %q", name)
	}
	return d, nil
}

// stamp returns the time of an event in batch_runs or batch_watermarks and its microseconds,
// strictly increasing within the process (across layers) so that argMax(status, at_us) is
// never a tie, even under a frozen test clock.
func (l *Layer) stamp() (time.Time, uint64) {
	t := l.now().UTC()
	clock.Lock()
	defer clock.Unlock()
	us := max(t.UnixMicro(), lastUS+1)
	lastUS = us
	return t, uint64(us)
}

func newRunID(now time.Time, day time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%016d-%s-%s", now.UnixMicro(), partitionID(day), hex.EncodeToString(b[:]))
}

// Run runs the scheduler until ctx is done: one cron job per dataset (UTC, skipping a tick
// while the previous one still runs, recovering panics), and a tick per dataset at once to catch
// up on what was missed while the layer was down. Cancelling ctx cancels running recomputes
// (their staging tables are dropped, the runs recorded failed) and returns nil.
//
// With batch.lease set, a dataset is scheduled only while this process holds its lease in
// ZooKeeper; the others stand by and the first to take a lease that went catches up at once.
func (l *Layer) Run(ctx context.Context) error {
	if len(l.cfg.Batch.Lease.ZooKeeper) > 0 {
		le, err := openLease(l.cfg.Batch.Lease, l.cfg.ClickHouse.Database, l.log)
		if err != nil {
			return err
		}
		l.lease = le
		defer le.close()
	}
	if l.lease == nil {
		// With a lease, leftovers are dropped when it is taken: another process's run may be
		// using them now.
		for _, d := range l.ds {
			l.dropLeftovers(ctx, d)
		}
	}
	clog := cronLogger{l.log}
	c := cron.New(cron.WithLocation(time.UTC), cron.WithLogger(clog))
	chain := cron.NewChain(cron.Recover(clog), cron.SkipIfStillRunning(clog))
	var jobs []cron.Job
	scheds := map[string]cron.Schedule{}
	for _, name := range l.names() {
		d := l.ds[name]
		spec := d.d.BatchConf.Schedule
		if l.schedule != "" {
			spec = l.schedule
		}
		sched, err := cron.ParseStandard(spec)
		if err != nil {
			return fmt.Errorf("invalid batch schedule %q of dataset %s: %w", spec, name, err)
		}
		scheds[name] = sched
		job := chain.Then(cron.FuncJob(func() {
			defer l.ticks.begin(name, l.m.health)()
			if err := l.Tick(ctx, name); err != nil && ctx.Err() == nil {
				l.log.Error("batch tick failed", "dataset", name, "err", err)
			}
		}))
		c.Schedule(sched, job)
		jobs = append(jobs, job)
		l.log.Info("batch scheduled", "dataset", name, "schedule", spec)
		if rspec := d.d.BatchConf.SpeedRollup; rspec != "off" {
			if l.schedule != "" {
				rspec = l.schedule
			}
			rsched, err := cron.ParseStandard(rspec)
			if err != nil {
				return fmt.Errorf("invalid batch.speed_rollup %q of dataset %s: %w", rspec, name, err)
			}
			c.Schedule(rsched, chain.Then(cron.FuncJob(func() {
				if err := l.RollupSpeed(ctx, name); err != nil && ctx.Err() == nil {
					l.log.Warn("speed rollup failed: the API reads the minutes of the hours it misses", "dataset", name, "err", err)
				}
			})))
		}
	}
	l.ticks.start(time.Now(), scheds)
	defer l.ticks.stop()
	c.Start()
	var catchUp sync.WaitGroup
	for i, j := range jobs {
		if l.lease == nil {
			catchUp.Go(j.Run)
			continue
		}
		name := l.names()[i]
		catchUp.Go(func() {
			l.lease.campaign(ctx, name, func() {
				l.dropLeftovers(ctx, l.ds[name])
				catchUp.Go(j.Run)
			})
		})
	}
	if l.cl != nil {
		catchUp.Go(func() { l.recheckWatermarks(ctx) })
	}
	<-ctx.Done()
	<-c.Stop().Done()
	catchUp.Wait()
	return nil
}

func (l *Layer) names() []string {
	out := make([]string, 0, len(l.ds))
	for n := range l.ds {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// dropLeftovers drops staging tables that a crashed process left behind (on every node in
// cluster mode).
func (l *Layer) dropLeftovers(ctx context.Context, d *dataset) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l.cl != nil {
		l.clusterDropLeftovers(ctx, d)
		return
	}
	dropLeftoversOn(ctx, l, d, l.conn, "")
}

func dropLeftoversOn(ctx context.Context, l *Layer, d *dataset, conn driver.Conn, node string) {
	rows, err := conn.Query(ctx, d.q.stagingTables())
	if err != nil {
		l.log.Warn("cannot list staging tables", "dataset", d.d.Name, "err", err)
		return
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err == nil {
			names = append(names, n)
		}
	}
	rows.Close()
	// A run's Merge table (…_s) before the tables it reads.
	slices.SortFunc(names, func(a, b string) int { return cmpBool(!strings.HasSuffix(a, "_s"), !strings.HasSuffix(b, "_s")) })
	for _, n := range names {
		if err := conn.Exec(ctx, d.q.dropTable(n)); err != nil {
			l.log.Warn("cannot drop staging table", "dataset", d.d.Name, "table", n, "err", err)
			continue
		}
		l.log.Info("dropped leftover staging table", "dataset", d.d.Name, "table", n, "node", node)
	}
}

// Tick does one scheduler tick for a dataset: it recomputes every sealed day after the
// watermark in day order, then every dirty day inside the lookback, then updates the watermark
// and applies retention. A failed day does not stop the days after it (the watermark stays
// before it and the next tick retries it); the errors are returned joined. Cancelling ctx stops
// after the current day.
func (l *Layer) Tick(ctx context.Context, name string) error {
	d, err := l.dataset(name)
	if err != nil {
		return err
	}
	if l.lease != nil && !l.lease.Held(name) {
		l.log.Debug("batch tick skipped: another process holds the lease", "dataset", name)
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := l.now().UTC()
	p, err := l.plan(ctx, d, now)
	if err != nil {
		return err
	}
	l.m.due.WithLabelValues(name).Set(float64(len(p.due)))
	var errs []error
	for _, day := range p.due {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		if _, err := l.runDay(ctx, d, day, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := l.updateWatermark(ctx, d); err != nil {
		errs = append(errs, err)
	} else if err := l.retention(ctx, d, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Progress reports a backfill: during a day, at every pass of its run (Phase set), and after
// the day (Phase empty).
type Progress struct {
	Dataset string
	Day     time.Time
	Done    int // days finished, this one included once it is done
	Total   int
	// Phase is the step of the day's run in progress (PhaseDedup, PhaseAggregate,
	// PhaseExact, PhaseAssemble, PhaseSwap), "" once the day is done; Step of
	// Steps passes of the phase are done.
	Phase       string
	Step, Steps int
	// Rows of the day just finished: in raw, after dedup, written to <ds>_daily.
	RowsRaw, RowsDedup, RowsOut uint64
	Elapsed                     time.Duration // since the backfill began
	Err                         error         // the day's failure, if any
}

// RunDays recomputes every day from from to to (inclusive, UTC days) in order, whether sealed
// or not (an explicit backfill is the operator's call), then updates the watermark. It stops at
// the first failure and returns it. progress, when not nil, is called at every pass of a day's
// run and after each day; it must not block.
func (l *Layer) RunDays(ctx context.Context, name string, from, to time.Time, progress func(Progress)) error {
	d, err := l.dataset(name)
	if err != nil {
		return err
	}
	from, to = ledger.DayOf(from), ledger.DayOf(to)
	if to.Before(from) {
		return fmt.Errorf("invalid range: %s is after %s", from.Format(time.DateOnly), to.Format(time.DateOnly))
	}
	total := int(to.Sub(from)/(24*time.Hour)) + 1
	if len(l.cfg.Batch.Lease.ZooKeeper) > 0 && l.lease == nil {
		// A backfill beside running schedulers takes the lease too, or its runs could
		// interleave with theirs; it does not wait for a scheduler to give it up.
		le, err := openLease(l.cfg.Batch.Lease, l.cfg.ClickHouse.Database, l.log)
		if err != nil {
			return err
		}
		defer le.close()
		ok, err := le.tryAcquire(name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the batch lease of %s is held by %s, a running `lambda batch`: its runs would race the backfill's; stop it or wait for its schedule", name, le.holder(name))
		}
		l.lease = le
		defer func() { l.lease = nil }()
	}
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	var runErr error
	for i, day := 0, from; !day.After(to); i, day = i+1, day.AddDate(0, 0, 1) {
		var pass func(phase string, step, steps int)
		if progress != nil {
			pass = func(phase string, step, steps int) {
				progress(Progress{Dataset: name, Day: day, Done: i, Total: total, Phase: phase, Step: step, Steps: steps,
					Elapsed: time.Since(start)})
			}
		}
		res, err := l.runDay(ctx, d, day, pass)
		if progress != nil {
			progress(Progress{Dataset: name, Day: day, Done: i + 1, Total: total, RowsRaw: res.rowsRaw,
				RowsDedup: res.rowsDedup, RowsOut: res.rowsOut, Elapsed: time.Since(start), Err: err})
		}
		if err != nil {
			runErr = err
			break
		}
	}
	if _, err := l.updateWatermark(ctx, d); err != nil {
		return errors.Join(runErr, err)
	}
	if d.d.BatchConf.SpeedRollup != "off" {
		// The hours after the new boundary, so that the API has them at once.
		if err := l.RollupSpeed(ctx, name); err != nil {
			l.log.Warn("speed rollup failed: the API reads the minutes of the hours it misses", "dataset", name, "err", err)
		}
	}
	return runErr
}

// cronLogger adapts slog to cron.Logger.
type cronLogger struct{ log *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.log.Debug("cron "+msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.log.Error("cron "+msg, append(kv, "err", err)...)
}

func sortDays(days []time.Time) []time.Time {
	slices.SortFunc(days, func(a, b time.Time) int { return a.Compare(b) })
	return slices.CompactFunc(days, func(a, b time.Time) bool { return a.Equal(b) })
}

// RecomputeSQL is the single INSERT … SELECT that recomputes one day of a dataset in memory into
// table (created AS <ds>_daily for grain "day", AS <ds>_hourly for "hour", AS <ds>_speed for
// "minute"): the query runs used before they were bounded in memory, and the reference the
// benchmark compares runs to (its floor).
func (l *Layer) RecomputeSQL(name string, day time.Time, grain, table, runID string) (string, error) {
	d, err := l.dataset(name)
	if err != nil {
		return "", err
	}
	day = ledger.DayOf(day)
	switch grain {
	case "day":
		return d.q.recompute(table, day, runID), nil
	case "hour":
		return d.q.recomputeHourly(table, day, runID), nil
	case "minute":
		return d.q.recomputeSpeed(table, day), nil
	}
	return "", fmt.Errorf("unknown grain %q: want day, hour or minute", grain)
}
