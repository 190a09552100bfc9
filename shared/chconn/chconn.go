// Package chconn opens ClickHouse connections over the native protocol, the one protocol that
// works on ClickHouse 18.16 and on current versions.
package chconn

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
)

// Options returns the clickhouse-go options of a configuration. The database is not selected:
// every statement qualifies its tables, so one connection also serves migrate before the
// database exists.
//
// In cluster mode every query runs with insert_distributed_sync=1: an INSERT into a Distributed
// table returns once every shard has its rows (on one replica), so the speed layer commits Kafka
// offsets only for rows that are on their shards (at-least-once), and _ingested_at is close to
// when rows become visible, which the batch layer's late-row detection relies on. Asynchronous
// forwarding would queue rows on the receiving node's disk and lose that.
func Options(c config.ClickHouse) *clickhouse.Options {
	o := options(c)
	if c.Cluster != "" {
		o.Settings = clickhouse.Settings{"insert_distributed_sync": 1}
	}
	return o
}

func options(c config.ClickHouse) *clickhouse.Options {
	o := &clickhouse.Options{
		Addr:             c.Addr,
		Protocol:         clickhouse.Native,
		Auth:             clickhouse.Auth{Username: c.Username, Password: c.Password},
		DialTimeout:      c.DialTimeout.D(),
		ReadTimeout:      c.QueryTimeout.D() + 10*time.Second,
		MaxOpenConns:     c.MaxOpenConns,
		MaxIdleConns:     c.MaxOpenConns,
		ConnMaxLifetime:  time.Hour,
		ConnOpenStrategy: clickhouse.ConnOpenInOrder,
		Compression:      &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	}
	// Load checked the files; one that went away since fails every dial, saying so.
	if tc, err := c.TLS.Config(); err != nil {
		o.DialContext = func(context.Context, string) (net.Conn, error) { return nil, fmt.Errorf("clickhouse.tls.%w", err) }
	} else if tc != nil {
		o.TLS = tc
	}
	return o
}

// Open connects and pings. Cancelling ctx abandons the ping. Its error is an *Error: one line
// that names the server and what failed.
func Open(ctx context.Context, c config.ClickHouse) (driver.Conn, error) {
	conn, err := clickhouse.Open(Options(c))
	if err != nil {
		return nil, fmt.Errorf("cannot open clickhouse %v: %w", c.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		addr := strings.Join(c.Addr, ",")
		return nil, Explain(addr, c, err)
	}
	return conn, nil
}

// Version returns the server version string, e.g. "18.16.1".
func Version(ctx context.Context, conn driver.Conn) (string, error) {
	var v string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&v); err != nil {
		return "", fmt.Errorf("cannot read clickhouse version: %w", err)
	}
	return v, nil
}

// Node is one server of a cluster as the servers' remote_servers declare it.
type Node struct {
	Shard   int    // 1-based
	Replica int    // 1-based within the shard
	Addr    string // host:port of the native protocol, as remote_servers names it
}

// Nodes returns the nodes of a cluster from system.clusters of the server conn reaches, in shard
// and replica order.
func Nodes(ctx context.Context, conn driver.Conn, cluster string) ([]Node, error) {
	rows, err := conn.Query(ctx, "SELECT shard_num, replica_num, host_name, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cluster)
	if err != nil {
		return nil, fmt.Errorf("cannot read cluster %s from system.clusters: %w", cluster, err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var shard, replica uint32
		var host string
		var port uint16
		if err := rows.Scan(&shard, &replica, &host, &port); err != nil {
			return nil, fmt.Errorf("cannot read cluster %s from system.clusters: %w", cluster, err)
		}
		out = append(out, Node{Shard: int(shard), Replica: int(replica), Addr: net.JoinHostPort(host, strconv.Itoa(int(port)))})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read cluster %s from system.clusters: %w", cluster, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cluster %s is not in system.clusters: declare it in every server's remote_servers", cluster)
	}
	return out, nil
}

// OpenNode connects to one node of the cluster with the configuration's credentials and
// timeouts, at most conns connections, and pings it.
func OpenNode(ctx context.Context, c config.ClickHouse, addr string, conns int) (driver.Conn, error) {
	c.Addr = []string{addr}
	o := Options(c)
	o.MaxOpenConns, o.MaxIdleConns = conns, conns
	conn, err := clickhouse.Open(o)
	if err != nil {
		return nil, fmt.Errorf("cannot open clickhouse node %s: %w", addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, Explain(addr, c, err)
	}
	return conn, nil
}
