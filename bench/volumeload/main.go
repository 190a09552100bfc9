// Command volumeload measures the built-in dashboards at volume (make bench-volume): it seeds
// D days of N events a day into raw with INSERT … SELECT (and today up to now, which feeds the
// speed view), seals the days with `lambda batch run`, then times every query the dashboards
// send for their default views (last 24 hours, 7 days, 30 days), uncached and cached, at
// concurrency 1 and 8, through the API, and the same answers read by hand-written SQL from the
// rollup tables and from deduplicated raw. It reports ClickHouse's CPU per dashboard refresh,
// and, with -base-bin, the same refresh against another build of `lambda serve` (the code
// before the rollups) on a copy of the data.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/bench/internal/proc"
	"github.com/lambda-platform/lambda/dashboards"
	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
)

var (
	addr    = flag.String("addr", "127.0.0.1:9000", "ClickHouse native address")
	db      = flag.String("db", "lambda_bench_volume", "database to (re)create")
	days    = flag.Int("days", 7, "sealed days of history")
	perDay  = flag.Int("per-day", 5_000_000, "events per day")
	bin     = flag.String("bin", "bin/lambda", "the lambda binary (for migrate and batch run)")
	baseBin = flag.String("base-bin", "", "a lambda binary of the code to compare with (its serve migrates its own copy of the data); empty: no baseline")
	iters   = flag.Int("iters", 15, "uncached and cached requests per query at concurrency 1")
	dur     = flag.Duration("d", 10*time.Second, "duration of each concurrency-8 measurement")
	skip    = flag.Bool("skip-seed", false, "reuse the database of an earlier run")
	chPid   = flag.Int("ch-pid", 0, "pid of the ClickHouse server (found by its port when 0), for its CPU time")
	views   = flag.String("views", "24h,7d,30d", "the dashboards' default views to time, comma-separated (the refresh is always the 24h view's)")
)

func main() {
	flag.Parse()
	ctx := context.Background()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	check(err)
	cfg.ClickHouse.Addr = []string{*addr}
	cfg.ClickHouse.Database = *db
	cfg.Serving.QueryTimeout = config.Duration(5 * time.Minute)
	// The raw SQL of a week reads and sorts days of raw: more than the default 60 s under load.
	cfg.ClickHouse.QueryTimeout = config.Duration(5 * time.Minute)
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	check(err)
	pid := *chPid
	if pid == 0 {
		pid = proc.ClickHouseOn(*addr)
	}
	now := time.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	first := today.AddDate(0, 0, -*days)
	env := append(os.Environ(), "LAMBDA_CLICKHOUSE_ADDR="+*addr, "LAMBDA_CLICKHOUSE_DATABASE="+*db, "LAMBDA_LOG_LEVEL=WARN")
	if !*skip {
		check(conn.Exec(ctx, "DROP DATABASE IF EXISTS `"+*db+"`"))
		run(env, *bin, "migrate")
		t0 := time.Now()
		for d := first; d.Before(today); d = d.AddDate(0, 0, 1) {
			check(conn.Exec(ctx, seedSQL(*db, d, 86400, *perDay)))
		}
		// Today up to now: the speed view fills from raw's materialized view.
		check(conn.Exec(ctx, seedSQL(*db, today, int(now.Sub(today).Seconds()), int(int64(*perDay)*int64(now.Sub(today).Seconds())/86400))))
		log.Printf("seeded %d days of %d events and today in %s", *days, *perDay, time.Since(t0).Round(time.Second))
		t0 = time.Now()
		run(env, *bin, "batch", "run", "--dataset", "events", "--from", first.Format(time.DateOnly), "--to", today.AddDate(0, 0, -1).Format(time.DateOnly))
		log.Printf("sealed %d days in %s (%.1f s a day)", *days, time.Since(t0).Round(time.Second), time.Since(t0).Seconds()/float64(*days))
	} else {
		run(env, *bin, "migrate")
	}
	// Today's completed hours rolled up, as `lambda batch` keeps them (batch.speed_rollup).
	bl, err := batchlayer.New(cfg, batchlayer.Options{Conn: conn})
	check(err)
	t0 := time.Now()
	check(bl.RollupSpeed(ctx, "events"))
	var rolled time.Time
	check(conn.QueryRow(ctx, fmt.Sprintf("SELECT argMax(hour_to, at_us) FROM `%s`.speed_rollups WHERE dataset = 'events' AND day = toDate('%s')", *db, today.Format(time.DateOnly))).Scan(&rolled))
	log.Printf("rolled up today's hours up to %s in %s", rolled.UTC().Format("15:04"), time.Since(t0).Round(time.Millisecond))
	var raw uint64
	check(conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM `%s`.events_raw", *db)).Scan(&raw))

	reqs := dashboardRequests(now)
	uncached, cached := startServer(cfg, conn, 0), startServer(cfg, conn, 10000)
	defer uncached.Close()
	defer cached.Close()

	fmt.Printf("## Dashboards at volume\n\n%d raw events (%d sealed days of %d, and today up to %s UTC); %d cores; ClickHouse %s; load before: %s.\n\n",
		raw, *days, *perDay, now.Format("15:04"), cpus(), chVersion(ctx, conn), proc.LoadAvg())
	fmt.Printf("| view | panel | granularity | API uncached p50 / p95 (ms) | API cached p50 (ms) | c=8 uncached p50 / p95 (ms) | c=8 cached p50 (ms) | rollup SQL p50 (ms) | raw SQL p50 (ms) | API / rollup SQL |\n|---|---|---|---|---|---|---|---|---|---|\n")
	hand := handSQL{db: *db, bound: today, rolled: rolled.UTC()}
	for _, view := range strings.Split(*views, ",") {
		var vreqs []namedReq
		for _, r := range reqs {
			if r.view == view {
				vreqs = append(vreqs, r)
			}
		}
		c8u := concurrent(uncached.URL, vreqs, 8, *dur)
		c8c := concurrent(cached.URL, vreqs, 8, *dur)
		for _, r := range vreqs {
			// A request of each in turn (after one that fills the cache), so that the API and the
			// hand-written SQL meet the same machine: timed one after the other, a panel of a few
			// milliseconds compared the API in the wake of the previous panel's raw SQL with SQL
			// on a quiet server.
			timeAPI(cached.URL, r.body, 0, true)
			var u, c, rollup []time.Duration
			for range *iters {
				u = append(u, timeAPI(uncached.URL, r.body, 1, false)...)
				c = append(c, timeAPI(cached.URL, r.body, 1, false)...)
				rollup = append(rollup, timeSQL(ctx, conn, hand.rollup(r), 1)...)
			}
			rawq := timeSQL(ctx, conn, hand.raw(r), max(3, *iters/5))
			fmt.Printf("| %s | %s | %s | %s / %s | %s | %s / %s | %s | %s | %s | %.2f |\n", view, r.panel, r.req.Granularity,
				ms(pct(u, 50)), ms(pct(u, 95)), ms(pct(c, 50)), ms(pct(c8u[r.panel], 50)), ms(pct(c8u[r.panel], 95)), ms(pct(c8c[r.panel], 50)),
				ms(pct(rollup, 50)), ms(pct(rawq, 50)), pct(u, 50).Seconds()/pct(rollup, 50).Seconds())
		}
	}

	// ClickHouse CPU of one refresh of every panel of the default view (24 hours), averaged.
	fmt.Printf("\n| one refresh of the default dashboard (24 hours, %d panels) | ClickHouse CPU (s) | wall (ms) |\n|---|---|---|\n", len(viewReqs(reqs, "24h")))
	cpuOf := func(name, url string, warm bool) float64 {
		if warm {
			refresh(url, viewReqs(reqs, "24h"))
		}
		n := 5
		c0, t0 := proc.CPU(pid), time.Now()
		for range n {
			refresh(url, viewReqs(reqs, "24h"))
		}
		c := (proc.CPU(pid) - c0) / float64(n)
		fmt.Printf("| %s | %.3f | %d |\n", name, c, time.Since(t0).Milliseconds()/int64(n))
		return c
	}
	cu := cpuOf("this build, uncached", uncached.URL, false)
	cc := cpuOf("this build, cached (a dashboard refresh)", cached.URL, true)
	if *baseBin != "" {
		base, stop := startBase(ctx, conn, cfg)
		defer stop()
		cb := cpuOf("baseline build (-base-bin), its own cache", base, true)
		fmt.Printf("\ncached refresh / baseline refresh: %.1f%% of the baseline's ClickHouse CPU (uncached: %.1f%%)\n", 100*cc/cb, 100*cu/cb)
	}
	fmt.Printf("\nload after: %s\n", proc.LoadAvg())
}

// seedSQL inserts n events spread over [day, day+seconds) (as bench/batch.sh: ~2%% duplicate
// ids, skewed dimensions and users, 5%% NULL values, 8 partitions).
func seedSQL(db string, day time.Time, seconds, n int) string {
	if n <= 0 {
		n = 1
	}
	base := day.Unix() * 1000 // ids unique across days
	return fmt.Sprintf(`INSERT INTO `+"`%s`"+`.events_raw (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at)
SELECT
    toString(toUInt64(%d) + if(number %% 50 = 7, toUInt64(number - 7), number)),
    toDateTime(%d, 'UTC') + intDiv(number * %d, %d),
    ['view', 'view', 'view', 'view', 'click', 'click', 'buy', 'signup'][1 + cityHash64(number, 1) %% 8],
    ['us', 'us', 'us', 'us', 'de', 'de', 'fr', 'gb', 'jp', 'br', 'in', ''][1 + cityHash64(number, 2) %% 12],
    ['web', 'web', 'ios', 'android'][1 + cityHash64(number, 3) %% 4],
    toString(intDiv((cityHash64(number, 4) %% 1000) * (cityHash64(number, 5) %% 1000), 3)),
    if(cityHash64(number, 6) %% 20 = 0, NULL, toFloat64(cityHash64(number, 7) %% 100000) / 100),
    'events', toInt32(number %% 8), toInt64(intDiv(number, 8)), 0,
    toDateTime(%d, 'UTC') + intDiv(number * %d, %d) + 5
FROM system.numbers LIMIT %d`, db, base, day.Unix(), seconds, n, day.Unix(), seconds, n, n)
}

func run(env []string, name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		log.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// namedReq is one query a dashboard panel sends for a view.
type namedReq struct {
	view, panel string
	extra       bool // not a panel: left out of a dashboard refresh
	req         serving.Request
	body        []byte
	from, to    time.Time
}

// dashboardRequests builds, as the page's app.js does (panelWindow, panelRequest), every
// query of the built-in dashboards for each default view.
func dashboardRequests(now time.Time) []namedReq {
	defs, err := dashboards.Load(dashboards.FS())
	check(err)
	ranges := map[string]time.Duration{"6h": 6 * time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}
	auto := map[string]string{"6h": "minute", "24h": "hour", "7d": "hour", "30d": "day"}
	var out []namedReq
	for _, d := range defs {
		if d.Dataset != "events" {
			continue
		}
		for _, view := range strings.Split(*views, ",") {
			for _, p := range d.Panels {
				// The hand-written SQL knows the four stored demo metrics; a panel of a ratio
				// (revenue_per_event) is left out, which keeps the query set of earlier runs.
				if slices.ContainsFunc(p.Metrics, func(m string) bool { _, ok := handMetrics[m]; return !ok }) {
					continue
				}
				rng := p.Range
				if rng == "" {
					rng = view
				}
				gran := p.Granularity
				if gran == "" {
					gran = auto[rng]
				}
				to := now.Truncate(time.Minute).Add(time.Minute)
				from := floorTo(now.Add(-ranges[rng]), gran)
				r := serving.Request{Dataset: d.Dataset, Metrics: p.Metrics, From: from.Format(time.RFC3339), To: to.Format(time.RFC3339), Granularity: gran}
				if p.Dimension != "" {
					r.Dimensions = []string{p.Dimension}
				}
				if p.Type != "timeseries" && !(p.Type == "table" && p.Dimension == "") {
					r.Granularity = "all"
				}
				for _, f := range p.Filters {
					r.Filters = append(r.Filters, serving.Filter{Dimension: f.Dimension, Op: f.Op, Values: f.Values})
				}
				body, _ := json.Marshal(r)
				out = append(out, namedReq{view: view, panel: p.ID, req: r, body: body, from: from, to: to})
			}
		}
	}
	// The queries the targets of issue 14 name, as a user types them (the first hour partial):
	// four metrics by hour over the last 24 hours and the last 7 days. They are no panel, so a
	// dashboard refresh leaves them out.
	for _, view := range strings.Split(*views, ",") {
		if view != "24h" && view != "7d" {
			continue
		}
		r := serving.Request{Dataset: "events", Metrics: []string{"events", "users", "revenue", "value_p95"},
			From: "now-" + view, To: "now", Granularity: "hour"}
		body, _ := json.Marshal(r)
		out = append(out, namedReq{view: view, panel: "four metrics by hour (issue 14)", req: r, body: body,
			from: now.Add(-ranges[view]), to: now, extra: true})
	}
	return out
}

// viewReqs are the panels' queries of a view: one dashboard refresh.
func viewReqs(all []namedReq, view string) []namedReq {
	var out []namedReq
	for _, r := range all {
		if r.view == view && !r.extra {
			out = append(out, r)
		}
	}
	return out
}

func floorTo(t time.Time, gran string) time.Time {
	switch gran {
	case "minute":
		return t.Truncate(time.Minute)
	case "hour":
		return t.Truncate(time.Hour)
	}
	return t.Truncate(24 * time.Hour)
}

func startServer(cfg *config.Config, conn driver.Conn, cacheEntries int) *httptest.Server {
	c := *cfg
	c.Serving.CacheEntries = cacheEntries
	srv, err := serving.New(&c, serving.Options{Conn: conn, NoKafka: true}) // the benchmark runs no Kafka
	check(err)
	return httptest.NewServer(srv.Handler())
}

var client = &http.Client{Timeout: 10 * time.Minute}

func post(url string, body []byte) (time.Duration, error) {
	t0 := time.Now()
	resp, err := client.Post(url+"/api/v1/query", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	return time.Since(t0), nil
}

// timeAPI sends one request n times (after one warm-up when warm) and returns the latencies.
func timeAPI(url string, body []byte, n int, warm bool) []time.Duration {
	if warm {
		_, err := post(url, body)
		check(err)
	}
	var out []time.Duration
	for range n {
		d, err := post(url, body)
		check(err)
		out = append(out, d)
	}
	return out
}

// concurrent runs full refreshes (every query of the view, in turn) from c workers for d and
// returns the latencies per panel.
func concurrent(url string, reqs []namedReq, c int, d time.Duration) map[string][]time.Duration {
	out := map[string][]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range c {
		wg.Go(func() {
			for i := w; time.Now().Before(end); i++ {
				r := reqs[i%len(reqs)]
				lat, err := post(url, r.body)
				check(err)
				mu.Lock()
				out[r.panel] = append(out[r.panel], lat)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// refresh sends every query of a view at once, as the page does.
func refresh(url string, reqs []namedReq) {
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Go(func() {
			_, err := post(url, r.body)
			check(err)
		})
	}
	wg.Wait()
}

func timeSQL(ctx context.Context, conn driver.Conn, sql string, n int) []time.Duration {
	var out []time.Duration
	for range n {
		t0 := time.Now()
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			log.Fatalf("%v\n%s", err, sql)
		}
		for rows.Next() {
		}
		check(rows.Err())
		rows.Close()
		out = append(out, time.Since(t0))
	}
	return out
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

// startBase copies the raw data to <db>_base, lets the baseline binary migrate it and seal the
// same days, and starts its serve; it returns the API's URL and a function that stops it.
func startBase(ctx context.Context, conn driver.Conn, cfg *config.Config) (string, func()) {
	bdb := *db + "_base"
	env := append(os.Environ(), "LAMBDA_CLICKHOUSE_ADDR="+*addr, "LAMBDA_CLICKHOUSE_DATABASE="+bdb, "LAMBDA_LOG_LEVEL=WARN")
	check(conn.Exec(ctx, "DROP DATABASE IF EXISTS `"+bdb+"`"))
	// The demo configuration with a long query timeout: the baseline reads raw per request.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	yaml := strings.Replace(string(config.DemoYAML), `serving:    {listen: "127.0.0.1:8080", api_keys: []}`,
		fmt.Sprintf(`serving:    {listen: "127.0.0.1:%d", api_keys: [], query_timeout: 5m}`, port), 1)
	// The baseline predates ratio metrics (no panel the benchmark times asks for one).
	var lines []string
	for _, l := range strings.Split(yaml, "\n") {
		if !strings.Contains(l, "type: ratio") {
			lines = append(lines, l)
		}
	}
	yaml = strings.Join(lines, "\n")
	f, err := os.CreateTemp("", "volume-base-*.yaml")
	check(err)
	_, err = f.WriteString(yaml)
	check(err)
	check(f.Close())
	run(env, *baseBin, "migrate", "--config", f.Name())
	t0 := time.Now()
	check(conn.Exec(ctx, fmt.Sprintf("INSERT INTO `%s`.events_raw (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at) SELECT id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at FROM `%s`.events_raw", bdb, *db)))
	today := time.Now().UTC().Truncate(24 * time.Hour)
	run(env, *baseBin, "batch", "run", "--config", f.Name(), "--dataset", "events", "--from", today.AddDate(0, 0, -*days).Format(time.DateOnly), "--to", today.AddDate(0, 0, -1).Format(time.DateOnly))
	log.Printf("baseline copy sealed in %s", time.Since(t0).Round(time.Second))
	cmd := exec.Command(*baseBin, "serve", "--config", f.Name())
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	check(cmd.Start())
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 100 {
			log.Fatal("baseline serve did not start")
		}
		time.Sleep(200 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return url, func() { _ = cmd.Process.Kill(); <-done }
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func chVersion(ctx context.Context, conn driver.Conn) string {
	var v string
	_ = conn.QueryRow(ctx, "SELECT version()").Scan(&v)
	return v
}

func cpus() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

// handSQL writes, by hand rather than through the planner, the SQL that answers a dashboard
// query of the demo dataset from the rollup tables (rollup) or from deduplicated raw (raw, the
// way sub-day buckets of sealed days were answered before the rollups), the part after the
// boundary (today) from <ds>_speed in both.
type handSQL struct {
	db    string
	bound time.Time
	// rolled is where today's hours rolled up into events_speed_hourly end (the bound when
	// none are): the rollup SQL reads them from there, the raw SQL from the minutes.
	rolled time.Time
}

// The four demo metrics: per source, the expression of the value (v*) or of a state (s*).
var handMetrics = map[string]struct{ stored, storedState, speed, speedState, raw, rawState string }{
	"events":    {"events", "sum(events)", "countMerge(events)", "countMergeState(events)", "count()", "countState()"},
	"users":     {"users", "uniqMergeState(users_state)", "uniqMerge(users)", "uniqMergeState(users)", "uniqExactIf(user_id, user_id != '')", "uniqStateIf(user_id, user_id != '')"},
	"revenue":   {"revenue", "sum(revenue)", "sumMerge(revenue)", "sumMergeState(revenue)", "sum(value)", "sumStateIf(toFloat64(assumeNotNull(value)), isNotNull(value))"},
	"value_p95": {"value_p95", "quantileMergeState(0.95)(value_p95_state)", "quantileMerge(0.95)(value_p95)", "quantileMergeState(0.95)(value_p95)", "quantileExact(0.95)(value)", "quantileStateIf(0.95)(toFloat64(assumeNotNull(value)), isNotNull(value))"},
}

func ts(t time.Time) string { return fmt.Sprintf("toDateTime(%d, 'UTC')", t.Unix()) }

func (h handSQL) where(r namedReq) string {
	var w []string
	for _, f := range r.req.Filters {
		w = append(w, fmt.Sprintf("%s = '%s'", f.Dimension, f.Values[0]))
	}
	if len(w) == 0 {
		return ""
	}
	return " AND " + strings.Join(w, " AND ")
}

// set is the stored grouping set answering the query directly: its dimensions and the ones
// filtered by one value, in config order.
func (h handSQL) set(r namedReq) string {
	var s []string
	for _, d := range []string{"event", "country", "device"} {
		if slices.Contains(r.req.Dimensions, d) || slices.ContainsFunc(r.req.Filters, func(f serving.Filter) bool { return f.Dimension == d }) {
			s = append(s, d)
		}
	}
	return strings.Join(s, ",")
}

func (h handSQL) dims(r namedReq) string {
	if len(r.req.Dimensions) == 0 {
		return ""
	}
	return ", " + strings.Join(r.req.Dimensions, ", ")
}

func (h handSQL) speedSide(r namedReq, bucket string) string {
	var sel []string
	for _, m := range r.req.Metrics {
		sel = append(sel, fmt.Sprintf("toNullable(toFloat64(%s)) AS %s", handMetrics[m].speed, m))
	}
	return fmt.Sprintf("SELECT %s AS t%s, %s FROM `%s`.events_speed WHERE minute >= %s AND minute < %s%s GROUP BY t%s",
		strings.Replace(bucket, "COL", "minute", 1), h.dims(r), strings.Join(sel, ", "), h.db, ts(h.bound), ts(r.to), h.where(r), h.dims(r))
}

// speedSet is the grouping set of events_speed_hourly that answers the query: its own set, or
// the set of every dimension.
func (h handSQL) speedSet(r namedReq) string {
	if s := h.set(r); slices.Contains([]string{"", "event", "country", "device"}, s) {
		return s
	}
	return "event,country,device"
}

// speedRolled is the speed side from today's rolled-up hours (the row of the day so far for
// day buckets), then the minutes after them (per bucket; merged per bucket here).
func (h handSQL) speedRolled(r namedReq, bucket string) string {
	if !h.rolled.After(h.bound) {
		return h.speedSide(r, bucket)
	}
	if r.req.Granularity == "hour" && h.speedSet(r) == h.set(r) {
		// Hours of the query's own set: one row per bucket, its values; the minutes after.
		var vals []string
		for _, m := range r.req.Metrics {
			vals = append(vals, fmt.Sprintf("toNullable(toFloat64(_v_%s)) AS %s", m, m))
		}
		hours := fmt.Sprintf("SELECT %s AS t%s, %s FROM `%s`.events_speed_hourly WHERE prefix = 0 AND hour >= %s AND hour < %s AND grouping = '%s'%s",
			strings.Replace(bucket, "COL", "hour", 1), h.dims(r), strings.Join(vals, ", "), h.db, ts(h.bound), ts(h.rolled), h.set(r), h.where(r))
		minutes := handSQL{db: h.db, bound: h.rolled}.speedSide(r, bucket)
		return hours + "\nUNION ALL\n" + minutes
	}
	var sel []string
	for _, m := range r.req.Metrics {
		sel = append(sel, fmt.Sprintf("%s AS %s", handMetrics[m].speedState, m))
	}
	rows := fmt.Sprintf("prefix = 0 AND hour >= %s AND hour < %s", ts(h.bound), ts(h.rolled))
	if r.req.Granularity == "day" {
		rows = fmt.Sprintf("prefix = 1 AND hour = %s", ts(h.rolled.Add(-time.Hour)))
	}
	inner := fmt.Sprintf("SELECT %s AS t%s, %s FROM `%s`.events_speed_hourly WHERE %s AND grouping = '%s'%s GROUP BY t%s\nUNION ALL\nSELECT %s AS t%s, %s FROM `%s`.events_speed WHERE minute >= %s AND minute < %s%s GROUP BY t%s",
		strings.Replace(bucket, "COL", "hour", 1), h.dims(r), strings.Join(sel, ", "), h.db, rows, h.speedSet(r), h.where(r), h.dims(r),
		strings.Replace(bucket, "COL", "minute", 1), h.dims(r), strings.Join(sel, ", "), h.db, ts(h.rolled), ts(r.to), h.where(r), h.dims(r))
	var outer []string
	for _, m := range r.req.Metrics {
		f := map[string]string{"events": "countMerge", "users": "uniqMerge", "revenue": "sumMerge", "value_p95": "quantileMerge(0.95)"}[m]
		outer = append(outer, fmt.Sprintf("toNullable(toFloat64(%s(%s))) AS %s", f, m, m))
	}
	return fmt.Sprintf("SELECT t%s, %s FROM (%s) GROUP BY t%s", h.dims(r), strings.Join(outer, ", "), inner, h.dims(r))
}

func (h handSQL) rollup(r namedReq) string {
	if r.req.Granularity == "all" {
		return h.all(r, false)
	}
	table, col, bucket := "events_hourly", "hour", "toStartOfHour(COL)"
	if r.req.Granularity == "day" {
		table, col, bucket = "events_daily", "day", "toDateTime(toDate(COL), 'UTC')"
	}
	var sel []string
	for _, m := range r.req.Metrics {
		sel = append(sel, fmt.Sprintf("toNullable(toFloat64(%s)) AS %s", handMetrics[m].stored, m))
	}
	from := ts(r.from)
	if col == "day" {
		from = fmt.Sprintf("toDate('%s')", r.from.Format(time.DateOnly))
	}
	to := ts(h.bound)
	if col == "day" {
		to = fmt.Sprintf("toDate('%s')", h.bound.Format(time.DateOnly))
	}
	var first string
	if col == "hour" {
		if hs := r.from.Truncate(time.Hour); hs.Before(r.from) {
			// A first hour that starts inside an hour (now-24h as typed), as the API answers
			// it: the seconds before the first whole minute from deduplicated raw, the minutes
			// after them from the sealed day's events_speed, merged in the bucket.
			first = h.partialHour(r, hs.Add(time.Hour)) + "\nUNION ALL\n"
			from = ts(hs.Add(time.Hour))
		}
	}
	batch := fmt.Sprintf("SELECT toDateTime(%s, 'UTC') AS t%s, %s FROM `%s`.%s WHERE %s >= %s AND %s < %s AND grouping = '%s'%s",
		col, h.dims(r), strings.Join(sel, ", "), h.db, table, col, from, col, to, h.set(r), h.where(r))
	return first + batch + "\nUNION ALL\n" + h.speedRolled(r, bucket) + "\nORDER BY t"
}

// partialHour is the bucket of [r.from, end) (end the next whole hour): raw's seconds before
// the first whole minute and events_speed's minutes after, counts and sums added, distinct
// counts and quantiles merged from their states.
func (h handSQL) partialHour(r namedReq, end time.Time) string {
	additive := map[string]bool{"events": true, "revenue": true}
	fm := r.from.Truncate(time.Minute)
	if fm.Before(r.from) {
		fm = fm.Add(time.Minute)
	}
	branch := func(col, src string, lo, hi time.Time, value, state func(m string) string) string {
		var sel []string
		for _, m := range r.req.Metrics {
			if additive[m] {
				sel = append(sel, fmt.Sprintf("toNullable(toFloat64(%s)) AS x_%s", value(m), m))
			} else {
				sel = append(sel, state(m)+" AS x_"+m)
			}
		}
		return fmt.Sprintf("SELECT toStartOfHour(%s) AS t%s, %s FROM %s WHERE %s >= %s AND %s < %s%s GROUP BY t%s",
			col, h.dims(r), strings.Join(sel, ", "), src, col, ts(lo), col, ts(hi), h.where(r), h.dims(r))
	}
	var branches []string
	if fm.After(r.from) {
		raw := fmt.Sprintf("(SELECT * FROM `%s`.events_raw WHERE time >= %s AND time < %s ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id)", h.db, ts(r.from), ts(fm))
		branches = append(branches, branch("time", raw, r.from, fm, func(m string) string { return handMetrics[m].raw }, func(m string) string { return handMetrics[m].rawState }))
	}
	branches = append(branches, branch("minute", "`"+h.db+"`.events_speed", fm, end, func(m string) string { return handMetrics[m].speed }, func(m string) string { return handMetrics[m].speedState }))
	var outer []string
	for _, m := range r.req.Metrics {
		e := map[string]string{"events": "sum(x_events)", "revenue": "sum(x_revenue)", "users": "uniqMerge(x_users)", "value_p95": "quantileMerge(0.95)(x_value_p95)"}[m]
		outer = append(outer, fmt.Sprintf("toNullable(toFloat64(%s)) AS %s", e, m))
	}
	return fmt.Sprintf("SELECT t%s, %s FROM (\n%s\n) GROUP BY t%s", h.dims(r), strings.Join(outer, ", "), strings.Join(branches, "\nUNION ALL\n"), h.dims(r))
}

func (h handSQL) raw(r namedReq) string {
	if r.req.Granularity == "all" {
		return h.all(r, true)
	}
	bucket := "toStartOfHour(COL)"
	if r.req.Granularity == "day" {
		bucket = "toDateTime(toDate(COL), 'UTC')"
	}
	var sel []string
	for _, m := range r.req.Metrics {
		sel = append(sel, fmt.Sprintf("toNullable(toFloat64(%s)) AS %s", handMetrics[m].raw, m))
	}
	batch := fmt.Sprintf(`SELECT %s AS t%s, %s FROM (SELECT * FROM `+"`%s`"+`.events_raw WHERE time >= %s AND time < %s ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id) WHERE 1%s GROUP BY t%s`,
		strings.Replace(bucket, "COL", "time", 1), h.dims(r), strings.Join(sel, ", "), h.db, ts(r.from), ts(h.bound), h.where(r), h.dims(r))
	return batch + "\nUNION ALL\n" + h.speedSide(r, bucket) + "\nORDER BY t"
}

// all is one bucket over the whole window: partial days from hourly rows (or raw), whole days
// from daily rows (or raw), today from speed. Counts and sums add up as values; distinct counts
// and quantiles merge through states.
func (h handSQL) all(r namedReq, fromRaw bool) string {
	dayStart := r.from.Truncate(24 * time.Hour)
	if dayStart.Before(r.from) {
		dayStart = dayStart.AddDate(0, 0, 1)
	}
	additive := map[string]bool{"events": true, "revenue": true}
	branch := func(table, col, lo, hi, where string, expr func(m string) string) string {
		var sel []string
		for _, m := range r.req.Metrics {
			if additive[m] {
				sel = append(sel, fmt.Sprintf("toNullable(toFloat64(%s)) AS x_%s", expr(m), m))
			} else {
				sel = append(sel, expr(m)+" AS x_"+m)
			}
		}
		return fmt.Sprintf("SELECT 1 AS k%s, %s FROM %s WHERE %s >= %s AND %s < %s%s GROUP BY k%s", h.dims(r), strings.Join(sel, ", "), table, col, lo, col, hi, where, h.dims(r))
	}
	pick := func(m string, value, state string) string {
		if additive[m] {
			return value
		}
		return state
	}
	var branches []string
	if fromRaw {
		src := fmt.Sprintf("(SELECT * FROM `%s`.events_raw WHERE time >= %s AND time < %s ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id)", h.db, ts(r.from), ts(h.bound))
		branches = append(branches, branch(src, "time", ts(r.from), ts(h.bound), h.where(r), func(m string) string { return pick(m, handMetrics[m].raw, handMetrics[m].rawState) }))
	} else {
		w := " AND grouping = '" + h.set(r) + "'" + h.where(r)
		stored := func(m string) string {
			if additive[m] {
				return "sum(" + m + ")"
			}
			return handMetrics[m].storedState
		}
		// The rest of the first day from its first whole hour (events_hourly_rest: one row per
		// combination), as the API reads it.
		restFrom := r.from.Truncate(time.Hour)
		if restFrom.Before(r.from) {
			restFrom = restFrom.Add(time.Hour)
		}
		if dayStart.After(r.from) {
			branches = append(branches, branch("`"+h.db+"`.events_hourly_rest", "hour", ts(restFrom), ts(restFrom.Add(time.Hour)), w, stored))
		}
		branches = append(branches, branch("`"+h.db+"`.events_daily", "day", fmt.Sprintf("toDate('%s')", dayStart.Format(time.DateOnly)), fmt.Sprintf("toDate('%s')", h.bound.Format(time.DateOnly)), w, stored))
	}
	speedFrom := h.bound
	if !fromRaw && h.rolled.After(h.bound) {
		w := " AND grouping = '" + h.speedSet(r) + "'" + h.where(r)
		// The row of the day so far.
		w += " AND prefix = 1"
		branches = append(branches, branch("`"+h.db+"`.events_speed_hourly", "hour", ts(h.rolled.Add(-time.Hour)), ts(h.rolled), w, func(m string) string { return pick(m, handMetrics[m].speed, handMetrics[m].speedState) }))
		speedFrom = h.rolled
	}
	branches = append(branches, branch("`"+h.db+"`.events_speed", "minute", ts(speedFrom), ts(r.to), h.where(r), func(m string) string { return pick(m, handMetrics[m].speed, handMetrics[m].speedState) }))
	var outer []string
	for _, m := range r.req.Metrics {
		e := map[string]string{"events": "sum(x_events)", "revenue": "sum(x_revenue)", "users": "uniqMerge(x_users)", "value_p95": "quantileMerge(0.95)(x_value_p95)"}[m]
		outer = append(outer, e+" AS "+m)
	}
	order := ""
	if len(r.req.Dimensions) > 0 {
		order = " ORDER BY " + r.req.Metrics[0] + " DESC"
	}
	return fmt.Sprintf("SELECT 1 AS k%s, %s FROM (\n%s\n) GROUP BY k%s%s", h.dims(r), strings.Join(outer, ", "), strings.Join(branches, "\nUNION ALL\n"), h.dims(r), order)
}
