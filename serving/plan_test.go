package serving

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func demoConfig(t testing.TB) *config.Config {
	t.Helper()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// planCases are the planner's shapes: every granularity, ranges before, across and after the
// watermark, exact and approximate roll-ups, and a gap; zone is the dataset's time_zone ("":
// UTC).
var planCases = []struct{ name, req, zone string }{
	{"day_before", `{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["country"],"from":"2024-03-01","to":"2024-03-08"}`, ""},
	{"day_across", `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11"}`, ""},
	{"day_after", `{"dataset":"events","metrics":["events","users"],"from":"2024-03-09T00:00:00Z","to":"2024-03-10T12:00:00Z","granularity":"day"}`, ""},
	{"minute_after", `{"dataset":"events","metrics":["events","revenue"],"from":"now-6h","to":"now","granularity":"minute"}`, ""},
	{"minute_before", `{"dataset":"events","metrics":["events"],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T11:00:00Z","granularity":"minute"}`, ""},
	{"hour_across", `{"dataset":"events","metrics":["events","value_p95"],"dimensions":["device"],"from":"2024-03-08T20:00:00Z","to":"2024-03-09T04:00:00Z","granularity":"hour"}`, ""},
	{"week_across", `{"dataset":"events","metrics":["events","users"],"from":"2024-02-26","to":"2024-03-11","granularity":"week"}`, ""},
	{"month_before", `{"dataset":"events","metrics":["revenue","users"],"dimensions":["event"],"from":"2024-01-01","to":"2024-03-01","granularity":"month"}`, ""},
	{"all_exact", `{"dataset":"events","metrics":["users"],"from":"2024-03-01","to":"2024-03-11","granularity":"all","exact":true}`, ""},
	{"day_filters_exact_set", `{"dataset":"events","metrics":["users"],"dimensions":["event"],"filters":[{"dimension":"country","op":"eq","values":["DE"]},{"dimension":"event","op":"in","values":["buy","view"]}],"from":"2024-03-01","to":"2024-03-08"}`, ""},
	{"day_filters_rollup", `{"dataset":"events","metrics":["users","events"],"dimensions":["event"],"filters":[{"dimension":"country","op":"not_in","values":["DE","x'); DROP TABLE t; --"]}],"from":"2024-03-01","to":"2024-03-08","order_by":"-users","limit":10}`, ""},
	{"day_partial_edges", `{"dataset":"events","metrics":["events","users"],"from":"2024-03-06T06:00:00Z","to":"2024-03-08T18:00:00Z"}`, ""},
	{"day_gap", `{"dataset":"events","metrics":["events"],"from":"2024-02-20","to":"2024-03-11"}`, ""},
	// Having, prefix and offset over a split plan; a ratio with its parts unrequested, a
	// contains filter and having on the ratio; the values endpoint's query.
	{"day_having_offset", `{"dataset":"events","metrics":["events","revenue"],"dimensions":["country"],"filters":[{"dimension":"country","op":"prefix","values":["D'"]}],"having":[{"metric":"events","op":"gte","value":10},{"metric":"users","op":"lt","value":1e21}],"from":"2024-03-05","to":"2024-03-11","order_by":"-events","limit":5,"offset":5}`, ""},
	{"hour_ratio_contains", `{"dataset":"events","metrics":["revenue_per_event","users"],"dimensions":["device"],"filters":[{"dimension":"event","op":"contains","values":["u"]}],"having":[{"metric":"revenue_per_event","op":"neq","value":0}],"from":"2024-03-08T20:00:00Z","to":"2024-03-09T04:00:00Z","granularity":"hour","order_by":"revenue_per_event desc"}`, ""},
	{"values_prefix", `{"dataset":"events","metrics":["events"],"dimensions":["country"],"filters":[{"dimension":"country","op":"prefix","values":["D"]}],"from":"2024-02-09","to":"2024-03-10T12:00:00Z","granularity":"all","order_by":"-events","limit":100}`, ""},
	// Time zones: a dataset in New York (local days, its hours in UTC, its weeks in Kolkata
	// from raw, local months), and a UTC dataset asked for Kolkata's hours (from minutes).
	{"zone_day_across", `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-11"}`, "America/New_York"},
	{"zone_hour_utc", `{"dataset":"events","metrics":["events","value_p95"],"from":"2024-03-08T20:00:00Z","to":"2024-03-09T08:00:00Z","granularity":"hour","time_zone":"UTC"}`, "America/New_York"},
	{"zone_week_other", `{"dataset":"events","metrics":["events","users"],"from":"2024-02-26","to":"2024-03-11","granularity":"week","time_zone":"Asia/Kolkata"}`, "America/New_York"},
	{"zone_month", `{"dataset":"events","metrics":["revenue","users"],"dimensions":["event"],"from":"2024-01-01","to":"2024-03-01","granularity":"month"}`, "America/New_York"},
	{"zone_hour_half", `{"dataset":"events","metrics":["events","revenue"],"from":"2024-03-07T10:00:00Z","to":"2024-03-07T16:00:00Z","granularity":"hour","time_zone":"Asia/Kolkata"}`, ""},
	// With the speed side's hours rolled up (rollupState): hours across the boundary, days
	// after it, a filtered dimension.
	{"rollup_hour_across", `{"dataset":"events","metrics":["events","users","revenue","value_p95"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"hour"}`, ""},
	// The query as typed (now-24h): the first hour partial, its seconds from raw and its
	// minutes merged through states, apart from the whole hours after it.
	{"rollup_hour_partial", `{"dataset":"events","metrics":["events","users","revenue","value_p95"],"from":"2024-03-08T20:13:27Z","to":"2024-03-10T11:30:00Z","granularity":"hour"}`, ""},
	{"rollup_day_filter", `{"dataset":"events","metrics":["events","users"],"dimensions":["event"],"filters":[{"dimension":"country","op":"eq","values":["DE"]}],"from":"2024-03-09","to":"2024-03-10T12:00:00Z","granularity":"day"}`, ""},
	// One bucket from 20:00 of the last sealed day to now: the rest of that day in one row per
	// country (<ds>_hourly_rest), the day after and today so far from the speed rollup.
	{"rollup_all_rest", `{"dataset":"events","metrics":["events","users","revenue"],"dimensions":["country"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"all"}`, ""},
}

// stateFor is the state a plan case is made with: rollupState for the rollup_ cases.
func stateFor(name string) *State {
	if strings.HasPrefix(name, "rollup_") {
		return rollupState()
	}
	return planState()
}

// rollupState is planState with the speed side's hours rolled up: all of 03-09, and 03-10 up
// to 11:00, current up to 06:00 (a flush after the rollup wrote into 06:xx); and the last
// sealed day, 03-08, with its hours and the rest of it from each hour.
func rollupState() *State {
	st := planState()
	d8 := mustDay("2024-03-08")
	st.Runs[d8] = Run{ID: "run-2", Rows: 1, Hourly: 1, Speed: 1, Read: 1, RawRows: 1}
	st.Rests = map[time.Time]string{d8: "run-2"}
	sets := []string{"", "event", "country", "device", "event,country,device"}
	d9, d10 := mustDay("2024-03-09"), mustDay("2024-03-10")
	st.Rollups = map[time.Time]ledger.Rollup{
		d9:  {Day: d9, HourTo: d10, Valid: d10, Sets: sets},
		d10: {Day: d10, HourTo: d10.Add(11 * time.Hour), Valid: d10.Add(6 * time.Hour), Sets: sets},
	}
	return st
}

// zoned is cfg with every dataset in zone ("": as it is).
func zoned(cfg *config.Config, zone string) *config.Config {
	if zone != "" {
		for i := range cfg.Datasets {
			cfg.Datasets[i].TimeZone = zone
		}
	}
	return cfg
}

// planState is the state the golden plans are made with: watermark 2024-03-08 (effective
// 2024-03-07, as 2024-03-08 is dirty), speed from 2024-03-06.
func planState() *State {
	runs := map[time.Time]Run{}
	for d := mustDay("2023-12-01"); !d.After(mustDay("2024-03-08")); d = d.AddDate(0, 0, 1) {
		runs[d] = Run{ID: "run-1", Rows: 1, Read: 1, RawRows: 1}
	}
	return &State{Watermark: mustDay("2024-03-08"), Effective: mustDay("2024-03-07"), Dirty: []time.Time{mustDay("2024-03-08")}, SpeedOldest: mustDay("2024-03-06"),
		SpeedWatermark: testNow, Runs: runs}
}

func planFor(t *testing.T, cfg *config.Config, req string, st *State) *Plan {
	t.Helper()
	r, e := DecodeRequest([]byte(req))
	if e != nil {
		t.Fatal(e)
	}
	q, e := Check(cfg, r, Limits{MaxRows: 1000, MaxBuckets: 50000}, testNow)
	if e != nil {
		t.Fatal(e)
	}
	pl, e := NewPlanner(cfg).Plan(q, st, testNow)
	if e != nil {
		t.Fatal(e)
	}
	return pl
}

func TestPlanGolden(t *testing.T) {
	for _, c := range planCases {
		t.Run(c.name, func(t *testing.T) {
			pl := planFor(t, zoned(demoConfig(t), c.zone), c.req, stateFor(c.name))
			src, _ := json.MarshalIndent(pl.Sources, "", "  ")
			got := fmt.Sprintf("-- request: %s\n-- complete: %v\n-- sources: %s\n", c.req, pl.Complete, src)
			for _, name := range []string{"batch", "speed", "all"} {
				if sql := pl.Statements()[name]; sql != nil {
					args, _ := json.Marshal(sql.Args)
					got += fmt.Sprintf("-- %s, args: %s\n%s\n", name, args, sql.Text)
				}
			}
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if string(want) != got {
				t.Errorf("plan differs from %s (run with -update and check the diff):\n%s", path, got)
			}
		})
	}
}

// TestPlanSources checks the split itself, independent of the SQL text. "~" marks an
// approximate range.
func TestPlanSources(t *testing.T) {
	cfg := demoConfig(t)
	f := func(req string, st *State, want string, complete bool) {
		t.Helper()
		if st == nil {
			st = planState()
		}
		pl := planFor(t, cfg, req, st)
		var got []string
		for _, s := range pl.Sources {
			x := ""
			if !s.Exact {
				x = "~"
			}
			if s.Grouping != nil {
				x += "(" + *s.Grouping + ")"
			}
			got = append(got, fmt.Sprintf("%s%s %s..%s", s.Source, x, s.From.Format("01-02T15"), s.To.Format("01-02T15")))
		}
		if strings.Join(got, ", ") != want || pl.Complete != complete {
			t.Errorf("%s:\n got %s complete=%v\nwant %s complete=%v", req, strings.Join(got, ", "), pl.Complete, want, complete)
		}
	}
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-01","to":"2024-03-08"}`, nil, "batch() 03-01T00..03-08T00", true)
	// 03-08 is dirty: still read from daily (late rows are in neither daily nor speed until the
	// rerun), flagged approximate; the boundary is the persisted watermark.
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-05","to":"2024-03-11"}`, nil, "batch() 03-05T00..03-08T00, batch~() 03-08T00..03-09T00, speed~ 03-09T00..03-11T00", true)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-06T06:00:00Z","to":"2024-03-09T18:00:00Z"}`, nil, "raw 03-06T06..03-07T00, batch() 03-07T00..03-08T00, batch~() 03-08T00..03-09T00, speed~ 03-09T00..03-09T18", true)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-07T06:00:00Z","to":"2024-03-10T00:00:00Z","granularity":"hour"}`, nil, "raw 03-07T06..03-09T00, speed~ 03-09T00..03-10T00", true)
	// exact:true reads the dirty day from raw, which holds its late rows.
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-07","to":"2024-03-10","exact":true}`, nil, "batch() 03-07T00..03-08T00, raw 03-08T00..03-10T00", true)
	f(`{"dataset":"events","metrics":["users"],"from":"2024-03-01","to":"2024-03-08","granularity":"week","exact":true}`, nil, "raw 03-01T00..03-08T00", true)
	// Adjacent raw ranges are one branch: one row per bucket, so a distinct count over the
	// whole range stays exact; raw is exact only up to the speed watermark (now here): what
	// comes after may still be arriving.
	f(`{"dataset":"events","metrics":["users"],"from":"2024-03-06T12:00:00Z","to":"2024-03-10T12:00:00Z","granularity":"all","exact":true}`, nil, "raw 03-06T12..03-10T12", true)
	f(`{"dataset":"events","metrics":["users"],"from":"2024-03-06T12:00:00Z","to":"2024-03-11","granularity":"all","exact":true}`, nil, "raw 03-06T12..03-10T12, raw~ 03-10T12..03-11T00", true)
	lagging := planState()
	lagging.SpeedWatermark = mustDay("2024-03-09").Add(20 * time.Hour)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-08","to":"2024-03-10T12:00:00Z","exact":true}`, lagging, "raw 03-08T00..03-09T20, raw~ 03-09T20..03-10T12", true)
	// A day below the boundary with raw rows and no successful run is never exact, from raw
	// either (history being loaded).
	backfill := planState()
	backfill.Unrun = []time.Time{mustDay("2024-03-02")}
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-01","to":"2024-03-04"}`, backfill, "batch() 03-01T00..03-02T00, raw~ 03-02T00..03-03T00, batch() 03-03T00..03-04T00", true)
	// The sets each day holds: 03-05 and 03-06 were computed before device was a dimension
	// (sets '', event, country and event,country). Grouping by device reads them from raw;
	// by country, their country set; by event and country, exact from their own all-set, a
	// roll-up of the newer days' all-set.
	old := planState()
	old.Sets = map[time.Time][]string{
		mustDay("2024-03-05"): {"", "event", "country", "event,country"},
		mustDay("2024-03-06"): {"", "event", "country", "event,country"},
		mustDay("2024-03-07"): {"", "event", "country", "device", "event,country,device"},
	}
	f(`{"dataset":"events","metrics":["events","users"],"dimensions":["device"],"from":"2024-03-05","to":"2024-03-09"}`, old, "raw 03-05T00..03-07T00, batch(device) 03-07T00..03-08T00, batch~(device) 03-08T00..03-09T00", true)
	f(`{"dataset":"events","metrics":["users"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-08"}`, old, "batch(country) 03-05T00..03-08T00", true)
	f(`{"dataset":"events","metrics":["users"],"dimensions":["event","country"],"from":"2024-03-05","to":"2024-03-08"}`, old, "batch(event,country) 03-05T00..03-07T00, batch~(event,country,device) 03-07T00..03-08T00", true)
	f(`{"dataset":"events","metrics":["events"],"dimensions":["event","country"],"from":"2024-03-05","to":"2024-03-08"}`, old, "batch(event,country) 03-05T00..03-07T00, batch(event,country,device) 03-07T00..03-08T00", true)
	// Raw no longer holds the old days: their sets answer, device reading as '' (approximate).
	oldRaw := demoConfig(t)
	oldRaw.Datasets[0].RawRetention = config.Duration(96 * time.Hour) // raw from 03-06 on
	pl := planFor(t, oldRaw, `{"dataset":"events","metrics":["events"],"dimensions":["device"],"from":"2024-03-05","to":"2024-03-08"}`, old)
	if got := fmt.Sprintf("%s %q %v %s", pl.Sources[0].Source, *pl.Sources[0].Grouping, pl.Sources[0].Exact, pl.Sources[1].Source); got != `batch "" false raw` {
		t.Errorf("old day beyond raw retention: %s %+v", got, pl.Sources)
	}
	// The speed side's rolled-up hours: hour and coarser buckets read them where current (up
	// to 03-10 06:00 here), from the smallest set with every needed dimension; minutes around
	// them; minute buckets and hours a half hour off the stored ones read minutes only.
	ru := rollupState()
	f(`{"dataset":"events","metrics":["events","users"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"hour"}`, ru,
		"batch~() 03-08T20..03-09T00, speed~() 03-09T00..03-10T06, speed~ 03-10T06..03-10T11", true)
	// One bucket from inside the last sealed day: the rest of it from 20:00 (of the run the
	// rows come from), not its hours; another run of the day, or a bucket that ends inside the
	// day, reads the hours.
	all := `{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"from":"2024-03-08T20:00:00Z","to":"2024-03-10T11:30:00Z","granularity":"all"}`
	if pl := planFor(t, cfg, all, ru); pl.Sources[0].Table != TableHourlyRest || !pl.Sources[0].From.Equal(mustDay("2024-03-08").Add(20*time.Hour)) {
		t.Errorf("all from 03-08 20:00: %+v, want the rest of 03-08 from 20:00 first", pl.Sources[0])
	}
	rerun := rollupState()
	rerun.Runs[mustDay("2024-03-08")] = Run{ID: "run-3", Rows: 1, Hourly: 1, Speed: 1, Read: 1, RawRows: 1}
	for _, c := range []struct {
		req string
		st  *State
	}{{all, rerun}, {`{"dataset":"events","metrics":["events","users"],"dimensions":["country"],"from":"2024-03-08T20:00:00Z","to":"2024-03-08T23:00:00Z","granularity":"all"}`, ru}} {
		if pl := planFor(t, cfg, c.req, c.st); pl.Sources[0].Table != TableHourly {
			t.Errorf("%s: %+v, want the hours", c.req, pl.Sources[0])
		}
	}
	f(`{"dataset":"events","metrics":["events"],"dimensions":["event"],"filters":[{"dimension":"device","op":"neq","values":["ios"]}],"from":"2024-03-09T05:20:00Z","to":"2024-03-10T12:00:00Z","granularity":"day"}`, ru,
		"speed~ 03-09T05..03-09T06, speed~(event,country,device) 03-09T06..03-10T00, speed~(event,country,device) 03-10T00..03-10T06, speed~ 03-10T06..03-10T12", true)
	f(`{"dataset":"events","metrics":["events"],"dimensions":["country"],"from":"2024-03-09T00:00:00Z","to":"2024-03-10T00:00:00Z","granularity":"hour"}`, ru,
		"speed~(country) 03-09T00..03-10T00", true)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-09T00:00:00Z","to":"2024-03-09T03:00:00Z","granularity":"minute"}`, ru, "speed~ 03-09T00..03-09T03", true)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-09T00:00:00Z","to":"2024-03-09T03:00:00Z","granularity":"hour","time_zone":"Asia/Kolkata"}`, ru, "speed~ 03-09T00..03-09T03", true)
	f(`{"dataset":"events","metrics":["events"],"from":"2024-03-09T00:00:00Z","to":"2024-03-09T03:00:00Z","granularity":"hour","exact":true}`, ru, "raw 03-09T00..03-09T03", true)

	// No batch watermark: everything after the speed view's start is speed; before it, none.
	st := &State{SpeedOldest: mustDay("2024-03-08")}
	pl = planFor(t, cfg, `{"dataset":"events","metrics":["events"],"from":"2024-03-01","to":"2024-03-10"}`, st)
	if pl.Complete || len(pl.Sources) != 2 || pl.Sources[0].Source != SourceNone || !pl.Sources[0].To.Equal(mustDay("2024-03-07")) {
		t.Errorf("no watermark: %+v", pl.Sources)
	}
	// Raw older than retention: a 400 naming the oldest day.
	r, _ := DecodeRequest([]byte(`{"dataset":"events","metrics":["users"],"from":"2023-01-01","to":"2024-03-01","granularity":"month","exact":true}`))
	q, _ := Check(cfg, r, Limits{}, testNow)
	if _, e := NewPlanner(cfg).Plan(q, planState(), testNow); e == nil || e.Field != "from" || !strings.Contains(e.Message, "2023-12-11") {
		t.Errorf("want 400 naming 2023-12-11, got %v", e)
	}
}

// TestPlanShapes runs every golden shape on ClickHouse 18.16 (the test server) and on current
// ClickHouse (chDB), over the generated schema.
func TestPlanShapes(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	if _, err := schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	chdb := schema.Statements(demoConfig(t))
	for _, c := range planCases {
		zc := *cfg
		zc.Datasets = slices.Clone(cfg.Datasets)
		pl := planFor(t, zoned(&zc, c.zone), c.req, stateFor(c.name))
		for name, sql := range pl.Statements() {
			rows, err := conn.Query(ctx, sql.Text, sql.Args...)
			if err != nil {
				t.Errorf("%s %s on 18.16: %v\n%s", c.name, name, err, bindLiteral(sql.Text, sql.Args))
				continue
			}
			rows.Close()
		}
		demo := planFor(t, zoned(demoConfig(t), c.zone), c.req, stateFor(c.name))
		for _, sql := range demo.Statements() {
			chdb = append(chdb, bindLiteral(sql.Text, sql.Args))
		}
	}
	// The state the server reads per request and the freshness endpoint's queries.
	g := schema.NewGenerator(demoConfig(t))
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{speedOldestSQL(g, "events"), nil},
		{setsSQL(g, "events"), []any{"2024-03-01", "2024-03-09"}},
	} {
		chdb = append(chdb, bindLiteral(q.sql, q.args))
	}
	chtest.RequireChDB(t, chdb)
}

// TestBuckets: the buckets a range overlaps, which decide whether a flat branch needs its own
// ORDER BY and LIMIT.
func TestBuckets(t *testing.T) {
	cfg := demoConfig(t)
	for _, c := range []struct {
		gran     string
		from, to string
		want     int
	}{
		{"minute", "2024-03-08T10:00:30Z", "2024-03-08T10:02:00Z", 2},
		{"hour", "2024-03-08T10:00:00Z", "2024-03-08T12:00:00Z", 2},
		{"hour", "2024-03-08T10:30:00Z", "2024-03-08T12:00:01Z", 3},
		{"day", "2024-03-01T00:00:00Z", "2024-03-08T00:00:00Z", 7},
		{"day", "2024-03-01T12:00:00Z", "2024-03-08T00:00:00Z", 7},
		{"all", "2024-03-01T00:00:00Z", "2024-03-08T00:00:00Z", 1},
	} {
		r, e := DecodeRequest([]byte(fmt.Sprintf(`{"dataset":"events","metrics":["events"],"from":"2024-02-01","to":"2024-03-09","granularity":%q}`, c.gran)))
		if e != nil {
			t.Fatal(e)
		}
		q, e := Check(cfg, r, Limits{MaxRows: 1000, MaxBuckets: 500000}, testNow)
		if e != nil {
			t.Fatal(e)
		}
		from, _ := time.Parse(time.RFC3339, c.from)
		to, _ := time.Parse(time.RFC3339, c.to)
		if got := q.buckets(from, to, 100); got != c.want {
			t.Errorf("%s [%s, %s): %d buckets, want %d", c.gran, c.from, c.to, got, c.want)
		}
	}
	// Days and longer stop counting past max.
	r, _ := DecodeRequest([]byte(`{"dataset":"events","metrics":["events"],"from":"2020-01-01","to":"2024-03-09","granularity":"day"}`))
	q, e := Check(cfg, r, Limits{MaxRows: 1000, MaxBuckets: 500000}, testNow)
	if e != nil {
		t.Fatal(e)
	}
	if got := q.buckets(q.From, q.To, 10); got != 11 {
		t.Errorf("day buckets past max: %d, want 11", got)
	}
}
