package batchlayer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// flushAt records a flush of the speed layer that wrote events from oldest on (late rows of
// them: late), written now by ClickHouse's clock.
func (e *env) flushAt(oldest, newest time.Time, rows, late uint64) {
	e.t.Helper()
	q := fmt.Sprintf(`INSERT INTO %s (dataset, topic, partition, first_offset, last_offset, high_watermark, raw_rows, rejected_rows, duplicate_rows, late_rows, max_event_time, consumer, min_event_time)
SELECT 'events', 'events', 0, 0, 1, 2, %d, 0, 0, %d, toDateTime(%d, 'UTC'), 'test', toDateTime(%d, 'UTC')`,
		e.g.T(schema.SpeedFlushes), rows, late, newest.Unix(), oldest.Unix())
	if err := e.conn.Exec(context.Background(), q); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) rollups(day time.Time) ledger.Rollup {
	e.t.Helper()
	rs, err := ledger.ReadSpeedRollups(context.Background(), e.conn, e.cfg.ClickHouse.Database, "events", day, e.cfg.Datasets[0].Location(), schema.SpeedHourlyLayout(&e.cfg.Datasets[0]))
	if err != nil {
		e.t.Fatal(err)
	}
	return rs[day]
}

func (e *env) count(q string) uint64 {
	e.t.Helper()
	var n uint64
	if err := e.conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// The completed hours of a day after the boundary, rolled up per grouping set, hold what the
// minutes hold: the same counts, sums and distinct counts per hour and set, and the events
// counted once per set. A day unchanged since its rollup is not rolled up again; a flush that
// wrote into its hours makes them stale from the first hour it touched, until the next rollup;
// a flush of late rows alone (which the speed view skips) does not.
func TestSpeedRollup(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(21, 4))
	evs := gen(rng, d2, 3000, 0, "r")
	e.insertRaw(evs)
	now := d2.Add(13*time.Hour + 20*time.Minute)
	e.setNow(now)
	l := e.layer(Options{})
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	hourTo := d2.Add(13 * time.Hour)
	r := e.rollups(d2)
	if !r.HourTo.Equal(hourTo) || !r.Valid.Equal(hourTo) || r.Rows == 0 {
		t.Fatalf("rollup of the day: %+v, want hours up to %s", r, hourTo)
	}
	if want := []string{"", "event", "country", "device", "event,country,device"}; strings.Join(r.Sets, "|") != strings.Join(want, "|") {
		t.Errorf("sets %q, want %q", r.Sets, want)
	}
	sh, sp := e.g.T(schema.SpeedHourly("events")), e.g.T(schema.Speed("events"))
	check := func(stage string, hourTo time.Time) {
		t.Helper()
		var truth uint64
		for _, ev := range evs {
			if ev.t.Before(hourTo) {
				truth++
			}
		}
		for _, set := range schema.SpeedSets(&e.cfg.Datasets[0]) {
			dims, by := "''", ""
			if len(set) > 0 {
				dims, by = "concat('', "+strings.Join(set, ", '|', ")+")", ", "+strings.Join(set, ", ")
			}
			// Each hour row's values (one row per combination: any) are its states' values.
			got := e.strings(fmt.Sprintf(`SELECT concat(toString(hour), ' ', %s, ' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', toString(sumMerge(revenue)), ' ', toString(sumMerge(_n_value)),
		' ', toString(any(_v_events)), ' ', toString(any(_v_users)), ' ', ifNull(toString(any(_v_revenue)), 'NULL'), ' ', ifNull(toString(any(_v_value_p95)), 'NULL'))
	FROM %s WHERE grouping = '%s' AND prefix = 0 GROUP BY hour%s ORDER BY hour, %s`, dims, sh, strings.Join(set, ","), by, dims))
			want := e.strings(fmt.Sprintf(`SELECT concat(toString(h), ' ', %s, ' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', toString(sumMerge(revenue)), ' ', toString(sumMerge(_n_value)),
		' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', if(sumMerge(_n_value) = 0, 'NULL', toString(sumMerge(revenue))), ' ', if(isNaN(quantileMerge(0.95)(value_p95)), 'NULL', toString(quantileMerge(0.95)(value_p95))))
	FROM (SELECT toStartOfHour(minute) AS h, * FROM %s WHERE minute < toDateTime(%d, 'UTC')) GROUP BY h%s ORDER BY h, %s`, dims, sp, hourTo.Unix(), by, dims))
			sameRows(t, stage+": set "+strings.Join(set, ","), got, want)
			// The day so far at the end of each hour: the minutes from midnight to the hour's end.
			groupBy := ""
			if len(set) > 0 {
				groupBy = " GROUP BY " + strings.Join(set, ", ")
			}
			for h := time.Duration(0); d2.Add(h).Before(hourTo); h += time.Hour {
				end := d2.Add(h + time.Hour)
				got := e.strings(fmt.Sprintf(`SELECT concat(%s, ' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', toString(sumMerge(revenue)), ' ', toString(sumMerge(_n_value)))
	FROM %s WHERE grouping = '%s' AND prefix = 1 AND hour = toDateTime(%d, 'UTC')%s ORDER BY %s`, dims, sh, strings.Join(set, ","), end.Add(-time.Hour).Unix(), groupBy, dims))
				want := e.strings(fmt.Sprintf(`SELECT concat(%s, ' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', toString(sumMerge(revenue)), ' ', toString(sumMerge(_n_value)))
	FROM %s WHERE minute < toDateTime(%d, 'UTC')%s ORDER BY %s`, dims, sp, end.Unix(), groupBy, dims))
				sameRows(t, fmt.Sprintf("%s: set %v, the day to %s", stage, set, end.Format("15:04")), got, want)
			}
			if n := e.count(fmt.Sprintf("SELECT toUInt64(countMerge(events)) FROM %s WHERE grouping = '%s' AND prefix = 0", sh, strings.Join(set, ","))); n != truth {
				t.Errorf("%s: set %v counts %d events, the rolled-up hours hold %d", stage, set, n, truth)
			}
			if n := e.count(fmt.Sprintf("SELECT count() FROM (SELECT hour, event, country, device FROM %s WHERE grouping = '%s' GROUP BY prefix, hour, event, country, device HAVING count() > 1)", sh, strings.Join(set, ","))); n != 0 {
				t.Errorf("set %v has %d combinations with more than one row", set, n)
			}
		}
	}
	check("first rollup", hourTo)
	if got := testutil.ToFloat64(l.m.rolledTo.WithLabelValues("events")); got != float64(hourTo.Unix()) {
		t.Errorf("lambda_batch_speed_rollup_timestamp_seconds %v, want %d", got, hourTo.Unix())
	}
	recorded := func() uint64 {
		return e.count(fmt.Sprintf("SELECT count() FROM %s WHERE dataset = 'events' AND day = toDate('2024-03-02')", e.g.T(schema.SpeedRollups)))
	}
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if n := recorded(); n != 1 {
		t.Errorf("an unchanged day was rolled up again: %d rollups", n)
	}

	// Late rows alone do not reach the speed view: the rollup stays current.
	e.flushAt(d2.Add(2*time.Hour), now, 5, 5)
	if r := e.rollups(d2); !r.Valid.Equal(hourTo) {
		t.Errorf("a flush of late rows made the hours stale from %s", r.Valid)
	}
	// A flush after the rollup with events from 05:30 on: the hours from 05:00 are stale.
	e.flushAt(d2.Add(5*time.Hour+30*time.Minute), now, 10, 0)
	if r := e.rollups(d2); !r.Valid.Equal(d2.Add(5 * time.Hour)) {
		t.Errorf("after a flush into 05:30 the rollup is current up to %s, want 05:00", r.Valid)
	}
	// A flush into the next day or into the hours not rolled up yet changes nothing here.
	e.flushAt(d3.Add(time.Hour), d3.Add(2*time.Hour), 3, 0)
	e.flushAt(d2.Add(13*time.Hour+5*time.Minute), now, 3, 0)
	if r := e.rollups(d2); !r.Valid.Equal(d2.Add(5 * time.Hour)) {
		t.Errorf("flushes outside the rolled-up hours moved its end to %s", r.Valid)
	}
	// The events of that flush (in 05:40 and 09:10) reach the minutes.
	more := gen(rng, d2, 200, 0, "late")
	for i := range more {
		more[i].t = d2.Add(5*time.Hour + 40*time.Minute + time.Duration(i%2)*(3*time.Hour+30*time.Minute))
	}
	e.insertRaw(more)
	evs = append(evs, more...)
	// The next rollup, a second later (flushed_at has whole seconds), is current again: it
	// keeps the hours before 05:00 and rolls up the others, with the new events.
	time.Sleep(1100 * time.Millisecond)
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if n, r := recorded(), e.rollups(d2); n != 2 || !r.Valid.Equal(hourTo) {
		t.Errorf("after the rollup that follows the flush: %d rollups, current up to %s", n, r.Valid)
	}
	check("after the flush", hourTo)
	// An hour completes: the day is rolled up again, one more hour.
	e.setNow(now.Add(time.Hour))
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if r := e.rollups(d2); !r.HourTo.Equal(hourTo.Add(time.Hour)) || !r.Valid.Equal(r.HourTo) {
		t.Errorf("an hour later the rollup holds hours up to %s, current up to %s", r.HourTo, r.Valid)
	}
	check("an hour later", hourTo.Add(time.Hour))

	// A rollup made with other columns (an older layout: no values, or a metric added since)
	// is not read, and the day is rolled up again, whole.
	_, us := l.stamp()
	if err := e.conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (dataset, day, hour_to, snapshot, sets, rows, at_us, layout)
SELECT 'events', toDate('2024-03-02'), toDateTime(%d, 'UTC'), now(), ['', 'event', 'country', 'device', 'event,country,device'], 1, %d, 'older'`,
		e.g.T(schema.SpeedRollups), hourTo.Add(time.Hour).Unix(), us)); err != nil {
		t.Fatal(err)
	}
	if r := e.rollups(d2); !r.Day.IsZero() {
		t.Errorf("a rollup of another layout is read: %+v", r)
	}
	n := recorded()
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if r := e.rollups(d2); recorded() != n+1 || !r.HourTo.Equal(hourTo.Add(time.Hour)) || r.Layout != schema.SpeedHourlyLayout(&e.cfg.Datasets[0]) {
		t.Errorf("after a rollup of another layout: %d rollups (want %d), the newest %+v", recorded(), n+1, r)
	}
	check("after a rollup of another layout", hourTo.Add(time.Hour))

	// Once the batch boundary covers the day, its rollup goes and no new one is made.
	if err := l.RunDays(ctx, "events", d2, d2, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.dropRollups(ctx, l.ds["events"], d2); err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count() FROM " + sh); n != 0 {
		t.Errorf("%d rows of the day are left in %s after the batch covered it", n, schema.SpeedHourly("events"))
	}
	before := recorded()
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if n := recorded(); n != before {
		t.Errorf("a day at the boundary was rolled up")
	}
}

// In cluster mode the rollup reads every shard's minutes and every node holds it, equal to the
// single server's, before it is recorded.
func TestClusterSpeedRollup(t *testing.T) {
	c := newClusterEnv(t)
	s := newEnv(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 9))
	evs := gen(rng, d2, 3000, 0.02, "cr")
	now := d2.Add(9*time.Hour + 10*time.Minute)
	rows := func(e *env) []string {
		return e.strings(fmt.Sprintf(`SELECT concat(toString(prefix), ' ', toString(hour), ' ', grouping, ' ', event, ' ', country, ' ', device, ' ', toString(countMerge(events)), ' ', toString(uniqMerge(users)), ' ', toString(sumMerge(revenue)))
FROM %s GROUP BY prefix, hour, grouping, event, country, device ORDER BY prefix, hour, grouping, event, country, device`, e.g.T(schema.SpeedHourly("events"))))
	}
	for _, e := range []*env{c, s} {
		e.insertRaw(evs)
		e.setNow(now)
		if err := e.layer(Options{}).RollupSpeed(ctx, "events"); err != nil {
			t.Fatal(err)
		}
		if r := e.rollups(d2); !r.HourTo.Equal(d2.Add(9*time.Hour)) || !r.Valid.Equal(r.HourTo) {
			t.Fatalf("rollup %+v", r)
		}
	}
	want := rows(s)
	for i, n := range c.nodes() {
		saved := c.conn
		c.conn = n
		sameRows(t, "speed_hourly on "+chtest.ClusterNodes[i], rows(c), want)
		c.conn = saved
	}
}

// The rest of a recent sealed day from each hour holds, per grouping set and combination, what
// the day's hours from that hour on hold (counts and sums added, distinct counts and quantiles
// merged), from the day's newest run, whose id it carries and rest_rollups records; a rerun of
// the day makes it again; once the day is older than ledger.RestDays its rows go.
func TestHourlyRest(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := &e.cfg.Datasets[0]
	rng := rand.New(rand.NewPCG(5, 8))
	e.insertRaw(gen(rng, d1, 2000, 0.05, "r"))
	e.setNow(d2.Add(2 * time.Hour))
	l := e.layer(Options{})
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	rest, hourly := e.g.T(schema.HourlyRest("events")), e.g.T(schema.Hourly("events"))
	row := "concat(grouping, '|', event, '|', country, '|', device, ' ', toString(%s), ' ', ifNull(toString(%s), 'NULL'), ' ', toString(uniqMerge(users_state)), ' ', ifNull(toString(quantileMerge(0.95)(value_p95_state)), 'NULL'), ' ', %s)"
	check := func(stage string) {
		t.Helper()
		run := e.lastRun(d1)
		rs, err := ledger.ReadRests(ctx, e.conn, e.cfg.ClickHouse.Database, "events", d1)
		if err != nil {
			t.Fatal(err)
		}
		if r := rs[d1]; !r.Current(run, schema.HourlyRestLayout(d)) || r.Rows == 0 {
			t.Fatalf("%s: rest_rollups says %+v, want run %s", stage, r, run)
		}
		for h := d1; h.Before(d2); h = h.Add(time.Hour) {
			got := e.strings(fmt.Sprintf("SELECT "+row+" AS r FROM %s WHERE hour = toDateTime(%d, 'UTC') GROUP BY grouping, event, country, device, events, revenue, run_id ORDER BY r",
				"events", "revenue", "run_id", rest, h.Unix()))
			want := e.strings(fmt.Sprintf("SELECT "+row+" AS r FROM %s WHERE hour >= toDateTime(%d, 'UTC') AND hour < toDateTime(%d, 'UTC') GROUP BY grouping, event, country, device ORDER BY r",
				"sum(events)", "sum(revenue)", "any(run_id)", hourly, h.Unix(), d2.Unix()))
			sameRows(t, fmt.Sprintf("%s: the rest of the day from %s", stage, h.Format("15:04")), got, want)
			if len(want) > 0 && !strings.HasSuffix(want[0], " "+run) {
				t.Errorf("%s: the hours of %s are not of the newest run %s: %s", stage, h.Format("15:04"), run, want[0])
			}
		}
	}
	check("after the run")
	first := e.lastRun(d1)

	// Late events: the day's rerun, and its rest made again from the new hours.
	late := gen(rng, d1, 50, 0, "late")
	e.insertRaw(late)
	if err := l.RunDays(ctx, "events", d1, d1, nil); err != nil {
		t.Fatal(err)
	}
	if e.lastRun(d1) == first {
		t.Fatal("the day was not run again")
	}
	check("after a rerun")
	if n := e.count(fmt.Sprintf("SELECT sum(events) FROM %s WHERE grouping = '' AND hour = toDateTime(%d, 'UTC')", rest, d1.Unix())); n != e.count(fmt.Sprintf("SELECT sum(events) FROM %s WHERE grouping = ''", e.g.T(schema.Daily("events")))) {
		t.Errorf("the rest of the day from midnight counts %d events, the day %d", n, e.count(fmt.Sprintf("SELECT sum(events) FROM %s WHERE grouping = ''", e.g.T(schema.Daily("events")))))
	}

	// An unchanged day is not made again; a day older than RestDays is dropped.
	recorded := func() uint64 {
		return e.count(fmt.Sprintf("SELECT count() FROM %s WHERE dataset = 'events'", e.g.T(schema.RestRollups)))
	}
	n := recorded()
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if recorded() != n {
		t.Errorf("an unchanged day was rolled up again: %d records, %d before", recorded(), n)
	}
	e.setNow(d1.AddDate(0, 0, ledger.RestDays+1))
	if err := l.RollupSpeed(ctx, "events"); err != nil {
		t.Fatal(err)
	}
	if n := e.count("SELECT count() FROM " + rest); n != 0 {
		t.Errorf("%d rows of the rest of a day %d days old are left", n, ledger.RestDays+1)
	}
}
