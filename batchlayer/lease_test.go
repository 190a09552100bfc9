package batchlayer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/nettest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestLeaseOneSchedulerAndTakeover runs two schedulers of one dataset with the ZooKeeper lease:
// only the holder runs days; when the holder is cut off from ZooKeeper (what a kill looks like
// to ZooKeeper), it stops swapping at once and the other takes over within a bounded time and
// catches up. No two runs of the dataset ever overlap.
func TestLeaseOneSchedulerAndTakeover(t *testing.T) {
	zkAddr := chtest.ZooKeeper()
	if zkAddr == "" {
		t.Skip("the lease test needs ZooKeeper: run `make cluster-start` and set LAMBDA_TEST_ZOOKEEPER (make test does both)")
	}
	e := newEnv(t)
	e.cfg.Batch.Lease.ZooKeeper = []string{zkAddr}
	e.cfg.Batch.Lease.Path = "/lambda-test/lease"
	const session = 2 * time.Second
	e.cfg.Batch.Lease.SessionTimeout = config.Duration(session)
	rng := rand.New(rand.NewPCG(21, 22))
	var evs []event
	for _, d := range []time.Time{d1, d2, d3} {
		evs = append(evs, gen(rng, d, 300, 0.05, "l")...)
	}
	e.insertRaw(evs)
	e.setNow(d4.Add(time.Hour))
	e.flush(0, 10, 11, d4.Add(time.Hour))

	type swap struct {
		who string
		day time.Time
		at  time.Time
	}
	var mu sync.Mutex
	var swaps []swap
	layer := func(who, zk string) *Layer {
		cfg := *e.cfg
		cfg.Batch.Lease.ZooKeeper = []string{zk}
		saved := e.cfg
		e.cfg = &cfg
		defer func() { e.cfg = saved }()
		return e.layer(Options{Schedule: "@every 1s", BeforeSwap: func(ctx context.Context, ds string, day time.Time) error {
			mu.Lock()
			swaps = append(swaps, swap{who, day, time.Now()})
			mu.Unlock()
			time.Sleep(100 * time.Millisecond) // widen the window two runs could overlap in
			return nil
		}})
	}
	// Cut, the proxy drops every connection and refuses new ones: to ZooKeeper the client is
	// gone without closing its session, as after a kill -9 or a partition, so its session (and
	// lease) expires after the session timeout.
	proxy := nettest.NewProxy(t, zkAddr)
	a, b := layer("a", proxy.Addr()), layer("b", zkAddr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	waitFor(t, 30*time.Second, "a to seal three days", func() bool { return e.watermark() == "2024-03-03" })
	wg.Go(func() { _ = b.Run(ctx) })
	time.Sleep(3 * time.Second) // b stands by through a few of its ticks
	mu.Lock()
	for _, s := range swaps {
		if s.who != "a" {
			t.Errorf("b ran %s while a held the lease", s.day.Format(time.DateOnly))
		}
	}
	mu.Unlock()

	// Kill a (as far as ZooKeeper can tell), then give the schedulers a new day to seal.
	proxy.Cut()
	cutAt := time.Now()
	e.insertRaw(gen(rng, d4, 300, 0.05, "l"))
	e.setNow(d5.Add(time.Hour))
	e.flush(0, 20, 21, d5.Add(time.Hour))
	waitFor(t, 30*time.Second, "b to seal the new day", func() bool { return e.watermark() == "2024-03-04" })
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	var takeover time.Duration
	for _, s := range swaps {
		if s.at.After(cutAt) && s.who == "a" {
			t.Errorf("a reached the swap of %s after it lost ZooKeeper", s.day.Format(time.DateOnly))
		}
		if s.who == "b" && takeover == 0 {
			takeover = s.at.Sub(cutAt)
		}
	}
	t.Logf("takeover: b's first swap %.1fs after a was cut off (session timeout %s)", takeover.Seconds(), session)
	if takeover <= 0 || takeover > 5*session+5*time.Second {
		t.Errorf("takeover after %s, want within %s", takeover, 5*session+5*time.Second)
	}
	e.requireExact(evs, d3)
	// No two runs of the dataset overlapped: every run's [started, finished] is disjoint from
	// the others'.
	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT run_id, min(at_us), max(at_us) FROM %s WHERE dataset = 'events' GROUP BY run_id ORDER BY min(at_us)", e.g.T(schema.BatchRuns)))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var prevEnd uint64
	var prevID string
	for rows.Next() {
		var id string
		var start, end uint64
		if err := rows.Scan(&id, &start, &end); err != nil {
			t.Fatal(err)
		}
		if start < prevEnd {
			t.Errorf("run %s started before run %s ended", id, prevID)
		}
		prevEnd, prevID = end, id
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !ok(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}
