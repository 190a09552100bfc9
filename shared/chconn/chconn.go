// Package chconn opens ClickHouse connections over the native protocol, the one protocol that
// works on ClickHouse 18.16 and on current versions.
package chconn

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
)

// Options returns the clickhouse-go options of a configuration. The database is not selected:
// every statement qualifies its tables, so one connection also serves migrate before the
// database exists.
func Options(c config.ClickHouse) *clickhouse.Options {
	return &clickhouse.Options{
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
}

// Open connects and pings. Cancelling ctx abandons the ping.
func Open(ctx context.Context, c config.ClickHouse) (driver.Conn, error) {
	conn, err := clickhouse.Open(Options(c))
	if err != nil {
		return nil, fmt.Errorf("cannot open clickhouse %v: %w", c.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cannot reach clickhouse %v: %w", c.Addr, err)
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
