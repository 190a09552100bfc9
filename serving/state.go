package serving

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// stateTTL is how long a dataset's watermarks, dirty days and runs are reused. A batch run is
// visible to the API at most this long (plus one refresh) after it wrote its success, in
// cached and uncached answers alike: a cached result is keyed by the runs of this state, so
// until the state names a new run, a swapped day may still be answered as before the swap.
// Closing that gap entirely would take a query to ClickHouse on every cache hit (the swap
// precedes the success by design), which is what the cache is there to avoid.
const stateTTL = time.Second

// snapshot is State plus the speed progress, as read at one time.
type snapshot struct {
	State
	// days is the ledger's word on every day (raw rows, runs), for cache keys.
	days       ledger.Days
	Partitions []ledger.Partition
	ReadAt     time.Time
	// rollupErr is why the speed or rest rollups could not be read (the API reads minutes or
	// hours then).
	rollupErr error
}

type stateCache struct {
	conn driver.Conn
	cfg  *config.Config
	g    *schema.Generator
	mu   sync.Mutex
	m    map[string]*snapshot
	// refreshing marks datasets whose snapshot one caller is reading.
	refreshing map[string]bool
	// ttl is stateTTL, zero in tests that must see every write at once.
	ttl time.Duration
	// kafka, when not nil, reads Kafka's offsets: the evidence of which partitions are caught
	// up (see ledger.Speed). After a failure the ledger's heartbeats are the evidence until
	// kafkaRetry.
	kafka      *ledger.KafkaReader
	kafkaMu    sync.Mutex
	kafkaRetry time.Time
	log        *slog.Logger
}

// kafkaBackoff is how long the API goes by heartbeats alone after Kafka could not be read.
const kafkaBackoff = 30 * time.Second

// offsets reads Kafka's word on the dataset's topic, nil when there is no reader or Kafka
// cannot be read now.
func (c *stateCache) offsets(ctx context.Context, ds *config.Dataset) map[int32]ledger.KafkaOffsets {
	if c.kafka == nil {
		return nil
	}
	c.kafkaMu.Lock()
	wait := time.Now().Before(c.kafkaRetry)
	c.kafkaMu.Unlock()
	if wait {
		return nil
	}
	kctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := c.kafka.Read(kctx, ds.Topic, c.cfg.Kafka.GroupPrefix+"-"+ds.Name)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("cannot read offsets from kafka: the speed watermark goes by the ledger's heartbeats", "dataset", ds.Name, "retry_in", kafkaBackoff, "err", err)
		}
		c.kafkaMu.Lock()
		c.kafkaRetry = time.Now().Add(kafkaBackoff)
		c.kafkaMu.Unlock()
		return nil
	}
	return m
}

// get returns the dataset's snapshot, reading it again when older than the TTL. One caller
// reads; while it does, the others keep using the previous snapshot, so a refresh never stalls
// every request.
func (c *stateCache) get(ctx context.Context, ds *config.Dataset, now time.Time) (*snapshot, error) {
	c.mu.Lock()
	s, ok := c.m[ds.Name]
	fresh := ok && c.ttl > 0 && now.Sub(s.ReadAt) >= 0 && now.Sub(s.ReadAt) < c.ttl
	if fresh || (ok && c.ttl > 0 && c.refreshing[ds.Name]) {
		c.mu.Unlock()
		return s, nil
	}
	if c.refreshing == nil {
		c.refreshing = map[string]bool{}
	}
	c.refreshing[ds.Name] = true
	c.mu.Unlock()
	s, err := readState(ctx, c.conn, c.g, ds, now, c.offsets(ctx, ds))
	if err == nil && s.rollupErr != nil {
		c.log.Warn("cannot read the rollups: hours after the boundary are read from the minutes, the rest of sealed days from their hours", "dataset", ds.Name, "err", s.rollupErr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshing[ds.Name] = false
	if err != nil {
		return nil, err
	}
	c.m[ds.Name] = s
	return s, nil
}

// pending lists the days waiting for a batch run, oldest first: dirty days (raw rows changed
// after their run) and unrun days (raw rows and no run).
func (s *snapshot) pending() []string {
	days := append(slices.Clone(s.Dirty), s.Unrun...)
	slices.SortFunc(days, func(a, b time.Time) int { return a.Compare(b) })
	out := make([]string, len(days))
	for i, d := range days {
		out[i] = d.Format(time.DateOnly)
	}
	return out
}

// speedOldestSQL gives the number of rows and the oldest minute of <ds>_speed.
func speedOldestSQL(g *schema.Generator, ds string) string {
	return fmt.Sprintf("SELECT count(), min(minute) FROM %s", g.T(schema.Speed(ds)))
}

// setsSQL gives the grouping sets <ds>_daily holds per day of [from, to) (bound) and the runs
// that wrote them.
func setsSQL(g *schema.Generator, ds string) string {
	return fmt.Sprintf("SELECT day, grouping, min(run_id), max(run_id) FROM %s WHERE day >= toDate(?) AND day < toDate(?) GROUP BY day, grouping ORDER BY day, grouping",
		g.T(schema.Daily(ds)))
}

// readState reads what the planner needs of a dataset from the ledger: the persisted boundary,
// the exact watermark (never past the boundary), the dirty and unrun days, the newest
// successful run per day, the speed watermark (on Kafka's offsets when kafka is not nil, else
// on the ledger's heartbeats) and the oldest minute the speed view still holds.
func readState(ctx context.Context, conn driver.Conn, g *schema.Generator, ds *config.Dataset, now time.Time, kafka map[int32]ledger.KafkaOffsets) (*snapshot, error) {
	s := &snapshot{ReadAt: now}
	wm, ok, err := ledger.Boundary(ctx, conn, g.DB, ds.Name)
	if err != nil {
		return nil, err
	}
	days, err := ledger.ReadDays(ctx, conn, g.DB, ds.Name)
	if err != nil {
		return nil, err
	}
	if ok {
		s.Watermark = wm
		s.Effective = days.Exact()
		if s.Effective.After(wm) {
			s.Effective = wm
		}
	}
	s.Dirty = days.Dirty(time.Time{})
	for _, d := range days.Unrun() {
		// After the boundary a day without a run is not sealed yet, not missing a correction.
		if !s.Watermark.IsZero() && !d.After(s.Watermark) {
			s.Unrun = append(s.Unrun, d)
		}
	}
	s.days = days
	s.Runs = map[time.Time]Run{}
	for day, k := range days.Runs() {
		s.Runs[day] = Run{ID: k.Run, Rows: k.RowsOut, Hourly: k.RowsHourly, Speed: k.RowsSpeed, Read: k.RowsRead, RawRows: k.RawRows}
	}
	s.SpeedWatermark, s.Partitions, err = ledger.Speed(ctx, conn, g.DB, ds.Name, now, kafka)
	if err != nil {
		return nil, err
	}
	var n uint64
	var oldest time.Time
	if err := conn.QueryRow(ctx, speedOldestSQL(g, ds.Name)).Scan(&n, &oldest); err != nil {
		return nil, fmt.Errorf("cannot read the oldest minute of %s: %w", schema.Speed(ds.Name), err)
	}
	if n > 0 {
		s.SpeedOldest = oldest.UTC()
	}
	loc := ds.Location()
	since := ledger.DayIn(now.Add(-ds.SpeedConf.Retention.D()), loc)
	if !s.Watermark.IsZero() && s.Watermark.After(since) {
		since = s.Watermark.AddDate(0, 0, 1)
	}
	s.Rollups, s.rollupErr = ledger.ReadSpeedRollups(ctx, conn, g.DB, ds.Name, since, loc, schema.SpeedHourlyLayout(ds))
	if s.rollupErr != nil && ctx.Err() != nil {
		return nil, s.rollupErr
	}
	rests, err := ledger.ReadRests(ctx, conn, g.DB, ds.Name, ledger.DayIn(now.Add(-ledger.RestDays*24*time.Hour), loc))
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		s.rollupErr = errors.Join(s.rollupErr, err)
	}
	layout := schema.HourlyRestLayout(ds)
	s.Rests = map[time.Time]string{}
	for day, r := range rests {
		if r.Layout == layout {
			s.Rests[day] = r.Run
		}
	}
	return s, nil
}

// setsCache remembers which grouping sets <ds>_daily holds for a day and the run that wrote
// them. A day keeps the sets of the configuration its run had (an old day lacks the sets of a
// dimension added since), and only a new run changes them, so they are read once per run.
type setsCache struct {
	mu sync.Mutex
	m  map[string]map[time.Time]storedSets // dataset, day
}

type storedSets struct {
	run  string
	sets []string
}

// maxSetsDays bounds the days remembered per dataset.
const maxSetsDays = 100_000

// get returns the grouping sets of the days [from, to) that have a successful run, reading
// <ds>_daily for the days not seen with their current run. consistent is false when
// <ds>_daily holds another run for a day than the newest successful one of runs (a replica
// that has not caught up with the swap yet, or a swap whose success is not recorded yet):
// then the result of the query must not be cached under these runs.
func (c *setsCache) get(ctx context.Context, conn driver.Conn, g *schema.Generator, ds string, from, to time.Time, runs map[time.Time]Run) (map[time.Time][]string, bool, error) {
	out := map[time.Time][]string{}
	var lo, hi time.Time
	c.mu.Lock()
	known := c.m[ds]
	for d := from; d.Before(to); d = d.AddDate(0, 0, 1) {
		r, ok := runs[d]
		if !ok {
			continue // no run: nothing in <ds>_daily
		}
		if k, ok := known[d]; ok && k.run == r.ID {
			out[d] = k.sets
			continue
		}
		if lo.IsZero() {
			lo = d
		}
		hi = d.AddDate(0, 0, 1)
	}
	c.mu.Unlock()
	if lo.IsZero() {
		return out, true, nil
	}
	rows, err := conn.Query(ctx, setsSQL(g, ds), lo.Format("2006-01-02"), hi.Format("2006-01-02"))
	if err != nil {
		return nil, false, fmt.Errorf("cannot read the grouping sets of %s: %w", schema.Daily(ds), err)
	}
	found := map[time.Time]storedSets{}
	for rows.Next() {
		var d time.Time
		var grouping, minRun, maxRun string
		if err := rows.Scan(&d, &grouping, &minRun, &maxRun); err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("cannot read the grouping sets of %s: %w", schema.Daily(ds), err)
		}
		d = ledger.DayOf(d)
		f, seen := found[d]
		if !seen {
			f.run = minRun
		}
		if minRun != maxRun || minRun != f.run {
			f.run = "" // rows of several runs: never one a run names
		}
		f.sets = append(f.sets, grouping)
		found[d] = f
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("cannot read the grouping sets of %s: %w", schema.Daily(ds), err)
	}
	consistent := true
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]map[time.Time]storedSets{}
	}
	if c.m[ds] == nil || len(c.m[ds]) > maxSetsDays {
		c.m[ds] = map[time.Time]storedSets{}
	}
	for d := lo; d.Before(hi); d = d.AddDate(0, 0, 1) {
		r, ok := runs[d]
		if !ok {
			continue
		}
		f, ok := found[d]
		switch {
		case ok:
			c.m[ds][d] = f
			out[d] = f.sets
			if f.run != r.ID {
				consistent = false
			}
		case r.Rows == 0:
			c.m[ds][d] = storedSets{run: r.ID} // the run found nothing to write
			delete(out, d)
		default:
			consistent = false // the run wrote rows this server does not see yet
			delete(out, d)
		}
	}
	return out, consistent, nil
}
