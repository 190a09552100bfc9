package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
)

// truth is the ground truth the test keeps of what the broker acknowledged.
type truth struct {
	mu        sync.Mutex
	ids       map[string]bool
	perDay    map[string]int             // unique events per day
	users     map[string]map[string]bool // distinct users per day
	malformed int
}

func newTruth() *truth {
	return &truth{ids: map[string]bool{}, perDay: map[string]int{}, users: map[string]map[string]bool{}}
}

func (tr *truth) add(e gen.Event) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if e.Kind == gen.Malformed {
		tr.malformed++
		return
	}
	if tr.ids[e.ID] {
		return
	}
	tr.ids[e.ID] = true
	day := e.Time.UTC().Format("2006-01-02")
	tr.perDay[day]++
	var m struct {
		User string `json:"user_id"`
	}
	_ = json.Unmarshal(e.Value, &m)
	if tr.users[day] == nil {
		tr.users[day] = map[string]bool{}
	}
	tr.users[day][m.User] = true
}

const e2eConfig = `clickhouse: {addr: ["%s"], database: lambda_e2e}
kafka: {brokers: ["%s"], group_prefix: e2e}
speed: {flush_interval: 500ms, metrics_listen: "127.0.0.1:%d"}
batch: {metrics_listen: "127.0.0.1:%d"}
serving: {listen: "127.0.0.1:%d"}
datasets:
  - name: events
    topic: events
    id_field: event_id
    time_field: ts
    dimensions: [{name: event, field: event}, {name: country, field: country}, {name: device, field: device}]
    metrics:
      - {name: events, type: count}
      - {name: users, type: uniq, field: user_id}
      - {name: revenue, type: sum, field: value}
    batch: {schedule: "@every 3s", grace: 1m, lookback: 96h}
    speed: {retention: 120h}
`

// TestEndToEnd is the product as separate processes with faults: a SIGKILLed speed process, a
// ClickHouse restart during inserts, a broker restart, a flood of poison events, two speed
// processes rebalancing, and the batch process killed mid-run. Nothing may be lost, and every
// sealed day must be exact through the API and through analyst SQL.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	t.Parallel()
	ch := startClickHouse(t)
	dir := t.TempDir()
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	servePort := freePort(t)
	cfgPath := filepath.Join(dir, "lambda.yaml")
	cfgText := fmt.Sprintf(e2eConfig, ch.addr(), brokerAddr, freePort(t), freePort(t), servePort)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ds := &cfg.Datasets[0]
	brokerArgs := []string{"broker", "--config", cfgPath, "--partitions", "4", "--data-dir", filepath.Join(dir, "kafka")}
	brk := startProc(t, "broker", nil, brokerArgs...)
	waitPort(t, brokerAddr)

	mig := startProc(t, "migrate", nil, "migrate", "--config", cfgPath)
	if err := waitExit(mig, 60*time.Second); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	speedEnv := func() []string { return []string{fmt.Sprintf("LAMBDA_SPEED_METRICS_LISTEN=127.0.0.1:%d", freePort(t))} }
	speed1 := startProc(t, "speed1", speedEnv(), "speed", "--config", cfgPath)
	batch := startProc(t, "batch", nil, "batch", "--config", cfgPath)
	serve := startProc(t, "serve", nil, "serve", "--config", cfgPath)
	base := fmt.Sprintf("http://127.0.0.1:%d", servePort)

	tr := newTruth()
	producer, err := gen.NewProducer(config.Kafka{Brokers: []string{brokerAddr}}, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	g := gen.New(ds, gen.Options{Seed: 42, Days: 3, DupRatio: 0.05, LateRatio: 0, BadRatio: 0.01, Users: 800})
	ctx := context.Background()
	produce := func(o gen.ProduceOptions) {
		t.Helper()
		o.OnEvent = tr.add
		if _, err := gen.Produce(ctx, producer, ds.Topic, g, o); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}

	// History, then a second speed process joins: the group rebalances between them.
	produce(gen.ProduceOptions{History: 12000})
	speed2 := startProc(t, "speed2", speedEnv(), "speed", "--config", cfgPath)
	produce(gen.ProduceOptions{History: 6000})

	// SIGKILL one speed process mid-stream and start it again.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); produce(gen.ProduceOptions{History: 8000}) }()
	time.Sleep(300 * time.Millisecond)
	_ = speed1.stop(syscall.SIGKILL)
	wg.Wait()
	speed1.start()

	// Restart ClickHouse while events flow: the speed layer must wait, retry and lose nothing.
	wg.Add(1)
	go func() { defer wg.Done(); produce(gen.ProduceOptions{History: 8000}) }()
	time.Sleep(200 * time.Millisecond)
	ch.run("stop")
	time.Sleep(3 * time.Second)
	ch.run("start")
	wg.Wait()

	// Restart the broker (its log persists in --data-dir); the consumers reconnect.
	producer.Close()
	_ = brk.stop(syscall.SIGTERM)
	brk.start()
	waitPort(t, brokerAddr)
	producer, err = gen.NewProducer(config.Kafka{Brokers: []string{brokerAddr}}, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	// A flood of poison events, then more good ones.
	poison := gen.New(ds, gen.Options{Seed: 7, BadRatio: 1})
	if _, err := gen.Produce(ctx, producer, ds.Topic, poison, gen.ProduceOptions{History: 3000, OnEvent: tr.add}); err != nil {
		t.Fatal(err)
	}
	produce(gen.ProduceOptions{History: 4000})

	// Kill the batch process while it works and start it again.
	time.Sleep(2 * time.Second)
	_ = batch.stop(syscall.SIGKILL)
	batch.start()

	for _, p := range []*proc{speed1, speed2, serve, batch} {
		if done, err := p.exited(); done {
			t.Fatalf("%s exited: %v", p.name, err)
		}
	}

	// Nothing lost: every unique id is in raw exactly as produced.
	db := cfg.ClickHouse.Database
	tr.mu.Lock()
	wantIDs, wantBad := len(tr.ids), tr.malformed
	tr.mu.Unlock()
	eventually(t, 3*time.Minute, "every unique id in raw", func() error {
		got, err := ch.query(fmt.Sprintf("SELECT uniqExact(id) FROM %s.events_raw", db))
		if err != nil {
			return err
		}
		if got != strconv.Itoa(wantIDs) {
			return fmt.Errorf("raw holds %s unique ids, produced %d", got, wantIDs)
		}
		return nil
	})
	eventually(t, time.Minute, "every malformed event in rejects", func() error {
		got, err := ch.query(fmt.Sprintf("SELECT uniqExact(_partition, _offset) FROM %s.events_rejects", db))
		if err != nil {
			return err
		}
		if got != strconv.Itoa(wantBad) {
			return fmt.Errorf("rejects hold %s offsets, produced %d malformed", got, wantBad)
		}
		return nil
	})
	// The ledger covers every offset below the committed one without a gap.
	checkLedger(t, ch, db)

	// Every sealed day exact, through the API and through the analyst view.
	today := time.Now().UTC().Truncate(24 * time.Hour)
	yesterday := today.AddDate(0, 0, -1).Format("2006-01-02")
	eventually(t, 3*time.Minute, "batch watermark reaches yesterday", func() error {
		var fr struct {
			Datasets []struct {
				Name           string `json:"dataset"`
				BatchWatermark string `json:"batch_watermark"`
			} `json:"datasets"`
		}
		if _, err := api(ctx, base, "GET", "/api/v1/freshness", nil, &fr); err != nil {
			return err
		}
		for _, d := range fr.Datasets {
			if d.Name == "events" && strings.HasPrefix(d.BatchWatermark, yesterday) {
				return nil
			}
		}
		return fmt.Errorf("freshness: %+v", fr)
	})
	from := today.AddDate(0, 0, -4)
	var res struct {
		Rows []map[string]any `json:"rows"`
		Meta map[string]any   `json:"meta"`
	}
	req := map[string]any{"dataset": "events", "metrics": []string{"events", "users"}, "granularity": "day",
		"from": from.Format(time.RFC3339), "to": today.Format(time.RFC3339)}
	if _, err := api(ctx, base, "POST", "/api/v1/query", req, &res); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	seen := 0
	for _, r := range res.Rows {
		day := fmt.Sprint(r["time"])[:10]
		if r["source"] != "batch" || r["exact"] != true {
			t.Errorf("%s: source %v exact %v, want batch and exact", day, r["source"], r["exact"])
		}
		if got, want := num(r["events"]), tr.perDay[day]; got != want {
			t.Errorf("%s: API events %d, truth %d", day, got, want)
		}
		if got, want := num(r["users"]), len(tr.users[day]); got != want {
			t.Errorf("%s: API users %d, truth %d", day, got, want)
		}
		seen++
	}
	if seen < 3 {
		t.Errorf("API returned %d sealed days, want at least 3: %+v", seen, res)
	}
	out, err := ch.query(fmt.Sprintf("SELECT toString(day), events, users, source FROM %s.events_lambda WHERE grouping = '' AND day < today() ORDER BY day", db))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			continue
		}
		if f[1] != strconv.Itoa(tr.perDay[f[0]]) || f[2] != strconv.Itoa(len(tr.users[f[0]])) || f[3] != "batch" {
			t.Errorf("analyst view %s: events %s users %s source %s; truth %d, %d", f[0], f[1], f[2], f[3], tr.perDay[f[0]], len(tr.users[f[0]]))
		}
	}
	for _, p := range []*proc{speed1, speed2} {
		if err := p.stop(syscall.SIGTERM); err != nil {
			t.Errorf("%s: SIGTERM exit: %v", p.name, err)
		}
	}
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// checkLedger verifies that for every partition, the offset ranges in speed_flushes cover
// every offset from the first to the last without a gap.
func checkLedger(t *testing.T, ch *clickhouse, db string) {
	t.Helper()
	out, err := ch.query(fmt.Sprintf("SELECT partition, first_offset, last_offset FROM %s.speed_flushes WHERE dataset = 'events' AND last_offset >= first_offset ORDER BY partition, first_offset", db))
	if err != nil {
		t.Fatal(err)
	}
	type rng struct{ first, last int64 }
	parts := map[string][]rng{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			continue
		}
		a, _ := strconv.ParseInt(f[1], 10, 64)
		b, _ := strconv.ParseInt(f[2], 10, 64)
		parts[f[0]] = append(parts[f[0]], rng{a, b})
	}
	if len(parts) == 0 {
		t.Fatal("speed_flushes is empty")
	}
	for p, rs := range parts {
		sort.Slice(rs, func(i, j int) bool { return rs[i].first < rs[j].first })
		if rs[0].first != 0 {
			t.Errorf("partition %s: ledger starts at offset %d", p, rs[0].first)
		}
		covered := rs[0].last
		for _, r := range rs[1:] {
			if r.first > covered+1 {
				t.Errorf("partition %s: offsets %d..%d are in no flush", p, covered+1, r.first-1)
			}
			covered = max(covered, r.last)
		}
	}
}

func waitPort(t *testing.T, addr string) {
	t.Helper()
	eventually(t, 30*time.Second, "listening on "+addr, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func waitExit(p *proc, timeout time.Duration) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", p.name, timeout)
	}
}
