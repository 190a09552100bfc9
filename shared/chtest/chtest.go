// Package chtest gives integration tests a real ClickHouse: each test gets a database of its
// own on the server that `make test` started (deploy/local), dropped when the test ends.
//
// The server address is LAMBDA_TEST_CLICKHOUSE_ADDR (default 127.0.0.1:9000). A test that
// cannot reach it fails: the suite is meant to run against the real server, never to skip.
package chtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
)

// Addr is the test server's native address.
func Addr() string {
	if a := os.Getenv("LAMBDA_TEST_CLICKHOUSE_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:9000"
}

var seq atomic.Int64

// Config returns the demo configuration (or cfg, when given) pointed at the test server and at
// a fresh database name unique to the test.
func Config(t testing.TB, cfg *config.Config) *config.Config {
	t.Helper()
	if cfg == nil {
		var err error
		cfg, err = config.Parse("<demo>", config.DemoYAML, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	c := *cfg
	c.ClickHouse.Addr = []string{Addr()}
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, name)
	if len(name) > 40 {
		name = name[:40]
	}
	c.ClickHouse.Database = fmt.Sprintf("t_%s_%d_%d", name, os.Getpid(), seq.Add(1))
	return &c
}

// New connects to the test server with a fresh database named by cfg (see Config), creating
// nothing in it, and drops the database when the test ends.
func New(t testing.TB, cfg *config.Config) driver.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatalf("clickhouse test server (start it with `make ch-start`): %v", err)
	}
	db := cfg.ClickHouse.Database
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if os.Getenv("LAMBDA_TEST_KEEP") == "" {
			if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS `"+db+"`"); err != nil {
				t.Logf("cannot drop test database %s: %v", db, err)
			}
		}
		_ = conn.Close()
	})
	return conn
}
