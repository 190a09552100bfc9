package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestMoneyExactToTheCent: a sum declared with `decimals: 2` over a million cent amounts equals
// the truth to the cent in every layer: <ds>_daily (a sealed day), <ds>_speed (after the
// boundary), deduplicated raw (exact:true) and the view, as JSON numbers without float noise.
func TestMoneyExactToTheCent(t *testing.T) {
	money := func(c *config.Config) {
		d := &c.Datasets[0]
		d.Metrics = []config.Metric{{Name: "events", Type: "count"}, {Name: "revenue", Type: "sum", Field: "value", Decimals: 2}}
	}
	e := newEnvWith(t, money, nil)
	g := schema.NewGenerator(e.cfg)
	ctx := context.Background()
	// 500k amounts on a day the batch seals (03-07) and 500k after the boundary (03-09): 0.00
	// to 999.99, every seventh missing.
	truth := map[string]int64{}
	for _, day := range []string{"2024-03-07", "2024-03-09"} {
		const n = 500_000
		q := fmt.Sprintf(`INSERT INTO %s (id, time, event, country, device, value, _topic, _partition, _offset, _late)
SELECT concat('%s-', toString(number)), toDateTime('%s 00:00:00', 'UTC') + intDiv(number * 86400, %d), 'buy', 'DE', 'web',
    if(number %% 7 = 3, NULL, toNullable(toFloat64((number * 7919) %% 100000) / 100)), 'events', 0, toInt64(number), 0
FROM system.numbers LIMIT %d`, g.T(schema.Raw("events")), day, day, n, n)
		if err := e.conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
		var cents int64
		for i := int64(0); i < n; i++ {
			if i%7 != 3 {
				cents += (i * 7919) % 100000
			}
		}
		truth[day] = cents
	}
	seal(t, e.conn, e.cfg, mustDay("2024-03-05"), mustDay("2024-03-09"), "run-1", mustDay("2024-03-08"))
	want := func(day string) string { c := truth[day]; return fmt.Sprintf("%d.%02d", c/100, c%100) }

	query := func(body string) []map[string]json.Number {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "/api/v1/query", strings.NewReader(body))
		w := httptest.NewRecorder()
		e.http.ServeHTTP(w, req)
		if w.Code != 200 {
			t.Fatalf("%s: %d %s", body, w.Code, w.Body)
		}
		var r struct{ Rows []map[string]any }
		dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		var out []map[string]json.Number
		for _, row := range r.Rows {
			m := map[string]json.Number{"time": json.Number(row["time"].(string)), "source": json.Number(row["source"].(string))}
			if v, ok := row["revenue"].(json.Number); ok {
				m["revenue"] = v
			}
			out = append(out, m)
		}
		return out
	}
	check := func(name string, rows []map[string]json.Number, wantSource map[string]string) {
		t.Helper()
		n := 0
		for _, r := range rows {
			day := string(r["time"])[:10]
			if _, ok := truth[day]; !ok {
				continue
			}
			n++
			if string(r["revenue"]) != want(day) || string(r["source"]) != wantSource[day] {
				t.Errorf("%s %s: revenue %s from %s, want %s from %s", name, day, r["revenue"], r["source"], want(day), wantSource[day])
			}
		}
		if n != 2 {
			t.Errorf("%s: %d of the 2 days", name, n)
		}
	}
	check("merged", query(`{"dataset":"events","metrics":["revenue"],"from":"2024-03-06","to":"2024-03-10","granularity":"day"}`),
		map[string]string{"2024-03-07": SourceBatch, "2024-03-09": SourceSpeed})
	check("exact", query(`{"dataset":"events","metrics":["revenue"],"from":"2024-03-06","to":"2024-03-10","granularity":"day","exact":true}`),
		map[string]string{"2024-03-07": SourceBatch, "2024-03-09": SourceRaw}) // the sealed day is exact already
	// Hours of the sealed day add up to the day, to the cent.
	rows := query(`{"dataset":"events","metrics":["revenue"],"from":"2024-03-07","to":"2024-03-08","granularity":"all"}`)
	if len(rows) != 1 || string(rows[0]["revenue"]) != want("2024-03-07") {
		t.Errorf("all over the sealed day: %v, want %s", rows, want("2024-03-07"))
	}
	// The view, as analysts read it.
	for day, view := range map[string]string{"2024-03-07": schema.Lambda("events"), "2024-03-09": schema.Lambda("events")} {
		var got string
		if err := e.conn.QueryRow(ctx, fmt.Sprintf("SELECT toString(revenue) FROM %s WHERE grouping = '' AND day = toDate('%s')", g.T(view), day)).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want(day) {
			t.Errorf("view %s: %s, want %s", day, got, want(day))
		}
	}
}
