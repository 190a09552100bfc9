// Package speed is the speed layer: it consumes each dataset's Kafka topic with a sarama
// consumer group, decodes and validates events, and writes columnar micro-batches to the
// master dataset <ds>_raw (whose materialized view feeds the per-minute <ds>_speed
// aggregates), rejected events to <ds>_rejects and a ledger row per partition to
// speed_flushes.
//
// Delivery is at least once. A consumer goroutine per partition decodes into that
// partition's buffer; one flusher per dataset takes every buffer, inserts raw, rejects and
// the ledger, and only then marks and commits the offsets. While ClickHouse fails the
// flusher retries with backoff and the consumers stop fetching once the buffers hold twice
// the flush size. A revoked partition's rows are flushed and committed before the claim is
// given up, or, if that cannot be done in time, dropped without committing.
//
// An insert ClickHouse refuses for good (refuse.go) sends the rows it refuses one by one to
// <ds>_rejects, or, when the refusal is about the schema rather than some rows, stops the
// dataset without committing: the other datasets go on, and Health reports it until a
// restart after the fix resumes from the committed offsets.
package speed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	gometrics "github.com/rcrowley/go-metrics"
	"golang.org/x/sync/errgroup"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/rawbatch"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Options configure a Speed layer. Every field is optional.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// ConsumerID names this process in speed_flushes (host:pid when empty).
	ConsumerID string
	// Conn is the ClickHouse connection; one is opened from the configuration when nil.
	Conn driver.Conn
}

// Speed consumes every dataset of a configuration.
type Speed struct {
	cfg      *config.Config
	log      *slog.Logger
	now      func() time.Time
	id       string
	m        *metrics
	conn     driver.Conn
	ownsConn bool
	// native writes raw (rawbatch's insert client); conn everything else.
	native *rawbatch.Native
	sets   []*dataset
	// stallAfter is how long a partition may lag without a committed flush before Health
	// reports it.
	stallAfter time.Duration
}

const (
	// heartbeatEvery is how often an idle partition writes a ledger row, so that readers see
	// it alive and caught up (the ledger's rules trust a heartbeat for a few of these).
	heartbeatEvery = ledger.HeartbeatEvery
	// watermarkEvery is how often the batch watermark is re-read to tell late events.
	watermarkEvery = 10 * time.Second
	// releaseTimeout bounds how long a revoked partition waits for its rows to be flushed
	// before it drops them uncommitted; the group's rebalance timeout is 10 s longer.
	releaseTimeout = 20 * time.Second
	// rebalanceTimeout is how long a rebalance waits for every member to rejoin, also for one
	// that died during it: long enough for a member to flush and commit its revoked
	// partitions, short enough that a crash mid-rebalance stalls the group for half a minute,
	// not sarama's minute.
	rebalanceTimeout = releaseTimeout + 10*time.Second
	// sessionTimeout is how long the group waits for a silent member (sarama's default).
	sessionTimeout = 10 * time.Second
	// minStall is the least time a lagging partition may go without a committed flush, and a
	// dataset without a consumer group session, before Health reports it: more than a few
	// retries of a failed insert.
	minStall = 30 * time.Second
	// shutdownTimeout bounds the final flush after SIGTERM when ClickHouse fails.
	shutdownTimeout = 30 * time.Second
	// fetchMin and fetchWait: see saramaConfig. fetchWait adds at most itself to the
	// produce-to-visible latency, under the flush interval.
	fetchMin  = 1 << 20
	fetchWait = 250 * time.Millisecond
)

// sarama's go-metrics registry costs CPU on every fetch (4% of the speed process at 10k
// events/s) and nothing reads it. The switch is the library's and global, read whenever a
// sarama client is made: set before main, it turns off the metrics of every sarama client of
// a binary that has the speed layer in it.
func init() { gometrics.UseNilMetrics = true }

// New returns the speed layer of a configuration. It does not connect: Run waits for
// ClickHouse and Kafka to be reachable.
func New(cfg *config.Config, o Options) (*Speed, error) {
	s := &Speed{cfg: cfg, log: o.Logger, now: o.Now, id: o.ConsumerID, conn: o.Conn,
		stallAfter: max(5*cfg.Speed.FlushInterval.D(), minStall)}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.id == "" {
		host, _ := os.Hostname()
		s.id = host + ":" + strconv.Itoa(os.Getpid())
	}
	if len(cfg.Datasets) == 0 {
		return nil, errors.New("speed: the configuration declares no dataset")
	}
	if s.conn == nil {
		conn, err := clickhouse.Open(chconn.Options(cfg.ClickHouse))
		if err != nil {
			return nil, fmt.Errorf("speed: cannot open clickhouse: %w", err)
		}
		s.conn, s.ownsConn = conn, true
	}
	s.native = rawbatch.NewNative(cfg.ClickHouse)
	s.m = newMetrics(o.Registerer)
	offHeap := 0
	for i := range cfg.Datasets {
		d := newDataset(s, &cfg.Datasets[i])
		s.sets = append(s.sets, d)
		offHeap += d.dedup.offHeap
	}
	// The dedup tables may live outside the Go heap (huge pages): a soft memory limit set for
	// the process (GOMEMLIMIT, or lambda speed's default) is lowered by their size, so that it
	// still bounds the whole process.
	if limit := debug.SetMemoryLimit(-1); offHeap > 0 && limit != math.MaxInt64 {
		debug.SetMemoryLimit(max(limit-int64(offHeap), limit/4))
	}
	return s, nil
}

// Run consumes until ctx is done, then flushes and commits what it holds and returns nil. It
// returns an error when Kafka refuses the TLS handshake or the SASL authentication at start
// (kafkaconn.Check; an unreachable Kafka is retried), and when rows could not be flushed at
// shutdown (they stay uncommitted and will be consumed again).
func (s *Speed) Run(ctx context.Context) error {
	defer func() {
		s.native.Close()
		if s.ownsConn {
			_ = s.conn.Close()
		}
	}()
	// A TLS or SASL failure is a setting: say it once and stop, rather than retry forever.
	// An unreachable broker is retried by every dataset.
	if sc, err := kafkaconn.Config(s.cfg.Kafka, s.cfg.Kafka.ClientID); err != nil {
		return err
	} else if err := kafkaconn.Check(ctx, s.cfg.Kafka, sc); kafkaconn.IsPermanent(err) {
		return fmt.Errorf("speed: %w", err)
	}
	var g errgroup.Group
	for _, d := range s.sets {
		g.Go(func() error { return d.run(ctx) })
	}
	return g.Wait()
}

// dataset is the consumer of one dataset.
type dataset struct {
	s       *Speed
	d       *config.Dataset
	log     *slog.Logger
	group   string
	lim     event.Limits
	isKey   []bool
	ndims   int
	raw     *rawbatch.Writer
	rejSQL  string
	ledgSQL string
	dedup   *dedup
	// Raw's name and its dimension and value column names, for the rows ClickHouse refuses.
	rawTable           string
	dimNames, valNames []string
	// The per-message counters, resolved once: a label lookup per message is a hash on the
	// hot path.
	consumed, duplicates, corrections prometheus.Counter
	rejected                          map[event.Reason]prometheus.Counter

	mu    sync.Mutex
	parts map[int32]*part

	rows, bytes atomic.Int64 // buffered and not yet taken by a flush
	kick        chan struct{}
	reqs        chan chan struct{}
	wm          atomic.Int64   // batch watermark as a day number, -1 when none
	loc         *time.Location // the dataset's zone, whose days the watermark counts
	wmRead      time.Time
	dropped     atomic.Int64
	client      sarama.Client
	free        chan *buffer // buffers to reuse, keeping their capacity

	// A dataset stops (halt) when ClickHouse refuses its flushes for good: halted is closed,
	// stopErr says why and cancelConsume ends its consumer group session.
	haltOnce      sync.Once
	halted        chan struct{}
	stopErr       atomic.Pointer[error]
	cancelConsume context.CancelFunc

	// For Health: whether the consumer group session is up, since when it is down, and the
	// last errors of the group and of a flush.
	inSession atomic.Bool
	downSince atomic.Int64 // Unix nanoseconds
	groupErr  atomic.Pointer[string]
	flushErr  atomic.Pointer[string]
}

// part is an owned partition.
type part struct {
	topic     string
	partition int32
	sess      sarama.ConsumerGroupSession
	claim     sarama.ConsumerGroupClaim

	mu        sync.Mutex
	buf       *buffer
	committed int64 // next offset to consume, as committed; -1 unknown
	maxTime   time.Time
	lastFlush time.Time
	progress  time.Time // when committed last moved, or the partition was assigned
	revoked   bool
}

func newDataset(s *Speed, d *config.Dataset) *dataset {
	g := schema.NewGenerator(s.cfg)
	ds := &dataset{s: s, d: d, log: s.log.With("dataset", d.Name, "consumer", s.id),
		group: s.cfg.Kafka.GroupPrefix + "-" + d.Name,
		lim: event.Limits{MaxBytes: s.cfg.Speed.MaxEventBytes, FutureSkew: s.cfg.Speed.FutureSkew.D(),
			MaxAge: d.RawRetention.D()},
		ndims:  len(d.Dimensions),
		loc:    d.Location(),
		dedup:  newDedup(s.cfg.Speed.DedupWindow.D(), s.cfg.Speed.DedupMaxIDs),
		parts:  map[int32]*part{},
		kick:   make(chan struct{}, 1),
		reqs:   make(chan chan struct{}, 64),
		free:   make(chan *buffer, 16),
		halted: make(chan struct{}),
	}
	ds.wm.Store(-1)
	ds.downSince.Store(s.now().UnixNano())
	s.m.stopped.WithLabelValues(d.Name).Set(0)
	ds.consumed = s.m.consumed.WithLabelValues(d.Name)
	ds.duplicates = s.m.duplicates.WithLabelValues(d.Name)
	ds.corrections = s.m.corrections.WithLabelValues(d.Name)
	ds.rejected = map[event.Reason]prometheus.Counter{}
	for _, r := range event.Reasons {
		ds.rejected[r] = s.m.rejected.WithLabelValues(d.Name, string(r))
	}
	ds.raw = rawbatch.NewWriter(g.T(schema.Raw(d.Name)), d, s.native)
	ds.isKey = ds.raw.IsKey()
	for _, c := range d.ValueColumns() {
		ds.valNames = append(ds.valNames, c.Name)
	}
	ds.dimNames = d.DimensionNames()
	ds.rawTable = g.T(schema.Raw(d.Name))
	ds.rejSQL = insertSQL(g.T(schema.Rejects(d.Name)), []string{"payload", "reason", "detail", "_topic", "_partition", "_offset"})
	ds.ledgSQL = insertSQL(g.T(schema.SpeedFlushes), []string{"dataset", "topic", "partition", "first_offset", "last_offset",
		"high_watermark", "raw_rows", "rejected_rows", "duplicate_rows", "late_rows", "max_event_time", "consumer", "min_event_time"})
	return ds
}

func insertSQL(table string, cols []string) string {
	s := "INSERT INTO " + table + " ("
	for i, c := range cols {
		if i > 0 {
			s += ", "
		}
		s += c
	}
	return s + ")"
}

func (d *dataset) saramaConfig() (*sarama.Config, error) {
	sc, err := kafkaconn.Config(d.s.cfg.Kafka, d.s.cfg.Kafka.ClientID)
	if err != nil {
		return nil, err
	}
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	// Offsets are committed by the flusher after the inserts that hold them, never on a timer.
	sc.Consumer.Offsets.AutoCommit.Enable = false
	sc.Consumer.Return.Errors = true
	sc.Consumer.Fetch.Default = 4 << 20
	sc.Consumer.Fetch.Max = 64 << 20
	// A fetch waits for fetchMin bytes, or fetchWait: at a low rate the broker answers a few
	// times a second with many records rather than at once with a handful (Fetch.Min 1 made
	// the broker spend as much CPU as ClickHouse at 10k events/s). A backlog fills it at once.
	sc.Consumer.Fetch.Min = fetchMin
	sc.Consumer.MaxWaitTime = fetchWait
	sc.ChannelBufferSize = 4096
	sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}
	sc.Consumer.Group.Rebalance.Timeout = rebalanceTimeout
	sc.Consumer.Group.Session.Timeout = sessionTimeout
	sc.Metadata.Retry.Max = 10
	return sc, nil
}

// run consumes one dataset until ctx is done. A dataset that stops (halt) leaves its consumer
// group and waits for ctx, so that the process goes on with the other datasets and reports
// the stop in Health; run then returns why it stopped.
func (d *dataset) run(ctx context.Context) error {
	sc, err := d.saramaConfig()
	if err != nil {
		return err
	}
	// The flusher outlives ctx: after SIGTERM it flushes and commits what the partitions hold.
	fctx, fcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer fcancel()
	// Consumption ends with ctx, or when the dataset stops.
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	d.cancelConsume = ccancel
	// Know which days are sealed before the first event is decoded.
	d.refreshWatermark(ctx)
	stop := make(chan struct{})
	flushed := make(chan error, 1)
	go func() { flushed <- d.flushLoop(fctx, stop) }()
	// Rows dropped in rebalances before the stop were consumed again by the partitions' new
	// owners; only what is dropped after it is left for the next run. (A release waits
	// seconds before it drops, so the stop is seen first.)
	var droppedBefore atomic.Int64
	go func() { <-ctx.Done(); droppedBefore.Store(d.dropped.Load()) }()
	backoff := newBackoff(d.s.cfg.Speed.RetryMax.D())
	var group sarama.ConsumerGroup
	for cctx.Err() == nil {
		if group == nil {
			group, err = d.connect(sc)
			if err != nil {
				d.setGroupErr(err)
				d.log.Warn("cannot reach kafka, retrying", "brokers", d.s.cfg.Kafka.Brokers, "err", err)
				backoff.wait(cctx)
				continue
			}
			d.log.Info("consuming", "topic", d.d.Topic, "group", d.group)
		}
		err := group.Consume(cctx, []string{d.d.Topic}, handler{d})
		switch {
		case cctx.Err() != nil:
		case errors.Is(err, sarama.ErrClosedConsumerGroup) || errors.Is(err, sarama.ErrClosedClient):
			d.setGroupErr(err)
			d.closeGroup(group)
			group = nil
			backoff.wait(cctx)
		case err != nil:
			d.setGroupErr(err)
			d.log.Warn("consumer group session failed, rejoining", "err", err)
			backoff.wait(cctx)
		default:
			backoff.reset()
		}
	}
	if group != nil {
		d.closeGroup(group)
	}
	close(stop)
	timer := time.AfterFunc(shutdownTimeout, fcancel)
	err = <-flushed
	timer.Stop()
	if serr := d.stopped(); serr != nil {
		// Nothing more is consumed or committed; the process keeps serving the other
		// datasets and /healthz until it is stopped.
		<-ctx.Done()
		return fmt.Errorf("speed %s: stopped, its last flush not committed: %w", d.d.Name, serr)
	}
	if n := d.dropped.Load() - droppedBefore.Load(); err == nil && n > 0 {
		err = fmt.Errorf("%d rows could not be flushed before stopping; their offsets were not committed and will be consumed again", n)
	}
	if err != nil {
		return fmt.Errorf("speed %s: %w", d.d.Name, err)
	}
	d.log.Info("speed stopped, offsets committed")
	return nil
}

func (d *dataset) connect(sc *sarama.Config) (sarama.ConsumerGroup, error) {
	client, err := sarama.NewClient(d.s.cfg.Kafka.Brokers, sc)
	if err != nil {
		return nil, err
	}
	group, err := sarama.NewConsumerGroupFromClient(d.group, client)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	d.client = client
	go func() {
		for err := range group.Errors() {
			d.log.Warn("kafka consumer error", "err", err)
		}
	}()
	return group, nil
}

func (d *dataset) closeGroup(g sarama.ConsumerGroup) {
	if err := g.Close(); err != nil {
		d.log.Warn("closing consumer group", "err", err)
	}
	if d.client != nil {
		_ = d.client.Close()
	}
}

// handler is the sarama consumer group handler of a dataset.
type handler struct{ d *dataset }

func (h handler) Setup(sarama.ConsumerGroupSession) error {
	h.d.inSession.Store(true)
	return nil
}

func (h handler) Cleanup(sarama.ConsumerGroupSession) error {
	h.d.inSession.Store(false)
	h.d.downSince.Store(h.d.s.now().UnixNano())
	return nil
}

// consumeBatch is the most messages a partition's consumer takes at once: what sarama's
// channel already holds, up to this many, is decoded under one lock with one clock reading
// and one update of the counters.
const consumeBatch = 512

func (h handler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	d := h.d
	p := d.own(sess, claim)
	defer d.release(p)
	c := &consumer{d: d, p: p, dec: event.NewDecoder(d.d, d.lim)}
	// The id and keys are copied into the buffer's columns and hashed for dedup at once.
	c.dec.Transient = true
	msgs := claim.Messages()
	batch := make([]*sarama.ConsumerMessage, 0, consumeBatch)
	// Buffered beyond the flushes in flight: at most one more flush.
	maxRows := int64(d.s.cfg.Speed.FlushRows)
	maxBytes := int64(d.s.cfg.Speed.FlushBytes)
	for {
		// Backpressure: while the flusher cannot keep up (ClickHouse slow or down), stop
		// taking messages; sarama stops fetching once its channel is full.
		for d.rows.Load() >= maxRows || d.bytes.Load() >= maxBytes {
			select {
			case <-sess.Context().Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
		batch = batch[:0]
		select {
		case msg, ok := <-msgs:
			if !ok {
				return nil
			}
			batch = append(batch, msg)
		case <-sess.Context().Done():
			return nil
		}
		closed := false
	more:
		for len(batch) < consumeBatch {
			select {
			case msg, ok := <-msgs:
				if !ok {
					closed = true
					break more
				}
				batch = append(batch, msg)
			default:
				break more
			}
		}
		c.consume(batch)
		clear(batch) // let the messages go
		if closed {
			return nil
		}
	}
}

// own registers a claimed partition.
func (d *dataset) own(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) *part {
	now := d.s.now()
	p := &part{topic: claim.Topic(), partition: claim.Partition(), sess: sess, claim: claim,
		buf: d.newBuffer(), committed: claim.InitialOffset(), lastFlush: now, progress: now}
	if p.committed < 0 && d.client != nil {
		// Nothing committed yet: consumption starts at the oldest offset.
		if off, err := d.client.GetOffset(p.topic, p.partition, sarama.OffsetOldest); err == nil {
			p.committed = off
		}
	}
	d.mu.Lock()
	d.parts[p.partition] = p
	d.mu.Unlock()
	d.log.Info("partition assigned", "partition", p.partition, "offset", p.committed)
	return p
}

// release gives up a partition: its rows are flushed and committed while the session is
// still valid, or, if that does not happen within releaseTimeout, dropped uncommitted.
func (d *dataset) release(p *part) {
	// One more flush, requested now, also waits for a flush in flight that holds this
	// partition's rows: its commit then happens while the session is still valid.
	done := make(chan struct{})
	timeout := time.NewTimer(releaseTimeout)
	defer timeout.Stop()
	select {
	case d.reqs <- done:
		select {
		case <-done:
		case <-timeout.C:
		case <-d.halted:
		}
	case <-timeout.C:
	case <-d.halted:
	}
	p.mu.Lock()
	p.revoked = true
	buf := p.buf
	p.buf = d.newBuffer()
	p.mu.Unlock()
	if !buf.empty() {
		d.rows.Add(-int64(buf.n))
		d.bytes.Add(-int64(buf.bytes))
		d.dedup.forget(&buf.Columns)
		d.dropped.Add(int64(buf.n))
		d.log.Warn("partition revoked before its rows could be flushed: dropped uncommitted, they will be consumed again",
			"partition", p.partition, "rows", buf.rows(), "first_offset", buf.first)
	}
	d.mu.Lock()
	if d.parts[p.partition] == p {
		delete(d.parts, p.partition)
	}
	d.mu.Unlock()
	d.s.m.lag.DeleteLabelValues(d.d.Name, strconv.Itoa(int(p.partition)))
	d.log.Info("partition released", "partition", p.partition)
}

// newBuffer returns an empty buffer, reusing one when it can.
func (d *dataset) newBuffer() *buffer {
	select {
	case b := <-d.free:
		return b
	default:
		return newBuffer(d.ndims, len(d.isKey))
	}
}

// recycle keeps the buffers of a finished flush for reuse.
func (d *dataset) recycle(pieces []piece) {
	for _, pc := range pieces {
		pc.b.reset()
		select {
		case d.free <- pc.b:
		default:
		}
	}
}

// consumer decodes one partition's messages into its buffer.
type consumer struct {
	d   *dataset
	p   *part
	dec *event.Decoder
	row event.Row
	// A batch's dedup probes, reused: the id hashes of its rows, whether each was a
	// duplicate, and seenBatch's scratch.
	hashes []uint64
	dup    []bool
	order  []int32
}

// consume decodes messages of the partition, in offset order, into its buffer, and accounts
// for them once. The batch's ids are looked up in the dedup window together once its rows are
// in the buffer (seenBatch: their cache misses overlap); when some were duplicates, the
// buffer goes back to where it was and the batch is decoded again without them.
func (c *consumer) consume(batch []*sarama.ConsumerMessage) {
	d, p := c.d, c.p
	now := d.s.now()
	sec := now.Unix()
	wm := d.wm.Load()
	var size int
	p.mu.Lock()
	b := p.buf
	before, rows := *b, b.rows()
	c.hashes = c.hashes[:0]
	late := c.decode(batch, now, wm, nil, true)
	for _, msg := range batch {
		size += len(msg.Value)
	}
	c.dup = slices.Grow(c.dup[:0], len(c.hashes))[:len(c.hashes)]
	var dups int
	dups, c.order = d.dedup.seenBatch(c.hashes, sec, c.dup, c.order)
	if dups > 0 {
		cols := b.Columns
		*b = before
		b.Columns = cols
		b.Truncate(rows)
		late = c.decode(batch, now, wm, c.dup, false)
	}
	p.mu.Unlock()
	d.consumed.Add(float64(len(batch)))
	if dups > 0 {
		d.duplicates.Add(float64(dups))
	}
	if late > 0 {
		d.corrections.Add(float64(late))
	}
	nrows := d.rows.Add(int64(len(batch)))
	bytes := d.bytes.Add(int64(size))
	if nrows >= int64(d.s.cfg.Speed.FlushRows) || bytes >= int64(d.s.cfg.Speed.FlushBytes) {
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// decode decodes the batch into the partition's buffer and returns how many rows are late.
// dup, when set, says which of the batch's rows (rejects not counted) are duplicates: they are
// counted, not added. Otherwise every row is added and its id hash appended to c.hashes.
// first says whether this is the batch's first pass, which counts the rejects in the metrics.
func (c *consumer) decode(batch []*sarama.ConsumerMessage, now time.Time, wm int64, dup []bool, first bool) (late int) {
	d, b, row := c.d, c.p.buf, &c.row
	j := 0
	for _, msg := range batch {
		reason, detail := c.dec.Decode(msg.Value, msg.Topic, msg.Partition, msg.Offset, now, row)
		b.cover(msg.Offset, len(msg.Value))
		if reason != "" {
			payload := msg.Value
			if len(payload) > maxRejectPayload {
				payload = payload[:maxRejectPayload]
				detail += fmt.Sprintf(" (payload cut to %d of %d bytes)", maxRejectPayload, len(msg.Value))
			}
			b.rejects = append(b.rejects, reject{payload: string(payload), reason: string(reason), detail: detail, offset: msg.Offset})
			if first {
				d.rejected[reason].Inc()
			}
			continue
		}
		if dup == nil {
			c.hashes = append(c.hashes, d.dedup.hash(row.ID))
		} else if j++; dup[j-1] {
			b.dups++
			continue
		}
		isLate := wm >= 0 && localDay(row.Time, d.loc) <= wm
		if isLate {
			late++
		}
		b.add(row, msg.Offset, isLate, d.isKey)
	}
	return late
}

// halt stops the dataset for good (until a restart): nothing more is flushed or committed,
// its consumer group session ends, and Health reports err.
func (d *dataset) halt(err error) {
	d.haltOnce.Do(func() {
		d.stopErr.Store(&err)
		d.s.m.stopped.WithLabelValues(d.d.Name).Set(1)
		d.log.Error("dataset stopped: clickhouse refuses its flushes for good; nothing of them is committed, fix the cause and restart to resume",
			"err", err)
		close(d.halted)
		if d.cancelConsume != nil {
			d.cancelConsume()
		}
	})
}

// stopped returns why the dataset stopped, nil while it runs.
func (d *dataset) stopped() error {
	if p := d.stopErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *dataset) setGroupErr(err error) {
	s := err.Error()
	d.groupErr.Store(&s)
}

// maxRejectPayload caps the payload kept in <ds>_rejects; the record stays in Kafka whole.
const maxRejectPayload = 1 << 20

// backoff is an exponential backoff from 100 ms to a cap.
type backoff struct {
	cur, max time.Duration
}

func newBackoff(max time.Duration) *backoff {
	if max <= 0 {
		max = 30 * time.Second
	}
	return &backoff{cur: 100 * time.Millisecond, max: max}
}

func (b *backoff) wait(ctx context.Context) {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	b.cur = min(2*b.cur, b.max)
}

func (b *backoff) reset() { b.cur = 100 * time.Millisecond }

// refreshWatermark re-reads the batch watermark now and then; on failure the old one stays.
func (d *dataset) refreshWatermark(ctx context.Context) {
	now := d.s.now()
	if now.Sub(d.wmRead) < watermarkEvery {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	day, ok, err := ledger.Boundary(rctx, d.s.conn, d.s.cfg.ClickHouse.Database, d.d.Name)
	if err != nil {
		d.log.Debug("cannot read the batch watermark", "err", err)
		return
	}
	d.wmRead = now
	if ok {
		d.wm.Store(dayOf(day))
	} else {
		d.wm.Store(-1)
	}
}
