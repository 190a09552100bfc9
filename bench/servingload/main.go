// Command servingload measures the serving API against the same aggregation sent straight to
// ClickHouse's HTTP interface, in one run: two dashboard queries (30 days by day by country;
// the last 6 hours by minute) at a given concurrency. It loads its own database first.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "ClickHouse native address")
	httpAddr := flag.String("http", "127.0.0.1:8123", "ClickHouse HTTP address (the baseline)")
	db := flag.String("db", "lambda_bench_serving", "database to (re)create")
	days := flag.Int("days", 35, "days of history")
	perDay := flag.Int("per-day", 20000, "events per day")
	conc := flag.Int("c", 16, "concurrency")
	dur := flag.Duration("d", 8*time.Second, "duration of each measurement")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (load driver and API) here")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	check(err)
	cfg.ClickHouse.Addr = []string{*addr}
	cfg.ClickHouse.Database = *db
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	check(err)
	check(conn.Exec(ctx, "DROP DATABASE IF EXISTS "+schema.Q(*db)))
	_, err = schema.Migrate(ctx, conn, cfg, schema.MigrateOptions{})
	check(err)
	g := schema.NewGenerator(cfg)
	now := time.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	start := today.AddDate(0, 0, -*days)
	t0 := time.Now()
	rng := rand.New(rand.NewSource(1))
	n := 0
	for d := start; !d.After(today); d = d.AddDate(0, 0, 1) {
		b, err := conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late)", g.T(schema.Raw("events"))))
		check(err)
		span := 24 * time.Hour
		if d.Equal(today) {
			span = now.Sub(today)
		}
		for i := 0; i < *perDay*int(span/time.Minute)/1440; i++ {
			n++
			v := float64(rng.Intn(10000)) / 100
			check(b.Append(fmt.Sprintf("e%d", n), d.Add(time.Duration(rng.Int63n(int64(span)))),
				[]string{"view", "click", "buy", "signup"}[rng.Intn(4)],
				[]string{"DE", "FR", "US", "GB", "ES", "IT", "NL", "PL"}[rng.Intn(8)],
				[]string{"ios", "android", "web"}[rng.Intn(3)],
				fmt.Sprintf("u%d", rng.Intn(5000)), &v, "events", int32(0), int64(n), uint8(0)))
		}
		check(b.Send())
	}
	seal(ctx, conn, cfg, g, start, today)
	log.Printf("loaded %d events over %d days and sealed them in %s", n, *days+1, time.Since(t0).Round(time.Millisecond))

	fmt.Printf("machine: %s, %d CPUs (%s/%s), %s; ClickHouse at %s; %d events over %d days, concurrency %d, %s per measurement\n\n",
		hostname(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, cpuModel(), *addr, n, *days+1, *conc, *dur)
	dashboardA := fmt.Sprintf(`{"dataset":"events","metrics":["events","users","revenue"],"dimensions":["country"],"from":"%s","to":"%s","granularity":"day"}`,
		today.AddDate(0, 0, -30).Format("2006-01-02"), today.Format("2006-01-02"))
	dashboardB := fmt.Sprintf(`{"dataset":"events","metrics":["events","revenue"],"from":"%s","to":"%s","granularity":"minute"}`,
		now.Add(-6*time.Hour).Truncate(time.Minute).Format(time.RFC3339), now.Truncate(time.Minute).Format(time.RFC3339))

	fmt.Println("| query | path | p50 ms | p99 ms | req/s |")
	fmt.Println("|---|---|---|---|---|")
	type res struct{ p50, p99 float64 }
	results := map[string]res{}
	for _, qc := range []struct{ name, body string }{{"30 days by day by country", dashboardA}, {"last 6 hours by minute", dashboardB}} {
		direct := directSQL(cfg, qc.body, now)
		p50, p99, rps := load(*conc, *dur, func(c *http.Client) error { return postCH(c, *httpAddr, *db, direct) })
		fmt.Printf("| %s | ClickHouse HTTP direct | %.2f | %.2f | %.0f |\n", qc.name, p50, p99, rps)
		results[qc.name+"direct"] = res{p50, p99}
		for _, cache := range []int{0, 4096} {
			c := *cfg
			c.Serving.CacheEntries = cache
			url, stop := startAPI(&c, conn)
			p50, p99, rps := load(*conc, *dur, func(cl *http.Client) error { return postAPI(cl, url, qc.body) })
			stop()
			path := "API, cache off (misses)"
			if cache > 0 {
				path = "API, cache on"
			}
			fmt.Printf("| %s | %s | %.2f | %.2f | %.0f |\n", qc.name, path, p50, p99, rps)
			results[qc.name+path] = res{p50, p99}
		}
	}
	a := "30 days by day by country"
	d, m, h := results[a+"direct"], results[a+"API, cache off (misses)"], results[a+"API, cache on"]
	fmt.Printf("\n%s: misses %.2fx direct (p50), %.2fx (p99); hits %.1fx faster than direct (p50), %.1fx (p99)\n", a, m.p50/d.p50, m.p99/d.p99, d.p50/h.p50, d.p99/h.p99)
	b := "last 6 hours by minute"
	d, m = results[b+"direct"], results[b+"API, cache off (misses)"]
	fmt.Printf("%s (never cached: speed side): %.2fx direct (p50), %.2fx (p99)\n", b, m.p50/d.p50, m.p99/d.p99)
	_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+schema.Q(*db))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func hostname() string { h, _ := os.Hostname(); return h }

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
		}
	}
	return "unknown CPU"
}

// directSQL is the SQL the planner sends for a request, with values inlined.
func directSQL(cfg *config.Config, body string, now time.Time) string {
	r, e := serving.DecodeRequest([]byte(body))
	if e != nil {
		log.Fatal(e)
	}
	q, e := serving.Check(cfg, r, serving.Limits{MaxRows: cfg.Serving.MaxRows, MaxBuckets: cfg.Serving.MaxBuckets}, now)
	if e != nil {
		log.Fatal(e)
	}
	yesterday := now.Truncate(24*time.Hour).AddDate(0, 0, -1)
	pl, e := serving.NewPlanner(cfg).PlanWhole(q, &serving.State{Watermark: yesterday, Effective: yesterday}, now)
	if e != nil {
		log.Fatal(e)
	}
	sql := pl.Batch
	if sql == nil {
		sql = pl.Speed
	}
	if pl.All != nil {
		sql = pl.All
	}
	var out strings.Builder
	i := 0
	for _, c := range sql.Text {
		if c != '?' {
			out.WriteRune(c)
			continue
		}
		switch v := sql.Args[i].(type) {
		case string:
			out.WriteString("'" + strings.ReplaceAll(v, "'", `\'`) + "'")
		default:
			fmt.Fprint(&out, v)
		}
		i++
	}
	return out.String() + "\nFORMAT JSON"
}

func startAPI(cfg *config.Config, conn driver.Conn) (string, func()) {
	srv, err := serving.New(cfg, serving.Options{Conn: conn})
	check(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/api/v1/query", func() { _ = hs.Close() }
}

func postAPI(c *http.Client, u, body string) error {
	resp, err := c.Post(u, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("api: %d %s", resp.StatusCode, b)
	}
	return nil
}

func postCH(c *http.Client, addr, db, sql string) error {
	resp, err := c.Post("http://"+addr+"/?database="+url.QueryEscape(db), "text/plain", bytes.NewReader([]byte(sql)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("clickhouse: %d %s", resp.StatusCode, b)
	}
	return nil
}

// load runs f from conc goroutines for d and returns p50 and p99 in ms and the rate.
func load(conc int, d time.Duration, f func(*http.Client) error) (float64, float64, float64) {
	var mu sync.Mutex
	var lat []float64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			var mine []float64
			for time.Now().Before(deadline) {
				s := time.Now()
				if err := f(c); err != nil {
					log.Fatal(err)
				}
				mine = append(mine, float64(time.Since(s).Microseconds())/1000)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return q(0.50), q(0.99), float64(len(lat)) / d.Seconds()
}

// seal computes <ds>_daily for [from, to) the way the batch layer does (catalogue fragments,
// per-day dedup, grouping sets) and records succeeded runs and the watermark.
func seal(ctx context.Context, conn driver.Conn, cfg *config.Config, g *schema.Generator, from, to time.Time) {
	ds, _ := cfg.Dataset("events")
	dims := ds.DimensionNames()
	cols := []string{"day", "grouping"}
	sel := []string{"toDate(time) AS day", schema.GroupingExpr + " AS grouping"}
	inner := []string{"time", "id"}
	group := []string{"day", "grouping"}
	for _, d := range dims {
		cols = append(cols, schema.Q(d))
		sel = append(sel, fmt.Sprintf("if(has(gd, '%s'), %s, '') AS %s", d, schema.Q("d_"+d), schema.Q("o_"+d)))
		inner = append(inner, schema.Q(d)+" AS "+schema.Q("d_"+d))
		group = append(group, schema.Q("o_"+d))
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
	for d := from; d.Before(to); d = d.AddDate(0, 0, 1) {
		q := fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %s
FROM (SELECT %s FROM %s WHERE time >= toDateTime(?) AND time < toDateTime(?) ORDER BY _ingested_at, _partition, _offset LIMIT 1 BY toDate(time), id)
ARRAY JOIN %s AS gd
GROUP BY %s`, g.T(schema.Daily("events")), strings.Join(cols, ", "), strings.Join(sel, ", "), strings.Join(inner, ", "),
			g.T(schema.Raw("events")), schema.GroupingArray(ds.GroupingSets()), strings.Join(group, ", "))
		check(conn.Exec(ctx, q, "bench-run", d.Unix(), d.AddDate(0, 0, 1).Unix()))
		rq := fmt.Sprintf("INSERT INTO %s (dataset, day, run_id, status, at, at_us, started_at, finished_at) SELECT 'events', toDate(?), 'bench-run', 'succeeded', now(), toUInt64(?), now() + 3600, now() + 3600", g.T(schema.BatchRuns))
		check(conn.Exec(ctx, rq, d.Format("2006-01-02"), time.Now().UnixMicro()))
	}
	wq := fmt.Sprintf("INSERT INTO %s (dataset, watermark, run_id, at, at_us) SELECT 'events', toDate(?), 'bench-run', now(), toUInt64(?)", g.T(schema.BatchWatermarks))
	check(conn.Exec(ctx, wq, to.AddDate(0, 0, -1).Format("2006-01-02"), time.Now().UnixMicro()))
}
