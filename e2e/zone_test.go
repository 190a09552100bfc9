package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// zoneTruth is the ground truth of deduplicated events per bucket: count, distinct users and
// the sum of values (quarters: exact in any order).
type zoneTruth struct {
	n     int
	users map[string]bool
	sum   float64
}

func (z *zoneTruth) String() string {
	return fmt.Sprintf("events=%d users=%d revenue=%g", z.n, len(z.users), z.sum)
}

// truthBy groups the deduplicated events of [from, to) (the first-ingested copy of each id)
// by the bucket start of.
func truthBy(evs []clusterEvent, from, to time.Time, of func(time.Time) time.Time) map[time.Time]*zoneTruth {
	first := map[string]clusterEvent{}
	for _, e := range evs {
		if f, ok := first[e.id]; !ok || e.ing.Before(f.ing) {
			first[e.id] = e
		}
	}
	out := map[time.Time]*zoneTruth{}
	for _, e := range first {
		if e.t.Before(from) || !e.t.Before(to) {
			continue
		}
		b := of(e.t)
		if out[b] == nil {
			out[b] = &zoneTruth{users: map[string]bool{}}
		}
		out[b].n++
		out[b].users[e.user] = true
		if e.value != nil {
			out[b].sum += *e.value
		}
	}
	return out
}

// queryRows posts a query and returns its status and rows.
func queryRows(t *testing.T, srv *serving.Server, body string) (int, []map[string]any, string) {
	t.Helper()
	r := httptest.NewRequest("POST", "/api/v1/query", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, r)
	var resp struct {
		Rows []map[string]any `json:"rows"`
	}
	if w.Code == 200 {
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
			t.Fatal(err)
		}
	}
	return w.Code, resp.Rows, w.Body.String()
}

// requireRows checks rows (time, events, users and revenue when asked) against the truth, every
// bucket present, each row's source and exactness as wanted ("" and nil: any).
func requireRows(t *testing.T, what string, rows []map[string]any, want map[time.Time]*zoneTruth, users bool, source string, exact *bool) {
	t.Helper()
	if len(rows) != len(want) {
		t.Errorf("%s: %d rows, want %d", what, len(rows), len(want))
	}
	bad := 0
	for _, r := range rows {
		at, err := time.Parse(time.RFC3339, r["time"].(string))
		if err != nil {
			t.Fatalf("%s: time %v: %v", what, r["time"], err)
		}
		w := want[at]
		got := fmt.Sprintf("events=%v revenue=%v", r["events"], r["revenue"])
		exp := "missing"
		if w != nil {
			exp = fmt.Sprintf("events=%d revenue=%g", w.n, w.sum)
			if users {
				got += fmt.Sprintf(" users=%v", r["users"])
				exp += fmt.Sprintf(" users=%d", len(w.users))
			}
		}
		if got != exp || (source != "" && r["source"] != source) || (exact != nil && r["exact"] != *exact) {
			if bad++; bad <= 5 {
				t.Errorf("%s [%s]: got %s source %v exact %v, want %s source %q exact %v", what, r["time"], got, r["source"], r["exact"], exp, source, exact)
			}
		}
	}
}

// TestTimeZoneGroundTruth (batch and serving layers and the view, in process) keeps a dataset in
// New York with events over the days its clocks change (2026-03-08 has 23 hours, 2026-11-01
// has 25), seals them with the batch layer, and checks against the truth computed in Go: the
// API's local days, hours and months, the <ds>_lambda views' local days and hours; a request in
// another zone: UTC and Kolkata (half an hour off) hours, UTC days from raw; and the refusal of
// other-zone days raw no longer holds, naming time_zone.
func TestTimeZoneGroundTruth(t *testing.T) {
	cfg := chtest.Config(t, nil)
	cfg.Datasets[0].TimeZone = "America/New_York"
	cfg.Datasets[0].RawRetention = config.Duration(400 * 24 * time.Hour)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	ny, _ := time.LoadLocation("America/New_York")
	kolkata, _ := time.LoadLocation("Asia/Kolkata")
	date := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	start := func(s string) time.Time { return ledger.DayStart(date(s), ny) }
	spring, fall := [2]string{"2026-03-07", "2026-03-10"}, [2]string{"2026-10-31", "2026-11-03"}
	var evs []clusterEvent
	for _, r := range [][2]string{spring, fall} {
		evs = append(evs, clusterEvents(start(r[0]), ledger.DayEnd(date(r[1]), ny))...)
	}
	for i := range evs {
		evs[i].id = fmt.Sprintf("%s-%d", evs[i].id, evs[i].t.Month()) // the two ranges' ids differ
	}
	insertEvents(t, conn, cfg, evs)
	now := time.Date(2026, 11, 4, 12, 0, 0, 0, time.UTC)
	l, err := batchlayer.New(cfg, batchlayer.Options{Conn: conn, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]string{spring, fall} {
		if err := l.RunDays(ctx, "events", date(r[0]), date(r[1]), nil); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.Close()
	srv, err := serving.New(cfg, serving.Options{Conn: conn, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	localDay := func(t time.Time) time.Time { return ledger.DayStart(ledger.DayIn(t, ny), ny) }
	hourIn := func(loc *time.Location) func(time.Time) time.Time {
		return func(t time.Time) time.Time {
			l := t.In(loc)
			return t.Add(-time.Duration(l.Minute())*time.Minute - time.Duration(l.Second())*time.Second).UTC()
		}
	}
	ask := func(what, body string) []map[string]any {
		t.Helper()
		code, rows, text := queryRows(t, srv, body)
		if code != 200 {
			t.Fatalf("%s: status %d: %s", what, code, text)
		}
		return rows
	}

	// The dataset's days, hours and months, by default in its zone; YYYY-MM-DD is a local day.
	for _, r := range [][2]string{spring, fall} {
		from, to := start(r[0]), ledger.DayEnd(date(r[1]), ny)
		rows := ask("local days", fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"from":%q,"to":%q,"granularity":"day"}`,
			r[0], date(r[1]).AddDate(0, 0, 1).Format(time.DateOnly)))
		requireRows(t, "local days "+r[0], rows, truthBy(evs, from, to, localDay), true, "batch", &yes)
	}
	for _, c := range []struct {
		day   string
		hours int
	}{{"2026-03-08", 23}, {"2026-11-01", 25}} {
		from, to := start(c.day), ledger.DayEnd(date(c.day), ny)
		rows := ask("local hours", fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"from":%q,"to":%q,"granularity":"hour"}`,
			c.day, date(c.day).AddDate(0, 0, 1).Format(time.DateOnly)))
		if len(rows) != c.hours {
			t.Errorf("%s: %d hour buckets, want %d", c.day, len(rows), c.hours)
		}
		requireRows(t, "local hours "+c.day, rows, truthBy(evs, from, to, hourIn(ny)), true, "batch", &yes)
	}
	rows := ask("local month", `{"dataset":"events","metrics":["events","users","revenue"],"from":"2026-03-01","to":"2026-04-01","granularity":"month"}`)
	requireRows(t, "local month", rows, truthBy(evs, start("2026-03-01"), start("2026-04-01"), func(time.Time) time.Time { return start("2026-03-01") }), false, "batch", nil)

	// The views: local days, and the hours of the short and the long day.
	db := "`" + cfg.ClickHouse.Database + "`"
	for _, v := range []struct {
		view, col string
		of        func(time.Time) time.Time
	}{{"events_lambda_total", "toDateTime(day, 'America/New_York')", localDay}, {"events_lambda_hourly_total", "hour", hourIn(ny)}} {
		rs, err := conn.Query(ctx, fmt.Sprintf("SELECT toUnixTimestamp(%s), events, users, revenue, exact FROM %s.%s ORDER BY 1", v.col, db, v.view))
		if err != nil {
			t.Fatal(err)
		}
		want := truthBy(evs, start(spring[0]), ledger.DayEnd(date(fall[1]), ny), v.of)
		got := map[time.Time]*zoneTruth{}
		hoursOf := map[time.Time]int{}
		for rs.Next() {
			var at uint32
			var n, users uint64
			var sum *float64
			var exact uint8
			if err := rs.Scan(&at, &n, &users, &sum, &exact); err != nil {
				t.Fatal(err)
			}
			b := time.Unix(int64(at), 0).UTC()
			w := want[b]
			if w == nil || int(n) != w.n || int(users) != len(w.users) || sum == nil || *sum != w.sum || exact != 1 {
				t.Errorf("%s [%v]: events %d users %d revenue %v exact %d, want %v", v.view, b, n, users, sum, exact, w)
			}
			got[b] = w
			hoursOf[ledger.DayIn(b, ny)]++
		}
		rs.Close()
		if len(got) != len(want) {
			t.Errorf("%s: %d rows, want %d", v.view, len(got), len(want))
		}
		if v.view == "events_lambda_hourly_total" && (hoursOf[date("2026-03-08")] != 23 || hoursOf[date("2026-11-01")] != 25) {
			t.Errorf("%s: %d hours on 2026-03-08 and %d on 2026-11-01, want 23 and 25", v.view, hoursOf[date("2026-03-08")], hoursOf[date("2026-11-01")])
		}
	}

	// A request in another zone: UTC hours are the stored hours; Kolkata's (from :30) are read
	// from the minutes the batch rewrote, or from raw with exact: true.
	from, to := start("2026-11-01"), ledger.DayEnd(date("2026-11-01"), ny)
	rows = ask("UTC hours", fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"from":%q,"to":%q,"granularity":"hour","time_zone":"UTC"}`,
		from.Format(time.RFC3339), to.Format(time.RFC3339)))
	requireRows(t, "UTC hours", rows, truthBy(evs, from, to, hourIn(time.UTC)), true, "batch", &yes)
	rows = ask("Kolkata hours", fmt.Sprintf(`{"dataset":"events","metrics":["events","revenue"],"from":%q,"to":%q,"granularity":"hour","time_zone":"Asia/Kolkata"}`,
		from.Format(time.RFC3339), to.Format(time.RFC3339)))
	requireRows(t, "Kolkata hours", rows, truthBy(evs, from, to, hourIn(kolkata)), false, "batch", &yes)
	rows = ask("Kolkata hours exact", fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"from":%q,"to":%q,"granularity":"hour","time_zone":"Asia/Kolkata","exact":true}`,
		from.Format(time.RFC3339), to.Format(time.RFC3339)))
	requireRows(t, "Kolkata hours exact", rows, truthBy(evs, from, to, hourIn(kolkata)), true, "", &yes)

	// UTC days cut New York's: from raw, exact (every New York day they touch has its run).
	// YYYY-MM-DD is a UTC day then.
	rows = ask("UTC days", `{"dataset":"events","metrics":["events","users","revenue"],"from":"2026-11-01","to":"2026-11-04","granularity":"day","time_zone":"UTC"}`)
	requireRows(t, "UTC days", rows, truthBy(evs, date("2026-11-01"), date("2026-11-04"),
		func(t time.Time) time.Time { return ledger.DayOf(t) }), true, "raw", &yes)

	// Refusals: other-zone days that raw no longer holds, and an unknown zone.
	short := *cfg
	short.Datasets = slices.Clone(cfg.Datasets)
	short.Datasets[0].RawRetention = config.Duration(30 * 24 * time.Hour)
	srvShort, err := serving.New(&short, serving.Options{Conn: conn, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	code, _, text := queryRows(t, srvShort, `{"dataset":"events","metrics":["events"],"from":"2026-03-07","to":"2026-03-11","granularity":"day","time_zone":"UTC"}`)
	if code != 400 || !strings.Contains(text, `"field":"time_zone"`) || !strings.Contains(text, `"code":"raw_retention"`) {
		t.Errorf("UTC days of March with 30 days of raw: %d %s, want 400 naming time_zone", code, text)
	}
	code, rows, text = queryRows(t, srvShort, `{"dataset":"events","metrics":["events","users","revenue"],"from":"2026-03-07","to":"2026-03-11","granularity":"day"}`)
	if code != 200 {
		t.Fatalf("local days of March with 30 days of raw: %d %s", code, text)
	}
	requireRows(t, "local days, short raw", rows, truthBy(evs, start("2026-03-07"), start("2026-03-11"), localDay), true, "batch", &yes)
	code, _, text = queryRows(t, srv, `{"dataset":"events","metrics":["events"],"from":"2026-03-07","to":"2026-03-11","time_zone":"Mars/Olympus"}`)
	if code != 400 || !strings.Contains(text, `"field":"time_zone"`) {
		t.Errorf("unknown zone: %d %s, want 400 naming time_zone", code, text)
	}
	_ = driver.Conn(conn)
}
