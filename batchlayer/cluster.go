package batchlayer

// Cluster mode (clickhouse.cluster set). The tables are laid out as shared/schema describes:
// <ds>_raw and <ds>_speed are Distributed over <name>_local tables replicated within their
// shard; <ds>_daily, batch_runs and batch_watermarks are replicated on every node.
//
// A run computes the day over the whole cluster at once. It creates, on every reachable node, a
// view of the day's deduplicated rows of the node's <ds>_raw_local (raw is sharded by
// cityHash64(id), so a shard's dedup is the cluster's), and on one node (the initiator) a
// Distributed table over those views. The INSERT … SELECT from that Distributed table sends the
// whole aggregation to one replica of each shard; the initiator merges the shards' partial
// states (exact distinct counts and quantiles merge exactly, never added up) into a plain
// MergeTree staging table on the initiator, which REPLACE PARTITION swaps into the initiator's
// replica of <ds>_daily. 18.16 refuses ALTER … ON CLUSTER … REPLACE PARTITION; it is not needed:
// <ds>_daily is one replicated table, so one swap reaches every node through replication.
//
// The watermark moves past a day only when every node's <ds>_daily holds the day's newest
// successful run (a node that is down holds it back until it is back and has caught up), so
// no node ever answers an exact day from an older copy.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// syncTimeout bounds the wait for every replica of <ds>_daily to apply a swap.
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

// prepare creates the run's dedup views on every live node and the Distributed table over them
// on the initiator, and returns the initiator's connection, the table to aggregate from and a
// cleanup that drops both and the staging table.
func (l *Layer) prepareCluster(ctx context.Context, d *dataset, day time.Time, staging string) (driver.Conn, string, func(), error) {
	all, live, err := l.cl.nodes(ctx)
	if err != nil {
		return nil, "", func() {}, err
	}
	if _, err := perShard(all, live); err != nil {
		return nil, "", func() {}, err
	}
	ic := live[0].conn
	view, dist := staging+"_dedup", staging+"_dist"
	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		for _, t := range []string{dist, staging} {
			if err := ic.Exec(cctx, d.q.dropTable(t)); err != nil {
				l.log.Warn("cannot drop staging table", "dataset", d.d.Name, "table", t, "node", live[0].Addr, "err", err)
			}
		}
		for _, n := range live {
			if err := n.conn.Exec(cctx, d.q.dropTable(view)); err != nil {
				l.log.Warn("cannot drop staging view", "dataset", d.d.Name, "table", view, "node", n.Addr, "err", err)
			}
		}
	}
	var errs []error
	var created int
	for _, n := range live {
		if err := n.conn.Exec(ctx, d.q.dedupView(view, day)); err != nil {
			errs = append(errs, fmt.Errorf("cannot create view %s on %s: %w", view, n, err))
			continue
		}
		created++
	}
	if created < len(live) {
		// A node that cannot have the view must not be read from: fail, the next tick retries.
		return ic, "", cleanup, errors.Join(errs...)
	}
	if err := ic.Exec(ctx, d.q.dedupDist(dist, view)); err != nil {
		return ic, "", cleanup, fmt.Errorf("cannot create %s on %s: %w", dist, live[0], err)
	}
	return ic, dist, cleanup, nil
}

// clusterSettings are the settings of the recompute in cluster mode: never read a replica that
// lags by more than the insert timeout. Rows a lagging replica is missing were inserted less
// than that before the run started, so they make the day dirty and it is recomputed (the late-
// row rule); a replica lagging more is skipped, and with every replica of a shard lagging the
// run fails and is retried.
func (l *Layer) clusterSettings() clickhouse.Settings {
	return clickhouse.Settings{
		"max_replica_delay_for_distributed_queries":          max(1, int(l.cfg.ClickHouse.InsertTimeout.D().Seconds())),
		"fallback_to_stale_replicas_for_distributed_queries": 0,
	}
}

// syncDaily waits, bounded, for every live replica of <ds>_daily to apply what is in its
// replication queue (the swap just made). Errors are logged: the watermark check decides.
func (l *Layer) syncDaily(ctx context.Context, d *dataset) {
	_, live, err := l.cl.nodes(ctx)
	if err != nil {
		l.log.Warn("cannot list cluster nodes", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range live {
		wg.Go(func() {
			if err := n.conn.Exec(ctx, "SYSTEM SYNC REPLICA "+d.q.g.T(schema.Daily(d.d.Name))); err != nil {
				l.log.Warn("replica has not applied the swap yet", "dataset", d.d.Name, "node", n.Addr, "err", err)
			}
		})
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
	type dayState struct {
		rows uint64
		runs []string
	}
	q := fmt.Sprintf("SELECT day, count(), groupUniqArray(run_id) FROM %s WHERE day > %s AND day <= %s GROUP BY day",
		d.q.g.T(schema.Daily(d.d.Name)), dateLit(from), dateLit(to))
	last := to
	why := ""
	for _, n := range live {
		rows, err := n.conn.Query(ctx, q)
		if err != nil {
			return from, "", fmt.Errorf("cannot read %s on %s: %w", schema.Daily(d.d.Name), n, err)
		}
		have := map[time.Time]dayState{}
		for rows.Next() {
			var day time.Time
			var s dayState
			if err := rows.Scan(&day, &s.rows, &s.runs); err != nil {
				rows.Close()
				return from, "", fmt.Errorf("cannot read %s on %s: %w", schema.Daily(d.d.Name), n, err)
			}
			have[ledger.DayOf(day)] = s
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return from, "", fmt.Errorf("cannot read %s on %s: %w", schema.Daily(d.d.Name), n, err)
		}
		for day := from.AddDate(0, 0, 1); !day.After(last); day = day.AddDate(0, 0, 1) {
			w, ok := want[day]
			if !ok {
				continue
			}
			h := have[day]
			good := h.rows == w.RowsOut && (w.RowsOut == 0 || (len(h.runs) == 1 && h.runs[0] == w.Run))
			if !good {
				last = day.AddDate(0, 0, -1)
				why = fmt.Sprintf("%s has %d rows of runs %v for %s, want %d of run %s", n.Addr, h.rows, h.runs, day.Format(time.DateOnly), w.RowsOut, w.Run)
				break
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
