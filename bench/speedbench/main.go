// Command speedbench measures the speed layer (make bench-speed) against ClickHouse's own Kafka
// table engine on the same events, in one run on one machine.
//
// It starts the embedded broker (`lambda broker`) with two topics of the same partition count:
// the platform's JSON events (the demo dataset with nested dimension fields) and the same events
// flattened for JSONEachRow. It produces the backlog into both, then, per round and each in a
// fresh database and consumer group:
//
//   - baseline: a Kafka engine table, a materialized view into <ds>_raw, whose own view (the
//     platform's <ds>_speed_mv) fills the per-minute AggregatingMergeTree <ds>_speed;
//   - floor: the same rows, decoded beforehand, inserted with clickhouse-go in flush-sized
//     columnar batches, two at a time (what the speed layer's inserts cost alone);
//   - lambda speed: the real process, from its start (migrate included) until count() of
//     <ds>_raw and countMerge of <ds>_speed both reach the backlog.
//
// Then one more `lambda speed` is profiled over its drain, and, once caught up, the latency
// run produces at a fixed rate with the produce time in each id while a poller reads newly
// visible ids from <ds>_raw every 100 ms. Stage floors (sarama drain, decoder on one core)
// are measured in the same run for the breakdown. Progress goes to stderr, the report
// (markdown) to stdout; profiles and logs go to -out.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lambda-platform/lambda/bench/internal/proc"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/IBM/sarama"
	gometrics "github.com/rcrowley/go-metrics"
	"github.com/valyala/fastjson"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/gen"
	"github.com/lambda-platform/lambda/shared/rawbatch"
	"github.com/lambda-platform/lambda/shared/schema"
)

// configYAML is the benchmark's configuration: the demo dataset, with country and device
// nested in the events (the decoder follows dotted paths; the flat topic does not need to).
const configYAML = `clickhouse: {addr: [%q], database: %s}
kafka: {brokers: [%q], client_id: speedbench, group_prefix: bench}
speed: {metrics_listen: %q%s}
datasets:
  - name: events
    topic: events
    id_field: event_id
    time_field: ts
    dimensions:
      - {name: event,   field: event}
      - {name: country, field: geo.country}
      - {name: device,  field: context.device}
    metrics:
      - {name: events,  type: count}
      - {name: users,   type: uniq,     field: user_id}
      - {name: revenue, type: sum,      field: value}
      - {name: value_p95, type: quantile, field: value, level: 0.95}
`

const flatTopic = "events_flat"

type bench struct {
	lambda     string
	before     string
	addr       string
	n          int
	partitions int
	span       time.Duration
	consumers  int
	block      int
	rate       int
	latDur     time.Duration
	out        string
	prefix     string
	keep       bool
	timeout    time.Duration
	chPidFile  string
	speedConf  string // more keys of the speed: section (-speed-config)
	noBase     bool   // -skip-baseline
	quiet      time.Duration

	cfg        *config.Config
	cfgFile    string
	brokerAddr string
	brokerPid  int
	chPid      int
	metrics    string
	conn       driver.Conn
	nonce      int64
	fp         string // fingerprint of the first raw table, compared with every other

	chunks    [][]rawbatch.Part // the backlog decoded in flushes of flush_rows, a part per partition, for the insert and encode floors
	values    []byte            // the backlog's platform events, back to back, for the decoder floor
	ends      []int             // where each event ends in values
	lastSpeed time.Duration     // the last timed lambda speed drain, for the profile's length
}

func main() {
	b := &bench{}
	flag.StringVar(&b.lambda, "lambda", "bin/lambda", "the lambda binary")
	flag.StringVar(&b.before, "before", "", "another lambda binary (e.g. built from main) to drain the backlog in every round too, for a before/after in the same conditions")
	flag.StringVar(&b.addr, "addr", "127.0.0.1:9000", "ClickHouse native address")
	flag.IntVar(&b.n, "events", 1_000_000, "backlog: events produced into each topic")
	flag.IntVar(&b.partitions, "partitions", 4, "partitions of both topics")
	flag.DurationVar(&b.span, "span", time.Hour, "the backlog's event times are spread over this span before now")
	flag.IntVar(&b.consumers, "kafka-consumers", 2, "baseline: kafka_num_consumers")
	flag.IntVar(&b.block, "kafka-block", 100_000, "baseline: kafka_max_block_size (rows per insert; the speed layer's flush_rows was 100000 when it was chosen)")
	repeat := flag.Int("repeat", 2, "rounds of baseline, floor and lambda speed")
	flag.IntVar(&b.rate, "rate", 10_000, "latency run: events per second")
	flag.DurationVar(&b.latDur, "latency", 30*time.Second, "latency run: how long to produce (0: no latency run)")
	flag.StringVar(&b.out, "out", ".data/bench-speed", "profiles, logs and the config go here")
	flag.StringVar(&b.prefix, "db", "bench_speed", "prefix of the databases (dropped and recreated)")
	flag.BoolVar(&b.keep, "keep", false, "keep the databases")
	flag.DurationVar(&b.timeout, "timeout", 10*time.Minute, "give up on a run after this long")
	flag.StringVar(&b.chPidFile, "ch-pid-file", ".data/clickhouse/clickhouse-server.pid", "pid file of the ClickHouse server, for its CPU time")
	flag.StringVar(&b.speedConf, "speed-config", "", `more keys of the config's speed section, for both lambda speed builds and the floor's flush size (e.g. "flush_rows: 200000")`)
	flag.BoolVar(&b.noBase, "skip-baseline", false, "skip the Kafka engine rounds (quick comparisons of lambda speed builds; no report of the targets)")
	flag.DurationVar(&b.quiet, "settle-quiet", 3*time.Second, "a run's merges have settled when none of its database ran and its active parts did not change for this long")
	only := flag.String("breakdown", "", "print the stage breakdown of this CPU profile of -lambda and exit")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *only != "" {
		stages, total, _, err := breakdown(b.lambda, *only)
		if err != nil {
			log.Fatal(err)
		}
		printStages(os.Stdout, *only, stages, total)
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := b.run(ctx, *repeat); err != nil {
		log.Fatal(err)
	}
}

func (b *bench) run(ctx context.Context, repeat int) error {
	b.nonce = time.Now().Unix()
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	b.brokerAddr = "127.0.0.1:" + strconv.Itoa(freePort())
	b.metrics = "127.0.0.1:" + strconv.Itoa(freePort())
	extra := ""
	if b.speedConf != "" {
		extra = ", " + b.speedConf
	}
	text := fmt.Sprintf(configYAML, b.addr, b.prefix, b.brokerAddr, b.metrics, extra)
	cfg, err := config.Parse("speedbench", []byte(text), nil)
	if err != nil {
		return err
	}
	b.cfg = cfg
	b.cfgFile = filepath.Join(b.out, "speed.yaml")
	if err := os.WriteFile(b.cfgFile, []byte(text), 0o644); err != nil {
		return err
	}
	if b.conn, err = chconn.Open(ctx, cfg.ClickHouse); err != nil {
		return err
	}
	if pid, err := readPid(b.chPidFile); err == nil {
		b.chPid = pid
	} else if pid := proc.ClickHouseOn(b.addr); pid > 0 {
		b.chPid = pid
	} else {
		log.Printf("no ClickHouse pid (%v, and no clickhouse-server whose config has the port of %s): its CPU time is not reported", err, b.addr)
	}
	rep := &report{b: b, loadStart: proc.LoadAvg()}

	stopBroker, err := b.startBroker(ctx)
	if err != nil {
		return err
	}
	defer stopBroker()

	if err := b.produceBacklog(ctx, rep); err != nil {
		return err
	}
	if err := b.stageFloors(ctx, rep); err != nil {
		return err
	}
	for r := 1; r <= repeat; r++ {
		if !b.noBase {
			base, err := b.baseline(ctx, r)
			if err != nil {
				return err
			}
			rep.base = append(rep.base, base)
		}
		fl, err := b.insertFloor(ctx, r)
		if err != nil {
			return err
		}
		rep.floor = append(rep.floor, fl)
		sp, err := b.speedRun(ctx, r, false)
		if err != nil {
			return err
		}
		rep.speed = append(rep.speed, sp)
		if b.before != "" {
			bs, err := b.speedRunOf(ctx, b.before, "before", r, false)
			if err != nil {
				return fmt.Errorf("-before: %w", err)
			}
			rep.before = append(rep.before, bs)
		}
	}
	if b.noBase {
		rep.printRounds(os.Stdout)
		return nil
	}
	// The profiled drain, then the latency run in the same, caught-up process.
	prof, err := b.speedRun(ctx, repeat+1, true)
	if err != nil {
		return err
	}
	rep.prof = &prof
	rep.loadEnd = proc.LoadAvg()
	rep.print(os.Stdout)
	return nil
}

// The speed layer turns sarama's go-metrics off (speed.init); so does the driver, for its
// sarama drain floor to cost what the speed layer's consumer costs.
func init() { gometrics.UseNilMetrics = true }

// ---- broker and backlog ----

func (b *bench) startBroker(ctx context.Context) (func(), error) {
	logf, err := os.Create(filepath.Join(b.out, "broker.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.lambda, "broker", "--config", b.cfgFile, "--listen", b.brokerAddr, "--partitions", strconv.Itoa(b.partitions))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b.brokerPid = cmd.Process.Pid
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = logf.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.brokerAddr, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, fmt.Errorf("broker on %s did not start: %w", b.brokerAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	admin, err := sarama.NewClusterAdmin([]string{b.brokerAddr}, b.saramaConfig())
	if err != nil {
		stop()
		return nil, err
	}
	defer admin.Close()
	err = admin.CreateTopic(flatTopic, &sarama.TopicDetail{NumPartitions: int32(b.partitions), ReplicationFactor: 1}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		stop()
		return nil, fmt.Errorf("cannot create topic %s: %w", flatTopic, err)
	}
	log.Printf("broker on %s (pid %d), topics events and %s, %d partitions", b.brokerAddr, b.brokerPid, flatTopic, b.partitions)
	return stop, nil
}

func (b *bench) saramaConfig() *sarama.Config {
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	sc.ClientID = "speedbench"
	return sc
}

// asyncProducer batches hard for the backlog, or flushes every few milliseconds for the
// latency run.
func (b *bench) asyncProducer(lowLatency bool) (sarama.AsyncProducer, error) {
	sc := b.saramaConfig()
	sc.Producer.RequiredAcks = sarama.WaitForLocal
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	sc.Producer.Return.Errors = true
	sc.Producer.Return.Successes = false
	sc.Producer.Flush.Bytes = 1 << 20
	sc.Producer.Flush.Frequency = 20 * time.Millisecond
	if lowLatency {
		sc.Producer.Flush.Frequency = 2 * time.Millisecond
	}
	sc.ChannelBufferSize = 16384
	return sarama.NewAsyncProducer([]string{b.brokerAddr}, sc)
}

// produceBacklog sends N events to each topic: generated for the dataset (shared/gen, no
// duplicates, late or malformed events, so that every event is a row), their times spread
// evenly over the span before now; the same key sends an event to the same partition of both
// topics.
func (b *bench) produceBacklog(ctx context.Context, rep *report) error {
	ds := &b.cfg.Datasets[0]
	p, err := b.asyncProducer(false)
	if err != nil {
		return fmt.Errorf("cannot connect producer: %w", err)
	}
	var failed atomic.Int64
	var errOnce sync.Once
	var firstErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range p.Errors() {
			failed.Add(1)
			errOnce.Do(func() { firstErr = e.Err })
		}
	}()
	g := gen.New(ds, gen.Options{Seed: 1})
	fl := newFlattener(ds)
	dec := event.NewDecoder(ds, event.Limits{})
	w := rawbatch.NewWriter("x", ds, nil)
	isKey := w.IsKey()
	var row event.Row
	start := time.Now()
	from := start.Add(-b.span)
	var bytesNested, bytesFlat int
	for i := 0; i < b.n && ctx.Err() == nil; i++ {
		t := from.Add(time.Duration(int64(b.span) * int64(i) / int64(b.n)))
		ev := g.Next(t, false)
		flat, err := fl.flatten(nil, ev.Value)
		if err != nil {
			return fmt.Errorf("cannot flatten %s: %w", ev.Value, err)
		}
		if reason, detail := dec.Decode(ev.Value, ds.Topic, int32(i%b.partitions), int64(i), start, &row); reason != "" {
			return fmt.Errorf("generated event rejected: %s %s: %s", reason, detail, ev.Value)
		}
		if i%b.cfg.Speed.FlushRows == 0 {
			chunk := make([]rawbatch.Part, b.partitions)
			for p := range chunk {
				c := rawbatch.New(len(ds.Dimensions), len(isKey))
				chunk[p] = rawbatch.Part{Topic: ds.Topic, Partition: int32(p), Rows: &c}
			}
			b.chunks = append(b.chunks, chunk)
		}
		b.chunks[len(b.chunks)-1][i%b.partitions].Rows.Add(&row, int64(i), false, isKey)
		b.values = append(b.values, ev.Value...)
		b.ends = append(b.ends, len(b.values))
		bytesNested += len(ev.Value)
		bytesFlat += len(flat)
		p.Input() <- &sarama.ProducerMessage{Topic: ds.Topic, Key: sarama.ByteEncoder(ev.Key), Value: sarama.ByteEncoder(ev.Value)}
		p.Input() <- &sarama.ProducerMessage{Topic: flatTopic, Key: sarama.ByteEncoder(ev.Key), Value: sarama.ByteEncoder(flat)}
		if i == 0 {
			rep.sampleNested, rep.sampleFlat = string(ev.Value), strings.TrimSpace(string(flat))
		}
	}
	p.AsyncClose()
	<-done
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d messages not produced: %w", n, firstErr)
	}
	took := time.Since(start)
	for _, topic := range []string{ds.Topic, flatTopic} {
		n, err := b.topicSize(topic)
		if err != nil {
			return err
		}
		if n != int64(b.n) {
			return fmt.Errorf("topic %s holds %d records, want %d (run against a fresh broker)", topic, n, b.n)
		}
	}
	rep.produced = took
	rep.avgNested, rep.avgFlat = float64(bytesNested)/float64(b.n), float64(bytesFlat)/float64(b.n)
	log.Printf("produced %d events into events and %s in %s (%.0f events/s per topic)", b.n, flatTopic, took.Round(time.Millisecond), float64(b.n)/took.Seconds())
	return nil
}

func (b *bench) topicSize(topic string) (int64, error) {
	c, err := sarama.NewClient([]string{b.brokerAddr}, b.saramaConfig())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var n int64
	for p := range int32(b.partitions) {
		newest, err := c.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return 0, err
		}
		oldest, err := c.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return 0, err
		}
		n += newest - oldest
	}
	return n, nil
}

// flattener turns an event of the dataset into one JSONEachRow object whose keys are the raw
// table's columns: {"id","time":"YYYY-MM-DD hh:mm:ss",<dimensions>,<value columns>}; a missing
// number is left out (NULL).
type flattener struct {
	p        fastjson.Parser
	idPath   []string
	timePath []string
	names    []string
	paths    [][]string
	number   []bool
}

func newFlattener(ds *config.Dataset) *flattener {
	f := &flattener{idPath: strings.Split(ds.IDField, "."), timePath: strings.Split(ds.TimeField, ".")}
	for _, d := range ds.Dimensions {
		f.names = append(f.names, d.Name)
		f.paths = append(f.paths, strings.Split(d.Field, "."))
		f.number = append(f.number, false)
	}
	for _, c := range ds.ValueColumns() {
		f.names = append(f.names, c.Name)
		f.paths = append(f.paths, strings.Split(c.Field, "."))
		f.number = append(f.number, !strings.Contains(c.Type, "String"))
	}
	return f
}

func (f *flattener) flatten(dst, src []byte) ([]byte, error) {
	v, err := f.p.ParseBytes(src)
	if err != nil {
		return nil, err
	}
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, v.Get(f.idPath...))
	tv := v.Get(f.timePath...)
	var t time.Time
	switch tv.Type() {
	case fastjson.TypeNumber:
		t = time.UnixMilli(tv.GetInt64()).UTC()
	case fastjson.TypeString:
		if t, err = time.Parse(time.RFC3339Nano, string(tv.GetStringBytes())); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("no time")
	}
	dst = append(dst, `,"time":"`...)
	dst = t.UTC().AppendFormat(dst, time.DateTime)
	dst = append(dst, '"')
	for i, name := range f.names {
		fv := v.Get(f.paths[i]...)
		if f.number[i] {
			if fv == nil || fv.Type() != fastjson.TypeNumber {
				continue
			}
			dst = append(dst, `,"`+name+`":`...)
			dst = fv.MarshalTo(dst)
			continue
		}
		dst = append(dst, `,"`+name+`":`...)
		dst = appendString(dst, fv)
	}
	return append(dst, "}\n"...), nil
}

// appendString writes a JSON string: strings as they are, numbers as their text, anything
// else as "".
func appendString(dst []byte, v *fastjson.Value) []byte {
	switch {
	case v == nil:
		return append(dst, `""`...)
	case v.Type() == fastjson.TypeString:
		return v.MarshalTo(dst)
	case v.Type() == fastjson.TypeNumber:
		return strconv.AppendQuote(dst, string(v.MarshalTo(nil)))
	default:
		return append(dst, `""`...)
	}
}

// ---- stage floors: sarama drain and decoding, each alone ----

func (b *bench) stageFloors(ctx context.Context, rep *report) error {
	ds := &b.cfg.Datasets[0]
	// sarama: every partition of the platform topic, as the speed layer configures it, the
	// messages counted and dropped (keeping them would measure this process's GC). Three
	// times; the median counts.
	sc := b.saramaConfig()
	sc.Consumer.Fetch.Default = 4 << 20
	sc.Consumer.Fetch.Max = 64 << 20
	sc.Consumer.Fetch.Min = 1 << 20
	sc.Consumer.MaxWaitTime = 250 * time.Millisecond
	sc.ChannelBufferSize = 4096
	for range 3 {
		c, err := sarama.NewConsumer([]string{b.brokerAddr}, sc)
		if err != nil {
			return err
		}
		var total atomic.Int64
		self0, broker0 := proc.CPU(os.Getpid()), proc.CPU(b.brokerPid)
		start := time.Now()
		var wg sync.WaitGroup
		for p := range int32(b.partitions) {
			pc, err := c.ConsumePartition(ds.Topic, p, sarama.OffsetOldest)
			if err != nil {
				return err
			}
			hwm := pc.HighWaterMarkOffset()
			if hwm <= 0 {
				_ = pc.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer pc.Close()
				for m := range pc.Messages() {
					total.Add(1)
					if m.Offset+1 >= hwm {
						break
					}
				}
			}()
		}
		wg.Wait()
		rep.drains = append(rep.drains, drain{time.Since(start), proc.CPU(os.Getpid()) - self0, proc.CPU(b.brokerPid) - broker0})
		_ = c.Close()
		if n := total.Load(); n != int64(b.n) {
			return fmt.Errorf("sarama drain read %d records, want %d", n, b.n)
		}
	}
	slices.SortFunc(rep.drains, func(a, b drain) int { return int(a.wall - b.wall) })
	// The in-process floors are one goroutine each, timed in CPU seconds of this process
	// (nothing else of it runs meanwhile; wall time would count other tests on the machine),
	// with the garbage collector off: the driver's heap holds the whole backlog, which the
	// speed process does not.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	cpuSince := func(c0 float64) time.Duration {
		return time.Duration((proc.CPU(os.Getpid()) - c0) * float64(time.Second))
	}
	// Decoder: one goroutine, so the figure is per core; the values as generated.
	dec := event.NewDecoder(ds, event.Limits{MaxBytes: b.cfg.Speed.MaxEventBytes, FutureSkew: b.cfg.Speed.FutureSkew.D(), MaxAge: ds.RawRetention.D()})
	var row event.Row
	now := time.Now()
	c0 := proc.CPU(os.Getpid())
	from := 0
	for i, end := range b.ends {
		if reason, _ := dec.Decode(b.values[from:end], ds.Topic, 0, int64(i), now, &row); reason != "" {
			return fmt.Errorf("decoder floor: rejected %s", reason)
		}
		from = end
	}
	rep.decode = cpuSince(c0)
	// Decoding into the columns of a flush (the speed layer's consume loop without Kafka and
	// dedup), one goroutine, the columns reset at every flush size as recycled buffers are.
	w := rawbatch.NewWriter("x", ds, nil)
	cols := rawbatch.New(len(ds.Dimensions), len(w.IsKey()))
	c0 = proc.CPU(os.Getpid())
	from = 0
	for i, end := range b.ends {
		if i%b.cfg.Speed.FlushRows == 0 {
			cols.Reset()
		}
		if reason, _ := dec.Decode(b.values[from:end], ds.Topic, 0, int64(i), now, &row); reason != "" {
			return fmt.Errorf("decoder floor: rejected %s", reason)
		}
		cols.Add(&row, int64(i), false, w.IsKey())
		from = end
	}
	rep.decodeAdd = cpuSince(c0)
	// Encoding every flush into LZ4 frames of the native block, one goroutine, no server.
	var wire countWriter
	c0 = proc.CPU(os.Getpid())
	for _, chunk := range b.chunks {
		if err := w.Encode(&wire, chunk); err != nil {
			return err
		}
	}
	rep.encode, rep.wireBytes = cpuSince(c0), wire.n
	log.Printf("stage floors: sarama drain %s (median of 3), decoder (1 core) %s, decode into columns %s, encode %s",
		rep.drains[1].wall.Round(time.Millisecond), rep.decode.Round(time.Millisecond), rep.decodeAdd.Round(time.Millisecond), rep.encode.Round(time.Millisecond))
	return nil
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// drain is one sarama drain of the backlog: wall time, CPU seconds of the consumer and of the
// broker.
type drain struct {
	wall                time.Duration
	consumer, brokerCPU float64
}

// ---- baseline: ClickHouse's Kafka engine ----

type result struct {
	round      int
	raw, speed time.Duration // from start until count() of raw / countMerge of speed reached N
	cpu        cpuSample     // CPU seconds over the run
	settled    cpuSample     // CPU seconds from the start until the run's merges settled
	settleAt   time.Duration // when they settled, from the start
	hwm, rss   int64         // speed process: VmHWM at the end of the drain, peak sampled VmRSS (kB)
	dups       int64         // rows in raw beyond the events
	metrics    map[string]float64
	profile    string
	latency    *latency
	load       string
	rawBytes   float64 // compressed bytes per row of raw on disk (active parts)
	speedRows  uint64  // rows of the speed table's active parts once visible: groups written
}

// speedRows is the row count of the speed table's active parts: how many per-minute groups
// the inserts wrote (before merges combine them), which drives the view's share of
// ClickHouse's CPU.
func (b *bench) speedRows(ctx context.Context, db string) uint64 {
	var rows uint64
	q := fmt.Sprintf("SELECT toUInt64(sum(rows)) FROM system.parts WHERE database = '%s' AND table = '%s' AND active",
		db, schema.Speed(b.cfg.Datasets[0].Name))
	_ = b.conn.QueryRow(ctx, q).Scan(&rows)
	return rows
}

// rawBytesPerRow is raw's compressed size per row, from its active parts (for the capacity
// model's storage).
func (b *bench) rawBytesPerRow(ctx context.Context, db string) float64 {
	var bytes, rows uint64
	q := fmt.Sprintf("SELECT sum(data_compressed_bytes), sum(rows) FROM system.parts WHERE database = '%s' AND table = '%s' AND active",
		db, schema.Raw(b.cfg.Datasets[0].Name))
	if err := b.conn.QueryRow(ctx, q).Scan(&bytes, &rows); err != nil || rows == 0 {
		return 0
	}
	return float64(bytes) / float64(rows)
}

// settle waits until ClickHouse has done the merges a run left behind: none of db's running and
// its active parts unchanged for b.quiet (at most two minutes). It returns the CPU seconds
// from cpu0 until then and when that was, from start. The shorter a drain, the more of its
// merges (raw, speed, raw's day counts) fall after it: CPU until visible alone would charge
// each run with a different share of them.
func (b *bench) settle(ctx context.Context, db string, start time.Time, cpu0 cpuSample) (cpuSample, time.Duration) {
	q := fmt.Sprintf("SELECT (SELECT count() FROM system.merges WHERE database = '%s'), (SELECT count() FROM system.parts WHERE database = '%s' AND active)", db, db)
	deadline := time.Now().Add(2 * time.Minute)
	var lastParts uint64
	quietSince := time.Now()
	settled, at := b.cpu().sub(cpu0), time.Since(start)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		var merges, parts uint64
		if err := b.conn.QueryRow(ctx, q).Scan(&merges, &parts); err != nil {
			log.Printf("settle %s: %v", db, err)
			break
		}
		if merges > 0 || parts != lastParts {
			lastParts, quietSince = parts, time.Now()
			settled, at = b.cpu().sub(cpu0), time.Since(start)
		} else if time.Since(quietSince) >= b.quiet {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	log.Printf("%s: merges settled %s after the start, %d active parts, ClickHouse %.1f CPU-s until then (%s)", db, at.Round(100*time.Millisecond), lastParts, settled.ch, b.chThreads(cpu0.threads))
	return settled, at
}

func (r result) total() time.Duration { return max(r.raw, r.speed) }

func (b *bench) freshDB(ctx context.Context, db string) error {
	if err := b.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+schema.Q(db)); err != nil {
		return err
	}
	cfg := *b.cfg
	cfg.ClickHouse.Database = db
	_, err := schema.Migrate(ctx, b.conn, &cfg, schema.MigrateOptions{Logger: quietLogger()})
	return err
}

func (b *bench) dropDB(ctx context.Context, db string) {
	if b.keep {
		return
	}
	if err := b.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+schema.Q(db)); err != nil {
		log.Printf("cannot drop %s: %v", db, err)
	}
}

func (b *bench) baseline(ctx context.Context, round int) (result, error) {
	ds := &b.cfg.Datasets[0]
	db := fmt.Sprintf("%s_base_%d", b.prefix, round)
	if err := b.freshDB(ctx, db); err != nil {
		return result{}, err
	}
	defer b.dropDB(ctx, db)
	q := func(name string) string { return schema.Q(db) + "." + schema.Q(name) }
	var cols, sel []string
	for _, c := range schema.RawColumns(ds) {
		switch {
		case strings.HasPrefix(c.Name, "_"):
		default:
			cols = append(cols, schema.Q(c.Name)+" "+c.Type)
			sel = append(sel, schema.Q(c.Name))
		}
	}
	// 18.16's Kafka engine has no virtual columns (_topic, _partition, _offset came later): the
	// baseline's rows carry constants where the speed layer records where each came from.
	sel = append(sel, "'"+flatTopic+"' AS _topic", "toInt32(0) AS _partition", "toInt64(0) AS _offset", "toUInt8(0) AS _late",
		"now() AS _ingested_at") // a view TO a table must give every column on 18.16
	queue := fmt.Sprintf(`CREATE TABLE %s (%s) ENGINE = Kafka SETTINGS kafka_broker_list = '%s', kafka_topic_list = '%s',
  kafka_group_name = 'bench-base-%d-%d', kafka_format = 'JSONEachRow', kafka_num_consumers = %d, kafka_max_block_size = %d`,
		q("events_queue"), strings.Join(cols, ", "), b.brokerAddr, flatTopic, b.nonce, round, b.consumers, b.block)
	mv := fmt.Sprintf("CREATE MATERIALIZED VIEW %s TO %s AS SELECT %s FROM %s",
		q("events_queue_mv"), q(schema.Raw(ds.Name)), strings.Join(sel, ", "), q("events_queue"))
	// 18.16 does not cascade: a view writing TO raw does not trigger raw's own view, so the
	// per-minute aggregates get their own view from the Kafka table: the platform's speed view
	// with the Kafka table as its source.
	speedMV, err := b.speedViewFrom(db, q("events_queue"), q("events_queue_speed_mv"))
	if err != nil {
		return result{}, err
	}
	res := result{round: round}
	// raw's own view is never triggered from the Kafka table on 18.16; on a version that
	// cascades it would count every event twice.
	if err := b.conn.Exec(ctx, "DROP TABLE "+q(schema.SpeedMV(ds.Name))); err != nil {
		return res, err
	}
	cpu0 := b.cpu()
	start := time.Now()
	for _, s := range []string{queue, speedMV, mv} {
		if err := b.conn.Exec(ctx, s); err != nil {
			return res, fmt.Errorf("baseline: %w\n%s", err, s)
		}
	}
	err = b.waitVisible(ctx, db, start, &res, nil)
	res.cpu = b.cpu().sub(cpu0)
	res.load = proc.LoadAvg()
	// The consumers stop with their table; the view goes first so nothing is half-written.
	for _, t := range []string{"events_queue_mv", "events_queue_speed_mv", "events_queue"} {
		if err := b.conn.Exec(ctx, "DROP TABLE IF EXISTS "+q(t)); err != nil {
			log.Printf("cannot drop %s: %v", t, err)
		}
	}
	if err != nil {
		return res, fmt.Errorf("baseline: %w", err)
	}
	res.speedRows = b.speedRows(ctx, db)
	res.settled, res.settleAt = b.settle(ctx, db, start, cpu0)
	if err := b.check(ctx, db); err != nil {
		return res, fmt.Errorf("baseline: %w", err)
	}
	log.Printf("round %d baseline: raw %s, speed %s (%.0f events/s), load %s", round, res.raw.Round(time.Millisecond),
		res.speed.Round(time.Millisecond), float64(b.n)/res.total().Seconds(), res.load)
	return res, nil
}

// speedViewFrom returns the platform's speed view statement reading from another source.
func (b *bench) speedViewFrom(db, from, name string) (string, error) {
	ds := &b.cfg.Datasets[0]
	cfg := *b.cfg
	cfg.ClickHouse.Database = db
	g := schema.NewGenerator(&cfg)
	for _, o := range g.Dataset(ds) {
		if o.Name != schema.SpeedMV(ds.Name) {
			continue
		}
		s := o.Create
		for _, r := range [][2]string{{g.T(o.Name), name}, {"FROM " + g.T(schema.Raw(ds.Name)), "FROM " + from}, {"WHERE _late = 0\n", ""}} {
			if !strings.Contains(s, r[0]) {
				return "", fmt.Errorf("the speed view has no %q:\n%s", r[0], s)
			}
			s = strings.Replace(s, r[0], r[1], 1)
		}
		return s, nil
	}
	return "", fmt.Errorf("no %s in the schema", schema.SpeedMV(ds.Name))
}

// waitVisible polls every 100 ms until raw's rows and countMerge of speed reach N. tick,
// when set, runs at every poll (RSS sampling). Raw's rows are read from its active parts
// (metadata: a count() scans a column on 18.16, which at 10 polls a second would charge
// ClickHouse's CPU with the measurement itself), and speed's count only once raw is complete
// (the same insert blocks write both).
func (b *bench) waitVisible(ctx context.Context, db string, start time.Time, res *result, tick func() error) error {
	ds := &b.cfg.Datasets[0]
	qr := fmt.Sprintf("SELECT toUInt64(sum(rows)) FROM system.parts WHERE database = '%s' AND table = '%s' AND active", db, schema.Raw(ds.Name))
	qs := fmt.Sprintf("SELECT countMerge(events) FROM %s.%s", schema.Q(db), schema.Q(schema.Speed(ds.Name)))
	deadline := start.Add(b.timeout)
	var raw, spd, last uint64
	moved := time.Now()
	for res.raw == 0 || res.speed == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s raw holds %d rows and speed counts %d events, want %d", b.timeout, raw, spd, b.n)
		}
		if raw+spd != last {
			last, moved = raw+spd, time.Now()
		}
		if time.Since(moved) > time.Minute {
			return fmt.Errorf("no progress for a minute: raw holds %d rows and speed counts %d events, want %d (see the ClickHouse server log)", raw, spd, b.n)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if tick != nil {
			if err := tick(); err != nil {
				return err
			}
		}
		at := time.Since(start)
		err := b.conn.QueryRow(ctx, qr).Scan(&raw)
		if err == nil && raw >= uint64(b.n) {
			err = b.conn.QueryRow(ctx, qs).Scan(&spd)
		}
		if err == nil {
			// More rows than events: duplicates (the Kafka engine reads again what it had not
			// committed when its consumers rebalance). Then raw is complete when every id is
			// in, and speed, fed the same blocks, with it.
			if res.raw == 0 && raw >= uint64(b.n) && b.distinct(ctx, db, raw) >= uint64(b.n) {
				res.raw = at
			}
			if res.speed == 0 && spd >= uint64(b.n) && (raw <= uint64(b.n) || res.raw != 0) {
				res.speed = at
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	var final uint64
	if err := b.conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s.%s", schema.Q(db), schema.Q(schema.Raw(ds.Name)))).Scan(&final); err == nil {
		res.dups = int64(final) - int64(b.n)
	}
	return nil
}

// distinct is the number of distinct ids in raw, read only when raw holds more rows than
// events.
func (b *bench) distinct(ctx context.Context, db string, rows uint64) uint64 {
	if rows == uint64(b.n) {
		return rows
	}
	var n uint64
	_ = b.conn.QueryRow(ctx, fmt.Sprintf("SELECT uniqExact(id) FROM %s.%s", schema.Q(db), schema.Q(schema.Raw(b.cfg.Datasets[0].Name)))).Scan(&n)
	return n
}

// check compares raw and speed with the first run's: the same rows and the same aggregates.
func (b *bench) check(ctx context.Context, db string) error {
	ds := &b.cfg.Datasets[0]
	var fp string
	// Distinct rows of raw, and the speed aggregates that duplicates do not change. Values are
	// compared rounded: 18.16's text parser is not correctly rounded ("3.28" reads as
	// 3.2800000000000002 through JSONEachRow).
	q := fmt.Sprintf(`SELECT concat(toString(count()), ' distinct rows, ', toString(groupBitXor(h)),
  ' / users ', (SELECT toString(uniqMerge(users)) FROM %s.%s))
FROM (SELECT DISTINCT cityHash64(id, toUInt32(time), event, country, device, user_id, round(ifNull(value, -1), 2)) AS h FROM %s.%s)`,
		schema.Q(db), schema.Q(schema.Speed(ds.Name)), schema.Q(db), schema.Q(schema.Raw(ds.Name)))
	if err := b.conn.QueryRow(ctx, q).Scan(&fp); err != nil {
		return err
	}
	if b.fp == "" {
		b.fp = fp
		log.Printf("fingerprint of raw / speed: %s", fp)
		return nil
	}
	if fp != b.fp {
		return fmt.Errorf("%s differs from the first run: %s, want %s", db, fp, b.fp)
	}
	return nil
}

// ---- floor: the speed layer's inserts alone ----

func (b *bench) insertFloor(ctx context.Context, round int) (result, error) {
	ds := &b.cfg.Datasets[0]
	db := fmt.Sprintf("%s_floor_%d", b.prefix, round)
	if err := b.freshDB(ctx, db); err != nil {
		return result{}, err
	}
	defer b.dropDB(ctx, db)
	native := rawbatch.NewNative(b.cfg.ClickHouse)
	defer native.Close()
	w := rawbatch.NewWriter(schema.Q(db)+"."+schema.Q(schema.Raw(ds.Name)), ds, native)
	res := result{round: round}
	cpu0, self0 := b.cpu(), proc.CPU(os.Getpid())
	start := time.Now()
	sem := make(chan struct{}, 2) // the speed layer writes two flushes at once
	var wg sync.WaitGroup
	var firstErr error
	var mu sync.Mutex
	for _, chunk := range b.chunks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := w.Send(ctx, chunk); err != nil {
				mu.Lock()
				firstErr = cmpOr(firstErr, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.raw = time.Since(start)
	res.speed = res.raw // the view is written by the same insert
	res.cpu = b.cpu().sub(cpu0)
	res.cpu.speed = proc.CPU(os.Getpid()) - self0 // the client here is this process
	res.load = proc.LoadAvg()
	if firstErr != nil {
		return res, fmt.Errorf("insert floor: %w", firstErr)
	}
	res.speedRows = b.speedRows(ctx, db)
	res.settled, res.settleAt = b.settle(ctx, db, start, cpu0)
	res.settled.speed = res.cpu.speed // the driver's own CPU after the inserts is not the client's
	if err := b.check(ctx, db); err != nil {
		return res, fmt.Errorf("insert floor: %w", err)
	}
	log.Printf("round %d insert floor: %s (%.0f rows/s), load %s", round, res.raw.Round(time.Millisecond), float64(b.n)/res.raw.Seconds(), res.load)
	return res, nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ---- lambda speed ----

func (b *bench) speedRun(ctx context.Context, round int, profile bool) (result, error) {
	return b.speedRunOf(ctx, b.lambda, "lambda", round, profile)
}

// speedRunOf is a speed run of the lambda binary bin; name tells its database, group and log
// apart.
func (b *bench) speedRunOf(ctx context.Context, bin, name string, round int, profile bool) (result, error) {
	db := fmt.Sprintf("%s_%s_%d", b.prefix, name, round)
	if err := b.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+schema.Q(db)); err != nil {
		return result{}, err
	}
	defer b.dropDB(ctx, db)
	logf, err := os.Create(filepath.Join(b.out, fmt.Sprintf("speed-%s-%d.log", name, round)))
	if err != nil {
		return result{}, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "speed", "--config", b.cfgFile)
	cmd.Env = append(os.Environ(),
		"LAMBDA_CLICKHOUSE_DATABASE="+db,
		fmt.Sprintf("LAMBDA_KAFKA_GROUP_PREFIX=bench-%s-%d-%d", name, b.nonce, round),
		"LAMBDA_SPEED_METRICS_LISTEN="+b.metrics)
	cmd.Stdout, cmd.Stderr = logf, logf
	res := result{round: round}
	cpu0 := b.cpu()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	pid := cmd.Process.Pid
	b.setSpeedPid(pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(40 * time.Second):
			_ = cmd.Process.Kill()
			return fmt.Errorf("lambda speed did not stop within 40 s of SIGTERM")
		}
	}
	defer func() { _ = stop() }()

	var profErr chan error
	if profile {
		res.profile = filepath.Join(b.out, "speed-drain.pprof")
		secs := 10
		if s := b.lastSpeed; s > 0 {
			secs = int(math.Ceil(s.Seconds()))
		}
		profErr = make(chan error, 1)
		go func() { profErr <- b.fetchProfile(ctx, res.profile, secs) }()
	}
	tick := func() error {
		select {
		case err := <-exited:
			stopped = true
			return fmt.Errorf("lambda speed exited early (%v); see %s", err, logf.Name())
		default:
		}
		if rss := procStatus(pid, "VmRSS"); rss > res.rss {
			res.rss = rss
		}
		return nil
	}
	err = b.waitVisible(ctx, db, start, &res, tick)
	res.cpu = b.cpu().sub(cpu0)
	res.load = proc.LoadAvg()
	res.hwm = procStatus(pid, "VmHWM")
	if err != nil {
		return res, fmt.Errorf("lambda speed: %w", err)
	}
	res.metrics = b.scrape()
	res.rawBytes = b.rawBytesPerRow(ctx, db)
	res.speedRows = b.speedRows(ctx, db)
	res.settled, res.settleAt = b.settle(ctx, db, start, cpu0)
	if err := b.check(ctx, db); err != nil {
		return res, fmt.Errorf("lambda speed: %w", err)
	}
	log.Printf("round %d lambda speed: raw %s, speed %s (%.0f events/s), VmHWM %d MiB, load %s", round, res.raw.Round(time.Millisecond),
		res.speed.Round(time.Millisecond), float64(b.n)/res.total().Seconds(), res.hwm>>10, res.load)
	b.lastSpeed = res.total()
	if profErr != nil {
		if err := <-profErr; err != nil {
			log.Printf("no drain profile: %v", err)
			res.profile = ""
		}
	}
	if profile && b.latDur > 0 {
		lat, err := b.latencyRun(ctx, db, pid)
		if err != nil {
			return res, err
		}
		res.latency = lat
	}
	if err := stop(); err != nil {
		return res, fmt.Errorf("lambda speed: %w", err)
	}
	return res, nil
}

func (b *bench) fetchProfile(ctx context.Context, path string, secs int) error {
	base := "http://" + b.metrics
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// scrape reads the speed process's metrics that say where its time went.
func (b *bench) scrape() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + b.metrics + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	want := regexp.MustCompile(`^(lambda_speed_insert_seconds_(?:sum|count)\{dataset="events",table="raw"\}|lambda_speed_batch_rows_(?:sum|count)|lambda_speed_commits_total|go_gc_duration_seconds_count|lambda_speed_consumed_total)\S* (\S+)$`)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := want.FindStringSubmatch(sc.Text()); m != nil {
			name := m[1]
			if i := strings.IndexByte(name, '{'); i >= 0 {
				name = name[:i]
			}
			v, _ := strconv.ParseFloat(m[2], 64)
			out[name] += v
		}
	}
	return out
}

// ---- latency: produce at a fixed rate, poll raw for newly visible ids ----

type latency struct {
	sent, seen       int
	p50, p90, p99    time.Duration
	max              time.Duration
	pollP50, pollMax time.Duration
	hwm              int64
	profile          string
	cpu              cpuSample
	dur              time.Duration
	load             string
}

func (b *bench) latencyRun(ctx context.Context, db string, pid int) (*latency, error) {
	ds := &b.cfg.Datasets[0]
	client, err := sarama.NewClient([]string{b.brokerAddr}, b.saramaConfig())
	if err != nil {
		return nil, err
	}
	low := make([]int64, b.partitions) // per partition: every offset below is seen
	for p := range low {
		if low[p], err = client.GetOffset(ds.Topic, int32(p), sarama.OffsetNewest); err != nil {
			client.Close()
			return nil, err
		}
	}
	client.Close()
	prod, err := b.asyncProducer(true)
	if err != nil {
		return nil, err
	}
	var failed atomic.Int64
	go func() {
		for range prod.Errors() {
			failed.Add(1)
		}
	}()
	lat := &latency{profile: filepath.Join(b.out, "speed-latency.pprof")}
	profErr := make(chan error, 1)
	go func() { profErr <- b.fetchProfile(ctx, lat.profile, int(b.latDur.Seconds())) }()

	begin := time.Now()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lats []time.Duration
	var polls []time.Duration
	seen := make([]map[int64]bool, b.partitions)
	for p := range seen {
		seen[p] = map[int64]bool{}
	}
	var sent atomic.Int64
	producing := make(chan struct{})
	cpu0 := b.cpu()
	go func() {
		defer close(producing)
		g := gen.New(ds, gen.Options{Seed: uint64(b.nonce)})
		var arena fastjson.Arena
		var p fastjson.Parser
		idPath := strings.Split(ds.IDField, ".")
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		for n := 0; time.Since(start) < b.latDur && lctx.Err() == nil; {
			<-tick.C
			due := int(time.Since(start).Seconds()*float64(b.rate)) - n
			for range due {
				now := time.Now()
				ev := g.Next(now, false)
				v, err := p.ParseBytes(ev.Value)
				if err != nil {
					continue
				}
				id := fmt.Sprintf("lat-%d-%d", now.UnixNano(), n)
				parent := v
				if len(idPath) > 1 {
					parent = v.Get(idPath[:len(idPath)-1]...)
				}
				arena.Reset()
				parent.Set(idPath[len(idPath)-1], arena.NewString(id))
				prod.Input() <- &sarama.ProducerMessage{Topic: ds.Topic, Key: sarama.StringEncoder(id), Value: sarama.ByteEncoder(v.MarshalTo(nil))}
				n++
				sent.Store(int64(n))
			}
		}
	}()
	q := func() string {
		var s []string
		for _, o := range low {
			s = append(s, strconv.FormatInt(o, 10))
		}
		return fmt.Sprintf("SELECT id, _partition, _offset FROM %s.%s WHERE time >= toDateTime(%d) AND startsWith(id, 'lat-') AND _offset >= [%s][_partition + 1]",
			schema.Q(db), schema.Q(schema.Raw(ds.Name)), begin.Add(-10*time.Second).Unix(), strings.Join(s, ","))
	}
	doneProducing := false
	var drainDeadline time.Time
	for {
		if !doneProducing {
			select {
			case <-producing:
				doneProducing = true
				drainDeadline = time.Now().Add(30 * time.Second)
			default:
			}
		}
		if doneProducing && (len(lats) >= int(sent.Load()) || time.Now().After(drainDeadline)) {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if h := procStatus(pid, "VmHWM"); h > lat.hwm {
			lat.hwm = h
		}
		at := time.Now()
		rows, err := b.conn.Query(ctx, q())
		if err != nil {
			return nil, fmt.Errorf("latency poll: %w", err)
		}
		for rows.Next() {
			var id string
			var part int32
			var off int64
			if err := rows.Scan(&id, &part, &off); err != nil {
				rows.Close()
				return nil, err
			}
			if seen[part][off] {
				continue
			}
			seen[part][off] = true
			f := strings.SplitN(id, "-", 3)
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			lats = append(lats, at.Sub(time.Unix(0, ns)))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		polls = append(polls, time.Since(at))
		for p := range low {
			for seen[p][low[p]] {
				delete(seen[p], low[p])
				low[p]++
			}
		}
		time.Sleep(time.Until(at.Add(100 * time.Millisecond)))
	}
	lat.cpu = b.cpu().sub(cpu0)
	lat.dur = time.Since(begin)
	lat.load = proc.LoadAvg()
	prod.AsyncClose()
	if err := <-profErr; err != nil {
		log.Printf("no latency profile: %v", err)
		lat.profile = ""
	}
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("latency run: %d messages not produced", n)
	}
	lat.sent, lat.seen = int(sent.Load()), len(lats)
	slices.Sort(lats)
	slices.Sort(polls)
	lat.p50, lat.p90, lat.p99, lat.max = pct(lats, 0.5), pct(lats, 0.9), pct(lats, 0.99), pct(lats, 1)
	lat.pollP50, lat.pollMax = pct(polls, 0.5), pct(polls, 1)
	log.Printf("latency at %d events/s: %d sent, %d seen, p50 %s, p99 %s, max %s (poll p50 %s)", b.rate, lat.sent, lat.seen,
		lat.p50.Round(time.Millisecond), lat.p99.Round(time.Millisecond), lat.max.Round(time.Millisecond), lat.pollP50.Round(time.Millisecond))
	return lat, nil
}

func pct(s []time.Duration, q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ---- CPU accounting from /proc ----

// cpuSample holds CPU seconds: of the speed process, ClickHouse, the broker, and the whole
// machine (busy time of every core, from /proc/stat).
type cpuSample struct {
	speed, ch, broker, machine float64
	threads                    map[string]float64 // ClickHouse's CPU seconds by thread name
}

func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{speed: a.speed - b.speed, ch: a.ch - b.ch, broker: a.broker - b.broker, machine: a.machine - b.machine}
}

var speedPid atomic.Int64

func (b *bench) setSpeedPid(pid int) { speedPid.Store(int64(pid)) }

func (b *bench) cpu() cpuSample {
	return cpuSample{speed: proc.CPU(int(speedPid.Load())), ch: proc.CPU(b.chPid), broker: proc.CPU(b.brokerPid), machine: machineBusy(),
		threads: proc.Threads(b.chPid)}
}

// chThreads says where ClickHouse's CPU went since threads0, by thread name: TCPHandler runs
// inserts and their views, BackgrProcPool merges.
func (b *bench) chThreads(threads0 map[string]float64) string {
	now := proc.Threads(b.chPid)
	var names []string
	for name := range now {
		names = append(names, name)
	}
	slices.Sort(names)
	var out []string
	for _, name := range names {
		if d := now[name] - threads0[name]; d >= 0.05 {
			out = append(out, fmt.Sprintf("%s %.1f", name, d))
		}
	}
	return strings.Join(out, ", ")
}

func machineBusy() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var busy float64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i != 3 && i != 4 && i < 8 { // not idle, not iowait, not guest (counted in user)
			busy += v
		}
	}
	return busy / 100
}

// procStatus reads a kB field of /proc/PID/status.
func procStatus(pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ---- profile breakdown ----

// stage is a share of the speed process's CPU samples. A sample belongs to the stage of the
// leaf-most frame outside the standard library (runtime, syscall, net, bufio, hash/crc32…
// are skipped, so a read syscall counts for the client that reads, an allocation for the
// code that allocates); background GC workers are a stage of their own, and samples with no
// such frame are "runtime". alloc is the part under runtime.mallocgc (allocation, including
// GC assists).
type stage struct {
	name     string
	prefixes []string // package path prefixes of the frame's function
	secs     float64
	alloc    float64
}

func newStages() []*stage {
	return []*stage{
		{name: "GC background mark workers", prefixes: []string{}},
		{name: "decode (shared/event: scanner, fastjson fallback)", prefixes: []string{"github.com/lambda-platform/lambda/shared/event.", "github.com/valyala/fastjson"}},
		{name: "speed: dedup window", prefixes: []string{"github.com/lambda-platform/lambda/speed.(*dedup"}},
		{name: "speed: consume loop, buffers, flush bookkeeping", prefixes: []string{"github.com/lambda-platform/lambda/"}},
		{name: "clickhouse-go / ch-go (encode columns, lz4, send)", prefixes: []string{"github.com/ClickHouse/", "github.com/pierrec/lz4", "github.com/paulmach", "github.com/shopspring"}},
		{name: "sarama: its go-metrics registry", prefixes: []string{"github.com/rcrowley/go-metrics"}},
		{name: "sarama (fetch, CRC, record decoding, channels)", prefixes: []string{"github.com/IBM/sarama", "github.com/eapache", "github.com/klauspost"}},
		{name: "prometheus client", prefixes: []string{"github.com/prometheus/"}},
		{name: "other third-party", prefixes: []string{"github.com/", "golang.org/x/", "go.opentelemetry.io/"}},
		{name: "runtime (scheduler, timers, netpoll, GC not attributable)", prefixes: []string{""}},
	}
}

// stdlib says whether a function belongs to the standard library: "runtime.memmove",
// "internal/poll.(*FD).Read", not "github.com/…".
func stdlib(fn string) bool {
	first, _, found := strings.Cut(fn, "/")
	return !found || !strings.Contains(first, ".")
}

func classify(stages []*stage, frames []string) *stage {
	if slices.Contains(frames, "runtime.gcBgMarkWorker") {
		return stages[0]
	}
	for _, f := range frames {
		if stdlib(f) {
			continue
		}
		for _, st := range stages[1:] {
			if slices.ContainsFunc(st.prefixes, func(p string) bool { return strings.HasPrefix(f, p) }) {
				return st
			}
		}
	}
	return stages[len(stages)-1]
}

// breakdown runs `go tool pprof -traces` and sorts every sample into a stage.
func breakdown(binary, profile string) ([]*stage, float64, string, error) {
	out, err := exec.Command("go", "tool", "pprof", "-traces", binary, profile).Output()
	if err != nil {
		return nil, 0, "", fmt.Errorf("go tool pprof -traces: %w", err)
	}
	stages := newStages()
	var total float64
	var frames []string
	var val float64
	flush := func() {
		if len(frames) == 0 {
			return
		}
		total += val
		st := classify(stages, frames)
		st.secs += val
		if slices.Contains(frames, "runtime.mallocgc") {
			st.alloc += val
		}
		frames = frames[:0]
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "-----") {
			flush()
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, " ") {
			continue
		}
		if len(frames) == 0 && len(f) >= 2 {
			if d, ok := parseDur(f[0]); ok {
				val = d
				frames = append(frames, f[1])
				continue
			}
		}
		frames = append(frames, f[0]) // a frame line is "function [(inline)]"
	}
	flush()
	top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", binary, profile).Output()
	return stages, total, string(top), nil
}

func parseDur(s string) (float64, bool) {
	d, err := time.ParseDuration(strings.Replace(s, "µs", "us", 1))
	if err != nil {
		return 0, false
	}
	return d.Seconds(), true
}

// ---- report ----

type report struct {
	b                  *bench
	loadStart, loadEnd string
	produced           time.Duration
	avgNested, avgFlat float64
	sampleNested       string
	sampleFlat         string
	decode             time.Duration
	decodeAdd, encode  time.Duration
	wireBytes          int64
	drains             []drain // sorted by wall time
	base, floor, speed []result
	before             []result // -before: another lambda binary, same rounds
	prof               *result
}

func medianOf(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int { return int(a.total() - b.total()) })
	return s[(len(s)-1)/2]
}

func (r *report) print(w io.Writer) {
	b := r.b
	n := float64(b.n)
	eps := func(d time.Duration) string { return fmt.Sprintf("%.0f", n/d.Seconds()) }
	secs := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	cpuCell := func(c cpuSample) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f", c.speed, c.ch, c.broker, c.machine)
	}
	fmt.Fprintf(w, "Backlog: %d events in each topic, %d partitions, event times spread over the %s before the run; "+
		"platform events %.0f bytes on average (country and device nested), the flat JSONEachRow copies %.0f bytes. Produced in %s.\n\n",
		b.n, b.partitions, b.span, r.avgNested, r.avgFlat, r.produced.Round(time.Millisecond))
	fmt.Fprintf(w, "```\n%s\n%s\n```\n\n", r.sampleNested, r.sampleFlat)
	perM := func(c cpuSample) string {
		return fmt.Sprintf("%.2f / %.2f / %.2f / **%.2f**", c.speed*1e6/n, c.ch*1e6/n, c.broker*1e6/n, (c.speed+c.ch+c.broker)*1e6/n)
	}
	fmt.Fprintf(w, "| round | what | raw = N (s) | speed = N (s) | events/s | CPU s: client (`lambda speed`; the driver for the floor) / ClickHouse / broker / machine | CPU s per 1M events: client / ClickHouse / broker / **pipeline** | until merges settled (s after start): CPU s per 1M events, ClickHouse / **pipeline** | load (1 5 15) |\n|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.base {
		before := result{}
		if i < len(r.before) {
			before = r.before[i]
		}
		for _, x := range []struct {
			name string
			res  result
		}{
			{fmt.Sprintf("baseline: Kafka engine (%d consumers, block %d)", b.consumers, b.block), r.base[i]},
			{fmt.Sprintf("floor: the speed layer's raw inserts alone (rawbatch, %dk rows, 2 in flight)", b.cfg.Speed.FlushRows/1000), r.floor[i]},
			{"`lambda speed`", r.speed[i]},
			{"`lambda speed` before (`-before` binary)", before},
		} {
			if x.res.round == 0 {
				continue
			}
			fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.res.round, x.name, secs(x.res.raw), secs(x.res.speed), eps(x.res.total()), cpuCell(x.res.cpu), perM(x.res.cpu), settledCell(x.res, n), x.res.load)
		}
	}
	if p := r.prof; p != nil {
		fmt.Fprintf(w, "| %d | `lambda speed`, profiled | %s | %s | %s | %s | %s | %s | %s |\n", p.round, secs(p.raw), secs(p.speed), eps(p.total()), cpuCell(p.cpu), perM(p.cpu), settledCell(*p, n), p.load)
	}
	mb, mf, ms := medianOf(r.base), medianOf(r.floor), medianOf(r.speed)
	if len(r.before) > 0 {
		mo := medianOf(r.before)
		fmt.Fprintf(w, "\n`-before` binary (median of %d): %s events/s, %.2f CPU-s per 1M events in the speed process, VmHWM %d MiB; "+
			"this build: %s events/s, %.2f CPU-s per 1M events.\n", len(r.before), eps(mo.total()), mo.cpu.speed*1e6/n, mo.hwm>>10,
			eps(ms.total()), ms.cpu.speed*1e6/n)
	}
	var hwm, rss int64
	for _, s := range append(slices.Clone(r.speed), *r.prof) {
		hwm, rss = max(hwm, s.hwm), max(rss, s.rss)
	}
	fmt.Fprintf(w, "\nMedians (of %d): baseline %s events/s, `lambda speed` %s events/s: **ratio %.2f** (target ≥ 3); "+
		"insert floor %s rows/s. Speed process VmHWM (peak RSS) over the drains: **%d MiB** (target ≤ 300).\n",
		len(r.base), eps(mb.total()), eps(ms.total()), mb.total().Seconds()/ms.total().Seconds(), eps(mf.total()), hwm>>10)
	var all []string
	for _, d := range r.drains {
		all = append(all, secs(d.wall))
	}
	md := r.drains[len(r.drains)/2]
	fmt.Fprintf(w, "\nStage floors in this run: sarama alone (4 partition consumers with the speed layer's fetch settings, messages counted and dropped) drains the %d records in %s s "+
		"(median of %s; %s/s; CPU s consumer / broker %.1f / %.1f); in CPU seconds of one goroutine: the decoder %s s (%s events/s per core), "+
		"decoding into a flush's columns %s s, encoding every flush into LZ4 frames %s s (%.1f wire bytes per row).\n",
		b.n, secs(md.wall), strings.Join(all, ", "), eps(md.wall), md.consumer, md.brokerCPU, secs(r.decode), eps(r.decode),
		secs(r.decodeAdd), secs(r.encode), float64(r.wireBytes)/n)
	stages := md.consumer + r.decodeAdd.Seconds() + r.encode.Seconds()
	fmt.Fprintf(w, "Per million events: sarama %.2f + decode into columns %.2f + encode %.2f = **%.2f CPU-s**, the sum of the standalone stages.\n",
		md.consumer*1e6/n, r.decodeAdd.Seconds()*1e6/n, r.encode.Seconds()*1e6/n, stages*1e6/n)
	speedPerM := ms.cpu.speed * 1e6 / n
	pipePerM := (ms.cpu.speed + ms.cpu.ch + ms.cpu.broker) * 1e6 / n
	basePerM := (mb.cpu.ch + mb.cpu.broker) * 1e6 / n
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	ratio := mb.total().Seconds() / ms.total().Seconds()
	fmt.Fprintf(w, "\n| figure (medians of %d rounds) | value | target | |\n|---|---|---|---|\n", len(r.base))
	fmt.Fprintf(w, "| baseline (Kafka engine) | %s events/s, %.2f CPU-s per 1M events (ClickHouse + broker) | | |\n", eps(mb.total()), basePerM)
	fmt.Fprintf(w, "| `lambda speed` | %s events/s | | |\n", eps(ms.total()))
	fmt.Fprintf(w, "| throughput ratio | %.2f | ≥ 3 | %s |\n", ratio, verdict(ratio >= 3))
	fmt.Fprintf(w, "| speed process CPU per 1M events | %.2f CPU-s (standalone stages %.2f) | ≤ 2.0 | %s |\n", speedPerM, stages*1e6/n, verdict(speedPerM <= 2))
	fmt.Fprintf(w, "| pipeline CPU per 1M events (speed + ClickHouse + broker) | %.2f CPU-s, %.2f× the engine's | ≤ 2× | %s |\n", pipePerM, pipePerM/basePerM, verdict(pipePerM <= 2*basePerM))
	fmt.Fprintf(w, "| speed process peak RSS (VmHWM, every drain) | %d MiB | ≤ 300 | %s |\n", hwm>>10, verdict(hwm>>10 <= 300))
	if p := r.prof; p != nil && p.latency != nil {
		l := p.latency
		fmt.Fprintf(w, "| produce-to-visible p99 at %d events/s | %s | ≤ 2 s | %s |\n", b.rate, l.p99.Round(time.Millisecond), verdict(l.p99 <= 2*time.Second))
		sec := l.dur.Seconds()
		fmt.Fprintf(w, "| that steady state's CPU (cores): speed / ClickHouse (with the poller's 10 queries/s) / broker | %.2f / %.2f / %.2f | | |\n",
			l.cpu.speed/sec, l.cpu.ch/sec, l.cpu.broker/sec)
	}
	fmt.Fprintf(w, "\nRows in the per-minute speed table's active parts once the backlog was visible (groups the inserts wrote, before merges; medians): baseline %d, insert floor %d, `lambda speed` %d.\n",
		mb.speedRows, mf.speedRows, ms.speedRows)
	if ms.rawBytes > 0 {
		fmt.Fprintf(w, "\nRaw on disk after the median `lambda speed` drain: %.1f compressed bytes per event (active parts, before every merge).\n", ms.rawBytes)
	}
	if m := ms.metrics; len(m) > 0 && m["lambda_speed_insert_seconds_count"] > 0 {
		fmt.Fprintf(w, "\n`lambda speed` median round, from its metrics: %.0f raw inserts, %.0f rows per flush on average, %.2f s spent in raw inserts in total (%.2f s each; two run at once); %.0f GC cycles.\n",
			m["lambda_speed_insert_seconds_count"], m["lambda_speed_batch_rows_sum"]/max(1, m["lambda_speed_batch_rows_count"]),
			m["lambda_speed_insert_seconds_sum"], m["lambda_speed_insert_seconds_sum"]/m["lambda_speed_insert_seconds_count"],
			m["go_gc_duration_seconds_count"])
	}
	if p := r.prof; p != nil && p.latency != nil {
		l := p.latency
		fmt.Fprintf(w, "\nLatency: %d events/s for %s into the caught-up process: %d sent, %d seen in raw; produce-to-visible "+
			"p50 %s, p90 %s, **p99 %s** (target ≤ 2 s), max %s (visibility polled every 100 ms, poll p50 %s, max %s; a figure is the poll's start minus the time in the id). "+
			"VmHWM after it %d MiB. CPU s over %s: speed proc %.1f, ClickHouse %.1f, broker %.1f, machine %.1f (of %.0f core-seconds); load %s. "+
			"(ClickHouse's figure includes the poller's query every 100 ms.)\n",
			b.rate, b.latDur, l.sent, l.seen, l.p50.Round(time.Millisecond), l.p90.Round(time.Millisecond), l.p99.Round(time.Millisecond),
			l.max.Round(time.Millisecond), l.pollP50.Round(time.Millisecond), l.pollMax.Round(time.Millisecond), l.hwm>>10,
			l.dur.Round(time.Second), l.cpu.speed, l.cpu.ch, l.cpu.broker, l.cpu.machine, l.dur.Seconds()*float64(runtime.NumCPU()), l.load)
	}
	for _, pf := range []struct{ what, path string }{{"drain of the backlog", r.prof.profile}, {"latency run", latencyProfile(r.prof)}} {
		if pf.path == "" {
			continue
		}
		stages, total, top, err := breakdown(b.lambda, pf.path)
		if err != nil {
			fmt.Fprintf(w, "\nprofile %s: %v\n", pf.path, err)
			continue
		}
		printStages(w, fmt.Sprintf("CPU profile of `lambda speed`, %s (`%s`)", pf.what, pf.path), stages, total)
		fmt.Fprintf(w, "\n<details><summary>pprof -top</summary>\n\n```\n%s```\n</details>\n", top)
	}
	fmt.Fprintf(w, "\n%d cores (%s), %s GB, ClickHouse %s; load at start %s, at end %s.\n", runtime.NumCPU(), cpuModel(), memGB(), chVersion(b), r.loadStart, r.loadEnd)
}

// settledCell is a run's ClickHouse and pipeline CPU per million events until its merges
// settled, and when that was.
func settledCell(r result, n float64) string {
	if r.settleAt == 0 {
		return ""
	}
	c := r.settled
	return fmt.Sprintf("(%.1f) %.2f / **%.2f**", r.settleAt.Seconds(), c.ch*1e6/n, (c.speed+c.ch+c.broker)*1e6/n)
}

// printRounds prints the rounds without a baseline (-skip-baseline): the floor and the lambda
// speed builds, and their medians.
func (r *report) printRounds(w io.Writer) {
	n := float64(r.b.n)
	fmt.Fprintf(w, "| round | what | drain (s) | events/s | CPU s per 1M events until visible: client / ClickHouse / broker / **pipeline** | until merges settled (s after start): ClickHouse / **pipeline** |\n|---|---|---|---|---|---|\n")
	row := func(name string, x result) {
		c := x.cpu
		fmt.Fprintf(w, "| %d | %s | %.2f | %.0f | %.2f / %.2f / %.2f / **%.2f** | %s |\n", x.round, name, x.total().Seconds(), n/x.total().Seconds(),
			c.speed*1e6/n, c.ch*1e6/n, c.broker*1e6/n, (c.speed+c.ch+c.broker)*1e6/n, settledCell(x, n))
	}
	for i := range r.speed {
		row("floor", r.floor[i])
		row("`lambda speed`", r.speed[i])
		if i < len(r.before) {
			row("`lambda speed` before", r.before[i])
		}
	}
	med := func(name string, rs []result) {
		if len(rs) == 0 {
			return
		}
		m := func(f func(x result) float64) float64 {
			v := make([]float64, len(rs))
			for i, x := range rs {
				v[i] = f(x)
			}
			slices.Sort(v)
			return v[(len(v)-1)/2] * 1e6 / n
		}
		fmt.Fprintf(w, "\nmedian %s: speed %.2f, ClickHouse %.2f (settled %.2f), broker %.2f CPU-s per 1M events; pipeline settled %.2f\n", name,
			m(func(x result) float64 { return x.cpu.speed }), m(func(x result) float64 { return x.cpu.ch }),
			m(func(x result) float64 { return x.settled.ch }), m(func(x result) float64 { return x.cpu.broker }),
			m(func(x result) float64 { return x.settled.speed + x.settled.ch + x.settled.broker }))
	}
	med("floor", r.floor)
	med("lambda speed", r.speed)
	med("before", r.before)
}

func printStages(w io.Writer, title string, stages []*stage, total float64) {
	fmt.Fprintf(w, "\n%s: %.1f CPU-s sampled.\n\n| stage | CPU s | share | of which allocating |\n|---|---|---|---|\n", title, total)
	for _, st := range stages {
		if st.secs > 0 {
			fmt.Fprintf(w, "| %s | %.2f | %.0f%% | %.2f |\n", st.name, st.secs, 100*st.secs/total, st.alloc)
		}
	}
}

func latencyProfile(p *result) string {
	if p == nil || p.latency == nil {
		return ""
	}
	return p.latency.profile
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}

func memGB() string {
	kb := procStatusFile("/proc/meminfo", "MemTotal")
	return strconv.FormatInt((kb+(1<<19))>>20, 10)
}

func procStatusFile(path, field string) int64 {
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func chVersion(b *bench) string {
	v, err := chconn.Version(context.Background(), b.conn)
	if err != nil {
		return "?"
	}
	return v
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
