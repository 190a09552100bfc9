package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
)

// dayTruth is the exact value of a day: distinct events, the sum of their values, distinct
// users.
type dayTruth struct {
	Events  uint64
	Revenue float64
	Users   uint64
}

// writeHistory writes n JSON lines of the demo dataset over the ten days before today, with
// duplicates (exact copies of earlier lines with an id), lines without an id, missing values
// and malformed lines, and returns the ground truth per day and the number of malformed lines.
func writeHistory(t testing.TB, path string, n int, seed uint64) (map[string]dayTruth, int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(seed, 1))
	today := time.Now().UTC().Truncate(24 * time.Hour)
	first := today.AddDate(0, 0, -10)
	type acc struct {
		events  uint64
		revenue float64
		users   map[string]bool
	}
	days := map[string]*acc{}
	var recent []string // lines with an id, for duplicates
	events := []string{"view", "click", "purchase", "signup"}
	countries := []string{"DE", "FR", "US", "BR", "JP", "IN"}
	devices := []string{"mobile", "desktop", "tablet"}
	bad := 0
	var b []byte
	for i := range n {
		r := rng.IntN(1000)
		switch {
		case r < 2: // malformed: three kinds
			bad++
			switch i % 3 {
			case 0:
				b = append(b[:0], `{"event_id":"bad`...)
			case 1:
				b = fmt.Appendf(b[:0], `{"event_id":"b%d","ts":"yesterday","event":"view"}`, i)
			default:
				b = fmt.Appendf(b[:0], `{"event_id":"b%d","ts":%d,"value":"12"}`, i, first.UnixMilli())
			}
		case r < 22 && len(recent) > 0: // an exact copy of a recent line: the same event
			b = append(b[:0], recent[rng.IntN(len(recent))]...)
		default:
			ts := first.Add(time.Duration(rng.Int64N(int64(10 * 24 * time.Hour))))
			user := "u" + strconv.Itoa(rng.IntN(50_000))
			b = append(b[:0], '{')
			withID := r >= 32 // 1% have no id: theirs is derived from the file and line
			if withID {
				b = fmt.Appendf(b, `"event_id":"e%d-%d",`, seed, i)
			}
			if i%2 == 0 {
				b = fmt.Appendf(b, `"ts":%q,`, ts.Format(time.RFC3339Nano))
			} else {
				b = fmt.Appendf(b, `"ts":%d,`, ts.UnixMilli())
				ts = ts.Truncate(time.Millisecond)
			}
			b = fmt.Appendf(b, `"event":%q,"country":%q,"device":%q,"user_id":%q`, events[rng.IntN(4)],
				countries[rng.IntN(len(countries))], devices[rng.IntN(3)], user)
			value := -1.0
			if rng.IntN(20) > 0 { // 5% without a value
				value = float64(rng.IntN(40_000)) / 4 // quarters: sums are exact in float64
				b = fmt.Appendf(b, `,"value":%s`, strconv.FormatFloat(value, 'f', -1, 64))
			}
			b = append(b, '}')
			day := ts.Format(time.DateOnly)
			a := days[day]
			if a == nil {
				a = &acc{users: map[string]bool{}}
				days[day] = a
			}
			a.events++
			if value >= 0 {
				a.revenue += value
			}
			a.users[user] = true
			if withID {
				if len(recent) < 1000 {
					recent = append(recent, string(b))
				} else {
					recent[rng.IntN(1000)] = string(b)
				}
			}
		}
		b = append(b, '\n')
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out := map[string]dayTruth{}
	for day, a := range days {
		out[day] = dayTruth{Events: a.events, Revenue: a.revenue, Users: uint64(len(a.users))}
	}
	return out, bad
}

// readDaily returns the day totals (the empty grouping set) of <ds>_daily.
func readDaily(t testing.TB, ctx context.Context, conn driver.Conn, cfg *config.Config) map[string]dayTruth {
	t.Helper()
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT toString(day), events, ifNull(revenue, 0), users FROM `%s`.events_daily WHERE grouping = '' ORDER BY day", cfg.ClickHouse.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]dayTruth{}
	for rows.Next() {
		var day string
		var d dayTruth
		if err := rows.Scan(&day, &d.Events, &d.Revenue, &d.Users); err != nil {
			t.Fatal(err)
		}
		out[day] = d
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func compareDays(t testing.TB, what string, got, want map[string]dayTruth) {
	t.Helper()
	var days []string
	for d := range want {
		days = append(days, d)
	}
	sort.Strings(days)
	if len(got) != len(want) {
		t.Errorf("%s: %d days, want %d", what, len(got), len(want))
	}
	for _, d := range days {
		if got[d] != want[d] {
			t.Errorf("%s %s: got %+v, want %+v", what, d, got[d], want[d])
		}
	}
}

// TestImport imports a million JSON lines (200k with -short or the race detector), recomputes
// the days they touch and compares <ds>_daily with the ground truth computed while writing the
// file; a second import of the same file changes no daily value.
func TestImport(t *testing.T) {
	n := 1_000_000
	if testing.Short() || raceEnabled {
		n = 200_000
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	if err := migrate(ctx, cfg, false); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "history.jsonl")
	start := time.Now()
	truth, bad := writeHistory(t, file, n, 7)
	t.Logf("wrote %d lines in %s", n, time.Since(start).Round(time.Millisecond))

	var out bytes.Buffer
	var speedRows uint64
	st, err := importFiles(ctx, cfg, conn, &cfg.Datasets[0], []string{file}, importOptions{Progress: &out})
	if err != nil {
		t.Fatal(err)
	}
	if st.Records != int64(n) || st.Rejects != int64(bad) || st.Rows != int64(n-bad) {
		t.Errorf("records %d rows %d rejects %d, want %d, %d, %d", st.Records, st.Rows, st.Rejects, n, n-bad, bad)
	}
	t.Logf("imported in %s", st.Took.Round(time.Millisecond))
	// Imported rows are corrections (_late = 1): the speed view's materialized view skips them.
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM `%s`.events_speed", cfg.ClickHouse.Database)).Scan(&speedRows); err != nil {
		t.Fatal(err)
	}
	if speedRows != 0 {
		t.Errorf("%d speed rows from an import", speedRows)
	}
	start = time.Now()
	if len(st.Days) != len(truth) {
		t.Errorf("%d days touched, want %d", len(st.Days), len(truth))
	}
	if err := recomputeDays(ctx, cfg, cfg.Datasets[0].Name, st.dayList(), &out, false); err != nil {
		t.Fatal(err)
	}
	t.Logf("recomputed in %s", time.Since(start).Round(time.Millisecond))
	first := readDaily(t, ctx, conn, cfg)
	compareDays(t, "after the import", first, truth)

	// Rejects name the file and line, and imported rows stay out of the speed view.
	var rejects uint64
	var detail string
	db := cfg.ClickHouse.Database
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT count(), any(detail) FROM `%s`.events_rejects WHERE _topic = 'import:history.jsonl' AND reason = 'bad_time'", db)).Scan(&rejects, &detail); err != nil {
		t.Fatal(err)
	}
	if rejects == 0 || !strings.HasPrefix(detail, "history.jsonl:") || !strings.Contains(detail, `ts: "yesterday"`) {
		t.Errorf("bad_time rejects: %d, detail %q", rejects, detail)
	}
	// The runs rewrote the speed minutes of the days the speed retention keeps, from raw: they
	// hold the imported rows now, as many as the run deduplicated.
	var rewritten, dedup uint64
	if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT countMerge(events) FROM `%s`.events_speed", db)).Scan(&rewritten); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT sum(rows_dedup) FROM (SELECT day, argMax(rows_dedup, at_us) AS rows_dedup, argMax(rows_speed, at_us) AS rows_speed
    FROM `+"`%s`"+`.batch_runs WHERE dataset = 'events' AND status = 'succeeded' GROUP BY day) WHERE rows_speed > 0`, db)).Scan(&dedup); err != nil {
		t.Fatal(err)
	}
	if rewritten != dedup {
		t.Errorf("speed view after the runs: %d events, the rewritten days' deduplicated rows %d", rewritten, dedup)
	}

	st2, err := importFiles(ctx, cfg, conn, &cfg.Datasets[0], []string{file}, importOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st2.Rows != st.Rows {
		t.Errorf("second import: %d rows, first %d", st2.Rows, st.Rows)
	}
	if err := recomputeDays(ctx, cfg, cfg.Datasets[0].Name, st2.dayList(), io.Discard, false); err != nil {
		t.Fatal(err)
	}
	compareDays(t, "after importing the file again", readDaily(t, ctx, conn, cfg), first)
}

// TestImportFormats: CSV with a header (dotted names nest), gzip told by magic bytes,
// blank lines, a malformed CSV row and files that cannot be imported.
func TestImportFormats(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, err := config.Parse("formats.yaml", []byte(`
datasets:
  - name: orders
    topic: orders
    id_field: order_id
    time_field: created_at
    dimensions: [{name: country, field: shipping.country}, {name: channel}]
    metrics:
      - {name: orders, type: count}
      - {name: revenue, type: sum, field: total}
      - {name: buyers, type: uniq, field: customer}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg = chtest.Config(t, cfg)
	conn := chtest.New(t, cfg)
	if err := migrate(ctx, cfg, false); err != nil {
		t.Fatal(err)
	}
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -2)
	ts := day.Add(10 * time.Hour).Format(time.RFC3339)
	dir := t.TempDir()
	csvText := "order_id,created_at,shipping.country,channel,total,customer\n" +
		"o1," + ts + ",DE,web,10.5,c1\n" +
		"\n" +
		"o2," + ts + ",FR,\"app, ios\",20,007\n" +
		"," + ts + ",US,web,,c3\n" + // no id: derived from the file and line; no total: NULL
		"o4," + ts + ",DE,web,\"unterminated\n"
	// The CSV is gzip-compressed under a name that says neither.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write([]byte(csvText)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	csvFile := filepath.Join(dir, "orders-export")
	if err := os.WriteFile(csvFile, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	jsonFile := filepath.Join(dir, "more.json")
	if err := os.WriteFile(jsonFile, []byte(`{"order_id":"o5","created_at":"`+ts+`","shipping":{"country":"DE"},"channel":"web","total":4.5,"customer":"c1"}`+"\r\n\n"+
		`{"order_id":"o6","created_at":"`+ts+`","total":"many"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := importFiles(ctx, cfg, conn, &cfg.Datasets[0], []string{csvFile, jsonFile}, importOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 4 || st.Rejects != 2 {
		t.Errorf("rows %d rejects %d, want 4 and 2", st.Rows, st.Rejects)
	}
	db := cfg.ClickHouse.Database
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT id, country, channel, ifNull(total, -1), customer, _topic, _partition, _offset, _late FROM `%s`.orders_raw ORDER BY _topic, _offset", db))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, country, channel, customer, topic string
		var total float64
		var partition int32
		var offset int64
		var late uint8
		if err := rows.Scan(&id, &country, &channel, &total, &customer, &topic, &partition, &offset, &late); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s|%s|%s|%g|%s|%s|%d|%d|%d", id, country, channel, total, customer, topic, partition, offset, late))
	}
	rows.Close()
	want := []string{
		"o5|DE|web|4.5|c1|import:more.json|-1|1|1",
		"o1|DE|web|10.5|c1|import:orders-export|-1|2|1",
		"o2|FR|app, ios|20|007|import:orders-export|-1|4|1",
		"k:import:orders-export:-1:5|US|web|-1|c3|import:orders-export|-1|5|1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("raw rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	rows, err = conn.Query(ctx, fmt.Sprintf("SELECT reason, detail FROM `%s`.orders_rejects ORDER BY _topic, _offset", db))
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for rows.Next() {
		var reason, detail string
		if err := rows.Scan(&reason, &detail); err != nil {
			t.Fatal(err)
		}
		got = append(got, reason+"|"+detail)
	}
	rows.Close()
	want = []string{
		"bad_type|more.json:3: total: want a number, got string",
		`invalid_json|orders-export:6: csv: extraneous or missing " in quoted-field`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rejects:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	f := func(name, content, want string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := importFiles(ctx, cfg, conn, &cfg.Datasets[0], []string{path}, importOptions{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", name, err, want)
		}
	}
	f("empty.csv", "", "empty CSV file: the first row names the fields")
	f("clash.csv", "shipping,shipping.country\nx,y\n", `column "shipping.country" clashes with another column`)
	f("fake.json.gz", "{}\n", "named .gz but not gzip-compressed")
	_, err = importFiles(ctx, cfg, conn, &cfg.Datasets[0], []string{jsonFile, filepath.Join(dir, "sub", "more.json")}, importOptions{})
	if err == nil || !strings.Contains(err.Error(), "have the same name") {
		t.Errorf("two files of the same name: %v", err)
	}
}
