package chtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
)

// ClusterName is the cluster deploy/local/cluster.sh declares.
const ClusterName = "lambda"

// ClusterAddrs returns the native addresses of the local cluster's nodes
// (LAMBDA_TEST_CLUSTER_ADDR, comma-separated, as `make test` sets it), nil when unset.
func ClusterAddrs() []string {
	var out []string
	for _, a := range strings.Split(os.Getenv("LAMBDA_TEST_CLUSTER_ADDR"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// ZooKeeper returns the local cluster's ZooKeeper address (LAMBDA_TEST_ZOOKEEPER), "" when unset.
func ZooKeeper() string { return os.Getenv("LAMBDA_TEST_ZOOKEEPER") }

// ClusterConfig returns the demo configuration (or cfg) in cluster mode against the local
// cluster (deploy/local/cluster.sh, started by `make test`) with a fresh database. It skips the
// test, saying so, when LAMBDA_TEST_CLUSTER_ADDR is unset; an unreachable cluster fails it.
func ClusterConfig(t testing.TB, cfg *config.Config) *config.Config {
	t.Helper()
	addrs := ClusterAddrs()
	if len(addrs) == 0 {
		t.Skip("cluster tests need the local ClickHouse cluster: run `make cluster-start` and set LAMBDA_TEST_CLUSTER_ADDR (make test does both)")
	}
	c := Config(t, cfg)
	c.ClickHouse.Addr = addrs
	c.ClickHouse.Cluster = ClusterName
	c.ClickHouse.ZooKeeperPath = "/clickhouse/lambda-test"
	return c
}

// NewCluster connects to the cluster of cfg (see ClusterConfig), creating nothing, and drops the
// database on every node when the test ends. It holds the cluster shared (see
// ExclusiveCluster) for the rest of the test.
func NewCluster(t testing.TB, cfg *config.Config) driver.Conn {
	t.Helper()
	if !exclusive.Load() {
		lockCluster(t, syscall.LOCK_SH)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatalf("clickhouse test cluster (start it with `make cluster-start`): %v", err)
	}
	db := cfg.ClickHouse.Database
	t.Cleanup(func() {
		if os.Getenv("LAMBDA_TEST_KEEP") == "" {
			// A node a failed test left stopped would hold the statement for the full timeout.
			ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"distributed_ddl_task_timeout": 30}))
			ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
			defer cancel()
			if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS `"+db+"` ON CLUSTER "+ClusterName); err != nil {
				t.Logf("cannot drop test database %s on the cluster: %v", db, err)
			}
		}
		_ = conn.Close()
	})
	return conn
}

// exclusive is set while a test of this process holds the cluster exclusively.
var exclusive atomic.Bool

// ExclusiveCluster holds the local cluster for this test alone, across test processes: `go
// test ./...` runs packages in parallel, and a test that stops a node would make every other
// cluster test's ON CLUSTER statement wait for it. Call it before NewCluster.
func ExclusiveCluster(t testing.TB) {
	t.Helper()
	lockCluster(t, syscall.LOCK_EX)
	exclusive.Store(true)
	t.Cleanup(func() { exclusive.Store(false) })
}

// lockCluster takes a file lock (flock: released if the process dies) until the test ends.
func lockCluster(t testing.TB, how int) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "lambda-test-cluster.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		_ = f.Close()
		t.Fatalf("cannot lock the test cluster: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() })
}

// ClusterNodes are the local cluster's nodes in the order of ClusterAddrs: shard 1 replicas 1
// and 2, then shard 2.
var ClusterNodes = []string{"s1r1", "s1r2", "s2r1", "s2r2"}

// ClusterScript runs deploy/local/cluster.sh with args (e.g. "node-stop", "s1r2") and fails the
// test when it fails.
func ClusterScript(t testing.TB, args ...string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "local", "cluster.sh")
	out, err := exec.Command(script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
