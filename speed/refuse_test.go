package speed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
)

func TestClassify(t *testing.T) {
	f := func(err error, want refusalKind) {
		t.Helper()
		if got := classify(err); got != want {
			t.Errorf("classify(%v) = %v, want %v", err, got, want)
		}
	}
	ex := func(code int32) error { return &clickhouse.Exception{Code: code, Message: "m"} }
	// Transient: retried.
	f(io.EOF, transient)
	f(&net.OpError{Op: "dial", Err: errors.New("connection refused")}, transient)
	f(context.DeadlineExceeded, transient)
	f(clickhouse.ErrAcquireConnTimeout, transient)
	f(ex(252), transient) // TOO_MANY_PARTS
	f(ex(241), transient) // MEMORY_LIMIT_EXCEEDED
	f(ex(242), transient) // TABLE_IS_READ_ONLY
	f(ex(164), transient) // READONLY
	f(ex(210), transient) // NETWORK_ERROR
	f(ex(159), transient) // TIMEOUT_EXCEEDED
	f(ex(999999), transient)
	// The statement: every row.
	f(ex(16), stmtRefusal) // NO_SUCH_COLUMN_IN_TABLE
	f(fmt.Errorf("prepare: %w", ex(60)), stmtRefusal)
	f(ex(8), stmtRefusal)
	f(ex(47), stmtRefusal)
	f(&buildError{Err: &column.ColumnConverterError{Op: "Append", From: "[]*float64", To: "String"}}, stmtRefusal)
	// Some rows, maybe.
	f(ex(395), rowRefusal) // throwIf
	f(ex(153), rowRefusal) // ILLEGAL_DIVISION
	f(ex(321), rowRefusal) // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
	f(ex(6), rowRefusal)
}

func TestSliceRows(t *testing.T) {
	mk := func(offsets ...int64) *buffer {
		b := newBuffer(0, 0)
		for _, o := range offsets {
			b.add(&event.Row{ID: fmt.Sprint(o), Time: time.Unix(o, 0)}, o, false, nil)
		}
		return b
	}
	p0, p1 := &part{partition: 0}, &part{partition: 1}
	pieces := []piece{{p0, mk(10, 11, 12)}, {p1, mk(20, 21)}}
	f := func(from, to int, want string) {
		t.Helper()
		var got []string
		for _, pc := range sliceRows(pieces, from, to, nil) {
			got = append(got, fmt.Sprintf("%d:%v", pc.p.partition, pc.b.Offset))
		}
		if s := strings.Join(got, " "); s != want {
			t.Errorf("sliceRows(%d, %d) = %q, want %q", from, to, s, want)
		}
	}
	f(0, 5, "0:[10 11 12] 1:[20 21]")
	f(0, 2, "0:[10 11]")
	f(2, 5, "0:[12] 1:[20 21]")
	f(3, 4, "1:[20]")
	f(4, 5, "1:[21]")
}

// TestRefusalSQLOnChDB runs the lookup after a refusal and the DDL the refusal tests use on
// current ClickHouse (the Go tests run them on 18.16).
func TestRefusalSQLOnChDB(t *testing.T) {
	lo, hi := time.Unix(1_700_000_000, 0), time.Unix(1_700_000_100, 0)
	lookup := strings.Replace(lookupSQL("x.t", lo, hi, []string{offsetRange(1, 10, 20), offsetRange(2, 5, 5)}), "?", "'events'", 1)
	res := chtest.RequireChDB(t, []string{
		"CREATE DATABASE IF NOT EXISTS x",
		"CREATE TABLE x.t (id String, time DateTime('UTC'), value Nullable(Float64), _topic String, _partition Int32, _offset Int64) ENGINE = MergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (time, id)",
		"INSERT INTO x.t SELECT 'a', toDateTime(1700000050, 'UTC'), 1, 'events', 1, 12",
		"INSERT INTO x.t SELECT 'b', toDateTime(1700000050, 'UTC'), 1, 'events', 2, 6",
		lookup,
		"ALTER TABLE x.t ADD COLUMN _check UInt8 MATERIALIZED throwIf(ifNull(value, 0) = 13)",
		"CREATE TABLE x.check_sink (id String) ENGINE = Null",
		"CREATE MATERIALIZED VIEW x.check_mv TO x.check_sink AS SELECT id FROM x.t WHERE throwIf(ifNull(value, 0) = 13) = 0",
	})
	if got := strings.TrimSpace(res[4].Out); got != "1\t12" {
		t.Errorf("lookup returned %q, want the row at partition 1 offset 12 only", got)
	}
}

// refusalEnv produces n events, the ones at i%200 == 77 with the value 13, and returns the
// ids of the others and of those.
func refusalEnv(e *env, n int) (good, bad map[string]bool) {
	good, bad = map[string]bool{}, map[string]bool{}
	var ps []string
	now := time.Now()
	for i := range n {
		id := fmt.Sprintf("r%d", i)
		v := float64(i % 10)
		if i%200 == 77 {
			v = 13
			bad[id] = true
		} else {
			good[id] = true
		}
		ps = append(ps, ev(id, now.Add(-time.Duration(i)*time.Second), "DE", v))
	}
	e.produce(ps...)
	return good, bad
}

// TestRowRefusals makes ClickHouse refuse some rows (a MATERIALIZED column that throws for
// one value, as a CHECK constraint would): exactly those go to rejects as insert_refused, the
// others to raw, the ledger adds up and the dataset goes on.
func TestRowRefusals(t *testing.T) {
	e := newEnv(t, nil)
	e.exec(fmt.Sprintf("ALTER TABLE %s.events_raw ADD COLUMN _check UInt8 MATERIALIZED throwIf(ifNull(value, 0) = 13)", e.db))
	good, bad := refusalEnv(e, 1000)
	reg := prometheus.NewRegistry()
	r := e.speed("t1", reg)
	e.waitAccounted(time.Minute)
	e.requireIDs(good)

	rows, err := e.conn.Query(context.Background(), fmt.Sprintf(
		"SELECT payload, detail, _offset FROM %s.events_rejects WHERE reason = 'insert_refused'", e.db))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for rows.Next() {
		var payload, detail string
		var offset int64
		if err := rows.Scan(&payload, &detail, &offset); err != nil {
			t.Fatal(err)
		}
		var row struct {
			ID    string  `json:"id"`
			Value float64 `json:"value"`
		}
		if err := json.Unmarshal([]byte(payload), &row); err != nil {
			t.Fatalf("payload %q: %v", payload, err)
		}
		if row.Value != 13 || !strings.Contains(detail, "395") {
			t.Errorf("refused row %s: value %v, detail %q; want 13 and the server's code 395", row.ID, row.Value, detail)
		}
		got[row.ID] = true
	}
	rows.Close()
	if len(got) != len(bad) {
		t.Errorf("insert_refused rejects hold %v, want %v", got, bad)
	}
	for id := range bad {
		if !got[id] {
			t.Errorf("refused row %s is not in rejects", id)
		}
	}
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)); n != uint64(len(good)) {
		t.Errorf("raw holds %d rows, want %d", n, len(good))
	}
	if n := e.uint(fmt.Sprintf("SELECT sum(rejected_rows) FROM %s.speed_flushes", e.db)); n != uint64(len(bad)) {
		t.Errorf("ledger counts %d rejected rows, want %d", n, len(bad))
	}
	if n := e.uint(fmt.Sprintf("SELECT sum(raw_rows) FROM %s.speed_flushes", e.db)); n != uint64(len(good)) {
		t.Errorf("ledger counts %d raw rows, want %d", n, len(good))
	}
	if got := metricSum(t, reg, "lambda_speed_rejected_total", string(event.InsertRefused)); got != float64(len(bad)) {
		t.Errorf("lambda_speed_rejected_total{reason=insert_refused} = %v, want %d", got, len(bad))
	}
	if err := r.s.Health(); err != nil {
		t.Errorf("Health after row refusals: %v", err)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// TestViewRefusalKeepsRawRows makes a materialized view on raw throw for one value.
// ClickHouse writes the block to raw before it pushes it to the views and keeps it when a view
// throws: those rows are in raw, so they count as written, never inserted twice, never
// rejected.
func TestViewRefusalKeepsRawRows(t *testing.T) {
	e := newEnv(t, nil)
	e.exec(fmt.Sprintf("CREATE TABLE %s.check_sink (id String) ENGINE = Null", e.db))
	e.exec(fmt.Sprintf("CREATE MATERIALIZED VIEW %[1]s.check_mv TO %[1]s.check_sink AS SELECT id FROM %[1]s.events_raw WHERE throwIf(ifNull(value, 0) = 13) = 0", e.db))
	good, bad := refusalEnv(e, 1000)
	reg := prometheus.NewRegistry()
	r := e.speed("t1", reg)
	e.waitAccounted(time.Minute)
	all := map[string]bool{}
	for id := range good {
		all[id] = true
	}
	for id := range bad {
		all[id] = true
	}
	e.requireIDs(all)
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)); n != 1000 {
		t.Errorf("raw holds %d rows, want 1000 (rows inserted twice?)", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT count() FROM %s.events_rejects", e.db)); n != 0 {
		t.Errorf("%d rejects, want none: the rows are in raw", n)
	}
	if n := e.uint(fmt.Sprintf("SELECT sum(raw_rows) FROM %s.speed_flushes", e.db)); n != 1000 {
		t.Errorf("ledger counts %d raw rows, want 1000", n)
	}
	if errs := metricSum(t, reg, "lambda_speed_insert_errors_total", ""); errs == 0 {
		t.Error("no insert failed: the view did not refuse anything")
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}

// TestSchemaRefusalStopsDataset drops a raw column under a running speed layer: the dataset
// stops without committing while another dataset goes on; once the column is back, a new
// process accounts for every record.
func TestSchemaRefusalStopsDataset(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		other := c.Datasets[0]
		other.Name, other.Topic = "others", "others"
		c.Datasets = append(c.Datasets, other)
	})
	others := func(from, n int) {
		t.Helper()
		var msgs []*sarama.ProducerMessage
		for i := from; i < from+n; i++ {
			msgs = append(msgs, &sarama.ProducerMessage{Topic: "others", Key: sarama.StringEncoder(fmt.Sprint(i)),
				Value: sarama.StringEncoder(ev(fmt.Sprintf("o%d", i), time.Now(), "FR", 1))})
		}
		if err := e.prod.SendMessages(msgs); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]bool{}
	events := func(prefix string, n int) {
		t.Helper()
		var ps []string
		for i := range n {
			id := fmt.Sprintf("%s%d", prefix, i)
			ps = append(ps, ev(id, time.Now(), "DE", 2))
			want[id] = true
		}
		e.produce(ps...)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s within a minute", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	othersRaw := func() uint64 { return e.uint(fmt.Sprintf("SELECT count() FROM %s.others_raw", e.db)) }

	events("a", 300)
	others(0, 100)
	reg := prometheus.NewRegistry()
	r := e.speed("t1", reg)
	e.waitAccounted(time.Minute)
	waitFor("100 rows in others_raw", func() bool { return othersRaw() == 100 })
	if err := r.s.Health(); err != nil {
		t.Fatalf("Health while consuming: %v", err)
	}
	before := e.ends()

	var typ string
	if err := e.conn.QueryRow(context.Background(), fmt.Sprintf(
		"SELECT type FROM system.columns WHERE database = '%s' AND table = 'events_raw' AND name = 'value'", e.db)).Scan(&typ); err != nil {
		t.Fatal(err)
	}
	e.exec(fmt.Sprintf("ALTER TABLE %s.events_raw DROP COLUMN value", e.db))
	events("b", 300)
	others(100, 100)
	waitFor("stopped dataset", func() bool { return metricSum(t, reg, "lambda_speed_dataset_stopped", "") == 1 })
	herr := r.s.Health()
	if herr == nil || !strings.Contains(herr.Error(), "dataset events stopped") || !strings.Contains(herr.Error(), "code: 16") {
		t.Errorf("Health of a stopped dataset: %v, want it to say events stopped with the server's code 16", herr)
	}
	if herr != nil && strings.Contains(herr.Error(), "others") {
		t.Errorf("Health blames the other dataset: %v", herr)
	}
	waitFor("200 rows in others_raw: the other dataset goes on", func() bool { return othersRaw() == 200 })
	if r.exited() {
		t.Fatalf("Run returned after one dataset stopped: %v", r.err)
	}
	// Nothing of the refused flush is committed or in the ledger.
	if err := e.accounted(before); err != nil {
		t.Fatalf("ledger before the drop: %v", err)
	}
	if err := e.accounted(e.ends()); err == nil {
		t.Error("the ledger accounts for records produced after the drop")
	}
	adm, err := sarama.NewClusterAdmin(e.cfg.Kafka.Brokers, sarama.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	offs, err := adm.ListConsumerGroupOffsets(e.cfg.Kafka.GroupPrefix+"-events", map[string][]int32{"events": {0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	for p, end := range before {
		if b := offs.GetBlock("events", p); b == nil || b.Offset != end {
			t.Errorf("partition %d: committed %+v, want %d (the end before the drop)", p, b, end)
		}
	}

	// The fix, and a restart: every record is accounted for.
	e.exec(fmt.Sprintf("ALTER TABLE %s.events_raw ADD COLUMN value %s", e.db, typ))
	if err := r.stop(); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Run of a stopped dataset returned %v, want why it stopped", err)
	}
	r2 := e.speed("t2", nil)
	e.waitAccounted(time.Minute)
	e.requireIDs(want)
	if err := r2.s.Health(); err != nil {
		t.Errorf("Health after the restart: %v", err)
	}
	if err := r2.stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
