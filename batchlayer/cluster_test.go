package batchlayer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// newClusterEnv is newEnv on the local cluster (deploy/local/cluster.sh) in cluster mode; it
// skips when the cluster is not configured (LAMBDA_TEST_CLUSTER_ADDR).
func newClusterEnv(t *testing.T) *env {
	t.Helper()
	cfg := chtest.ClusterConfig(t, nil)
	conn := chtest.NewCluster(t, cfg)
	if _, err := schema.Migrate(context.Background(), conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cfg: cfg, conn: conn, g: schema.NewGenerator(cfg)}
}

// nodes connects to every node of the cluster, in chtest.ClusterNodes order.
func (e *env) nodes() []driver.Conn {
	e.t.Helper()
	var out []driver.Conn
	for _, a := range e.cfg.ClickHouse.Addr {
		c, err := chconn.OpenNode(context.Background(), e.cfg.ClickHouse, a, 2)
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { _ = c.Close() })
		out = append(out, c)
	}
	return out
}

// checksumOn is checksum read through conn (one node).
func (e *env) checksumOn(conn driver.Conn, day time.Time) string {
	e.t.Helper()
	saved := e.conn
	e.conn = conn
	defer func() { e.conn = saved }()
	return e.checksum(day)
}

// TestClusterSameAsSingleNode runs the same two days of events, duplicates included, through
// the single server and through the cluster, with the default batch.max_memory and with 1 MiB
// (every pass split, the passes spread over the shards): <ds>_daily and <ds>_hourly must be
// identical on every node, the speed minutes identical across the cluster, and the values
// exact; the watermark moves once every node has the days.
func TestClusterSameAsSingleNode(t *testing.T) {
	for _, memory := range []config.ByteSize{2 << 30, 1 << 20} {
		t.Run(memory.String(), func(t *testing.T) {
			c := newClusterEnv(t)
			s := newEnv(t)
			rng := rand.New(rand.NewPCG(7, 8))
			evs := append(gen(rng, d1, 3000, 0.05, "c"), gen(rng, d2, 2000, 0.05, "c")...)
			c.insertRaw(evs)
			s.insertRaw(evs)
			steps := map[string]int{}
			for _, e := range []*env{c, s} {
				e.cfg.Batch.MaxMemory = memory
				e.setNow(d3.Add(time.Hour))
				if err := e.layer(Options{}).RunDays(context.Background(), "events", d1, d2, func(p Progress) {
					if e == c {
						steps[p.Phase] = max(steps[p.Phase], p.Steps)
					}
				}); err != nil {
					t.Fatal(err)
				}
			}
			if memory < 2<<20 && (steps[PhaseExact] < 4 || steps[PhaseDedup] < 4) {
				t.Errorf("passes on the cluster with 1 MiB: %v", steps)
			}
			c.requireExact(evs, d1)
			c.requireExact(evs, d2)
			d := &s.cfg.Datasets[0]
			for _, day := range []time.Time{d1, d2} {
				want := s.checksum(day)
				wantHours := s.strings(rowStrings(s.g, d, s.g.T(schema.Hourly("events")), "hourly", day))
				wantMinutes := s.strings(rowStrings(s.g, d, s.g.T(schema.Speed("events")), "speed", day))
				for i, n := range c.nodes() {
					if got := c.checksumOn(n, day); got != want {
						t.Errorf("%s on %s: daily checksum %s, single node %s", day.Format(time.DateOnly), chtest.ClusterNodes[i], got, want)
					}
					saved := c.conn
					c.conn = n
					sameRows(t, "hourly on "+chtest.ClusterNodes[i], c.strings(rowStrings(c.g, d, c.g.T(schema.Hourly("events")), "hourly", day)), wantHours)
					sameRows(t, "speed through "+chtest.ClusterNodes[i], c.strings(rowStrings(c.g, d, c.g.T(schema.Speed("events")), "speed", day)), wantMinutes)
					c.conn = saved
				}
			}
			if got := c.watermark(); got != "2024-03-02" {
				t.Errorf("cluster watermark %s, want 2024-03-02", got)
			}
			// Nothing of the runs is left on any node.
			for i, n := range c.nodes() {
				var left uint64
				if err := n.QueryRow(context.Background(), fmt.Sprintf("SELECT count() FROM system.tables WHERE database = '%s' AND name LIKE '%%_stage_%%'", c.cfg.ClickHouse.Database)).Scan(&left); err != nil || left != 0 {
					t.Errorf("%d staging tables left on %s (err %v)", left, chtest.ClusterNodes[i], err)
				}
			}
		})
	}
}

// TestClusterReplicaDown stops one replica of shard 1 during ingestion and a batch run: nothing
// is lost, the day is computed exactly from the live replica, but the watermark waits until the
// stopped replica is back and holds the day.
func TestClusterReplicaDown(t *testing.T) {
	if len(chtest.ClusterAddrs()) > 0 {
		chtest.ExclusiveCluster(t) // it stops a node
	}
	e := newClusterEnv(t)
	nodes := e.nodes()
	chtest.ClusterScript(t, "node-stop", "s1r2")
	t.Cleanup(func() { chtest.ClusterScript(t, "node-start", "s1r2") }) // before the database is dropped
	rng := rand.New(rand.NewPCG(9, 10))
	evs := gen(rng, d1, 3000, 0.05, "r")
	e.insertRaw(evs)
	e.setNow(d2.Add(time.Hour))
	l := e.layer(Options{})
	defer l.Close()
	if err := l.RunDays(context.Background(), "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	e.requireExact(evs, d1)
	if got := e.watermark(); got != "none" {
		t.Errorf("watermark %s with a replica down, want none", got)
	}
	if !l.isPending("events") {
		t.Error("watermark not marked pending")
	}

	chtest.ClusterScript(t, "node-start", "s1r2")
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := l.ds["events"]
		d.mu.Lock()
		_, err := l.updateWatermark(context.Background(), d)
		d.mu.Unlock()
		if err != nil {
			t.Logf("update watermark: %v", err)
		}
		if e.watermark() == "2024-03-01" || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if got := e.watermark(); got != "2024-03-01" {
		t.Fatalf("watermark %s after the replica came back, want 2024-03-01", got)
	}
	// The returned replica has every raw row of its shard and the exact day.
	var a, b uint64
	raw := e.g.T(schema.Local(schema.Raw("events")))
	if err := nodes[0].QueryRow(context.Background(), "SELECT count() FROM "+raw).Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].QueryRow(context.Background(), "SELECT count() FROM "+raw).Scan(&b); err != nil {
		t.Fatal(err)
	}
	var total uint64
	if err := e.conn.QueryRow(context.Background(), "SELECT count() FROM "+e.g.T(schema.Raw("events"))).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if a != b || a == 0 || total != uint64(len(evs)) {
		t.Errorf("raw: s1r1 %d rows, s1r2 %d, cluster %d, inserted %d", a, b, total, len(evs))
	}
	if got, want := e.checksumOn(nodes[1], d1), e.checksumOn(nodes[0], d1); got != want {
		t.Errorf("daily on the returned replica %s, on s1r1 %s", got, want)
	}
}

// TestClusterOldRollupLayout runs a day on a cluster whose rollup tables keep the layout of an
// earlier version (time first in the sorting key, 8192 rows a granule): migrate leaves them as
// they are in cluster mode, and the run stages into the layout the tables have, so the day
// swaps in and equals the single server's.
func TestClusterOldRollupLayout(t *testing.T) {
	c := newClusterEnv(t)
	s := newEnv(t)
	ctx := context.Background()
	db := c.cfg.ClickHouse.Database
	for _, o := range c.g.Objects(c.cfg) {
		timeCol := map[string]string{"events_daily": "day", "events_hourly": "hour"}[o.Name]
		if timeCol == "" {
			continue
		}
		old := strings.Replace(o.Create, "ORDER BY (`grouping`, `"+timeCol+"`", "ORDER BY (`"+timeCol+"`, `grouping`", 1)
		old = strings.Replace(old, fmt.Sprintf(" SETTINGS index_granularity = %d", schema.RollupGranularity), "", 1)
		old = strings.Replace(old, "/"+o.Name+"'", "/"+o.Name+"_old_layout'", 1) // a replication path of its own
		if old == o.Create {
			t.Fatalf("%s: the old layout is the new one", o.Name)
		}
		for _, sql := range []string{"DROP TABLE " + c.g.T(o.Name) + c.g.OnCluster(), old} {
			if err := c.conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	if _, err := schema.Migrate(ctx, c.conn, c.cfg, schema.MigrateOptions{}); err != nil {
		t.Fatalf("migrate refused the old layout in cluster mode: %v", err)
	}
	var key string
	if err := c.conn.QueryRow(ctx, "SELECT sorting_key FROM system.tables WHERE database = ? AND name = 'events_hourly'", db).Scan(&key); err != nil || !strings.HasPrefix(key, "hour") {
		t.Fatalf("events_hourly's sorting key after migrate: %q, %v (want the old one kept)", key, err)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	evs := gen(rng, d1, 2000, 0.05, "o")
	for _, e := range []*env{c, s} {
		e.insertRaw(evs)
		e.setNow(d2.Add(time.Hour))
		if err := e.layer(Options{}).RunDays(ctx, "events", d1, d1, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.requireExact(evs, d1)
	if got, want := c.checksum(d1), s.checksum(d1); got != want {
		t.Errorf("daily checksum %s on the old layout, %s on the single server", got, want)
	}
	d := &s.cfg.Datasets[0]
	sameRows(t, "hourly on the old layout", c.strings(rowStrings(c.g, d, c.g.T(schema.Hourly("events")), "hourly", d1)),
		s.strings(rowStrings(s.g, d, s.g.T(schema.Hourly("events")), "hourly", d1)))
}
