package batchlayer

// Cluster mode (clickhouse.cluster set). The tables are laid out as shared/schema describes:
// <ds>_raw and <ds>_speed are Distributed over <name>_local tables replicated within their
// shard; <ds>_daily, batch_runs and batch_watermarks are replicated on every node.
//
// A run computes the day over the whole cluster at once (see engine.go). On one live replica of
// every shard (its worker) it writes the shard's deduplicated rows from the node's
// <ds>_raw_local (raw is sharded by cityHash64(id), so a shard's dedup is the cluster's) and
// rewrites the shard's speed minutes from them. The aggregation passes are spread over the
// workers: each reads every worker's deduplicated rows through remote(), which sends level 1 of
// the pass to the shards, and merges that pass's bucket of keys or values alone, so no node
// holds the day's distinct keys. Exact distinct counts are added up only over disjoint key
// buckets, never across shards. The first worker assembles the day and its hours and swaps them
// into its replicas of <ds>_daily and <ds>_hourly with REPLACE PARTITION from plain MergeTree
// staging tables: 18.16 refuses ALTER … ON CLUSTER … REPLACE PARTITION, and it is not needed,
// since both are one replicated table and one swap reaches every node through replication.
// Each worker swaps its shard's minutes into its <ds>_speed_local, which replicates within the
// shard.
//
// The watermark moves past a day only when every node's <ds>_daily and <ds>_hourly hold the
// day's newest successful run (a node that is down holds it back until it is back and has
// caught up), so no node ever answers an exact day from an older copy.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// syncTimeout bounds the wait for every replica to apply a run's swaps.
const syncTimeout = 2 * time.Minute

// cluster holds a connection per node, opened on first use.
type cluster struct {
	cfg   config.ClickHouse
	main  driver.Conn
	mu    sync.Mutex
	conns map[string]driver.Conn
}

func newCluster(cfg config.ClickHouse, main driver.Conn) *cluster {
	return &cluster{cfg: cfg, main: main, conns: map[string]driver.Conn{}}
}

func (c *cluster) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	c.conns = map[string]driver.Conn{}
}

// node is a node of the cluster with its connection.
type node struct {
	chconn.Node
	conn driver.Conn
}

func (n node) String() string {
	return fmt.Sprintf("shard %d replica %d (%s)", n.Shard, n.Replica, n.Addr)
}

// nodes returns every node of the cluster and, separately, those that answer a ping now.
func (c *cluster) nodes(ctx context.Context) (all []chconn.Node, live []node, err error) {
	all, err = chconn.Nodes(ctx, c.main, c.cfg.Cluster)
	if err != nil {
		return nil, nil, err
	}
	type res struct {
		i    int
		conn driver.Conn
	}
	ch := make(chan res, len(all))
	for i, n := range all {
		go func() {
			conn, err := c.conn(ctx, n.Addr)
			if err != nil {
				conn = nil
			}
			ch <- res{i, conn}
		}()
	}
	conns := make([]driver.Conn, len(all))
	for range all {
		r := <-ch
		conns[r.i] = r.conn
	}
	for i, n := range all {
		if conns[i] != nil {
			live = append(live, node{Node: n, conn: conns[i]})
		}
	}
	return all, live, nil
}

// conn returns the connection to a node, pinged.
func (c *cluster) conn(ctx context.Context, addr string) (driver.Conn, error) {
	c.mu.Lock()
	conn, ok := c.conns[addr]
	c.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout.D())
	defer cancel()
	if ok {
		if err := conn.Ping(pctx); err != nil {
			return nil, fmt.Errorf("cannot reach clickhouse node %s: %w", addr, err)
		}
		return conn, nil
	}
	conn, err := chconn.OpenNode(pctx, c.cfg, addr, 4)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if have, ok := c.conns[addr]; ok {
		_ = conn.Close()
		return have, nil
	}
	c.conns[addr] = conn
	return conn, nil
}

// perShard picks one live node of every shard, and fails naming a shard without one.
func perShard(all []chconn.Node, live []node) ([]node, error) {
	var out []node
	seen := map[int]bool{}
	for _, n := range live {
		if !seen[n.Shard] {
			seen[n.Shard] = true
			out = append(out, n)
		}
	}
	for _, n := range all {
		if !seen[n.Shard] {
			return nil, fmt.Errorf("no replica of shard %d answers", n.Shard)
		}
	}
	return out, nil
}

// workers returns where a run works: the server in single mode; in cluster mode one live
// replica of every shard, the first in shard order whose <ds>_raw_local lags by no more than
// clickhouse.insert_timeout (rows a lagging replica misses were inserted less than that before
// the run started, so they make the day dirty and it is recomputed: the late-row rule). A shard
// without such a replica fails the run; the next tick retries.
func (l *Layer) workers(ctx context.Context, d *dataset) ([]worker, error) {
	if l.cl == nil {
		return []worker{{conn: l.conn, name: "clickhouse"}}, nil
	}
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return nil, err
	}
	maxDelay := max(1, uint64(l.cfg.ClickHouse.InsertTimeout.D().Seconds()))
	q := fmt.Sprintf("SELECT max(absolute_delay) FROM system.replicas WHERE database = %s AND table = %s",
		strLit(l.cfg.ClickHouse.Database), strLit(schema.Local(schema.Raw(d.d.Name))))
	var out []worker
	var why []string
	seen := map[int]bool{}
	for _, n := range live {
		if seen[n.Shard] {
			continue
		}
		var delay uint64
		if err := n.conn.QueryRow(ctx, q).Scan(&delay); err != nil {
			why = append(why, fmt.Sprintf("%s: %v", n, err))
			continue
		}
		if delay > maxDelay {
			why = append(why, fmt.Sprintf("%s lags by %ds", n, delay))
			continue
		}
		seen[n.Shard] = true
		out = append(out, worker{conn: n.conn, addr: n.Addr, name: n.String()})
	}
	for _, n := range all {
		if !seen[n.Shard] {
			return nil, fmt.Errorf("no replica of shard %d answers with less than %ds of replication delay (%s)", n.Shard, maxDelay, strings.Join(why, "; "))
		}
	}
	return out, nil
}

// syncReplicas waits, bounded, for every live replica of <ds>_daily and <ds>_hourly, and of
// the shards' <ds>_speed_local, to apply what is in its replication queue (the swaps just made).
// Errors are logged: the watermark check decides.
func (l *Layer) syncReplicas(ctx context.Context, d *dataset) {
	_, live, err := l.cl.nodes(ctx)
	if err != nil {
		l.log.Warn("cannot list cluster nodes", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range live {
		for _, t := range []string{schema.Daily(d.d.Name), schema.Hourly(d.d.Name), schema.Local(schema.Speed(d.d.Name))} {
			wg.Go(func() {
				if err := n.conn.Exec(ctx, "SYSTEM SYNC REPLICA "+d.q.g.T(t)); err != nil {
					l.log.Warn("replica has not applied the swap yet", "dataset", d.d.Name, "table", t, "node", n.Addr, "err", err)
				}
			})
		}
	}
	wg.Wait()
}

// verifiedUpTo returns the last day in (from, to] up to which every node of the cluster holds,
// for every day, exactly the rows of the day's newest successful run (want: day → run id and
// rows); from when a node does not answer or lags. Days without an entry in want are skipped
// (no raw data and no run).
func (l *Layer) verifiedUpTo(ctx context.Context, d *dataset, from, to time.Time, want map[time.Time]ledger.Day) (time.Time, string, error) {
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return from, "", err
	}
	if len(live) < len(all) {
		var down []string
		for _, n := range all {
			if !containsNode(live, n) {
				down = append(down, n.Addr)
			}
		}
		return from, "nodes down: " + strings.Join(down, ", "), nil
	}
	type key struct {
		table string
		day   time.Time
	}
	type dayState struct {
		rows uint64
		runs []string
	}
	daily, hourly := schema.Daily(d.d.Name), schema.Hourly(d.d.Name)
	q := fmt.Sprintf(`SELECT %s, day, count(), groupUniqArray(run_id) FROM %s WHERE day > %s AND day <= %s GROUP BY day
UNION ALL
SELECT %s, toDate(hour%s) AS day, count(), groupUniqArray(run_id) FROM %s WHERE day > %s AND day <= %s GROUP BY day`,
		strLit(daily), d.q.g.T(daily), dateLit(from), dateLit(to), strLit(hourly), schema.Zone(d.d), d.q.g.T(hourly), dateLit(from), dateLit(to))
	last := to
	why := ""
	for _, n := range live {
		rows, err := n.conn.Query(ctx, q)
		if err != nil {
			return from, "", fmt.Errorf("cannot read %s and %s on %s: %w", daily, hourly, n, err)
		}
		have := map[key]dayState{}
		for rows.Next() {
			var table string
			var day time.Time
			var s dayState
			if err := rows.Scan(&table, &day, &s.rows, &s.runs); err != nil {
				rows.Close()
				return from, "", fmt.Errorf("cannot read %s and %s on %s: %w", daily, hourly, n, err)
			}
			have[key{table, ledger.DayOf(day)}] = s
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return from, "", fmt.Errorf("cannot read %s and %s on %s: %w", daily, hourly, n, err)
		}
	days:
		for day := from.AddDate(0, 0, 1); !day.After(last); day = day.AddDate(0, 0, 1) {
			w, ok := want[day]
			if !ok {
				continue
			}
			for _, c := range []struct {
				table string
				rows  uint64
			}{{daily, w.RowsOut}, {hourly, w.RowsHourly}} {
				h := have[key{c.table, day}]
				if h.rows != c.rows || (c.rows > 0 && (len(h.runs) != 1 || h.runs[0] != w.Run)) {
					last = day.AddDate(0, 0, -1)
					why = fmt.Sprintf("%s has %d rows of runs %v in %s for %s, want %d of run %s", n.Addr, h.rows, h.runs, c.table, day.Format(time.DateOnly), c.rows, w.Run)
					break days
				}
			}
		}
	}
	return last, why, nil
}

func containsNode(live []node, n chconn.Node) bool {
	for _, x := range live {
		if x.Addr == n.Addr {
			return true
		}
	}
	return false
}

// clusterPartitionDays lists the day partitions of a sharded table across the shards (one live
// replica each).
func (l *Layer) clusterPartitionDays(ctx context.Context, d *dataset, table string) ([]time.Time, error) {
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return nil, err
	}
	shards, err := perShard(all, live)
	if err != nil {
		return nil, fmt.Errorf("cannot list partitions of %s: %w", table, err)
	}
	var out []time.Time
	for _, n := range shards {
		days, err := partitionDaysOn(ctx, n.conn, d.q.partitions(schema.Local(table)))
		if err != nil {
			return nil, fmt.Errorf("cannot list partitions of %s on %s: %w", schema.Local(table), n, err)
		}
		out = append(out, days...)
	}
	return sortDays(out), nil
}

// clusterDropPartition drops a day of a sharded table on every shard (on one replica each;
// replication drops it on the others).
func (l *Layer) clusterDropPartition(ctx context.Context, d *dataset, table string, day time.Time) error {
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return err
	}
	shards, err := perShard(all, live)
	if err != nil {
		return err
	}
	for _, n := range shards {
		if err := n.conn.Exec(ctx, d.q.dropPartition(schema.Local(table), day)); err != nil {
			return fmt.Errorf("on %s: %w", n, err)
		}
	}
	return nil
}

// clusterDropLeftovers drops staging tables and views a crashed run left on any node.
func (l *Layer) clusterDropLeftovers(ctx context.Context, d *dataset) {
	_, live, err := l.cl.nodes(ctx)
	if err != nil {
		l.log.Warn("cannot list cluster nodes", "err", err)
		return
	}
	for _, n := range live {
		dropLeftoversOn(ctx, l, d, n.conn, n.Addr)
	}
}
