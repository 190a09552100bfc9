package serving

import (
	"context"
	"fmt"
	"testing"

	"github.com/lambda-platform/lambda/shared/schema"
)

// TestLambdaViewAgreesWithAPI: per day and grouping set, <ds>_lambda gives analysts what the
// API gives, batch days and speed days alike.
func TestLambdaViewAgreesWithAPI(t *testing.T) {
	viewAgrees(t, newEnv(t, nil))
}

// viewAgrees compares <ds>_lambda with the API for 2024-03-05 to 2024-03-10, per day and
// grouping set: values, source and exact.
func viewAgrees(t *testing.T, e *testEnv) {
	t.Helper()
	g := schema.NewGenerator(e.cfg)
	for _, set := range []struct{ grouping, dims, dimsJSON string }{
		{"", "", `[]`},
		{"country", "country", `["country"]`},
		{"event,country,device", "event, country, device", `["event","country","device"]`},
	} {
		r := e.query(t, fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"dimensions":%s,"from":"2024-03-05","to":"2024-03-11","granularity":"day"}`, set.dimsJSON))
		api := map[string]string{}
		for _, row := range r.Rows {
			k := row["time"].(string)[:10]
			for _, d := range []string{"event", "country", "device"} {
				if v, ok := row[d]; ok {
					k += "|" + v.(string)
				}
			}
			api[k] = fmt.Sprintf("%v %v %.6f %v %v", num(row["events"]), num(row["users"]), num(row["revenue"]), row["source"], row["exact"])
		}
		cols := "toString(day)"
		if set.dims != "" {
			cols = "concat(toString(day), '|', arrayStringConcat([" + set.dims + "], '|'))"
		}
		q := fmt.Sprintf("SELECT %s, events, users, revenue, source, exact FROM %s WHERE grouping = ? AND day >= '2024-03-05' AND day < '2024-03-11'", cols, g.T(schema.Lambda("events")))
		rows, err := e.conn.Query(context.Background(), q, set.grouping)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var k, src string
			var ev, us uint64
			var rev *float64
			var ex uint8
			if err := rows.Scan(&k, &ev, &us, &rev, &src, &ex); err != nil {
				t.Fatal(err)
			}
			n++
			rv := 0.0
			if rev != nil {
				rv = *rev
			}
			got := fmt.Sprintf("%v %v %.6f %v %v", float64(ev), float64(us), rv, src, ex == 1)
			if api[k] != got {
				t.Errorf("grouping %q %s: view %s, api %s", set.grouping, k, got, api[k])
			}
		}
		rows.Close()
		if n != len(api) || n == 0 {
			t.Errorf("grouping %q: view has %d rows, api %d", set.grouping, n, len(api))
		}
	}
}
