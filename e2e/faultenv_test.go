package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
)

// The fault suite's environment: one ClickHouse database and one broker process per test,
// and per scenario a dataset of its own with its own `lambda speed`, `lambda batch` and
// `lambda serve` processes (a config holding only that dataset), so that the processes one
// scenario kills or stalls disturb no other.

const faultHeader = `clickhouse: {addr: ["%s"], database: %s}
kafka: {brokers: ["%s"], group_prefix: faults}
speed: {flush_interval: 300ms, metrics_listen: "127.0.0.1:%d"}
batch: {metrics_listen: "127.0.0.1:%d"}
serving: {listen: "127.0.0.1:%d"}
datasets:
`

// faultDataset has a metric of every type (a sum of each kind: Float64 and exact decimals),
// over fields that some events lack, and a dimension from a nested field. The batch schedule is
// overridden by --schedule.
const faultDataset = `  - name: %[1]s
    topic: %[1]s
    id_field: order_id
    time_field: ts
    dimensions: [{name: channel, field: channel}, {name: country, field: shipping.country}]
    metrics:
      - {name: orders, type: count}
      - {name: customers, type: uniq, field: customer.id}
      - {name: revenue, type: sum, field: amount}
      - {name: min_amount, type: min, field: amount}
      - {name: max_amount, type: max, field: amount}
      - {name: avg_amount, type: avg, field: amount}
      - {name: p90_amount, type: quantile, field: amount, level: 0.9}
      - {name: revenue_exact, type: sum, field: amount, decimals: 2}
      - {name: revenue_per_order, type: ratio, numerator: revenue, denominator: orders}
    batch: {schedule: "@every 1h", grace: 1s, lookback: 240h}
    speed: {retention: 72h}
`

// faultSchedule is the scheduler's period in the suite (lambda batch --schedule).
const faultSchedule = "@every 2s"

const faultPartitions = 4

type faultEnv struct {
	t          *testing.T
	ch         *clickhouse
	conn       driver.Conn
	db         string
	dir        string
	brokerAddr string
	broker     *proc
	client     sarama.Client
	admin      sarama.ClusterAdmin
	adminMu    sync.Mutex
	producer   sarama.SyncProducer
	// gaps are raw rows flagged exact for incomplete or unrun days (rawExactIsFinal).
	gapsMu sync.Mutex
	gaps   []string
}

// newFaultEnv starts a broker with a topic per dataset and creates the schema of every
// dataset in a database of the test's own on ch.
func newFaultEnv(t *testing.T, ch *clickhouse, datasets []string) *faultEnv {
	t.Helper()
	start := time.Now()
	binary(t)
	built := time.Now()
	e := &faultEnv{t: t, ch: ch, dir: t.TempDir(), brokerAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg := chtest.Config(t, nil)
	e.db = cfg.ClickHouse.Database
	cfg.ClickHouse.Addr = []string{ch.addr()}
	if ch.env == nil {
		e.conn = chtest.New(t, cfg)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := chconn.Open(ctx, cfg.ClickHouse)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		e.conn = conn
	}
	all := e.writeConfig("all", datasets...)
	e.broker = startProc(t, "broker", nil, "broker", "--config", all, "--partitions", strconv.Itoa(faultPartitions))
	waitPort(t, e.brokerAddr)
	mig := startProc(t, "migrate", nil, "migrate", "--config", all)
	if err := waitExit(mig, 2*time.Minute); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	sc.ClientID = "faults-test"
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	sc.Producer.Flush.Frequency = 5 * time.Millisecond
	var err error
	if e.client, err = sarama.NewClient([]string{e.brokerAddr}, sc); err != nil {
		t.Fatal(err)
	}
	if e.admin, err = sarama.NewClusterAdminFromClient(e.client); err != nil {
		t.Fatal(err)
	}
	if e.producer, err = sarama.NewSyncProducerFromClient(e.client); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.producer.Close()
		_ = e.admin.Close() // closes the client
	})
	t.Logf("environment ready in %s (build %s): broker and schema of %d datasets in %s", time.Since(start).Round(time.Millisecond),
		built.Sub(start).Round(time.Millisecond), len(datasets), e.db)
	return e
}

// writeConfig writes a config holding datasets, with ports of its own, and returns its path.
func (e *faultEnv) writeConfig(name string, datasets ...string) string {
	e.t.Helper()
	text := fmt.Sprintf(faultHeader, e.ch.addr(), e.db, e.brokerAddr, freePort(e.t), freePort(e.t), freePort(e.t))
	for _, ds := range datasets {
		text += fmt.Sprintf(faultDataset, ds)
	}
	path := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// stack is one scenario's dataset with its processes and ground truth.
type stack struct {
	t                   *testing.T
	e                   *faultEnv
	ds, topic, group    string
	cfgPath             string
	cfg                 *config.Config
	base                string // the API
	speedHealth         string // lambda speed's /healthz
	speed, batch, serve *proc
	log                 *truthLog
	gen                 *orderGen
	style               int
	seenRuns            map[string]bool // runs waitRunning returned
}

// stack starts `lambda serve` and `lambda speed` for the scenario's dataset, "f_" and the
// subtest's name (the env created its schema); the scenario starts the batch scheduler
// (startBatch).
func (e *faultEnv) stack(t *testing.T, seed uint64) *stack {
	t.Helper()
	clearOfMidnight(t, time.Minute)
	ds := "f_" + path.Base(t.Name())
	s := &stack{t: t, e: e, ds: ds, topic: ds, group: "faults-" + ds, log: &truthLog{}, gen: newOrderGen(seed, ds)}
	s.cfgPath = e.writeConfig(ds, ds)
	cfg, err := config.Load(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cfg = cfg
	s.base = "http://" + cfg.Serving.Listen
	s.speedHealth = "http://" + cfg.Speed.MetricsListen + "/healthz"
	s.serve = startProc(t, ds+"/serve", nil, "serve", "--config", s.cfgPath)
	s.speed = startProc(t, ds+"/speed", nil, "speed", "--config", s.cfgPath, "--migrate=false")
	t.Cleanup(func() {
		// A stalled process must run again to hear the SIGTERM of startProc's cleanup.
		if s.speed.cmd != nil && s.speed.cmd.Process != nil {
			_ = s.speed.cmd.Process.Signal(syscall.SIGCONT)
		}
		if s.batch != nil && s.batch.cmd != nil && s.batch.cmd.Process != nil {
			_ = s.batch.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	waitPort(t, cfg.Serving.Listen)
	return s
}

// clearOfMidnight waits for the next UTC day when it begins within d: a scenario names its days
// relative to today, and they must not shift while it runs.
func clearOfMidnight(t *testing.T, d time.Duration) {
	next := dayOfT(time.Now()).AddDate(0, 0, 1)
	if wait := time.Until(next); wait < d {
		t.Logf("waiting %s for the UTC day to change first", wait.Round(time.Second))
		time.Sleep(wait + 2*time.Second)
	}
}

// startBatch starts the scheduler (every dataset on faultSchedule), or starts it again.
func (s *stack) startBatch() {
	s.t.Helper()
	if s.batch == nil {
		s.batch = startProc(s.t, s.ds+"/batch", nil, "batch", "--config", s.cfgPath, "--migrate=false", "--schedule", faultSchedule)
		return
	}
	if done, _ := s.batch.exited(); !done {
		s.t.Fatalf("%s is running already", s.batch.name)
	}
	s.batch.start()
}

// batchRun runs `lambda batch run` over [from, to] and waits for it.
func (s *stack) batchRun(from, to time.Time) {
	s.t.Helper()
	p := startProc(s.t, s.ds+"/batch-run", nil, "batch", "--config", s.cfgPath, "run", "--dataset", s.ds,
		"--from", from.Format(time.DateOnly), "--to", to.Format(time.DateOnly))
	if err := waitExit(p, 2*time.Minute); err != nil {
		p.mu.Lock()
		defer p.mu.Unlock()
		s.t.Fatalf("lambda batch run %s..%s: %v\n%s", from.Format(time.DateOnly), to.Format(time.DateOnly), err, tail(p.log.String(), 4096))
	}
}

// produce sends orders to the dataset's topic (dups of them again: duplicates of one id
// carry the same content, as a producer's retry does) and records where the broker put them.
func (s *stack) produce(orders []order, dups int) {
	s.t.Helper()
	all := slices.Clone(orders)
	for i := 0; i < dups && len(orders) > 0; i++ {
		all = append(all, orders[(i*7919)%len(orders)])
	}
	for len(all) > 0 {
		n := min(len(all), 500)
		msgs := make([]*sarama.ProducerMessage, n)
		for i, o := range all[:n] {
			s.style++
			msgs[i] = &sarama.ProducerMessage{Topic: s.topic, Key: sarama.StringEncoder(o.id), Value: sarama.ByteEncoder(o.payload(s.style))}
		}
		if err := s.e.producer.SendMessages(msgs); err != nil {
			s.t.Fatalf("produce to %s: %v", s.topic, err)
		}
		recs := make([]record, n)
		for i, m := range msgs {
			recs[i] = record{part: m.Partition, off: m.Offset, o: all[i]}
		}
		s.log.add(recs)
		all = all[n:]
	}
}

// importRaw inserts orders into <ds>_raw as `lambda import` does: corrections (_late = 1),
// with no Kafka position (_topic ”).
func (s *stack) importRaw(orders []order) {
	s.t.Helper()
	s.log.mu.Lock()
	s.log.imported = append(s.log.imported, orders...)
	s.log.impStarted = len(s.log.imported)
	s.log.mu.Unlock()
	ctx := context.Background()
	b, err := s.e.conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO `%s`.`%s_raw` (id, time, channel, country, customer_id, amount, _topic, _partition, _offset, _late)", s.e.db, s.ds))
	if err != nil {
		s.t.Fatal(err)
	}
	for _, o := range orders {
		if err := b.Append(o.id, o.t, o.channel, o.country, o.customer, o.amount, "", int32(0), int64(0), uint8(1)); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		s.t.Fatal(err)
	}
	s.log.mu.Lock()
	s.log.impDone = s.log.impStarted
	s.log.mu.Unlock()
}

// committed reads the group's committed offsets (0 where none) and the end offsets.
func (s *stack) offsets() (committed, end map[int32]int64, err error) {
	e := s.e
	e.adminMu.Lock()
	defer e.adminMu.Unlock()
	parts := make([]int32, faultPartitions)
	for i := range parts {
		parts[i] = int32(i)
	}
	resp, err := e.admin.ListConsumerGroupOffsets(s.group, map[string][]int32{s.topic: parts})
	if err != nil {
		return nil, nil, fmt.Errorf("committed offsets of %s: %w", s.group, err)
	}
	committed, end = map[int32]int64{}, map[int32]int64{}
	for _, p := range parts {
		if b := resp.GetBlock(s.topic, p); b != nil && b.Err == sarama.ErrNoError && b.Offset > 0 {
			committed[p] = b.Offset
		}
		if end[p], err = e.client.GetOffset(s.topic, p, sarama.OffsetNewest); err != nil {
			return nil, nil, fmt.Errorf("end offset of %s/%d: %w", s.topic, p, err)
		}
	}
	return committed, end, nil
}

// lower is what the platform has certainly consumed: the committed offsets and the rows the
// test finished importing.
func (s *stack) lower() (bounds, error) {
	at := time.Now()
	committed, _, err := s.offsets()
	if err != nil {
		return bounds{}, err
	}
	s.log.mu.Lock()
	imp := s.log.impDone
	s.log.mu.Unlock()
	return bounds{at: at, off: committed, imp: imp}, nil
}

// upper is what the platform may have read: the committed offsets, and past them what the
// speed layer already inserted into raw (a flush inserts before it commits, and a process
// killed in between leaves rows in raw whose offsets are not committed), and the rows the test
// began importing. It also returns the committed offsets alone.
func (s *stack) upper() (bounds, map[int32]int64, error) {
	s.log.mu.Lock()
	imp := s.log.impStarted
	s.log.mu.Unlock()
	committed, _, err := s.offsets()
	if err != nil {
		return bounds{}, nil, err
	}
	out, err := s.e.ch.query(fmt.Sprintf("SELECT _partition, max(_offset) + 1 FROM `%s`.`%s_raw` WHERE _topic = '%s' GROUP BY _partition FORMAT TabSeparated", s.e.db, s.ds, s.topic))
	if err != nil {
		return bounds{}, nil, err
	}
	b := bounds{at: time.Now(), off: map[int32]int64{}, imp: imp}
	for p, o := range committed {
		b.off[p] = o
	}
	for _, line := range lines(out) {
		f := strings.Split(line, "\t")
		p, _ := strconv.Atoi(f[0])
		o, _ := strconv.ParseInt(f[1], 10, 64)
		b.off[int32(p)] = max(b.off[int32(p)], o)
	}
	return b, committed, nil
}

func lines(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(strings.TrimSpace(s), "\n")
}

// caughtUp reports whether the group committed every record of the topic.
func (s *stack) caughtUp() error {
	committed, end, err := s.offsets()
	if err != nil {
		return err
	}
	for p, e := range end {
		if committed[p] < e {
			return fmt.Errorf("partition %d: committed %d of %d", p, committed[p], e)
		}
	}
	return nil
}

func (s *stack) waitCaughtUp(timeout time.Duration) {
	s.t.Helper()
	eventually(s.t, timeout, s.ds+": every record consumed and committed", s.caughtUp)
}

// succeeded lists the days with a successful run.
func (s *stack) succeeded() (map[time.Time]bool, error) {
	out, err := s.e.ch.query(fmt.Sprintf("SELECT DISTINCT toString(day) FROM `%s`.batch_runs WHERE dataset = '%s' AND status = 'succeeded' FORMAT TabSeparated", s.e.db, s.ds))
	if err != nil {
		return nil, err
	}
	days := map[time.Time]bool{}
	for _, l := range lines(out) {
		d, err := time.Parse(time.DateOnly, l)
		if err != nil {
			return nil, err
		}
		days[d] = true
	}
	return days, nil
}

// boundaries returns the persisted batch boundaries in the order they were written.
func (s *stack) boundaries() []string {
	s.t.Helper()
	out, err := s.e.ch.query(fmt.Sprintf("SELECT toString(watermark) FROM `%s`.batch_watermarks WHERE dataset = '%s' ORDER BY at_us FORMAT TabSeparated", s.e.db, s.ds))
	if err != nil {
		s.t.Fatal(err)
	}
	return lines(out)
}

// requireBoundaryNeverBack fails when the persisted boundary ever moved back.
func (s *stack) requireBoundaryNeverBack() {
	s.t.Helper()
	b := s.boundaries()
	for i := 1; i < len(b); i++ {
		if b[i] < b[i-1] {
			s.t.Errorf("%s: the persisted boundary moved back from %s to %s (history %v)", s.ds, b[i-1], b[i], b)
		}
	}
}

// row is one row of the API or the view: a group's metrics, source and exact flag.
type row struct {
	key    groupKey
	vals   map[string]*float64
	source string
	exact  bool
}

// apiQuery is one of the queries the checker sends: by day, a grouping set, exact:true or not.
type apiQuery struct {
	dims  []string
	exact bool
}

func (q apiQuery) String() string {
	return fmt.Sprintf("API dims=%v exact=%v", q.dims, q.exact)
}

var faultQueries = []apiQuery{{}, {dims: []string{"channel"}}, {dims: []string{"channel", "country"}}, {exact: true}}

type apiMeta struct {
	BatchWatermark     *string  `json:"batch_watermark"`
	PendingCorrections []string `json:"pending_corrections"`
}

// query asks the API for every metric by day over the last ten days and today.
func (s *stack) query(ctx context.Context, q apiQuery) ([]row, apiMeta, error) {
	today := dayOfT(time.Now())
	req := map[string]any{"dataset": s.ds, "metrics": faultMetrics, "granularity": "day", "exact": q.exact,
		"from": today.AddDate(0, 0, -10).Format(time.RFC3339), "to": today.AddDate(0, 0, 1).Format(time.RFC3339)}
	if len(q.dims) > 0 {
		req["dimensions"] = q.dims
	}
	var res struct {
		Rows []map[string]any `json:"rows"`
		Meta apiMeta          `json:"meta"`
	}
	if _, err := api(ctx, s.base, "POST", "/api/v1/query", req, &res); err != nil {
		return nil, apiMeta{}, err
	}
	out := make([]row, 0, len(res.Rows))
	for _, r := range res.Rows {
		ts, _ := r["time"].(string)
		d, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return nil, apiMeta{}, fmt.Errorf("row time %q: %v", ts, err)
		}
		x := row{key: groupKey{day: d.UTC(), grouping: strings.Join(q.dims, ",")}, vals: map[string]*float64{}}
		x.key.channel, _ = r["channel"].(string)
		x.key.country, _ = r["country"].(string)
		x.source, _ = r["source"].(string)
		x.exact, _ = r["exact"].(bool)
		for _, m := range faultMetrics {
			switch v := r[m].(type) {
			case float64:
				x.vals[m] = &v
			case nil:
			default:
				return nil, apiMeta{}, fmt.Errorf("metric %s: %T %v", m, v, v)
			}
		}
		out = append(out, x)
	}
	return out, res.Meta, nil
}

// view reads <ds>_lambda through ClickHouse's HTTP interface, the rows where cond holds.
func (s *stack) view(cond string) ([]row, error) {
	cols := []string{"toString(day)", "grouping", "channel", "country"}
	for _, m := range faultMetrics {
		cols = append(cols, "toString("+m+")")
	}
	cols = append(cols, "source", "exact")
	out, err := s.e.ch.query(fmt.Sprintf("SELECT %s FROM `%s`.`%s_lambda` WHERE %s FORMAT TabSeparated", strings.Join(cols, ", "), s.e.db, s.ds, cond))
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, l := range lines(out) {
		f := strings.Split(l, "\t")
		if len(f) != len(cols) {
			return nil, fmt.Errorf("view row %q: %d fields, want %d", l, len(f), len(cols))
		}
		d, err := time.Parse(time.DateOnly, f[0])
		if err != nil {
			return nil, err
		}
		x := row{key: groupKey{day: d, grouping: f[1], channel: f[2], country: f[3]}, vals: map[string]*float64{}, source: f[4+len(faultMetrics)], exact: f[5+len(faultMetrics)] == "1"}
		for i, m := range faultMetrics {
			if f[4+i] == `\N` {
				continue
			}
			v, err := strconv.ParseFloat(f[4+i], 64)
			if err != nil {
				return nil, fmt.Errorf("view %s %q: %v", m, f[4+i], err)
			}
			x.vals[m] = &v
		}
		rows = append(rows, x)
	}
	return rows, nil
}

// dayExact reports whether the API answers day from batch, exact.
func (s *stack) dayExact(day time.Time) error {
	rows, _, err := s.query(context.Background(), apiQuery{})
	if err != nil {
		return err
	}
	for _, r := range rows {
		if r.key.day.Equal(day) {
			if r.exact && r.source == "batch" {
				return nil
			}
			return fmt.Errorf("%s: source %s exact %v", day.Format(time.DateOnly), r.source, r.exact)
		}
	}
	return fmt.Errorf("%s: no row", day.Format(time.DateOnly))
}

// settle is assertion (b): once every record is consumed, every day before today holding
// orders is sealed by the scheduler, and then the API (every grouping set the checker uses)
// and the view answer each of those days exact, from batch, equal to the truth for every
// metric; the persisted boundary never moved back.
func (s *stack) settle(timeout time.Duration) {
	s.t.Helper()
	s.waitCaughtUp(timeout)
	today := dayOfT(time.Now())
	var sealed []time.Time
	for _, d := range s.log.days() {
		if d.Before(today) {
			sealed = append(sealed, d)
		}
	}
	if len(sealed) == 0 {
		s.t.Fatal("settle: no sealed day to check")
	}
	eventually(s.t, timeout, s.ds+": every day before today exact from batch", func() error {
		var errs []error
		for _, d := range sealed {
			errs = append(errs, s.dayExact(d))
		}
		return errors.Join(errs...)
	})
	truth := s.log.truth(s.log.all())
	want := map[groupKey]bool{}
	for k := range truth {
		if k.day.Before(today) {
			want[k] = true
		}
	}
	compare := func(what string, rows []row, grouping func(string) bool) {
		got := map[groupKey]bool{}
		for _, r := range rows {
			if !r.key.day.Before(today) {
				continue
			}
			got[r.key] = true
			a, ok := truth[r.key]
			if !ok {
				s.t.Errorf("%s %s: a row for a group without orders: %v", what, r.key, r.vals)
				continue
			}
			if !r.exact || r.source != "batch" {
				s.t.Errorf("%s %s: source %s exact %v after recovery, want batch and exact", what, r.key, r.source, r.exact)
			}
			for _, m := range faultMetrics {
				if w := a.value(m); !sameVal(r.vals[m], w) {
					s.t.Errorf("%s %s: %s = %s, truth %s", what, r.key, m, fmtVal(r.vals[m]), fmtVal(w))
				}
			}
		}
		for k := range want {
			if grouping(k.grouping) && !got[k] {
				s.t.Errorf("%s %s: no row, truth %d orders", what, k, truth[k].orders)
			}
		}
	}
	for _, q := range faultQueries {
		rows, _, err := s.query(context.Background(), q)
		if err != nil {
			s.t.Fatal(err)
		}
		g := strings.Join(q.dims, ",")
		compare(q.String(), rows, func(x string) bool { return x == g })
	}
	rows, err := s.view(fmt.Sprintf("day < toDate('%s')", today.Format(time.DateOnly)))
	if err != nil {
		s.t.Fatal(err)
	}
	compare("view", rows, func(string) bool { return true })
	s.requireBoundaryNeverBack()
}
