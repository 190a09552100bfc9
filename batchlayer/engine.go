package batchlayer

// The engine of a run: how one day is recomputed within batch.max_memory, whatever its size.
//
// A run's queries each carry max_memory_usage = batch.max_memory (never above the server's own
// limit), and the run plans every pass so that its estimated memory stays within a share of it
// (job.target): two passes run at once on a single server, each planned for a quarter of the
// limit, so a pass may be twice its estimate before ClickHouse refuses it. Memory grows with
// the day along these lines, each bounded:
//
//  1. dedup: the hashes of repeated ids (one pass with ClickHouse's external GROUP BY, spilling
//     past its share), then the rows of unique ids copied as they are, and the sort and LIMIT 1
//     BY of the rows of repeated ids only, in id-hash buckets (every copy of an id is in one
//     bucket);
//  2. the aggregate pass: sketch states of the groups: split into time chunks (the parts of a
//     day's group merge in assemble); the speed rewrite likewise. When the speed view keeps
//     every dimension, the aggregate pass reads the speed minutes just rewritten (every value
//     and sketch per minute) instead of the rows;
//  3. exact distinct counts: every key of every group: split into key-hash buckets (counts over
//     disjoint key sets add up exactly);
//  4. exact quantiles: every value of every group: split into value ranges, after a counting
//     pass that says which range holds each group's quantile (see passes.go).
//
// Estimates come from the day itself: raw's size for the dedup, the deduplicated row count for
// the aggregate and speed passes, and the aggregate pass's own sketches (distinct keys per
// group) and present-value counts for the exact passes. Exact metrics whose bound fits beside
// the aggregate pass are computed in it, so a small day is a few passes, as one query would be.
// A pass that ClickHouse still refuses for memory is planned again with twice the buckets and
// run again, up to three times.
//
// In cluster mode every shard works at once on its own rows (its replica with the least
// replication delay, within clickhouse.insert_timeout): the dedup and the speed rewrite stay on
// the shard; the aggregation passes are spread over the shards' nodes, each reading every
// shard's deduplicated rows through remote(), which sends level 1 to the shards; the node that
// runs a pass merges only that pass's bucket. The plan is made for the memory a single server
// would use, shared by the shards (see compute), so that no node holds more than its share of
// the day's keys and values.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Memory estimates, in bytes, measured on ClickHouse 18.16 with the demo dataset (see
// BENCHMARKS.md, "Batch layer"), rounded up.
const (
	dedupPerRawByte  = 6  // the dedup's sort and LIMIT BY set, per uncompressed byte of raw read
	aggregatePerRow  = 48 // the aggregate pass's level-1 and level-2 sketch states, per row
	speedPerRow      = 48 // the speed rewrite's states, per row
	distinctPerKey   = 40 // uniqExact's hash set, per distinct key of a group, both levels
	quantilePerValue = 12 // quantileExact's array, per present value of a group, growth included
	// quantileRangePerValue is quantilePerValue for a pass selecting in a value range: arrays
	// of values, concatenated and padded.
	quantileRangePerValue = 48
	maxSplit              = 4096
	memoryRetries         = 3
	queryMemoryFloor      = 128 << 20 // a query's own buffers: tiny batch.max_memory still plans tiny passes
	workerConcurrency     = 2         // passes at once on a single server
)

// Phases of a run, as progress and metrics name them.
const (
	PhaseDedup     = "dedup"
	PhaseAggregate = "aggregate"
	PhaseExact     = "exact" // exact distinct counts and quantiles
	PhaseAssemble  = "assemble"
	PhaseSwap      = "swap"
)

var phases = []string{PhaseDedup, PhaseAggregate, PhaseExact, PhaseAssemble, PhaseSwap}

// worker is where a run works on a shard's rows: the server in single mode, one live replica of
// each shard in cluster mode.
type worker struct {
	conn driver.Conn
	addr string // host:port as remote_servers names it ("" in single mode)
	name string // for messages
}

// split is how a run splits its day (see the package comment of engine.go).
type split struct {
	dupHashes int // buckets of id hashes when finding the repeated ids, per worker
	dedup     int // id buckets of the rows of repeated ids, per worker
	chunks    int // time chunks of the aggregate pass
	speed     int // time chunks of the speed rewrite
	// inA are the exact metrics (uniq, quantile) computed in the aggregate pass.
	inA map[int]bool
	// fromSpeed: the aggregate pass read the rewritten speed minutes.
	fromSpeed bool
	distinct  map[string]int // key buckets per distinct-count column
	quantile  map[int]int    // value ranges per quantile metric (1: all values at once)
}

// job is one run's computation.
type job struct {
	l       *Layer
	d       *dataset
	q       *queries
	day     time.Time
	stage   string
	runID   string
	workers []worker
	limit   int64 // max_memory_usage of every query
	target  int64 // estimate a pass is planned for
	conc    int   // passes at once per worker
	plan    split
	gen     int // last plan generation handed out
	gens    map[string]int
	queries atomic.Int64 // passes sent, for their query ids
	rows    []uint64     // deduplicated rows per worker
	res     *runResult
	report  func(phase string, step, steps int)
	// rewriteSpeed is false for a day older than the speed retention: its partition would go
	// at the next retention, so it is left alone (rows_speed 0).
	rewriteSpeed bool
}

// settings are those of every pass: the memory limit, and the query log (the run's passes are
// in system.query_log under query ids starting with the run id, with their memory and CPU).
func (j *job) settings() clickhouse.Settings {
	// Inserts into the run's tables need not gather blocks of a million rows first.
	s := clickhouse.Settings{"max_memory_usage": int(j.limit), "log_queries": 1,
		"min_insert_block_size_rows": 65536, "min_insert_block_size_bytes": 16 << 20}
	if n := j.l.cfg.Batch.MaxThreads; n > 0 {
		s["max_threads"] = n
	}
	return s
}

func (j *job) exec(ctx context.Context, w worker, sql string) error {
	return j.execWith(ctx, w, sql, nil)
}

// execWith is exec with more settings.
func (j *job) execWith(ctx context.Context, w worker, sql string, more clickhouse.Settings) error {
	id := fmt.Sprintf("%s-%d", j.runID, j.queries.Add(1))
	s := j.settings()
	maps.Copy(s, more)
	return w.conn.Exec(clickhouse.Context(ctx, clickhouse.WithSettings(s), clickhouse.WithQueryID(id)), sql)
}

func (j *job) nextGen(family string) int {
	j.gen++
	j.gens[family] = j.gen
	return j.gen
}

// split is how many buckets bring est bytes within the target.
func (j *job) split(est float64) int {
	n := int(math.Ceil(est / float64(j.target)))
	return min(max(n, 1), maxSplit)
}

// src is the table expression of the deduplicated rows for a pass running on any node: the
// run's Merge table, in cluster mode on every worker through remote().
func (j *job) src() string { return j.everywhere(dedupMerge(j.stage)) }

// everywhere is a table of the run that every worker has, read as one.
func (j *job) everywhere(table string) string {
	if j.l.cl == nil {
		return j.q.g.T(table)
	}
	addrs := make([]string, len(j.workers))
	for i, w := range j.workers {
		addrs[i] = w.addr
	}
	return j.remote(strings.Join(addrs, ","), table)
}

// on is a table of the run that worker w0 holds, read from worker w.
func (j *job) on(w0, w int, table string) string {
	if j.l.cl == nil || w0 == w {
		return j.q.g.T(table)
	}
	return j.remote(j.workers[w0].addr, table)
}

func (j *job) remote(addrs, table string) string {
	ch := j.l.cfg.ClickHouse
	return fmt.Sprintf("remote(%s, %s, %s, %s, %s)", strLit(addrs), schema.Q(j.q.db), schema.Q(table), strLit(ch.Username), strLit(ch.Password))
}

// task is one pass, run on worker w (an index into workers; -1: any).
type task struct {
	w   int
	run func(ctx context.Context, w int) error
}

// runTasks runs tasks, at most conc at once per worker, and reports progress; the first error
// cancels the others.
func (j *job) runTasks(ctx context.Context, phase string, tasks []task) error {
	if len(tasks) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	queues := make([]chan task, len(j.workers))
	for i := range queues {
		queues[i] = make(chan task, len(tasks))
	}
	for i, t := range tasks {
		w := t.w
		if w < 0 {
			w = i % len(j.workers)
		}
		t.w = w
		queues[w] <- t
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		done int
		fail error
	)
	j.report(phase, 0, len(tasks))
	for w := range j.workers {
		close(queues[w])
		for range j.conc {
			wg.Go(func() {
				for t := range queues[w] {
					if ctx.Err() != nil {
						return
					}
					err := t.run(ctx, t.w)
					mu.Lock()
					if err != nil {
						// The first failure cancels the others: theirs say only that.
						if fail == nil || (errors.Is(fail, context.Canceled) && !errors.Is(err, context.Canceled)) {
							fail = err
						}
						cancel()
					} else {
						done++
						j.report(phase, done, len(tasks))
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if fail != nil {
		return fail
	}
	return ctx.Err()
}

// memoryLimited reports whether ClickHouse refused a query for memory.
func memoryLimited(err error) bool {
	var ex *proto.Exception
	if errors.As(err, &ex) && ex.Code == 241 {
		return true
	}
	return err != nil && strings.Contains(err.Error(), "Memory limit")
}

// retry runs a phase, and again with twice the split while ClickHouse refuses it for memory.
func (j *job) retry(ctx context.Context, what string, run func() error, double func()) error {
	for i := 0; ; i++ {
		err := run()
		if err == nil || !memoryLimited(err) || i == memoryRetries || ctx.Err() != nil {
			return err
		}
		double()
		j.l.log.Warn("a pass exceeded the memory limit: splitting it further", "dataset", j.d.d.Name,
			"day", j.day.Format(time.DateOnly), "pass", what, "max_memory", j.limit, "err", err)
	}
}

// raw reads how many rows and uncompressed bytes the day's raw partition holds on a worker.
func (j *job) rawSize(ctx context.Context, w worker) (rows, bytes uint64, err error) {
	table := schema.Raw(j.d.d.Name)
	if j.l.cl != nil {
		table = schema.Local(table)
	}
	q := fmt.Sprintf("SELECT sum(rows), sum(data_uncompressed_bytes) FROM system.parts WHERE database = %s AND table = %s AND partition = %s AND active",
		strLit(j.q.db), strLit(table), strLit(partitionID(j.day)))
	if err := w.conn.QueryRow(ctx, q).Scan(&rows, &bytes); err != nil {
		return 0, 0, fmt.Errorf("cannot read the size of %s on %s: %w", table, w.name, err)
	}
	return rows, bytes, nil
}

// dedup writes the day's deduplicated rows on every worker and counts them (see dupHashes in
// passes.go): the repeated id hashes in hash buckets, the rows of unique ids as they are, the
// others sorted in id buckets.
func (j *job) dedup(ctx context.Context) error {
	var rows, bytes uint64
	for _, w := range j.workers {
		r, b, err := j.rawSize(ctx, w)
		if err != nil {
			return err
		}
		rows, bytes = max(rows, r), max(bytes, b)
	}
	// One pass whose hash table spills to disk past its share (ClickHouse's external GROUP BY
	// costs a fifth more CPU here, reading the ids once); buckets of hashes only if it still
	// does not fit.
	j.plan.dupHashes = 1
	perRow := float64(bytes) / float64(max(rows, 1)) * dedupPerRawByte
	raw := j.q.g.LocalT(schema.Raw(j.d.d.Name))
	dups := dupTable(j.stage)
	stage := func() error {
		return j.dropTables(ctx, func(name string) bool {
			return strings.HasPrefix(name, j.stage+"_s") || name == dups
		})
	}
	// The repeated id hashes, and how many rows they hold on the busiest worker.
	hashes := func() error {
		if err := stage(); err != nil {
			return err
		}
		var tasks []task
		for w := range j.workers {
			if err := j.exec(ctx, j.workers[w], j.q.createDupTable(dups)); err != nil {
				return fmt.Errorf("cannot create %s on %s: %w", dups, j.workers[w].name, err)
			}
			for b := range j.plan.dupHashes {
				tasks = append(tasks, task{w: w, run: func(ctx context.Context, w int) error {
					spill := clickhouse.Settings{"max_bytes_before_external_group_by": int(j.target / 2)}
					if err := j.execWith(ctx, j.workers[w], j.q.dupHashes(dups, raw, j.day, j.plan.dupHashes, b), spill); err != nil {
						return fmt.Errorf("cannot find the repeated ids (bucket %d of %d) on %s: %w", b+1, j.plan.dupHashes, j.workers[w].name, err)
					}
					return nil
				}})
			}
		}
		return j.runTasks(ctx, PhaseDedup, tasks)
	}
	if err := j.retry(ctx, PhaseDedup, hashes, func() { j.plan.dupHashes = min(2*j.plan.dupHashes, maxSplit) }); err != nil {
		return err
	}
	var repeated uint64
	for _, w := range j.workers {
		var n uint64
		if err := w.conn.QueryRow(ctx, fmt.Sprintf("SELECT sum(c) FROM %s", j.q.g.T(dups))).Scan(&n); err != nil {
			return fmt.Errorf("cannot count the repeated ids on %s: %w", w.name, err)
		}
		repeated = max(repeated, n)
	}
	j.plan.dedup = j.split(float64(repeated) * perRow)
	rowsRun := func() error {
		if err := j.dropTables(ctx, func(name string) bool { return strings.HasPrefix(name, j.stage+"_s") }); err != nil {
			return err
		}
		var tasks []task
		for w := range j.workers {
			for b := range 1 + j.plan.dedup {
				tasks = append(tasks, task{w: w, run: func(ctx context.Context, w int) error {
					t := dedupTable(j.stage, b)
					if err := j.exec(ctx, j.workers[w], j.q.createLog(t, j.q.dedupColumns())); err != nil {
						return fmt.Errorf("cannot create %s on %s: %w", t, j.workers[w].name, err)
					}
					if b == 0 {
						if err := j.exec(ctx, j.workers[w], j.q.dedupUnique(t, raw, dups, j.day)); err != nil {
							return fmt.Errorf("cannot copy the rows of unique ids into %s on %s: %w", t, j.workers[w].name, err)
						}
						return nil
					}
					if err := j.exec(ctx, j.workers[w], j.q.dedupRepeated(t, raw, dups, j.day, j.plan.dedup, b-1)); err != nil {
						return fmt.Errorf("cannot deduplicate the repeated ids (bucket %d of %d) into %s on %s: %w", b, j.plan.dedup, t, j.workers[w].name, err)
					}
					return nil
				}})
			}
		}
		return j.runTasks(ctx, PhaseDedup, tasks)
	}
	if err := j.retry(ctx, PhaseDedup, rowsRun, func() { j.plan.dedup = min(2*j.plan.dedup, maxSplit) }); err != nil {
		return err
	}
	j.rows = make([]uint64, len(j.workers))
	j.res.rowsDedup = 0
	for i, w := range j.workers {
		if err := w.conn.Exec(ctx, j.q.createDedupMerge(j.stage)); err != nil {
			return fmt.Errorf("cannot create %s on %s: %w", dedupMerge(j.stage), w.name, err)
		}
		if err := w.conn.QueryRow(ctx, j.q.countRows(j.q.g.T(dedupMerge(j.stage)))).Scan(&j.rows[i]); err != nil {
			return fmt.Errorf("cannot count the deduplicated rows on %s: %w", w.name, err)
		}
		j.res.rowsDedup += j.rows[i]
	}
	return nil
}

// aggregate runs the aggregate pass (in time chunks) and the speed rewrite, and plans the exact
// passes from what the aggregate pass found. Before it runs, the memory of an exact metric is
// known only as a bound (every row a distinct key or value in every group); metrics whose bound
// fits beside the aggregate pass are computed in it, the cheapest first, so a day that fits is
// one pass as in a single query.
func (j *job) aggregate(ctx context.Context) error {
	specs := j.d.d.Specs()
	entries := float64(j.res.rowsDedup) * float64(1+2*len(j.d.d.GroupingSets()))
	rows := float64(j.res.rowsDedup)
	j.plan.chunks = j.split(rows * aggregatePerRow)
	j.plan.inA = map[int]bool{}
	if j.plan.chunks == 1 {
		room := float64(j.target) - rows*aggregatePerRow
		type cand struct {
			idx  []int
			cost float64
		}
		var cands []cand
		byCol := map[string]int{}
		for i, s := range specs {
			switch s.Type {
			case metric.Quantile:
				cands = append(cands, cand{[]int{i}, entries * quantilePerValue})
			case metric.Uniq:
				if k, ok := byCol[s.Column]; ok {
					cands[k].idx = append(cands[k].idx, i) // the same keys: the same sets
					continue
				}
				byCol[s.Column] = len(cands)
				cands = append(cands, cand{[]int{i}, entries * distinctPerKey})
			}
		}
		slices.SortStableFunc(cands, func(a, b cand) int { return int(a.cost - b.cost) })
		for _, c := range cands {
			if c.cost > room {
				break
			}
			room -= c.cost
			for _, i := range c.idx {
				j.plan.inA[i] = true
			}
		}
	}
	most := slices.Max(j.rows)
	j.plan.speed = j.split(float64(most) * speedPerRow)
	if err := j.forEachWorker(ctx, func(w worker) error {
		if err := j.exec(ctx, w, j.q.createParts(partsTable(j.stage), false)); err != nil {
			return err
		}
		return j.exec(ctx, w, j.q.createParts(exactTable(j.stage), true))
	}); err != nil {
		return err
	}
	run := func() error {
		gen := j.nextGen("aggregate")
		var speed, tasks []task
		if j.rewriteSpeed {
			for w := range j.workers {
				for c := range j.plan.speed {
					speed = append(speed, task{w: w, run: func(ctx context.Context, w int) error {
						if err := j.exec(ctx, j.workers[w], j.q.speedPass(speedStage(j.stage), j.q.g.T(dedupMerge(j.stage)), j.day, j.plan.speed, c)); err != nil {
							return fmt.Errorf("cannot rewrite the speed rows (chunk %d of %d) on %s: %w", c+1, j.plan.speed, j.workers[w].name, err)
						}
						return nil
					}})
				}
			}
		}
		// The aggregate pass reads the speed minutes just rewritten when it can (they hold
		// every value and sketch of the day per minute), the deduplicated rows otherwise.
		fromSpeed := j.rewriteSpeed && len(j.plan.inA) == 0 && j.q.canAggregateSpeed()
		j.plan.fromSpeed = fromSpeed
		for c := range j.plan.chunks {
			tasks = append(tasks, task{w: -1, run: func(ctx context.Context, w int) error {
				sql := j.q.aggregatePass(partsTable(j.stage), j.src(), gen, j.day, j.plan.chunks, c, j.plan.inA)
				if fromSpeed {
					sql = j.q.aggregateSpeedPass(partsTable(j.stage), j.everywhere(speedStage(j.stage)), gen, j.day, j.plan.chunks, c)
				}
				if err := j.exec(ctx, j.workers[w], sql); err != nil {
					return fmt.Errorf("cannot run the aggregate pass (chunk %d of %d) on %s: %w", c+1, j.plan.chunks, j.workers[w].name, err)
				}
				return nil
			}})
		}
		if err := j.forEachWorker(ctx, func(w worker) error {
			if err := w.conn.Exec(ctx, j.q.dropTable(speedStage(j.stage))); err != nil {
				return err
			}
			engine, err := j.q.stagingEngine(ctx, w.conn, schema.Local(schema.Speed(j.q.d.Name)))
			if err != nil {
				return err
			}
			return w.conn.Exec(ctx, j.q.createSpeedStaging(speedStage(j.stage), engine))
		}); err != nil {
			return fmt.Errorf("cannot create %s: %w", speedStage(j.stage), err)
		}
		if !fromSpeed {
			return j.runTasks(ctx, PhaseAggregate, append(tasks, speed...))
		}
		if err := j.runTasks(ctx, PhaseAggregate, speed); err != nil {
			return err
		}
		return j.runTasks(ctx, PhaseAggregate, tasks)
	}
	if err := j.retry(ctx, PhaseAggregate, run, func() {
		j.plan.chunks = min(2*j.plan.chunks, maxSplit)
		j.plan.speed = min(2*j.plan.speed, maxSplit)
		j.plan.inA = map[int]bool{}
	}); err != nil {
		return err
	}
	return j.planExact(ctx)
}

// planExact sizes the exact passes from the aggregate pass's results: the distinct keys of every
// group (from its sketch) and its present values.
func (j *job) planExact(ctx context.Context) error {
	specs := j.d.d.Specs()
	// The set of every dimension at the hour grain has level 1's groups.
	all := uint64(1)<<len(j.d.d.DimensionNames()) - 1 | 1<<hourBit
	var inner, outer []string
	type est struct {
		col string
		i   int
	}
	var ests []est
	seen := map[string]bool{}
	for i, s := range specs {
		if j.plan.inA[i] {
			continue
		}
		switch {
		case s.Type == metric.Uniq && !seen[s.Column]:
			seen[s.Column] = true
			inner = append(inner, fmt.Sprintf("sum(%s) AS _x%d", estimateCol(i), len(ests)))
			ests = append(ests, est{col: s.Column, i: i})
		case s.Type == metric.Quantile:
			inner = append(inner, fmt.Sprintf("sum(%s) AS _x%d", presentCol(i), len(ests)))
			ests = append(ests, est{i: i})
		default:
			continue
		}
		k := len(ests) - 1
		outer = append(outer, fmt.Sprintf("toFloat64(sum(_x%d))", k), fmt.Sprintf("toFloat64(sumIf(_x%d, _g = %d))", k, all))
	}
	j.plan.distinct, j.plan.quantile = map[string]int{}, map[int]int{}
	if len(ests) == 0 {
		return nil
	}
	q := fmt.Sprintf("SELECT %s FROM (SELECT _g, %s FROM %s WHERE _p = %d GROUP BY _t, _g, %s)", strings.Join(outer, ", "),
		strings.Join(inner, ", "), j.everywhere(partsTable(j.stage)), j.gens["aggregate"], quoteAll(j.d.d.DimensionNames()))
	vals := make([]float64, len(outer))
	dest := make([]any, len(vals))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := j.workers[0].conn.QueryRow(ctx, q).Scan(dest...); err != nil {
		return fmt.Errorf("cannot estimate the exact passes: %w", err)
	}
	for k, e := range ests {
		entries := vals[2*k] + vals[2*k+1] // every group's, plus level 1's held at the same time
		switch {
		case e.col != "":
			// A multiple of the passes that run at once, so that none runs alone.
			at := j.conc * len(j.workers)
			n := j.split(entries * distinctPerKey)
			if n > 1 {
				n = min((n+at-1)/at*at, maxSplit)
			}
			j.plan.distinct[e.col] = n
		case j.split(entries*quantilePerValue) == 1:
			j.plan.quantile[e.i] = 1
		default:
			// By value range, a range's values held as arrays.
			j.plan.quantile[e.i] = max(2, j.split(entries*quantileRangePerValue))
		}
	}
	return nil
}

// family is the passes of one exact metric family: the distinct counts of a key column, or a
// quantile metric.
type family struct {
	name string
	// passes prepares the family's passes for plan generation gen (a quantile by value range
	// first works out its ranges) and returns them.
	passes func(ctx context.Context, gen int) ([]task, error)
	double func()
}

// familyError is a pass's error with the family it belongs to.
type familyError struct {
	f   *family
	err error
}

func (e *familyError) Error() string { return e.err.Error() }
func (e *familyError) Unwrap() error { return e.err }

// exact runs the exact distinct counts (per key column, in key-hash buckets) and quantiles (all
// values at once, or by value range) as one pool of passes, so that they keep every worker
// busy. A family ClickHouse refuses for memory is planned again with twice the buckets, and
// run again with the families that did not finish.
func (j *job) exact(ctx context.Context) error {
	var pending []*family
	cols := slices.Sorted(maps.Keys(j.plan.distinct))
	for _, col := range cols {
		f := &family{name: "distinct " + col}
		f.passes = func(ctx context.Context, gen int) ([]task, error) {
			n := j.plan.distinct[col]
			var tasks []task
			for b := range n {
				tasks = append(tasks, task{w: -1, run: func(ctx context.Context, w int) error {
					if err := j.exec(ctx, j.workers[w], j.q.distinctPass(exactTable(j.stage), j.src(), gen, j.day, col, n, b)); err != nil {
						return fmt.Errorf("cannot count the distinct %s (bucket %d of %d) on %s: %w", col, b+1, n, j.workers[w].name, err)
					}
					return nil
				}})
			}
			return tasks, nil
		}
		f.double = func() { j.plan.distinct[col] = min(2*j.plan.distinct[col], maxSplit) }
		pending = append(pending, f)
	}
	for _, i := range slices.Sorted(maps.Keys(j.plan.quantile)) {
		name := j.d.d.Specs()[i].Name
		f := &family{name: "quantile " + name}
		f.passes = func(ctx context.Context, gen int) ([]task, error) {
			if j.plan.quantile[i] > 1 {
				return j.quantileRanges(ctx, gen, i, j.plan.quantile[i])
			}
			return []task{{w: -1, run: func(ctx context.Context, w int) error {
				if err := j.exec(ctx, j.workers[w], j.q.quantilePass(exactTable(j.stage), j.src(), gen, j.day, i)); err != nil {
					return fmt.Errorf("cannot compute the quantile %s on %s: %w", name, j.workers[w].name, err)
				}
				return nil
			}}}, nil
		}
		f.double = func() { j.plan.quantile[i] = min(max(2, 2*j.plan.quantile[i]), maxSplit) }
		pending = append(pending, f)
	}
	return j.runFamilies(ctx, pending)
}

// runFamilies runs the passes of families as one pool; a family ClickHouse refuses for memory
// is split further and run again, with the families that did not finish.
func (j *job) runFamilies(ctx context.Context, pending []*family) error {
	for attempt := 0; len(pending) > 0; attempt++ {
		var tasks []task
		left := map[*family]int{}
		var mu sync.Mutex
		for _, f := range pending {
			ts, err := f.passes(ctx, j.nextGen(f.name))
			if err != nil {
				return err
			}
			left[f] = len(ts)
			for _, t := range ts {
				run := t.run
				t.run = func(ctx context.Context, w int) error {
					if err := run(ctx, w); err != nil {
						return &familyError{f: f, err: err}
					}
					mu.Lock()
					left[f]--
					mu.Unlock()
					return nil
				}
				tasks = append(tasks, t)
			}
		}
		err := j.runTasks(ctx, PhaseExact, tasks)
		var fe *familyError
		if err == nil {
			return nil
		}
		if !memoryLimited(err) || attempt == memoryRetries || ctx.Err() != nil || !errors.As(err, &fe) {
			return err
		}
		fe.f.double()
		j.l.log.Warn("a pass exceeded the memory limit: splitting it further", "dataset", j.d.d.Name,
			"day", j.day.Format(time.DateOnly), "pass", fe.f.name, "max_memory", j.limit, "err", err)
		// Families whose passes all finished keep their generation; the others run again.
		var next []*family
		for _, f := range pending {
			if left[f] > 0 {
				next = append(next, f)
			}
		}
		pending = next
	}
	return nil
}

// quantileRanges prepares metric i's exact quantile of every group by value range (about n of
// them): boundaries, counts, targets, the values of the ranges of one value; it returns one
// pass per other range that holds a target.
func (j *job) quantileRanges(ctx context.Context, gen, i, n int) ([]task, error) {
	s := j.d.d.Specs()[i]
	w0 := j.workers[0]
	levels := make([]float64, 0, 2*n-1)
	for k := 1; k < 2*n; k++ {
		levels = append(levels, float64(k)/float64(2*n))
	}
	var sample []float64
	if err := w0.conn.QueryRow(ctx, j.q.valueBounds(j.src(), s.Column, levels)).Scan(&sample); err != nil {
		return nil, fmt.Errorf("cannot sample the values of %s: %w", s.Column, err)
	}
	bounds, points := rangeBounds(sample)
	qc, qt := qCountsTable(j.stage, i), qTargetsTable(j.stage, i)
	for _, stmt := range []string{j.q.dropTable(qc), j.q.dropTable(qt), j.q.createQCounts(qc), j.q.createQTargets(qt)} {
		if err := w0.conn.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("cannot create the tables of the quantile %s: %w", s.Name, err)
		}
	}
	if err := j.exec(ctx, w0, j.q.quantileCounts(qc, j.src(), j.day, i, bounds)); err != nil {
		return nil, fmt.Errorf("cannot count the values of %s per range: %w", s.Column, err)
	}
	if err := j.exec(ctx, w0, j.q.quantileTargets(qt, j.q.g.T(qc), i)); err != nil {
		return nil, fmt.Errorf("cannot work out the ranges of the quantile %s: %w", s.Name, err)
	}
	rows, err := w0.conn.Query(ctx, fmt.Sprintf("SELECT DISTINCT _k FROM %s WHERE _q = %d ORDER BY _k", j.q.g.T(qt), i))
	if err != nil {
		return nil, fmt.Errorf("cannot read the ranges of the quantile %s: %w", s.Name, err)
	}
	var ks []uint32
	for rows.Next() {
		var k uint32
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cannot read the ranges of the quantile %s: %w", s.Name, err)
		}
		ks = append(ks, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read the ranges of the quantile %s: %w", s.Name, err)
	}
	var tasks []task
	for _, k := range ks {
		if v, ok := points[int(k)]; ok {
			if err := w0.conn.Exec(ctx, j.q.quantilePoint(exactTable(j.stage), j.q.g.T(qt), gen, i, int(k), v)); err != nil {
				return nil, fmt.Errorf("cannot write the quantile %s of range %d: %w", s.Name, k, err)
			}
			continue
		}
		tasks = append(tasks, task{w: -1, run: func(ctx context.Context, w int) error {
			sql := j.q.quantileSelect(exactTable(j.stage), j.src(), j.on(0, w, qt), gen, j.day, i, int(k), bounds)
			if err := j.exec(ctx, j.workers[w], sql); err != nil {
				return fmt.Errorf("cannot select the quantile %s in range %d of %d on %s: %w", s.Name, k+1, len(bounds)+1, j.workers[w].name, err)
			}
			return nil
		}})
	}
	return tasks, nil
}

// rangeBounds turns sampled quantiles (ascending) into the boundaries of value ranges: every
// other sample, and around a value sampled twice in a row (it alone holds a large share of the
// values) a range of that value alone, returned in points by range index.
func rangeBounds(sample []float64) ([]float64, map[int]float64) {
	var bounds []float64
	var hot []float64
	for k, v := range sample {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		if k%2 == 1 {
			bounds = append(bounds, v)
		}
		if k > 0 && sample[k-1] == v && !slices.Contains(hot, v) {
			if next := math.Nextafter(v, math.Inf(1)); !math.IsInf(next, 0) {
				hot = append(hot, v)
				bounds = append(bounds, v, next)
			}
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	points := map[int]float64{}
	for _, v := range hot {
		k, _ := slices.BinarySearch(bounds, v) // the range starting at v
		points[k+1] = v
	}
	return bounds, points
}

// assemble merges the parts into the staging tables of the day and of its hours (on the first
// worker), the hours in chunks of hours (at least as many as the aggregate pass had: their
// sketch states are as large as they were there), all as passes at once.
func (j *job) assemble(ctx context.Context, staging string) error {
	var gens []int
	for family, g := range j.gens {
		if family != "aggregate" {
			gens = append(gens, g)
		}
	}
	slices.Sort(gens)
	w0 := j.workers[0]
	engine, err := j.q.stagingEngine(ctx, w0.conn, schema.Hourly(j.q.d.Name))
	if err != nil {
		return err
	}
	if err := w0.conn.Exec(ctx, j.q.createHourlyStaging(hourlyStage(j.stage), engine)); err != nil {
		return fmt.Errorf("cannot create %s: %w", hourlyStage(j.stage), err)
	}
	parts, exact := j.everywhere(partsTable(j.stage)), j.everywhere(exactTable(j.stage))
	tasks := []task{{w: 0, run: func(ctx context.Context, w int) error {
		if err := j.exec(ctx, w0, j.q.assemble(staging, parts, exact, j.gens["aggregate"], gens, j.plan.inA, false, "", j.runID)); err != nil {
			return fmt.Errorf("cannot assemble the day into %s: %w", staging, err)
		}
		return nil
	}}}
	chunks := min(max(j.plan.chunks, j.conc), 24)
	// Whole hours of the day in its zone: 23 or 25 on the days clocks change.
	start, hours := j.q.start(j.day), int(j.q.end(j.day).Sub(j.q.start(j.day))/time.Hour)
	for c := range chunks {
		from, to := start.Add(time.Duration(hours*c/chunks)*time.Hour), start.Add(time.Duration(hours*(c+1)/chunks)*time.Hour)
		cond := ""
		if chunks > 1 {
			cond = fmt.Sprintf("_t >= %s AND _t < %s", timeLit(from), timeLit(to))
		}
		tasks = append(tasks, task{w: 0, run: func(ctx context.Context, w int) error {
			if err := j.exec(ctx, w0, j.q.assemble(hourlyStage(j.stage), parts, exact, j.gens["aggregate"], gens, j.plan.inA, true, cond, j.runID)); err != nil {
				return fmt.Errorf("cannot assemble the hours into %s: %w", hourlyStage(j.stage), err)
			}
			return nil
		}})
	}
	return j.runTasks(ctx, PhaseAssemble, tasks)
}

// forEachWorker runs f on every worker at once.
func (j *job) forEachWorker(ctx context.Context, f func(w worker) error) error {
	errs := make([]error, len(j.workers))
	var wg sync.WaitGroup
	for i, w := range j.workers {
		wg.Go(func() {
			if err := f(w); err != nil {
				errs[i] = fmt.Errorf("on %s: %w", w.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dropTables drops the run's tables whose names match on every worker.
func (j *job) dropTables(ctx context.Context, match func(string) bool) error {
	return j.forEachWorker(ctx, func(w worker) error {
		rows, err := w.conn.Query(ctx, fmt.Sprintf("SELECT name FROM system.tables WHERE database = %s AND startsWith(name, %s)", strLit(j.q.db), strLit(j.stage)))
		if err != nil {
			return err
		}
		var names []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return err
			}
			if match(n) {
				names = append(names, n)
			}
		}
		rows.Close()
		// The Merge table before the tables it reads.
		slices.SortFunc(names, func(a, b string) int {
			return cmpBool(a != dedupMerge(j.stage), b != dedupMerge(j.stage))
		})
		for _, n := range names {
			if err := w.conn.Exec(ctx, j.q.dropTable(n)); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

// String says how the run split its day, for the log.
func (p split) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "repeated ids %d, dedup %d, aggregate %d, speed %d", p.dupHashes, p.dedup, p.chunks, p.speed)
	if p.fromSpeed {
		b.WriteString(" (aggregate from the speed minutes)")
	}
	if len(p.inA) > 0 {
		fmt.Fprintf(&b, ", exact in the aggregate pass %v", slices.Sorted(maps.Keys(p.inA)))
	}
	for _, c := range slices.Sorted(maps.Keys(p.distinct)) {
		fmt.Fprintf(&b, ", distinct %s %d", c, p.distinct[c])
	}
	for _, i := range slices.Sorted(maps.Keys(p.quantile)) {
		fmt.Fprintf(&b, ", quantile #%d %d", i, p.quantile[i])
	}
	return b.String()
}

// cmpBool orders false before true.
func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
