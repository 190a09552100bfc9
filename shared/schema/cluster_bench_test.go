package schema_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// BenchmarkClusterInsert measures one speed-layer-sized insert (200,000 raw rows, the speed view
// attached) into the single server and into the local cluster by the ways cluster mode could
// insert: the Distributed table synchronously (what chconn sets in cluster mode), asynchronously
// (the server's default), and straight into one shard's local table (the floor of routing rows
// in the client).
//
//	LAMBDA_TEST_CLUSTER_ADDR=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003,127.0.0.1:19004 \
//	  go test ./shared/schema -run '^$' -bench ClusterInsert -benchtime 3x
func BenchmarkClusterInsert(b *testing.B) {
	ctx := context.Background()
	const rows = 200_000
	ccfg := chtest.ClusterConfig(b, nil)
	cconn := chtest.NewCluster(b, ccfg)
	if _, err := schema.Migrate(ctx, cconn, ccfg, schema.MigrateOptions{}); err != nil {
		b.Fatal(err)
	}
	scfg := chtest.Config(b, nil)
	sconn := chtest.New(b, scfg)
	if _, err := schema.Migrate(ctx, sconn, scfg, schema.MigrateOptions{}); err != nil {
		b.Fatal(err)
	}
	async := ccfg.ClickHouse
	async.Cluster = "" // chconn sets insert_distributed_sync only in cluster mode
	aconn, err := chconn.Open(ctx, async)
	if err != nil {
		b.Fatal(err)
	}
	defer aconn.Close()
	node, err := chconn.OpenNode(ctx, ccfg.ClickHouse, ccfg.ClickHouse.Addr[0], 2)
	if err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	g := schema.NewGenerator(ccfg)
	for _, c := range []struct {
		name  string
		conn  driver.Conn
		table string
	}{
		{"single", sconn, schema.NewGenerator(scfg).T(schema.Raw("events"))},
		{"distributed_sync", cconn, g.T(schema.Raw("events"))},
		{"distributed_async", aconn, g.T(schema.Raw("events"))},
		{"one_shard_local", node, g.T(schema.Local(schema.Raw("events")))},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+c.table+" (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late)")
				if err != nil {
					b.Fatal(err)
				}
				day := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
				for j := range rows {
					v := float64(j % 1000)
					if err := batch.Append(fmt.Sprintf("%s-%d-%d", c.name, i, j), day.Add(time.Duration(j)*400*time.Millisecond),
						[]string{"view", "buy"}[j%2], []string{"de", "fr", "us"}[j%3], "ios", fmt.Sprintf("u%d", j%5000), &v,
						"events", int32(j%6), int64(j), uint8(0)); err != nil {
						b.Fatal(err)
					}
				}
				if err := batch.Send(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
