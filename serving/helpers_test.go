package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// testNow is the clock of every test: 2024-03-10 12:00 UTC.
var testNow = time.Date(2024, 3, 10, 12, 0, 0, 0, time.UTC)

func mustDay(s string) time.Time {
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		panic(err)
	}
	return t
}

// bindLiteral inlines args the way clickhouse-go binds them client-side, for chDB and for
// golden files.
func bindLiteral(sql string, args []any) string {
	var b strings.Builder
	i := 0
	for _, r := range sql {
		if r != '?' {
			b.WriteRune(r)
			continue
		}
		b.WriteString(literal(args[i]))
		i++
	}
	return b.String()
}

func literal(v any) string {
	switch v := v.(type) {
	case string:
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = literal(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

// event is one generated raw event.
type event struct {
	id, event, country, device, user string
	value                            *float64
	t                                time.Time
}

// genEvents makes n events per hour between from and to, with duplicates (same id twice).
func genEvents(from, to time.Time, perHour int, seed int64) []event {
	rng := rand.New(rand.NewSource(seed))
	var out []event
	n := 0
	for h := from; h.Before(to); h = h.Add(time.Hour) {
		for i := 0; i < perHour; i++ {
			n++
			e := event{
				id:      fmt.Sprintf("e%d-%d", seed, n),
				event:   []string{"view", "click", "buy"}[rng.Intn(3)],
				country: []string{"DE", "FR", "US", "it's"}[rng.Intn(4)],
				device:  []string{"ios", "android", "web"}[rng.Intn(3)],
				user:    fmt.Sprintf("u%d", rng.Intn(40)),
				t:       h.Add(time.Duration(rng.Intn(3600)) * time.Second),
			}
			if rng.Intn(5) != 0 {
				v := float64(rng.Intn(10000)) / 100
				e.value = &v
			}
			out = append(out, e)
			if rng.Intn(20) == 0 {
				out = append(out, e) // a duplicate delivery
			}
		}
	}
	return out
}

func insertRaw(t testing.TB, conn driver.Conn, cfg *config.Config, evs []event) {
	t.Helper()
	ctx := context.Background()
	g := schema.NewGenerator(cfg)
	// Split by day: current ClickHouse refuses more than 100 partitions per block.
	byDay := map[time.Time][]event{}
	for _, e := range evs {
		byDay[ledger.DayOf(e.t)] = append(byDay[ledger.DayOf(e.t)], e)
	}
	off := int64(0)
	for _, es := range byDay {
		b, err := conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late)", g.T(schema.Raw("events"))))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			off++
			if err := b.Append(e.id, e.t, e.event, e.country, e.device, e.user, e.value, "events", int32(0), off, uint8(0)); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
}

// seal computes <ds>_daily and <ds>_hourly for [from, to) days and rewrites their <ds>_speed
// partitions from deduplicated raw, the way the batch layer does (same catalogue fragments,
// dedup and grouping sets), then records succeeded runs and the watermark.
func seal(t testing.TB, conn driver.Conn, cfg *config.Config, from, to time.Time, runID string, wm time.Time) {
	t.Helper()
	ctx := context.Background()
	g := schema.NewGenerator(cfg)
	ds, _ := cfg.Dataset("events")
	dims := ds.DimensionNames()
	rollup := func(table, grain string) string {
		cols := []string{grain, "grouping"}
		sel := []string{"toDate(time) AS o_t", schema.GroupingExpr + " AS o_grouping"}
		if grain == "hour" {
			sel[0] = "toStartOfHour(time) AS o_t"
		}
		inner := []string{"time", "id"}
		for _, d := range dims {
			cols = append(cols, schema.Q(d))
			sel = append(sel, fmt.Sprintf("if(has(gd, '%s'), %s, '') AS %s", d, schema.Q("d_"+d), schema.Q("o_"+d)))
			inner = append(inner, schema.Q(d)+" AS "+schema.Q("d_"+d))
		}
		for _, c := range ds.ValueColumns() {
			inner = append(inner, schema.Q(c.Name))
		}
		for _, s := range ds.Specs() {
			cols = append(cols, schema.Q(s.Name))
			sel = append(sel, s.Cast(s.ExactExpr()))
		}
		for _, s := range ds.Specs() {
			if s.HasDailyState() {
				cols = append(cols, schema.Q(s.StateColumn()))
				sel = append(sel, s.StateExpr())
			}
		}
		cols = append(cols, "run_id")
		sel = append(sel, "?")
		group := []string{"o_t", "o_grouping"}
		for _, d := range dims {
			group = append(group, schema.Q("o_"+d))
		}
		return fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %s
FROM (SELECT %s FROM %s WHERE time >= toDateTime(?) AND time < toDateTime(?) ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id)
ARRAY JOIN %s AS gd
GROUP BY %s`, g.T(table), strings.Join(cols, ", "), strings.Join(sel, ", "), strings.Join(inner, ", "),
			g.T(schema.Raw("events")), schema.GroupingArray(ds.GroupingSets()), strings.Join(group, ", "))
	}
	// The speed partition of a sealed day, rewritten from deduplicated raw.
	speedCols := []string{"minute"}
	speedSel := []string{"toStartOfMinute(time) AS minute"}
	for _, d := range ds.SpeedDimensions() {
		speedCols = append(speedCols, schema.Q(d))
		speedSel = append(speedSel, schema.Q(d))
	}
	for _, s := range ds.Specs() {
		speedCols = append(speedCols, schema.Q(s.Name))
		speedSel = append(speedSel, s.StateExpr())
	}
	for _, c := range ds.PresenceColumns() {
		speedCols = append(speedCols, schema.Q(metric.PresenceColumn(c)))
		speedSel = append(speedSel, metric.PresenceStateExpr(c))
	}
	speed := fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %s
FROM (SELECT * FROM %s WHERE time >= toDateTime(?) AND time < toDateTime(?) ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id)
GROUP BY %s`, g.T(schema.Speed("events")), strings.Join(speedCols, ", "), strings.Join(speedSel, ", "), g.T(schema.Raw("events")),
		strings.Join(speedCols[:1+len(ds.SpeedDimensions())], ", "))
	for d := from; d.Before(to); d = d.AddDate(0, 0, 1) {
		for _, q := range []string{rollup(schema.Daily("events"), "day"), rollup(schema.Hourly("events"), "hour")} {
			if err := conn.Exec(ctx, q, runID, d.Unix(), d.AddDate(0, 0, 1).Unix()); err != nil {
				t.Fatalf("cannot seal %s: %v\n%s", d, err, q)
			}
		}
		if err := conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %s", g.T(schema.Speed("events")), d.Format("20060102"))); err != nil {
			t.Fatal(err)
		}
		if err := conn.Exec(ctx, speed, d.Unix(), d.AddDate(0, 0, 1).Unix()); err != nil {
			t.Fatalf("cannot rewrite speed of %s: %v\n%s", d, err, speed)
		}
		recordRun(t, conn, cfg, d, runID, 0)
	}
	wq := fmt.Sprintf("INSERT INTO %s (dataset, watermark, run_id, at, at_us) SELECT 'events', toDate(?), ?, now(), toUInt64(?)", g.T(schema.BatchWatermarks))
	if err := conn.Exec(ctx, wq, wm.Format("2006-01-02"), runID, time.Now().UnixMicro()); err != nil {
		t.Fatal(err)
	}
}

// reseal recomputes one sealed day with a new run: its rows of <ds>_daily and <ds>_hourly are
// dropped and written again, its speed partition rewritten, the run recorded.
func reseal(t testing.TB, conn driver.Conn, cfg *config.Config, day time.Time, runID string, wm time.Time) {
	t.Helper()
	g := schema.NewGenerator(cfg)
	for _, table := range []string{schema.Daily("events"), schema.Hourly("events")} {
		if err := conn.Exec(context.Background(), fmt.Sprintf("ALTER TABLE %s DROP PARTITION %s", g.T(table), day.Format("20060102"))); err != nil {
			t.Fatal(err)
		}
	}
	seal(t, conn, cfg, day, day.AddDate(0, 0, 1), runID, wm)
}

// recordRun appends a successful run of a day to batch_runs as the newest run of the day,
// having read every raw row the day holds now (rowsOut 0: the rows <ds>_daily holds for it).
func recordRun(t testing.TB, conn driver.Conn, cfg *config.Config, day time.Time, runID string, rowsOut uint64) {
	t.Helper()
	g := schema.NewGenerator(cfg)
	ctx := context.Background()
	var read, out uint64
	if err := conn.QueryRow(ctx, ledger.RawRowsSQL(g.DB, "events", day)).Scan(&read); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s WHERE day = toDate(?) AND run_id = ?", g.T(schema.Daily("events"))), day.Format(time.DateOnly), runID).Scan(&out); err != nil {
		t.Fatal(err)
	}
	if rowsOut == 0 {
		rowsOut = out
	}
	var hourly, speed uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s WHERE toDate(hour) = toDate(?) AND run_id = ?", g.T(schema.Hourly("events"))), day.Format(time.DateOnly), runID).Scan(&hourly); err != nil {
		t.Fatal(err)
	}
	if hourly > 0 {
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s WHERE toDate(minute) = toDate(?)", g.T(schema.Speed("events"))), day.Format(time.DateOnly)).Scan(&speed); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	if err := ledger.RecordRun(ctx, conn, g.DB, ledger.Run{Dataset: "events", Day: day, RunID: runID, Status: ledger.StatusSucceeded,
		At: now, AtUS: uint64(now.UnixMicro()), StartedAt: now, FinishedAt: now, RowsRead: read, RowsOut: rowsOut,
		RowsHourly: hourly, RowsSpeed: speed, Host: "test"}); err != nil {
		t.Fatal(err)
	}
}

type testEnv struct {
	cfg  *config.Config
	conn driver.Conn
	srv  *Server
	http http.Handler
	evs  []event
}

// newEnv migrates a fresh database, loads raw events from 2024-03-05 to 2024-03-10 11:00,
// seals 03-05..03-08 (watermark 2024-03-08) and builds a server at testNow.
func newEnv(t *testing.T, mod func(*config.Config)) *testEnv {
	t.Helper()
	return newEnvWith(t, mod, genEvents(mustDay("2024-03-05"), testNow.Add(-time.Hour), 20, 1))
}

// newEnvWith is newEnv with the given events.
func newEnvWith(t *testing.T, mod func(*config.Config), evs []event) *testEnv {
	t.Helper()
	cfg := chtest.Config(t, nil)
	if mod != nil {
		mod(cfg)
	}
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	insertRaw(t, conn, cfg, evs)
	seal(t, conn, cfg, mustDay("2024-03-05"), mustDay("2024-03-09"), "run-1", mustDay("2024-03-08"))
	srv, err := New(cfg, Options{Conn: conn, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	srv.state.ttl = 0
	return &testEnv{cfg: cfg, conn: conn, srv: srv, http: srv.Handler(), evs: evs}
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (e *testEnv) do(t *testing.T, method, path, key string, body string, out any) int {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	e.http.ServeHTTP(w, r)
	if out != nil {
		if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: cannot decode %q: %v", method, path, w.Body.String(), err)
		}
	}
	return w.Code
}

// apiResp is a decoded /api/v1/query answer.
type apiResp struct {
	Rows []map[string]any `json:"rows"`
	Meta struct {
		BatchWatermark *string       `json:"batch_watermark"`
		Complete       bool          `json:"complete"`
		Sources        []SourceRange `json:"sources"`
		Cached         bool          `json:"cached"`
		Truncated      bool          `json:"truncated"`
		LagSeconds     float64       `json:"lag_seconds"`
		Pending        []string      `json:"pending_corrections"`
	} `json:"meta"`
	Error string `json:"error"`
	Field string `json:"field"`
}

func (e *testEnv) query(t *testing.T, req string) apiResp {
	t.Helper()
	var r apiResp
	if code := e.do(t, "POST", "/api/v1/query", "", req, &r); code != 200 {
		t.Fatalf("query %s: status %d: %s (%s)", req, code, r.Error, r.Field)
	}
	return r
}

// truth computes exact values from the generated events (deduplicated by day and id).
type truth struct {
	events  int
	users   map[string]bool
	revenue float64
}

func (e *testEnv) truth(from, to time.Time, keep func(event) bool) truth {
	seen := map[string]bool{}
	tr := truth{users: map[string]bool{}}
	for _, ev := range e.evs {
		k := ledger.DayOf(ev.t).String() + ev.id
		if ev.t.Before(from) || !ev.t.Before(to) || seen[k] || (keep != nil && !keep(ev)) {
			continue
		}
		seen[k] = true
		tr.events++
		tr.users[ev.user] = true
		if ev.value != nil {
			tr.revenue += *ev.value
		}
	}
	return tr
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

var _ = bytes.NewReader
var _ = metric.Count
