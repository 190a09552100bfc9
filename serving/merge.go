package serving

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
)

// Tables a part is read from.
const (
	TableDaily  = "daily"  // <ds>_daily: exact rows per day and grouping set
	TableHourly = "hourly" // <ds>_hourly: exact rows per hour and grouping set
	TableSpeed  = "speed"  // <ds>_speed: per-minute states (rewritten from raw for sealed days)
	TableRaw    = "raw"    // deduplicated <ds>_raw
	// TableSpeedHourly is <ds>_speed_hourly: the completed hours after the boundary rolled up
	// from <ds>_speed per grouping set (states, approximate like the minutes).
	TableSpeedHourly = "speed_hourly"
	// TableHourlyRest is <ds>_hourly_rest: the rest of a recent sealed day from each hour per
	// grouping set, rolled up from <ds>_hourly (exact where the hours are).
	TableHourlyRest = "hourly_rest"
)

// Part is one source over a range of a query and how it is read.
type Part struct {
	SourceRange
	// grouping is the stored grouping set read from <ds>_daily or <ds>_hourly; direct says it
	// gives one stored row per bucket and dimensions (no roll-up).
	grouping string
	direct   bool
	// prefix reads <ds>_speed_hourly's rows of the day so far (from the day's start to To),
	// for a range in one bucket.
	prefix bool
}

// joins reports whether b continues a, so that one branch reads both.
func (a *Part) joins(b Part) bool {
	return a.To.Equal(b.From) && a.Source == b.Source && a.Table == b.Table && a.Exact == b.Exact &&
		a.grouping == b.grouping && a.direct == b.direct && !a.prefix && !b.prefix && a.Table != TableHourlyRest
}

// Decision is the merge rule applied to a query: the parts that answer it, in time order.
type Decision struct {
	Parts []Part
	// Complete is false when part of the range has no source.
	Complete bool
	// States is true when a bucket combines rows of several parts: avg, uniq and quantile
	// then travel as states and are merged per bucket.
	States bool
	// Boundary is where the batch side ends (zero: no day is covered). Split reports that no
	// bucket straddles it, so the two sides can be computed (and the batch side cached) apart.
	Boundary time.Time
	Split    bool
}

// Side returns the parts before (batch) or after the boundary.
func (d *Decision) Side(batch bool) []Part {
	var out []Part
	for _, p := range d.Parts {
		if p.Source == SourceNone {
			continue
		}
		if isBatch := !d.Boundary.IsZero() && p.From.Before(d.Boundary); isBatch == batch {
			out = append(out, p)
		}
	}
	return out
}

// Decide applies the merge rule to q without building SQL and without changing q or st.
//
// [from, to) splits at the batch boundary (the end of the persisted boundary day). Before it,
// per day: a day with raw rows and no successful run is read from raw; whole days (day and
// longer buckets) from <ds>_daily, from the stored grouping set that best answers the query;
// sub-day ranges from <ds>_hourly (whole hours) and the day's <ds>_speed partition the batch
// rewrote from deduplicated raw (whole minutes), when the day's run wrote them; what remains
// from raw. A dirty day is flagged approximate. After the boundary, <ds>_speed (approximate),
// or raw when the speed view lacks a dimension or exact:true asks. exact:true reads raw
// wherever another source would be approximate.
//
// Days are the dataset's days (its time_zone). Buckets are in the request's zone: day, week and
// month buckets in another zone than the dataset's cut its days, so the whole range is read
// from raw (exact), or refused (400 naming time_zone) when raw no longer holds it; hour buckets
// whose hours are not the stored hours (a zone a half hour away) read minutes instead.
func (p *Planner) Decide(q *Query, st *State, now time.Time) (Decision, *APIError) {
	ds := q.DS
	loc := ds.Location()
	start := func(d time.Time) time.Time { return ledger.DayStart(d, loc) }
	dec := Decision{Complete: true, Boundary: boundary(st, loc)}
	add := func(pt Part) {
		if pt.From.Equal(pt.To) {
			return
		}
		if n := len(dec.Parts); n > 0 && dec.Parts[n-1].joins(pt) {
			dec.Parts[n-1].To = pt.To
			return
		}
		dec.Parts = append(dec.Parts, pt)
	}
	oldestRaw := start(ledger.DayIn(now.Add(-ds.RawRetention.D()), loc))
	unrun := daySet(st.Unrun)
	// Deduplicated raw is exact for what it holds; the row is exact only where raw is known to
	// hold everything: up to the speed watermark (Kafka has nothing older unconsumed, late
	// data aside), and never for a day below the boundary with raw rows and no successful run
	// (history being loaded: nothing says all of it is there yet).
	bound := dec.Boundary
	complete := st.SpeedWatermark.Truncate(time.Minute) // raw is complete before it
	var addRaw func(from, to time.Time) *APIError
	addRaw = func(from, to time.Time) *APIError {
		if !from.Before(to) {
			return nil
		}
		if from.Before(oldestRaw) {
			return rawTooOld(from, oldestRaw)
		}
		if !bound.IsZero() && from.Before(bound) && bound.Before(to) {
			if err := addRaw(from, bound); err != nil {
				return err
			}
			return addRaw(bound, to)
		}
		if from.Before(complete) && complete.Before(to) {
			if err := addRaw(from, complete); err != nil {
				return err
			}
			return addRaw(complete, to)
		}
		// Below the boundary a day is complete when a run of it succeeded (it was sealed, or an
		// operator ran it): not an unrun day, nor one the state (a second old) believes empty,
		// which may be receiving history now. After it, up to the speed watermark.
		exact := true
		if bound.IsZero() || to.After(bound) {
			exact = !st.SpeedWatermark.IsZero() && !to.After(complete)
		} else {
			for d := ledger.DayIn(from, loc); start(d).Before(to); d = d.AddDate(0, 0, 1) {
				exact = exact && !unrun[d] && st.Runs[d].ID != ""
			}
		}
		add(Part{SourceRange: SourceRange{From: from, To: to, Source: SourceRaw, Table: TableRaw, Exact: exact}})
		return nil
	}

	if q.otherZone() && (q.Granularity == "day" || q.Granularity == "week" || q.Granularity == "month") {
		// Another zone's days cut the stored days and their hours: raw alone answers.
		if err := addRaw(q.From, q.To); err != nil {
			err.Field, err.Message = "time_zone", fmt.Sprintf("%s buckets in %s (the dataset's days are in %s) are computed from raw, and %s", q.Granularity, q.Zone, loc, err.Message)
			return Decision{}, err
		}
		dec.States = q.combines(dec.Parts)
		dec.Split = bound.IsZero() || !q.bucketOf(bound.Add(-time.Nanosecond)).Equal(q.bucketOf(bound))
		return dec, nil
	}

	// The batch side, day by day.
	if batchEnd := minT(q.To, bound); q.From.Before(batchEnd) {
		dirty := daySet(st.Dirty)
		for d := ledger.DayIn(q.From, loc); start(d).Before(batchEnd); d = d.AddDate(0, 0, 1) {
			s, e := maxT(q.From, start(d)), minT(batchEnd, start(d.AddDate(0, 0, 1)))
			day := sealedDay{d: d, start: start(d), end: start(d.AddDate(0, 0, 1)), dirty: dirty[d], run: st.Runs[d], sets: p.setsOf(ds, st, d)}
			day.rest = day.run.ID != "" && st.Rests[d] == day.run.ID
			var err *APIError
			switch {
			case unrun[d]:
				err = addRaw(s, e)
			case s.Equal(day.start) && e.Equal(day.end) && q.Granularity != "minute" && q.Granularity != "hour":
				var pt Part
				if pt, err = p.dayPart(q, day, oldestRaw); err == nil {
					add(pt)
				}
			default:
				err = p.subDay(q, day, s, e, add, addRaw)
			}
			if err != nil {
				return Decision{}, err
			}
		}
	}

	// The speed side.
	if speedFrom := maxT(q.From, bound); speedFrom.Before(q.To) {
		if q.Exact || !p.speedHasDims(q) {
			if err := addRaw(speedFrom, q.To); err != nil {
				return Decision{}, err
			}
		} else {
			cover := start(ledger.DayIn(now.Add(-ds.SpeedConf.Retention.D()), loc))
			if !st.SpeedOldest.IsZero() && st.SpeedOldest.Before(cover) {
				cover = st.SpeedOldest
			}
			if speedFrom.Before(cover) {
				gapEnd := minT(cover, q.To)
				add(Part{SourceRange: SourceRange{From: speedFrom, To: gapEnd, Source: SourceNone}})
				dec.Complete = false
				speedFrom = gapEnd
			}
			p.speedParts(q, st, speedFrom, q.To, add)
		}
	}

	dec.States = q.combines(dec.Parts)
	dec.Split = bound.IsZero() || !q.bucketOf(bound.Add(-time.Nanosecond)).Equal(q.bucketOf(bound))
	return dec, nil
}

// speedParts adds the parts of [s, e) after the boundary: the hours a day's current rollup
// holds (st.Rollups) from <ds>_speed_hourly, for hour and coarser buckets whose hours are the
// stored ones, from the grouping set it holds that chooseSet picks (read directly, one row per
// bucket, for hour buckets of the set asked for; else its rows of the day so far when the hours
// start the day and fall in one bucket; else its hour rows rolled up); the rest from
// <ds>_speed's minutes. Both are the speed view's states, approximate.
func (p *Planner) speedParts(q *Query, st *State, s, e time.Time, add func(Part)) {
	minutes := func(s, e time.Time) {
		add(Part{SourceRange: SourceRange{From: s, To: e, Source: SourceSpeed, Table: TableSpeed}})
	}
	if q.Granularity == "minute" || len(st.Rollups) == 0 || !q.hoursAlign(s, e) {
		minutes(s, e)
		return
	}
	loc := q.DS.Location()
	for d := ledger.DayIn(s, loc); s.Before(e) && ledger.DayStart(d, loc).Before(e); d = d.AddDate(0, 0, 1) {
		r, ok := st.Rollups[d]
		if !ok {
			continue
		}
		hs, he := hourCeil(maxT(s, ledger.DayStart(d, loc)), loc), minT(r.Valid, ledger.HourStart(e, loc))
		name, direct, _, ok := chooseSet(q, splitSets(r.Sets), q.neededDims(), "hour")
		if !hs.Before(he) || !ok {
			continue
		}
		minutes(s, hs)
		// From the day's start, in one bucket: the day so far as one state per combination.
		// Hour buckets of the set asked for are the hour rows, read as their values.
		prefix := !direct && hs.Equal(ledger.DayStart(d, loc)) && q.bucketOf(hs).Equal(q.bucketOf(he.Add(-time.Nanosecond)))
		add(Part{SourceRange: SourceRange{From: hs, To: he, Source: SourceSpeed, Table: TableSpeedHourly}, grouping: name, direct: direct, prefix: prefix})
		s = he
	}
	minutes(s, e)
}

// hourCeil is the start of the first local hour (in loc) at or after t.
func hourCeil(t time.Time, loc *time.Location) time.Time {
	if h := ledger.HourStart(t, loc); h.Before(t) {
		return h.Add(time.Hour)
	}
	return t
}

// splitSets turns grouping names ("" for the total, else dimensions joined by commas) into
// sets of dimensions.
func splitSets(names []string) [][]string {
	out := make([][]string, len(names))
	for i, n := range names {
		out[i] = []string{}
		if n != "" {
			out[i] = strings.Split(n, ",")
		}
	}
	return out
}

// groups splits parts (in time order, those with a source) into runs whose adjacent parts meet
// inside a bucket: a bucket's rows all come from one run.
func (q *Query) groups(parts []Part) [][]Part {
	var out [][]Part
	var prev *Part
	for i := range parts {
		pt := &parts[i]
		if pt.Source == SourceNone {
			continue
		}
		if prev != nil && q.bucketOf(prev.To.Add(-time.Nanosecond)).Equal(q.bucketOf(pt.From)) {
			out[len(out)-1] = append(out[len(out)-1], *pt)
		} else {
			out = append(out, []Part{*pt})
		}
		prev = pt
	}
	return out
}

// combines reports whether a bucket combines rows of several of parts (in time order): two
// adjacent parts meet inside a bucket.
func (q *Query) combines(parts []Part) bool {
	return slices.ContainsFunc(q.groups(parts), func(g []Part) bool { return len(g) > 1 })
}

// sealedDay is what the planner knows of a day before the boundary: d is the day (a Date),
// [start, end) its instants in the dataset's zone.
type sealedDay struct {
	d          time.Time
	start, end time.Time
	dirty      bool
	run        Run
	sets       [][]string
	// rest: <ds>_hourly_rest holds the day's rows of its run.
	rest bool
}

// hasHourly and hasSpeed report whether the day's run wrote <ds>_hourly rows and rewrote its
// <ds>_speed partition; a run of a day without raw rows wrote nothing and needs nothing.
func (s sealedDay) hasHourly() bool { return s.run.ID != "" && (s.run.Hourly > 0 || s.run.Read == 0) }
func (s sealedDay) hasSpeed() bool  { return s.run.ID != "" && (s.run.Speed > 0 || s.run.Read == 0) }

// subDay adds the parts of [s, e) within a sealed day: whole hours from <ds>_hourly, whole
// minutes from the rewritten <ds>_speed partition, the rest (or all, when the day's run did not
// write them, or exact:true needs more) from raw.
func (p *Planner) subDay(q *Query, day sealedDay, s, e time.Time, add func(Part), addRaw func(from, to time.Time) *APIError) *APIError {
	minutes := func(s, e time.Time) *APIError {
		if !s.Before(e) {
			return nil
		}
		exact := !q.hasSketch() && !day.dirty
		if day.hasSpeed() && p.speedHasDims(q) && (exact || !q.Exact) {
			ms, me := ceilTo(s, time.Minute), floorTo(e, time.Minute)
			if ms.Before(me) {
				if err := addRaw(s, ms); err != nil {
					return err
				}
				add(Part{SourceRange: SourceRange{From: ms, To: me, Source: SourceBatch, Table: TableSpeed, Exact: exact}})
				return addRaw(me, e)
			}
		}
		return addRaw(s, e)
	}
	if q.Granularity == "minute" || !day.hasHourly() || !q.hoursAlign(day.start, day.end) {
		return minutes(s, e)
	}
	hs, he := ceilTo(s, time.Hour), floorTo(e, time.Hour)
	if !hs.Before(he) {
		return minutes(s, e)
	}
	name, direct, exact, ok := chooseSet(q, day.sets, q.neededDims(), "hour")
	exact = exact && !day.dirty
	if !ok || (q.Exact && !exact) {
		return minutes(s, e)
	}
	if err := minutes(s, hs); err != nil {
		return err
	}
	pt := Part{SourceRange: SourceRange{From: hs, To: he, Source: SourceBatch, Table: TableHourly, Exact: exact}, grouping: name, direct: direct}
	if !direct && day.rest && he.Equal(day.end) && q.bucketOf(hs).Equal(q.bucketOf(he.Add(-time.Nanosecond))) {
		// To the day's end, in one bucket: the rest of the day from hs, one row per combination.
		pt.Table = TableHourlyRest
	}
	add(pt)
	return minutes(he, e)
}

// dayPart is how a whole day before the boundary is read: from the grouping set of
// <ds>_daily that answers the query (exact unless a roll-up of a distinct count or quantile,
// or the day is dirty), or from raw when exact:true asks for more, or when no set the day holds
// has every dimension the query needs (the day was computed before a dimension was added).
func (p *Planner) dayPart(q *Query, day sealedDay, oldestRaw time.Time) (Part, *APIError) {
	d := day.start
	name, direct, exact, ok := chooseSet(q, day.sets, q.neededDims(), "day")
	r := SourceRange{From: day.start, To: day.end}
	if !ok || (q.Exact && (!exact || day.dirty)) {
		if !d.Before(oldestRaw) {
			r.Source, r.Table, r.Exact = SourceRaw, TableRaw, true
			return Part{SourceRange: r}, nil
		}
		if q.Exact {
			return Part{}, rawTooOld(d, oldestRaw)
		}
		// Raw no longer holds the day and no set it holds has every dimension needed: roll
		// up the smallest set with those the day knew. The others read as '', as they were
		// in raw then; approximate, as nothing can check it.
		var known []string
		for _, s := range day.sets {
			for _, n := range s {
				if !slices.Contains(known, n) {
					known = append(known, n)
				}
			}
		}
		var need []string
		for _, n := range q.neededDims() {
			if slices.Contains(known, n) {
				need = append(need, n)
			}
		}
		name, direct, exact = strings.Join(smallestCover(day.sets, need), ","), false, false
	}
	r.Source, r.Table, r.Exact = SourceBatch, TableDaily, exact && !day.dirty
	return Part{SourceRange: r, grouping: name, direct: direct}, nil
}

// setsOf returns the grouping sets <ds>_daily (and <ds>_hourly) hold for a day, each as its
// dimension names.
func (p *Planner) setsOf(ds *config.Dataset, st *State, d time.Time) [][]string {
	names := st.Sets[d]
	if len(names) == 0 {
		return ds.GroupingSets()
	}
	return splitSets(names)
}

// chooseSet picks the grouping set to read among sets (those a day holds) for buckets of grain
// (day or hour), returning its grouping name. A set equal to the requested dimensions plus the
// dimensions filtered by one eq value, with every other filter on a requested dimension, gives
// one row per grain and dimensions: direct when the query's buckets are that grain, and exact
// for every metric. Otherwise the smallest set holding every needed dimension is rolled up, and
// distinct counts and quantiles merge their states (approximate). ok is false when no set holds
// every needed dimension.
func chooseSet(q *Query, sets [][]string, needed []string, grain string) (name string, direct, exact, ok bool) {
	need := slices.Clone(q.Dimensions)
	oneRow := true
	for _, f := range q.Filters {
		switch {
		case f.Op == "eq" || (f.Op == "in" && len(f.Values) == 1):
			if !slices.Contains(need, f.Dimension) {
				need = append(need, f.Dimension)
			}
		case !slices.Contains(q.Dimensions, f.Dimension):
			oneRow = false
		}
	}
	if oneRow {
		for _, s := range sets {
			if len(s) == len(need) && covers(s, need) {
				direct := q.Granularity == grain
				return strings.Join(s, ","), direct, direct || !q.hasSketch(), true
			}
		}
	}
	best := smallestCover(sets, needed)
	if best == nil {
		return "", false, false, false
	}
	return strings.Join(best, ","), false, !q.hasSketch(), true
}

// bucketOf is the start of the bucket holding t in the request's zone, as the SQL bucket
// expressions compute it: a local hour, midnight, Monday or first of the month, as an instant.
func (q *Query) bucketOf(t time.Time) time.Time {
	t = t.UTC()
	loc := q.zone()
	switch q.Granularity {
	case "minute":
		return t.Truncate(time.Minute)
	case "hour":
		return ledger.HourStart(t, loc)
	case "day":
		return ledger.DayStart(ledger.DayIn(t, loc), loc)
	case "week":
		d := ledger.DayIn(t, loc)
		return ledger.DayStart(d.AddDate(0, 0, -((int(d.Weekday())+6)%7)), loc)
	case "month":
		d := ledger.DayIn(t, loc)
		return ledger.DayStart(time.Date(d.Year(), d.Month(), 1, 0, 0, 0, 0, time.UTC), loc)
	}
	return q.From
}

// buckets counts the buckets [from, to) overlaps (up to max+1 of days and longer).
func (q *Query) buckets(from, to time.Time, max int) int {
	b := q.bucketOf(from)
	switch q.Granularity {
	case "minute":
		return int((to.Sub(b) + time.Minute - 1) / time.Minute)
	case "hour":
		return int((to.Sub(b) + time.Hour - 1) / time.Hour)
	}
	n := 0
	for ; b.Before(to) && n <= max; b = q.bucketEnd(b) {
		n++
	}
	return n
}

// bucketEnd is the end of the bucket starting at b (clipped to the query's range): a day is 23
// or 25 hours long when the request's zone changes its clocks.
func (q *Query) bucketEnd(b time.Time) time.Time {
	loc := q.zone()
	d := ledger.DayIn(b, loc)
	var end time.Time
	switch q.Granularity {
	case "minute":
		end = b.Add(time.Minute)
	case "hour":
		end = b.Add(time.Hour)
	case "day":
		end = ledger.DayStart(d.AddDate(0, 0, 1), loc)
	case "week":
		end = ledger.DayStart(d.AddDate(0, 0, 7), loc)
	case "month":
		end = ledger.DayStart(d.AddDate(0, 1, 0), loc)
	default:
		end = q.To
	}
	return minT(end, q.To)
}

// zone is the request's zone (UTC for a Query built without Check).
func (q *Query) zone() *time.Location {
	if q.Zone == nil {
		return time.UTC
	}
	return q.Zone
}

// hoursAlign reports whether the request's hours are the stored hours of <ds>_hourly (the
// dataset's local hours) over [from, to): the two zones are a whole number of hours apart.
func (q *Query) hoursAlign(from, to time.Time) bool {
	if !q.otherZone() {
		return true
	}
	for _, t := range []time.Time{from, to.Add(-time.Second)} {
		_, a := t.In(q.zone()).Zone()
		_, b := t.In(q.DS.Location()).Zone()
		if (a-b)%3600 != 0 {
			return false
		}
	}
	return true
}

func floorTo(t time.Time, d time.Duration) time.Time { return t.Truncate(d) }

func ceilTo(t time.Time, d time.Duration) time.Time {
	if f := t.Truncate(d); f.Before(t) {
		return f.Add(d)
	}
	return t
}
