package rawbatch

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/nettest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// fixture is a migrated test database and a writer into its raw table.
type fixture struct {
	t    *testing.T
	cfg  *config.Config
	conn driver.Conn
	ds   *config.Dataset
	w    *Writer
	n    *Native
	raw  string
}

func newFixture(t *testing.T, cfg *config.Config, conn driver.Conn) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, cfg: cfg, conn: conn, ds: &cfg.Datasets[0], n: NewNative(cfg.ClickHouse)}
	t.Cleanup(f.n.Close)
	f.raw = schema.NewGenerator(cfg).T(schema.Raw(f.ds.Name))
	f.w = NewWriter(f.raw, f.ds, f.n)
	return f
}

// rows returns n decoded rows: every third has a NULL value, ids prefix-i.
func (f *fixture) rows(prefix string, n int, offset0 int64) *Columns {
	isKey := f.w.IsKey()
	c := New(len(f.ds.Dimensions), len(isKey))
	base := time.Now().UTC().Truncate(time.Second).Add(-time.Hour)
	for i := range n {
		r := event.Row{ID: fmt.Sprintf("%s-%d", prefix, i), Time: base.Add(time.Duration(i) * time.Millisecond)}
		for d := range f.ds.Dimensions {
			r.Dims = append(r.Dims, fmt.Sprintf("d%d-%d", d, i%7))
		}
		for _, k := range isKey {
			if k {
				r.Keys = append(r.Keys, fmt.Sprintf("user-%d", i%100))
				r.Nums = append(r.Nums, sql.NullFloat64{})
				continue
			}
			r.Keys = append(r.Keys, "")
			r.Nums = append(r.Nums, sql.NullFloat64{Float64: float64(i) + 0.25, Valid: i%3 != 0})
		}
		c.Add(&r, offset0+int64(i), i%5 == 0, isKey)
	}
	return &c
}

func (f *fixture) query(q string, dest ...any) {
	f.t.Helper()
	if err := f.conn.QueryRow(context.Background(), q).Scan(dest...); err != nil {
		f.t.Fatalf("%s: %v", q, err)
	}
}

// TestSendRoundTrip writes two parts in one insert, then many rows (more than one LZ4 frame
// per column) over the same pooled connection, and reads every column back: NULLs as NULL,
// _topic and _partition per part, _late as given.
func TestSendRoundTrip(t *testing.T) {
	cfg := chtest.Config(t, nil)
	f := newFixture(t, cfg, chtest.New(t, cfg))
	ctx := context.Background()
	a, b := f.rows("a", 10, 100), f.rows("b", 5, 0)
	if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 2, Rows: a}, {Topic: "events", Partition: 0, Rows: b}}); err != nil {
		t.Fatal(err)
	}
	// The demo's value columns: user_id (a key), value (a number).
	rows, err := f.conn.Query(ctx, fmt.Sprintf("SELECT id, time, event, user_id, value, _topic, _partition, _offset, _late FROM %s ORDER BY _partition, _offset", f.raw))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, ev, user, topic string
		var tm time.Time
		var v *float64
		var part int32
		var off int64
		var late uint8
		if err := rows.Scan(&id, &tm, &ev, &user, &v, &topic, &part, &off, &late); err != nil {
			t.Fatal(err)
		}
		val := "NULL"
		if v != nil {
			val = fmt.Sprint(*v)
		}
		got = append(got, fmt.Sprintf("%s %d %s %s %s %s %d %d %d", id, tm.Unix(), ev, user, val, topic, part, off, late))
	}
	rows.Close()
	var want []string
	for _, x := range []struct {
		c    *Columns
		part int32
	}{{b, 0}, {a, 2}} {
		for i := range x.c.Len() {
			val := "NULL"
			if x.c.Nums[1].Valid(i) {
				val = fmt.Sprint(x.c.Nums[1].Values[i])
			}
			want = append(want, fmt.Sprintf("%s %d %s %s %s events %d %d %d", x.c.IDAt(i), x.c.TimeAt(i).Unix(), x.c.Dims[0].Row(i),
				x.c.Keys[0].Row(i), val, x.part, x.c.Offset[i], x.c.Late[i]))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("raw holds\n%v\nwant\n%v", got, want)
	}

	// Large inserts, one after the other over the pooled connection.
	for round := range 3 {
		big := f.rows(fmt.Sprintf("big%d", round), 60_000, 1000)
		if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 1, Rows: big}}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	var n, nulls uint64
	var sum float64
	f.query(fmt.Sprintf("SELECT count(), countIf(isNull(value)), sum(value) FROM %s WHERE _partition = 1", f.raw), &n, &nulls, &sum)
	wantSum := 0.0
	for i := range 60_000 {
		if i%3 != 0 {
			wantSum += float64(i) + 0.25
		}
	}
	if n != 180_000 || nulls != 60_000 || sum != 3*wantSum {
		t.Errorf("big inserts: %d rows, %d NULLs, sum %v; want 180000, 60000, %v", n, nulls, sum, 3*wantSum)
	}
}

// TestSendRefusals: a dropped column is the server's exception (code 16, as clickhouse-go
// reports it); a column of another type is a *BuildError before any row is sent; settings
// reach the server (readonly=1 refuses the insert); the pool recovers from each.
func TestSendRefusals(t *testing.T) {
	cfg := chtest.Config(t, nil)
	f := newFixture(t, cfg, chtest.New(t, cfg))
	ctx := context.Background()
	send := func() error { return f.w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("x", 10, 0)}}) }
	exec := func(q string) {
		t.Helper()
		if err := f.conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var ex *clickhouse.Exception
	var be *BuildError

	exec(fmt.Sprintf("ALTER TABLE %s DROP COLUMN device", f.raw))
	if err := send(); !errors.As(err, &ex) || ex.Code != 16 {
		t.Errorf("dropped column: %v, want the server's exception code 16", err)
	}
	exec(fmt.Sprintf("ALTER TABLE %s ADD COLUMN device UInt8", f.raw))
	if err := send(); !errors.As(err, &be) {
		t.Errorf("column of another type: %v, want a *BuildError", err)
	}
	exec(fmt.Sprintf("ALTER TABLE %s MODIFY COLUMN device String", f.raw))
	if err := send(); err != nil {
		t.Fatalf("after the fix: %v", err)
	}

	ro := NewWriter(f.raw, f.ds, f.n.WithSettings(Setting{Key: "readonly", Value: 1}))
	err := ro.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("ro", 3, 0)}})
	if !errors.As(err, &ex) || ex.Code != 164 {
		t.Errorf("insert with readonly=1: %v, want the server's exception code 164 (READONLY)", err)
	}
	var n uint64
	f.query(fmt.Sprintf("SELECT count() FROM %s", f.raw), &n)
	if n != 10 {
		t.Errorf("raw holds %d rows, want 10", n)
	}

	// Credentials: the read-only analyst user (deploy/local) gets in and is refused the
	// insert; a wrong password is refused at the handshake.
	for _, tc := range []struct {
		password string
		codes    []int32
	}{{"analyst", []int32{164}}, {"wrong", []int32{193, 516}}} {
		c := cfg.ClickHouse
		c.Username, c.Password = "analyst", tc.password
		n := NewNative(c)
		err := NewWriter(f.raw, f.ds, n).Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("a", 3, 0)}})
		n.Close()
		if !errors.As(err, &ex) || !slices.Contains(tc.codes, ex.Code) {
			t.Errorf("analyst with password %q: %v, want the server's exception %v", tc.password, err, tc.codes)
		}
	}

	// A cancelled context ends the insert.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.w.Send(cctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("c", 3, 0)}}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled insert: %v", err)
	}
}

// TestSendTLS inserts over the native protocol's TLS port of a private server.
func TestSendTLS(t *testing.T) {
	certs := nettest.NewCerts(t)
	srv := chtest.StartServer(t, chtest.ServerOptions{CertFile: certs.CertFile, KeyFile: certs.KeyFile})
	cfg := chtest.Config(t, nil)
	cfg.ClickHouse.Addr = []string{srv.SecureAddr}
	cfg.ClickHouse.TLS = config.TLS{Enabled: true, CAFile: certs.CAFile}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	f := newFixture(t, cfg, conn)
	if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("tls", 30_000, 0)}}); err != nil {
		t.Fatal(err)
	}
	var n uint64
	f.query(fmt.Sprintf("SELECT count() FROM %s", f.raw), &n)
	if n != 30_000 {
		t.Errorf("over TLS raw holds %d rows, want 30000", n)
	}
	// A client that does not trust the server's certificate fails.
	bad := cfg.ClickHouse
	bad.TLS.CAFile = certs.OtherCAFile
	w := NewWriter(f.raw, f.ds, NewNative(bad))
	if err := w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("bad", 1, 0)}}); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
}

// TestSendCluster inserts into the Distributed raw table of the local cluster: with
// insert_distributed_sync every row is on its shard when Send returns. Each shard is read on
// each of its replicas at once, the most any holds counting (the insert writes one replica of a
// shard; reading through the Distributed table may pick the other, which replication has not
// reached yet).
func TestSendCluster(t *testing.T) {
	cfg := chtest.ClusterConfig(t, nil)
	conn := chtest.NewCluster(t, cfg)
	f := newFixture(t, cfg, conn)
	ctx := context.Background()
	rows, err := conn.Query(ctx, "SELECT shard_num, host_name, port FROM system.clusters WHERE cluster = ?", cfg.ClickHouse.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for rows.Next() {
		var shard uint32
		var host string
		var port uint16
		if err := rows.Scan(&shard, &host, &port); err != nil {
			t.Fatal(err)
		}
		local := schema.NewGenerator(cfg).LocalT(schema.Raw(f.ds.Name))
		db, table, _ := strings.Cut(strings.ReplaceAll(local, "`", ""), ".")
		parts = append(parts, fmt.Sprintf("SELECT %d AS shard, count() AS n FROM remote('%s:%d', '%s', '%s')", shard, host, port, db, table))
	}
	rows.Close()
	if len(parts) < 2 {
		t.Fatalf("%d nodes in cluster %s", len(parts), cfg.ClickHouse.Cluster)
	}
	if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("c", 20_000, 0)}}); err != nil {
		t.Fatal(err)
	}
	var n uint64
	f.query(fmt.Sprintf("SELECT toUInt64(sum(n)) FROM (SELECT shard, max(n) AS n FROM (%s) GROUP BY shard)", strings.Join(parts, " UNION ALL ")), &n)
	if n != 20_000 {
		t.Errorf("right after the insert the shards hold %d rows, want 20000 (insert_distributed_sync not applied?)", n)
	}
}

// TestSendAfterIdleConnectionDied: the pooled connection of an earlier insert is cut (as a
// server restart or a NAT timeout would); the next insert goes through on a new connection
// without an error and without writing anything twice.
func TestSendAfterIdleConnectionDied(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	proxy := nettest.NewProxy(t, chtest.Addr())
	pc := *cfg
	pc.ClickHouse.Addr = []string{proxy.Addr()}
	f := newFixture(t, &pc, conn)
	ctx := context.Background()
	if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("a", 10, 0)}}); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	proxy.Restore()
	if err := f.w.Send(ctx, []Part{{Topic: "events", Partition: 0, Rows: f.rows("b", 10, 100)}}); err != nil {
		t.Fatalf("insert after the idle connection died: %v", err)
	}
	var n uint64
	f.query(fmt.Sprintf("SELECT count() FROM %s", f.raw), &n)
	if n != 20 {
		t.Errorf("raw holds %d rows, want 20", n)
	}
}
