package speed

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/nettest"
)

// TestHealthStuckConsumer cuts the speed layer off ClickHouse while records wait in Kafka:
// it stays alive but commits nothing, and Health says so until ClickHouse is back.
func TestHealthStuckConsumer(t *testing.T) {
	var px *nettest.Proxy
	e := newEnv(t, func(c *config.Config) {
		px = nettest.NewProxy(t, chtest.Addr())
		c.Speed.RetryMax = config.Duration(time.Second)
	})
	cfg := *e.cfg
	cfg.ClickHouse.Addr = []string{px.Addr()}
	cfg.ClickHouse.DialTimeout = config.Duration(time.Second)
	cfg.ClickHouse.InsertTimeout = config.Duration(5 * time.Second)
	e.cfg = &cfg
	batch := func(from, n int) {
		var ps []string
		for i := from; i < from+n; i++ {
			ps = append(ps, ev(fmt.Sprintf("h%d", i), time.Now(), "DE", 1))
		}
		e.produce(ps...)
	}
	// The layer's own threshold is at least 30 s; the test's is shorter.
	const stall = 2 * time.Second
	r := e.speedWith("t1", nil, func(s *Speed) { s.stallAfter = stall })
	batch(0, 500)
	e.waitAccounted(time.Minute)
	if err := r.s.Health(); err != nil {
		t.Fatalf("Health while consuming: %v", err)
	}
	waitHealth := func(what string, ok func(error) bool) error {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			err := r.s.Health()
			if ok(err) {
				return err
			}
			if time.Now().After(deadline) {
				t.Fatalf("Health never %s within a minute; last: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	px.Cut()
	batch(500, 500)
	err := waitHealth("unhealthy", func(err error) bool { return err != nil })
	t.Logf("unhealthy: %v", err)
	if msg := err.Error(); !strings.Contains(msg, "dataset events: partitions") || !strings.Contains(msg, "no flush committed") ||
		!strings.Contains(msg, "last flush error") || strings.Contains(msg, "\n") {
		t.Errorf("Health of a stuck consumer: %q, want one line naming the lagging partitions and the last flush error", msg)
	}
	if r.exited() {
		t.Fatalf("speed layer exited while ClickHouse was unreachable: %v", r.err)
	}

	px.Restore()
	e.waitAccounted(2 * time.Minute)
	waitHealth("healthy again", func(err error) bool { return err == nil })
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
