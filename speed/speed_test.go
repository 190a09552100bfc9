package speed

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/nettest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// env is a real ClickHouse database and a real broker over TCP.
type env struct {
	t      *testing.T
	cfg    *config.Config
	conn   driver.Conn
	broker *broker.Broker
	prod   sarama.SyncProducer
	db     string
}

func newEnv(t *testing.T, edit func(*config.Config)) *env {
	return newEnvOn(t, false, edit)
}

// newEnvOn is newEnv on the local ClickHouse cluster when cluster is set (skipped, saying so,
// when `make test` did not start it).
func newEnvOn(t *testing.T, cluster bool, edit func(*config.Config)) *env {
	t.Helper()
	var cfg *config.Config
	if cluster {
		cfg = chtest.ClusterConfig(t, nil)
	} else {
		cfg = chtest.Config(t, nil)
	}
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 3, Topics: []string{"events"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cfg.Kafka.Brokers = []string{b.Addr()}
	cfg.Kafka.GroupPrefix = cfg.ClickHouse.Database
	cfg.Speed.FlushInterval = config.Duration(200 * time.Millisecond)
	cfg.Speed.MetricsListen = ""
	if edit != nil {
		edit(cfg)
	}
	var conn driver.Conn
	if cluster {
		conn = chtest.NewCluster(t, cfg)
	} else {
		conn = chtest.New(t, cfg)
	}
	if _, err := schema.Migrate(context.Background(), conn, cfg, schema.MigrateOptions{Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	sc := sarama.NewConfig()
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	prod, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prod.Close() })
	return &env{t: t, cfg: cfg, conn: conn, broker: b, prod: prod, db: cfg.ClickHouse.Database}
}

func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// produce sends the payloads, keyed by their index so they spread over the partitions.
func (e *env) produce(payloads ...string) {
	e.t.Helper()
	if err := e.send(payloads); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) send(payloads []string) error {
	msgs := make([]*sarama.ProducerMessage, len(payloads))
	for i, p := range payloads {
		msgs[i] = &sarama.ProducerMessage{Topic: "events", Key: sarama.StringEncoder(fmt.Sprint(i)), Value: sarama.StringEncoder(p)}
	}
	return e.prod.SendMessages(msgs)
}

// runner is a speed layer running in the test process.
type runner struct {
	s      *Speed
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// stop cancels the layer and returns what Run returned.
func (r *runner) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// exited reports whether Run returned.
func (r *runner) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (e *env) speed(id string, reg prometheus.Registerer) *runner {
	e.t.Helper()
	return e.speedWith(id, reg, nil)
}

// speedWith is speed with edit applied to the layer before it runs.
func (e *env) speedWith(id string, reg prometheus.Registerer, edit func(*Speed)) *runner {
	e.t.Helper()
	s, err := New(e.cfg, Options{Logger: quiet(), Registerer: reg, ConsumerID: id})
	if err != nil {
		e.t.Fatal(err)
	}
	if edit != nil {
		edit(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{s: s, cancel: cancel, done: make(chan struct{})}
	go func() { r.err = s.Run(ctx); close(r.done) }()
	e.t.Cleanup(func() { _ = r.stop() })
	return r
}

func (e *env) uint(q string) uint64 {
	e.t.Helper()
	var n uint64
	if err := e.conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// ends returns the end offset of every partition of the topic.
func (e *env) ends() map[int32]int64 {
	e.t.Helper()
	c, err := sarama.NewClient(e.cfg.Kafka.Brokers, sarama.NewConfig())
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	parts, err := c.Partitions("events")
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[int32]int64{}
	for _, p := range parts {
		if out[p], err = c.GetOffset("events", p, sarama.OffsetNewest); err != nil {
			e.t.Fatal(err)
		}
	}
	return out
}

// accounted checks the ledger: every offset below each partition's end is in a flush row,
// and every flush row's rows add up to its offset range. It returns nil when complete.
func (e *env) accounted(ends map[int32]int64) error {
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT partition, first_offset, last_offset, raw_rows + rejected_rows + duplicate_rows FROM %s.speed_flushes WHERE dataset = 'events' ORDER BY partition, first_offset", e.db))
	if err != nil {
		return err
	}
	defer rows.Close()
	type rng struct{ first, last int64 }
	got := map[int32][]rng{}
	for rows.Next() {
		var p int32
		var first, last int64
		var n uint64
		if err := rows.Scan(&p, &first, &last, &n); err != nil {
			return err
		}
		if last < first {
			continue // heartbeat
		}
		if int64(n) != last-first+1 {
			e.t.Errorf("partition %d: flush of offsets %d..%d accounts for %d records", p, first, last, n)
		}
		got[p] = append(got[p], rng{first, last})
	}
	for p, end := range ends {
		covered := int64(-1)
		for _, r := range got[p] {
			if r.first > covered+1 {
				return fmt.Errorf("partition %d: offsets %d..%d are in no flush", p, covered+1, r.first-1)
			}
			covered = max(covered, r.last)
		}
		if covered+1 < end {
			return fmt.Errorf("partition %d: flushed up to %d of %d", p, covered+1, end)
		}
	}
	return nil
}

func (e *env) waitAccounted(within time.Duration) {
	e.t.Helper()
	ends := e.ends()
	deadline := time.Now().Add(within)
	for {
		err := e.accounted(ends)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("ledger incomplete after %s: %v", within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ids returns the distinct ids in raw.
func (e *env) ids() map[string]bool {
	e.t.Helper()
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf("SELECT DISTINCT id FROM %s.events_raw", e.db))
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			e.t.Fatal(err)
		}
		out[id] = true
	}
	return out
}

func (e *env) requireIDs(want map[string]bool) {
	e.t.Helper()
	got := e.ids()
	var missing, extra []string
	for id := range want {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	for id := range got {
		if !want[id] {
			extra = append(extra, id)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		sort.Strings(missing)
		sort.Strings(extra)
		e.t.Fatalf("raw ids: %d missing (%.10q), %d unexpected (%.10q)", len(missing), missing, len(extra), extra)
	}
}

// stream produces batches of n events with ids "<prefix><batch>-<i>" every pause until the
// returned stop is called; want then holds every id produced.
func (e *env) stream(prefix string, n int, pause time.Duration) (want map[string]bool, stop func()) {
	want = map[string]bool{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			ps := make([]string, n)
			for j := range ps {
				id := fmt.Sprintf("%s%d-%d", prefix, i, j)
				ps[j] = ev(id, time.Now(), "US", 3)
				want[id] = true
			}
			if err := e.send(ps); err != nil {
				e.t.Errorf("produce: %v", err)
				return
			}
			time.Sleep(pause)
		}
	}()
	return want, func() { close(done); wg.Wait() }
}

func ev(id string, t time.Time, country string, value float64) string {
	b, _ := json.Marshal(map[string]any{"event_id": id, "ts": t.UTC().Format(time.RFC3339Nano), "event": "view",
		"country": country, "device": "ios", "user_id": "u" + id, "value": value})
	return string(b)
}

func (e *env) exec(q string) {
	e.t.Helper()
	if err := e.conn.Exec(context.Background(), q); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
}

func TestAccountsForEveryRecord(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Speed.MaxEventBytes = 2048
		c.Datasets[0].RawRetention = config.Duration(400 * 24 * time.Hour)
	})
	now := time.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	sealed := today.AddDate(0, 0, -2)
	// The batch sealed everything up to two days ago; one of those days had a successful run
	// an hour ago, so a late row makes it dirty.
	e.exec(fmt.Sprintf("INSERT INTO %s.batch_watermarks (dataset, watermark, run_id, at, at_us) SELECT 'events', toDate('%s'), 'r1', now(), 1",
		e.db, sealed.Format(time.DateOnly)))
	lateDay := today.AddDate(0, 0, -3)
	e.exec(fmt.Sprintf(`INSERT INTO %s.batch_runs (dataset, day, run_id, status, at, at_us, started_at, finished_at, rows_raw, rows_dedup, rows_out, error, host)
SELECT 'events', toDate('%s'), 'r1', 'succeeded', now() - 3600, 1, now() - 3600, now() - 3500, 0, 0, 0, '', 'test'`, e.db, lateDay.Format(time.DateOnly)))

	reg := prometheus.NewRegistry()
	var payloads []string
	want := map[string]bool{}
	// Recent events, within the last hour.
	for i := range 2000 {
		id := fmt.Sprintf("r%d", i)
		payloads = append(payloads, ev(id, now.Add(-time.Duration(i)*time.Second), []string{"DE", "FR", "US"}[i%3], float64(i%50)))
		want[id] = true
	}
	// Late events, one per day from three to 152 days back: more days than one insert may
	// hold on current ClickHouse, all at or before the watermark.
	for i := range 150 {
		id := fmt.Sprintf("l%d", i)
		payloads = append(payloads, ev(id, today.AddDate(0, 0, -3-i).Add(time.Hour), "DE", 1))
		want[id] = true
	}
	// Duplicates: the same records again.
	for i := range 200 {
		payloads = append(payloads, payloads[i*7])
	}
	// Events without an id get one from their offset.
	for range 10 {
		payloads = append(payloads, fmt.Sprintf(`{"ts":%d,"event":"click"}`, now.UnixMilli()))
	}
	// Malformed events, five of each reason.
	bad := map[event.Reason]string{
		event.InvalidJSON: `{"event_id": "x", "ts": `,
		event.MissingTime: `{"event_id": "x"}`,
		event.BadTime:     `{"event_id": "x", "ts": "yesterday-ish"}`,
		event.FutureTime:  fmt.Sprintf(`{"event_id": "x", "ts": %d}`, now.Add(240*time.Hour).UnixMilli()),
		event.TooOld:      `{"event_id": "x", "ts": "2001-01-01T00:00:00Z"}`,
		event.BadType:     fmt.Sprintf(`{"event_id": "x", "ts": %d, "value": "lots"}`, now.UnixMilli()),
		event.TooLarge:    fmt.Sprintf(`{"event_id": "x", "ts": %d, "pad": %q}`, now.UnixMilli(), strings.Repeat("p", 3000)),
	}
	for _, r := range event.DecoderReasons {
		for range 5 {
			payloads = append(payloads, bad[r])
		}
	}
	e.produce(payloads...)
	r := e.speed("t1", reg)
	e.waitAccounted(time.Minute)
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}

	for id := range e.ids() {
		if strings.HasPrefix(id, "k:events:") {
			want[id] = true
		}
	}
	if n := len(want); n != 2000+150+10 {
		t.Fatalf("%d ids expected, want %d (offset-derived ids missing?)", n, 2160)
	}
	e.requireIDs(want)
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)); n != 2160 {
		t.Errorf("raw holds %d rows, want 2160 (duplicates not dropped?)", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw WHERE isNull(value)", e.db)); n != 10 {
		t.Errorf("%d rows with a NULL value, want the 10 events without one", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw WHERE value = 0", e.db)); n != 40 {
		t.Errorf("%d rows with value 0, want 40 (i %% 50 == 0)", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw WHERE _late = 1", e.db)); n != 150 {
		t.Errorf("%d late rows, want 150", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT countMerge(events) FROM %s.events_speed", e.db)); n != 2010 {
		t.Errorf("speed counts %d events, want 2010 (late events go to raw only)", n)
	}
	for _, r := range event.DecoderReasons {
		if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_rejects WHERE reason = '%s' AND payload != '' AND detail != ''", e.db, r)); n != 5 {
			t.Errorf("%d rejects for %s, want 5", n, r)
		}
		if got := metricSum(t, reg, "lambda_speed_rejected_total", string(r)); got != 5 {
			t.Errorf("lambda_speed_rejected_total{reason=%q} = %v, want 5", r, got)
		}
	}
	if n := e.uint(fmt.Sprintf("SELECT sum(duplicate_rows) FROM %s.speed_flushes", e.db)); n != 200 {
		t.Errorf("ledger counts %d duplicates, want 200", n)
	}
	days, err := ledger.ReadDays(context.Background(), e.conn, e.db, "events")
	if err != nil {
		t.Fatal(err)
	}
	dirty := days.Dirty(today.AddDate(0, 0, -10))
	if !slices.ContainsFunc(dirty, func(d time.Time) bool { return d.Equal(lateDay) }) {
		t.Errorf("dirty days %v do not include %s, which got a late row after its run", dirty, lateDay.Format(time.DateOnly))
	}
	for name, want := range map[string]float64{
		"lambda_speed_consumed_total": float64(len(payloads)), "lambda_speed_duplicates_total": 200,
		"lambda_speed_corrections_total": 150,
	} {
		if got := metricSum(t, reg, name, ""); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// The speed watermark is readable by other processes.
	wm, parts, err := ledger.Speed(context.Background(), e.conn, e.db, "events", time.Now(), nil)
	if err != nil || len(parts) != 3 || wm.IsZero() {
		t.Fatalf("speed watermark %v, partitions %+v, err %v", wm, parts, err)
	}
	for _, p := range parts {
		if p.Lag != 0 {
			t.Errorf("partition %d lags %d after the ledger is complete", p.Partition, p.Lag)
		}
	}
}

// metricSum sums the series of a metric family in reg (those with the given reason label,
// when reason is set).
func metricSum(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := reason == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					ok = true
				}
			}
			if ok {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func TestClickHouseOutage(t *testing.T) {
	// The speed layer reaches ClickHouse through a proxy the test cuts: ClickHouse is gone for
	// it while the server keeps serving the other tests.
	var px *nettest.Proxy
	e := newEnv(t, func(c *config.Config) {
		px = nettest.NewProxy(t, chtest.Addr())
		c.Speed.RetryMax = config.Duration(time.Second)
	})
	// The speed layer reaches ClickHouse only through the proxy.
	cfg := *e.cfg
	cfg.ClickHouse.Addr = []string{px.Addr()}
	cfg.ClickHouse.DialTimeout = config.Duration(time.Second)
	cfg.ClickHouse.InsertTimeout = config.Duration(5 * time.Second)
	e.cfg = &cfg
	want := map[string]bool{}
	batch := func(from, n int) {
		var ps []string
		for i := from; i < from+n; i++ {
			id := fmt.Sprintf("o%d", i)
			ps = append(ps, ev(id, time.Now(), "DE", 1))
			want[id] = true
		}
		e.produce(ps...)
	}
	reg := prometheus.NewRegistry()
	r := e.speed("t1", reg)
	batch(0, 1000)
	e.waitAccounted(time.Minute)

	px.Cut()
	batch(1000, 3000)
	time.Sleep(3 * time.Second)
	if r.exited() {
		t.Fatalf("speed layer exited while ClickHouse was unreachable: %v", r.err)
	}
	if errs := metricSum(t, reg, "lambda_speed_insert_errors_total", ""); errs == 0 {
		t.Fatal("no failed insert while ClickHouse was unreachable: the outage was not felt")
	}
	if n := uint64(len(e.ids())); n != 1000 {
		t.Fatalf("raw holds %d ids during the outage, want the 1000 from before", n)
	}
	px.Restore()
	batch(4000, 1000)
	e.waitAccounted(2 * time.Minute)
	e.requireIDs(want)
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

func TestRebalanceBetweenProcesses(t *testing.T) {
	e := newEnv(t, nil)
	want, stop := e.stream("b", 100, 20*time.Millisecond)
	first := e.speed("first", nil)
	time.Sleep(2 * time.Second)
	second := e.speed("second", nil)
	time.Sleep(5 * time.Second)
	if err := first.stop(); err != nil {
		t.Fatalf("first process: %v", err)
	}
	time.Sleep(3 * time.Second)
	stop()
	e.waitAccounted(time.Minute)
	e.requireIDs(want)
	if n := e.uint(fmt.Sprintf("SELECT uniqExact(consumer) FROM %s.speed_flushes WHERE raw_rows > 0", e.db)); n != 2 {
		t.Errorf("%d consumers flushed rows, want both", n)
	}
	if err := second.stop(); err != nil {
		t.Fatalf("second process: %v", err)
	}
}

// TestKilledAndRestarted SIGKILLs a speed process mid-stream and starts another: raw must
// hold every id produced, and the ledger every offset.
func TestKilledAndRestarted(t *testing.T) { killed(t, newEnv(t, nil), false) }

// TestClusterKilledConsumer runs two speed processes against the ClickHouse cluster (inserts
// through the Distributed raw table) and SIGKILLs one mid-stream: the other takes its
// partitions and nothing is lost.
func TestClusterKilledConsumer(t *testing.T) { killed(t, newEnvOn(t, true, nil), true) }

func killed(t *testing.T, e *env, together bool) {
	cfgPath := t.TempDir() + "/lambda.yaml"
	out, err := yaml.Marshal(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, out, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("speed process output:\n%s", logs.String())
			t.Logf("consumer group: %s", e.describeGroup())
		}
	})
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSpeedProcess$")
		cmd.Env = append(os.Environ(), "LAMBDA_SPEED_HELPER="+cfgPath)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if os.Getenv("LAMBDA_SPEED_CHILD_STDERR") != "" {
			cmd.Stderr = os.Stderr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	want, stop := e.stream("k", 200, 10*time.Millisecond)
	first := start()
	var second *exec.Cmd
	if together {
		second = start()
	}
	deadline := time.Now().Add(time.Minute)
	for e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)) < 2000 {
		if time.Now().After(deadline) {
			t.Fatal("nothing was inserted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	if !together {
		time.Sleep(time.Second)
		second = start()
	}
	time.Sleep(3 * time.Second)
	stop()
	// A member killed during a rebalance holds the group until the rebalance timeout.
	e.waitAccounted(2 * time.Minute)
	e.requireIDs(want)
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("after SIGTERM the speed process exited with %v, want 0", err)
	}
}

// describeGroup says who holds which partition of the dataset's consumer group, for the
// output of a failed test.
func (e *env) describeGroup() string {
	adm, err := sarama.NewClusterAdmin(e.cfg.Kafka.Brokers, sarama.NewConfig())
	if err != nil {
		return err.Error()
	}
	defer adm.Close()
	gs, err := adm.DescribeConsumerGroups([]string{e.cfg.Kafka.GroupPrefix + "-events"})
	if err != nil || len(gs) == 0 {
		return fmt.Sprint("cannot describe: ", err)
	}
	out := "state " + gs[0].State
	for id, m := range gs[0].Members {
		var parts []int32
		if a, err := m.GetMemberAssignment(); err == nil && a != nil {
			parts = a.Topics["events"]
		}
		out += fmt.Sprintf("; %s (%s) holds %v", id, m.ClientHost, parts)
	}
	return out
}

// TestHelperSpeedProcess is the speed layer as a process of its own for TestKilledAndRestarted.
func TestHelperSpeedProcess(t *testing.T) {
	path := os.Getenv("LAMBDA_SPEED_HELPER")
	if path == "" {
		t.Skip("runs only as TestKilledAndRestarted's child process")
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	s, err := New(cfg, Options{Logger: slog.Default(), ConsumerID: fmt.Sprint("pid-", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer collects the output of child processes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
