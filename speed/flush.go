package speed

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/rawbatch"
)

// piece is one partition's buffer taken by a flush.
type piece struct {
	p *part
	b *buffer
}

// inFlight is how many flushes may be written at once. A flush's inserts overlap with the
// next one's (ClickHouse 18.16 runs one insert on one core); ledger rows and commits stay in
// flush order.
const inFlight = 2

// flushLoop flushes an interval after the last flush, when the buffers reach the flush size,
// and when a released partition asks; after stop it flushes a last time, waits for the flushes in
// flight and returns. A flush fails when ctx is done (it retries until then) or when
// ClickHouse refuses it for good, which stops the dataset; its rows are then dropped
// uncommitted. Once the dataset stops, the loop waits for the flushes in flight and returns
// why it stopped.
func (d *dataset) flushLoop(ctx context.Context, stop <-chan struct{}) error {
	tick := time.NewTicker(d.s.cfg.Speed.FlushInterval.D())
	defer tick.Stop()
	slots := make(chan struct{}, inFlight)
	prev := closedFlush()
	for {
		final := false
		var waiting []chan struct{}
		select {
		case <-d.halted:
			<-prev.done
			return d.stopped()
		case <-tick.C:
		case <-d.kick:
		case req := <-d.reqs:
			waiting = append(waiting, req)
		case <-stop:
			final = true
		}
		for more := true; more; {
			select {
			case req := <-d.reqs:
				waiting = append(waiting, req)
			default:
				more = false
			}
		}
		slots <- struct{}{}
		// The interval counts from the last flush: while a backlog fills flushes to their
		// size, a tick in between does not split one in two smaller inserts.
		tick.Reset(d.s.cfg.Speed.FlushInterval.D())
		f := d.flush(ctx, prev)
		go func() {
			<-f.done
			<-slots
			for _, w := range waiting {
				close(w)
			}
		}()
		prev = f
		if final {
			<-f.done
			return f.err
		}
	}
}

// flushed is the outcome of one flush: done is closed once its offsets are committed or its
// rows dropped; err then says which.
type flushed struct {
	done chan struct{}
	err  error
}

func closedFlush() *flushed {
	f := &flushed{done: make(chan struct{})}
	close(f.done)
	return f
}

// flush takes every partition's buffer and starts writing raw and rejects; once prev is
// committed it writes the ledger and marks and commits the offsets. Idle partitions get a
// heartbeat ledger row.
func (d *dataset) flush(ctx context.Context, prev *flushed) *flushed {
	f := &flushed{done: make(chan struct{})}
	now := d.s.now()
	m := d.s.m
	d.refreshWatermark(ctx)
	d.mu.Lock()
	parts := make([]*part, 0, len(d.parts))
	for _, p := range d.parts {
		parts = append(parts, p)
	}
	d.mu.Unlock()
	slices.SortFunc(parts, func(a, b *part) int { return int(a.partition - b.partition) })

	var pieces []piece
	var beats []*part
	var n, bytes, rows int
	for _, p := range parts {
		p.mu.Lock()
		switch {
		case p.revoked:
		case !p.buf.empty():
			pieces = append(pieces, piece{p, p.buf})
			n += p.buf.n
			bytes += p.buf.bytes
			rows += p.buf.rows()
			p.buf = d.newBuffer()
		case p.committed >= 0 && now.Sub(p.lastFlush) >= heartbeatEvery:
			beats = append(beats, p)
		}
		p.mu.Unlock()
	}
	d.rows.Add(-int64(n))
	d.bytes.Add(-int64(bytes))
	m.buffered.WithLabelValues(d.d.Name).Set(float64(d.rows.Load()))
	go func() {
		defer close(f.done)
		defer d.recycle(pieces)
		f.err = d.write(ctx, pieces, beats, rows, now, prev)
	}()
	return f
}

// write is the body of a flush.
func (d *dataset) write(ctx context.Context, pieces []piece, beats []*part, rows int, now time.Time, prev *flushed) error {
	m := d.s.m
	if len(pieces) == 0 && len(beats) == 0 {
		<-prev.done
		d.gauges(now)
		return nil
	}
	if err := d.stopped(); err != nil {
		<-prev.done
		return d.lose(pieces, err)
	}
	if rows > 0 {
		refused, err := d.insertRaw(ctx, pieces)
		if err != nil {
			<-prev.done
			return d.fail(pieces, err)
		}
		d.addRefused(pieces, refused)
		m.inserted.WithLabelValues(d.d.Name, "raw").Add(float64(rows - len(refused)))
		m.batchRows.WithLabelValues(d.d.Name).Observe(float64(rows))
		d.rejected[event.InsertRefused].Add(float64(len(refused)))
	}
	var rejects int
	for _, pc := range pieces {
		rejects += len(pc.b.rejects)
	}
	if rejects > 0 {
		if err := d.retry(ctx, "rejects", func(ctx context.Context) error { return d.sendRejects(ctx, pieces) }); err != nil {
			<-prev.done
			return d.fail(pieces, err)
		}
		m.inserted.WithLabelValues(d.d.Name, "rejects").Add(float64(rejects))
	}
	// Offsets are committed in flush order: a later flush never commits past rows of an
	// earlier one that is still being written, or that was dropped.
	<-prev.done
	if prev.err != nil {
		return d.lose(pieces, fmt.Errorf("an earlier flush was dropped: %w", prev.err))
	}
	if err := d.retry(ctx, "speed_flushes", func(ctx context.Context) error { return d.sendLedger(ctx, pieces, beats) }); err != nil {
		return d.fail(pieces, err)
	}

	// The rows are in ClickHouse: mark and commit their offsets, unless the partition was
	// revoked meanwhile (its new owner consumes them again: duplicates in raw, harmless).
	sessions := map[sarama.ConsumerGroupSession]bool{}
	for _, pc := range pieces {
		p := pc.p
		p.mu.Lock()
		if !p.revoked {
			p.sess.MarkOffset(p.topic, p.partition, pc.b.last+1, "")
			sessions[p.sess] = true
			p.committed = pc.b.last + 1
			p.progress = d.s.now()
			if pc.b.maxTime.After(p.maxTime) {
				p.maxTime = pc.b.maxTime
			}
			p.lastFlush = now
		}
		p.mu.Unlock()
	}
	for sess := range sessions {
		sess.Commit()
		m.commits.WithLabelValues(d.d.Name).Inc()
	}
	for _, p := range beats {
		p.mu.Lock()
		p.lastFlush = now
		p.mu.Unlock()
	}
	d.gauges(now)
	d.log.Debug("flushed", "rows", rows, "rejects", rejects, "partitions", len(pieces), "took", time.Since(now).Round(time.Millisecond))
	return nil
}

// lose drops the rows of a flush that could not be written: their offsets stay uncommitted
// and their ids leave the dedup window, so that they are consumed again.
func (d *dataset) lose(pieces []piece, err error) error {
	n := 0
	for _, pc := range pieces {
		d.dedup.forget(&pc.b.Columns)
		n += pc.b.n
	}
	d.dropped.Add(int64(n))
	return fmt.Errorf("flush of %d records abandoned: %w", n, err)
}

// fail is lose for an insert that failed: one ClickHouse refused for good stops the dataset.
func (d *dataset) fail(pieces []piece, err error) error {
	var stop *stopError
	var refused *refusedError
	if errors.As(err, &stop) || errors.As(err, &refused) {
		d.halt(err)
	}
	return d.lose(pieces, err)
}

// addRefused moves the rows ClickHouse refused one by one to their pieces' rejects.
func (d *dataset) addRefused(pieces []piece, refused []refusal) {
	for _, r := range refused {
		for _, pc := range pieces {
			if pc.p == r.p {
				pc.b.rejects = append(pc.b.rejects, r.reject)
				pc.b.refused++
				if r.late {
					pc.b.lateN-- // late_rows counts rows written to raw
				}
				break
			}
		}
	}
	if len(refused) > 0 {
		d.log.Warn("clickhouse refused rows one by one: written to rejects as insert_refused",
			"rows", len(refused), "first_offset", refused[0].offset, "err", refused[0].reject.detail)
	}
}

// gauges updates lag and the process's speed watermark.
func (d *dataset) gauges(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var wm time.Time
	for _, p := range d.parts {
		p.mu.Lock()
		lag := int64(0)
		if p.committed >= 0 {
			lag = max(0, p.claim.HighWaterMarkOffset()-p.committed)
		}
		t := ledger.PartitionTime(lag == 0, p.maxTime, now)
		p.mu.Unlock()
		d.s.m.lag.WithLabelValues(d.d.Name, strconv.Itoa(int(p.partition))).Set(float64(lag))
		if wm.IsZero() || t.Before(wm) {
			wm = t
		}
	}
	if !wm.IsZero() {
		d.s.m.watermark.WithLabelValues(d.d.Name).Set(float64(wm.Unix()))
	}
	d.s.m.dedupIDs.WithLabelValues(d.d.Name).Set(float64(d.dedup.len()))
}

// retry runs op until it succeeds, ctx is done, or ClickHouse refuses it for good (a
// *refusedError), with exponential backoff; each attempt is bounded by the insert timeout.
func (d *dataset) retry(ctx context.Context, table string, op func(context.Context) error) error {
	b := newBackoff(d.s.cfg.Speed.RetryMax.D())
	for attempt := 1; ; attempt++ {
		ictx, cancel := context.WithTimeout(ctx, d.s.cfg.ClickHouse.InsertTimeout.D())
		start := time.Now()
		err := op(ictx)
		cancel()
		if err == nil {
			d.s.m.insertSecs.WithLabelValues(d.d.Name, table).Observe(time.Since(start).Seconds())
			if attempt > 1 {
				d.log.Info("insert succeeded after retries", "table", table, "attempts", attempt)
			}
			return nil
		}
		d.s.m.insertErrs.WithLabelValues(d.d.Name, table).Inc()
		msg := table + ": " + err.Error()
		d.flushErr.Store(&msg)
		if kind := classify(err); kind != transient {
			// The caller says what it does about it: rejects rows, or stops the dataset.
			d.log.Debug("clickhouse refused an insert for good", "table", table, "attempt", attempt, "err", err)
			return &refusedError{table: table, kind: kind, err: err}
		}
		if ctx.Err() != nil {
			return err
		}
		d.log.Warn("insert failed, retrying", "table", table, "attempt", attempt, "retry_in", b.cur, "err", err)
		b.wait(ctx)
	}
}

// insertRaw writes the pieces' rows to raw, in as many inserts as it takes to keep each
// under rawbatch.MaxDaysPerInsert days. It returns the rows ClickHouse refused one by one, or a
// *stopError when the refusal is not about some rows (see refuse.go), or ctx's error.
func (d *dataset) insertRaw(ctx context.Context, pieces []piece) ([]refusal, error) {
	var refused []refusal
	err := d.insertDays(ctx, pieces, &refused)
	if err != nil {
		return nil, err
	}
	if n := countRows(pieces); len(refused) == n && n > 1 {
		return nil, &stopError{fmt.Errorf("clickhouse refused every one of the %d rows of a flush into raw, the first with: %s", n, refused[0].reject.detail)}
	}
	return refused, nil
}

func (d *dataset) insertDays(ctx context.Context, pieces []piece, refused *[]refusal) error {
	// Usually every row is within a few days: the span of days settles it without a set.
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, pc := range pieces {
		for i := range pc.b.rows() {
			day := pc.b.DayAt(i)
			lo, hi = min(lo, day), max(hi, day)
		}
	}
	if hi-lo < rawbatch.MaxDaysPerInsert {
		return d.insertRows(ctx, pieces, refused)
	}
	days := map[int64]bool{}
	for _, pc := range pieces {
		for i := range pc.b.rows() {
			days[pc.b.DayAt(i)] = true
		}
	}
	sorted := make([]int64, 0, len(days))
	for day := range days {
		sorted = append(sorted, day)
	}
	slices.Sort(sorted)
	for i := 0; i < len(sorted); i += rawbatch.MaxDaysPerInsert {
		lo, hi := sorted[i], sorted[min(i+rawbatch.MaxDaysPerInsert, len(sorted))-1]
		sub := make([]piece, len(pieces))
		for j, pc := range pieces {
			sub[j] = piece{pc.p, pc.b.filter(func(i int) bool {
				day := pc.b.DayAt(i)
				return day >= lo && day <= hi
			}, d.isKey)}
		}
		if err := d.insertRows(ctx, sub, refused); err != nil {
			return err
		}
	}
	return nil
}

// sendRaw is one columnar insert of the pieces' rows into raw.
func (d *dataset) sendRaw(ctx context.Context, pieces []piece) error {
	parts := make([]rawbatch.Part, len(pieces))
	for i, pc := range pieces {
		parts[i] = rawbatch.Part{Topic: pc.p.topic, Partition: pc.p.partition, Rows: &pc.b.Columns}
	}
	return d.raw.Send(ctx, parts)
}

func (d *dataset) sendRejects(ctx context.Context, pieces []piece) (err error) {
	batch, err := d.s.conn.PrepareBatch(ctx, d.rejSQL)
	if err != nil {
		return err
	}
	defer abortOnError(batch, &err)
	for _, pc := range pieces {
		for _, r := range pc.b.rejects {
			if err := batch.Append(r.payload, r.reason, r.detail, pc.p.topic, pc.p.partition, r.offset); err != nil {
				return &rawbatch.BuildError{Err: err}
			}
		}
	}
	return batch.Send()
}

// sendLedger writes a speed_flushes row per flushed partition and per idle one (a heartbeat:
// an empty offset range at the committed offset).
func (d *dataset) sendLedger(ctx context.Context, pieces []piece, beats []*part) (err error) {
	batch, err := d.s.conn.PrepareBatch(ctx, d.ledgSQL)
	if err != nil {
		return err
	}
	defer abortOnError(batch, &err)
	epoch := time.Unix(0, 0).UTC()
	for _, pc := range pieces {
		p, b := pc.p, pc.b
		p.mu.Lock()
		maxTime := p.maxTime
		p.mu.Unlock()
		if b.maxTime.After(maxTime) {
			maxTime = b.maxTime
		}
		if maxTime.Before(epoch) {
			maxTime = epoch
		}
		minTime := b.minTime
		if minTime.Before(epoch) {
			minTime = epoch
		}
		// Refused rows are counted once, as rejects.
		if err := batch.Append(d.d.Name, p.topic, p.partition, b.first, b.last, p.claim.HighWaterMarkOffset(),
			uint64(b.rows()-b.refused), uint64(len(b.rejects)), uint64(b.dups), uint64(b.lateN), maxTime, d.s.id, minTime); err != nil {
			return &rawbatch.BuildError{Err: err}
		}
	}
	for _, p := range beats {
		p.mu.Lock()
		committed, maxTime := p.committed, p.maxTime
		p.mu.Unlock()
		if maxTime.Before(epoch) {
			maxTime = epoch
		}
		if err := batch.Append(d.d.Name, p.topic, p.partition, committed, committed-1, p.claim.HighWaterMarkOffset(),
			uint64(0), uint64(0), uint64(0), uint64(0), maxTime, d.s.id, epoch); err != nil {
			return &rawbatch.BuildError{Err: err}
		}
	}
	return batch.Send()
}

func abortOnError(b driver.Batch, err *error) {
	if *err != nil {
		_ = b.Abort()
	}
}
