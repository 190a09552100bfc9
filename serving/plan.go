package serving

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Sources of a row or a range.
const (
	SourceBatch = "batch" // <ds>_daily
	SourceSpeed = "speed" // <ds>_speed
	SourceRaw   = "raw"   // deduplicated <ds>_raw
	SourceMixed = "mixed" // a row combining several sources
	SourceNone  = "none"  // a range no source covers
)

// SourceRange says which source answers [From, To).
type SourceRange struct {
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Source string    `json:"source"`
	// Grouping is the grouping set read from <ds>_daily.
	Grouping *string `json:"grouping,omitempty"`
	Exact    bool    `json:"exact"`
}

// State is what the planner needs to know of a dataset's layers, read once per request.
type State struct {
	// Watermark is the last exact day as the batch layer persisted it (zero: none). The batch
	// boundary, where the planner switches from <ds>_daily to <ds>_speed, is its end.
	Watermark time.Time
	// Effective is Watermark lowered to the day before the first dirty day (zero: none): the
	// last day up to which every day is exact, which meta.batch_watermark reports.
	Effective time.Time
	// Dirty lists the days whose raw rows changed after their newest successful run (see
	// shared/ledger). Before the boundary they are still read from <ds>_daily (late rows reach
	// neither daily nor speed until the rerun, and daily is exact for the rest), flagged
	// exact:false.
	Dirty []time.Time
	// Unrun lists the days with raw rows and no successful run (a backfill of older history):
	// <ds>_daily holds nothing for them, so before the boundary they are read from raw.
	Unrun []time.Time
	// Runs maps a day to its newest successful run.
	Runs map[time.Time]Run
	// SpeedOldest is the oldest minute held by <ds>_speed (zero: empty).
	SpeedOldest time.Time
	// Sets maps days before the boundary to the grouping sets <ds>_daily holds for them (a
	// day keeps the sets of the configuration its run had). Nil, or a day missing: the
	// configuration's sets.
	Sets map[time.Time][]string
}

// Run is the newest successful batch run of a day.
type Run struct {
	ID string
	// Rows is the number of rows the run wrote to <ds>_daily.
	Rows uint64
}

// Plan is the SQL of one query and what it reads.
type Plan struct {
	SQL      string
	Args     []any
	Sources  []SourceRange
	Complete bool
	// DailyOnly is true when every part is read from <ds>_daily: the result may be cached.
	DailyOnly bool
	// DailyFrom and DailyTo are the days read from <ds>_daily when DailyOnly.
	DailyFrom, DailyTo time.Time
}

// Planner turns checked queries into SQL.
type Planner struct {
	g   *schema.Generator
	cfg *config.Config
}

// NewPlanner returns a planner for the configuration's database.
func NewPlanner(cfg *config.Config) *Planner { return &Planner{g: schema.NewGenerator(cfg), cfg: cfg} }

func ceilDay(t time.Time) time.Time {
	d := ledger.DayOf(t)
	if d.Before(t) {
		return d.AddDate(0, 0, 1)
	}
	return d
}

func maxT(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minT(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// branch is one SELECT of the UNION ALL: a source over a range.
type branch struct {
	sql  string
	args []any
}

// part is a source over a range and, for <ds>_daily, the stored grouping set read and how.
type part struct {
	SourceRange
	grouping string
	mode     dailyMode
}

// joins reports whether b continues a: same source and, for <ds>_daily, same set, mode and
// exactness, so that one branch reads both.
func (a *part) joins(b part) bool {
	return a.To.Equal(b.From) && a.Source == b.Source && a.Exact == b.Exact &&
		(a.Source != SourceBatch || (a.grouping == b.grouping && a.mode == b.mode))
}

// boundary is the end of the persisted watermark day, zero when no day is exact.
func boundary(st *State) time.Time {
	if st.Watermark.IsZero() {
		return time.Time{}
	}
	return st.Watermark.AddDate(0, 0, 1)
}

// DailyDays returns the whole days [from, to) a query may read from <ds>_daily: those
// before the batch boundary, for granularities of a day and more. from == to: none.
func (p *Planner) DailyDays(q *Query, st *State) (from, to time.Time) {
	end := minT(q.To, boundary(st))
	if q.Granularity == "minute" || q.Granularity == "hour" || !q.From.Before(end) {
		return time.Time{}, time.Time{}
	}
	d0, d1 := ceilDay(q.From), ledger.DayOf(end)
	if !d0.Before(d1) {
		return time.Time{}, time.Time{}
	}
	return d0, d1
}

// Plan applies the merge rule to q: [from, to) splits at the batch boundary (the end of the
// persisted watermark day). Before it, whole days come from <ds>_daily, each from the grouping
// set that day holds that best answers the query (a dirty day is flagged approximate), and
// sub-day buckets from deduplicated raw; after it, <ds>_speed. exact:true answers from raw
// whatever would otherwise be approximate, so does a day no stored set can answer.
func (p *Planner) Plan(q *Query, st *State, now time.Time) (*Plan, *APIError) {
	ds := q.DS
	pl := &Plan{Complete: true}
	var parts []part
	add := func(pt part) {
		if n := len(parts); n > 0 && parts[n-1].joins(pt) {
			parts[n-1].To = pt.To
			return
		}
		parts = append(parts, pt)
	}
	oldestRaw := ledger.DayOf(now.Add(-ds.RawRetention.D()))
	addRaw := func(from, to time.Time) *APIError {
		if from.Before(oldestRaw) {
			return rawTooOld(from, oldestRaw)
		}
		add(part{SourceRange: SourceRange{From: from, To: to, Source: SourceRaw, Exact: true}})
		return nil
	}
	bound := boundary(st)

	// The batch side.
	if batchEnd := minT(q.To, bound); q.From.Before(batchEnd) {
		d0, d1 := p.DailyDays(q, st)
		if !d0.Before(d1) {
			if err := addRaw(q.From, batchEnd); err != nil {
				return nil, err
			}
		} else {
			if q.From.Before(d0) {
				if err := addRaw(q.From, d0); err != nil {
					return nil, err
				}
			}
			dirty, unrun := daySet(st.Dirty), daySet(st.Unrun)
			for d := d0; d.Before(d1); d = d.AddDate(0, 0, 1) {
				if unrun[d] {
					if err := addRaw(d, d.AddDate(0, 0, 1)); err != nil {
						return nil, err
					}
					continue
				}
				pt, err := p.dayPart(q, st, d, dirty[d], oldestRaw)
				if err != nil {
					return nil, err
				}
				add(pt)
			}
			if d1.Before(batchEnd) {
				if err := addRaw(d1, batchEnd); err != nil {
					return nil, err
				}
			}
		}
	}

	// The speed side.
	if speedFrom := maxT(q.From, bound); speedFrom.Before(q.To) {
		if q.Exact || !p.speedHasDims(q) {
			if err := addRaw(speedFrom, q.To); err != nil {
				return nil, err
			}
		} else {
			cover := ledger.DayOf(now.Add(-ds.SpeedConf.Retention.D()))
			if !st.SpeedOldest.IsZero() && st.SpeedOldest.Before(cover) {
				cover = st.SpeedOldest
			}
			if speedFrom.Before(cover) {
				gapEnd := minT(cover, q.To)
				add(part{SourceRange: SourceRange{From: speedFrom, To: gapEnd, Source: SourceNone}})
				pl.Complete = false
				speedFrom = gapEnd
			}
			if speedFrom.Before(q.To) {
				add(part{SourceRange: SourceRange{From: speedFrom, To: q.To, Source: SourceSpeed}})
			}
		}
	}

	// Only week, month and all buckets can span two branches (the batch boundary, the edges
	// of partial days and the days where the set read changes fall on midnight); other plans
	// never combine rows of one bucket, so they skip reading sketch states, the costliest
	// columns of <ds>_daily.
	n := 0
	pl.DailyOnly = len(parts) > 0
	for _, pt := range parts {
		if pt.Source != SourceNone {
			n++
		}
		if pt.Source != SourceBatch {
			pl.DailyOnly = false
		}
	}
	q.states = n > 1 && (q.Granularity == "week" || q.Granularity == "month" || q.Granularity == "all")
	var branches []branch
	for _, pt := range parts {
		src := pt.SourceRange
		switch pt.Source {
		case SourceRaw:
			branches = append(branches, p.rawBranch(q, pt.From, pt.To))
		case SourceSpeed:
			branches = append(branches, p.speedBranch(q, pt.From, pt.To))
		case SourceBatch:
			branches = append(branches, p.dailyBranch(q, pt.From, pt.To, pt.grouping, pt.mode, pt.Exact))
			g := pt.grouping
			src.Grouping = &g
		}
		pl.Sources = append(pl.Sources, src)
	}
	if pl.DailyOnly {
		pl.DailyFrom, pl.DailyTo = parts[0].From, parts[len(parts)-1].To
	}
	if len(branches) == 0 {
		pl.SQL = ""
		return pl, nil
	}
	pl.SQL, pl.Args = p.outer(q, branches)
	return pl, nil
}

func daySet(days []time.Time) map[time.Time]bool {
	m := make(map[time.Time]bool, len(days))
	for _, d := range days {
		m[ledger.DayOf(d)] = true
	}
	return m
}

// rawTooOld is the refusal of a range that needs raw events from before the oldest day raw
// keeps.
func rawTooOld(from, oldest time.Time) *APIError {
	return badRequest("from", "the range needs raw events from %s, but raw keeps events from %s on only (raw_retention)", from.Format(time.RFC3339), oldest.Format("2006-01-02"))
}

// dayPart is how a whole day before the boundary is read: from the grouping set of
// <ds>_daily that answers the query (exact unless a roll-up of a distinct count or quantile,
// or the day is dirty), or from raw when exact:true asks for more, or when no set the day holds
// has every dimension the query needs (the day was computed before a dimension was added).
func (p *Planner) dayPart(q *Query, st *State, d time.Time, dirty bool, oldestRaw time.Time) (part, *APIError) {
	sets := p.setsOf(q.DS, st, d)
	name, mode, ok := chooseSet(q, sets, q.neededDims())
	r := SourceRange{From: d, To: d.AddDate(0, 0, 1)}
	if !ok || (q.Exact && (!mode.exact || dirty)) {
		if !d.Before(oldestRaw) {
			r.Source, r.Exact = SourceRaw, true
			return part{SourceRange: r}, nil
		}
		if q.Exact {
			return part{}, rawTooOld(d, oldestRaw)
		}
		// Raw no longer holds the day and no set it holds has every dimension needed: roll
		// up the smallest set with those the day knew. The others read as '', as they were
		// in raw then; approximate, as nothing can check it.
		var known []string
		for _, s := range sets {
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
		name, mode = strings.Join(smallestCover(sets, need), ","), dailyMode{}
	}
	r.Source, r.Exact = SourceBatch, mode.exact && !dirty
	return part{SourceRange: r, grouping: name, mode: mode}, nil
}

// setsOf returns the grouping sets <ds>_daily holds for a day, each as its dimension names.
func (p *Planner) setsOf(ds *config.Dataset, st *State, d time.Time) [][]string {
	names := st.Sets[d]
	if len(names) == 0 {
		return ds.GroupingSets()
	}
	out := make([][]string, 0, len(names))
	for _, n := range names {
		if n == "" {
			out = append(out, []string{})
		} else {
			out = append(out, strings.Split(n, ","))
		}
	}
	return out
}

// speedHasDims reports whether the speed view keeps every dimension the query needs.
func (p *Planner) speedHasDims(q *Query) bool {
	sd := q.DS.SpeedDimensions()
	for _, d := range q.neededDims() {
		if !slices.Contains(sd, d) {
			return false
		}
	}
	return true
}

// neededDims are the requested and filtered dimensions.
func (q *Query) neededDims() []string {
	out := slices.Clone(q.Dimensions)
	for _, f := range q.Filters {
		if !slices.Contains(out, f.Dimension) {
			out = append(out, f.Dimension)
		}
	}
	return out
}

// hasSketch reports whether a requested metric is a distinct count or a quantile, which roll
// up only approximately.
func (q *Query) hasSketch() bool {
	return slices.ContainsFunc(q.Specs, func(s metric.Spec) bool { return !s.ExactRollup() })
}

type dailyMode struct {
	// direct reads one stored row per bucket and dimensions (no roll-up).
	direct bool
	// exact is true when every value of the branch is exact.
	exact bool
}

// chooseSet picks the grouping set to read among sets (those a day holds), returning its
// grouping name. A set equal to the requested dimensions plus the dimensions filtered by one eq
// value, with every other filter on a requested dimension, gives one row per day and
// dimensions: exact for every metric. Otherwise the smallest set holding every needed dimension
// is rolled up, and distinct counts and quantiles merge their states (approximate). ok is false
// when no set holds every needed dimension.
func chooseSet(q *Query, sets [][]string, needed []string) (name string, mode dailyMode, ok bool) {
	need := slices.Clone(q.Dimensions)
	direct := true
	for _, f := range q.Filters {
		switch {
		case f.Op == "eq" || (f.Op == "in" && len(f.Values) == 1):
			if !slices.Contains(need, f.Dimension) {
				need = append(need, f.Dimension)
			}
		case !slices.Contains(q.Dimensions, f.Dimension):
			direct = false
		}
	}
	if direct {
		for _, s := range sets {
			if len(s) == len(need) && covers(s, need) {
				direct := q.Granularity == "day"
				return strings.Join(s, ","), dailyMode{direct: direct, exact: direct || !q.hasSketch()}, true
			}
		}
	}
	best := smallestCover(sets, needed)
	if best == nil {
		return "", dailyMode{}, false
	}
	return strings.Join(best, ","), dailyMode{exact: !q.hasSketch()}, true
}

// smallestCover returns the set with the fewest dimensions that holds every one of dims, nil
// when none does.
func smallestCover(sets [][]string, dims []string) []string {
	var best []string
	for _, s := range sets {
		if covers(s, dims) && (best == nil || len(s) < len(best)) {
			best = s
		}
	}
	return best
}

func covers(set, dims []string) bool {
	for _, d := range dims {
		if !slices.Contains(set, d) {
			return false
		}
	}
	return true
}

// bucket is the bucket expression over a time column of type t ("DateTime" or "Date"), as
// DateTime('UTC') so that every branch of the UNION ALL has one type.
func (q *Query) bucket(col string, isDate bool) (string, []any) {
	switch q.Granularity {
	case "minute":
		return fmt.Sprintf("toDateTime(toStartOfMinute(%s), 'UTC')", col), nil
	case "hour":
		return fmt.Sprintf("toDateTime(toStartOfHour(%s), 'UTC')", col), nil
	case "day":
		if isDate {
			return fmt.Sprintf("toDateTime(%s, 'UTC')", col), nil
		}
		return fmt.Sprintf("toDateTime(toDate(%s), 'UTC')", col), nil
	case "week":
		return fmt.Sprintf("toDateTime(toMonday(%s), 'UTC')", col), nil
	case "month":
		return fmt.Sprintf("toDateTime(toStartOfMonth(%s), 'UTC')", col), nil
	}
	return "toDateTime(?, 'UTC')", []any{q.From.Unix()}
}

// filters is the WHERE conjunction of the query's filters; values are bound.
func (q *Query) filters() (string, []any) {
	var parts []string
	var args []any
	for _, f := range q.Filters {
		c := schema.Q(f.Dimension)
		switch f.Op {
		case "eq":
			parts = append(parts, c+" = ?")
			args = append(args, f.Values[0])
		case "neq":
			parts = append(parts, c+" != ?")
			args = append(args, f.Values[0])
		case "in":
			parts = append(parts, "has(?, "+c+")")
			args = append(args, f.Values)
		case "not_in":
			parts = append(parts, "NOT has(?, "+c+")")
			args = append(args, f.Values)
		}
	}
	if len(parts) == 0 {
		return "", nil
	}
	return " AND " + strings.Join(parts, " AND "), args
}

func dimCol(d string) string { return schema.Q("d_" + d) }
func valCol(m string) string { return schema.Q("v_" + m) }
func stCol(m string) string  { return schema.Q("s_" + m) }

// hasValue and hasState say which columns a branch carries for a metric: count, sum, min and
// max combine values; avg combines states; distinct counts and quantiles carry both, the value
// for a bucket answered by one exact row, the state for buckets several rows make up.
func (q *Query) hasValue(s metric.Spec) bool { return !q.states || s.Type != metric.Avg }
func (q *Query) hasState(s metric.Spec) bool { return q.states && s.HasDailyState() }

func (p *Planner) dailyBranch(q *Query, from, to time.Time, grouping string, mode dailyMode, exact bool) branch {
	b, args := q.bucket("day", true)
	sel := []string{b + " AS b"}
	var group []string
	for _, d := range q.Dimensions {
		sel = append(sel, schema.Q(d)+" AS "+dimCol(d))
		group = append(group, dimCol(d))
	}
	for _, s := range q.Specs {
		if mode.direct {
			if q.hasValue(s) {
				sel = append(sel, s.Cast(schema.Q(s.Name))+" AS "+valCol(s.Name))
			}
			if q.hasState(s) {
				sel = append(sel, schema.Q(s.StateColumn())+" AS "+stCol(s.Name))
			}
			continue
		}
		if q.hasValue(s) {
			sel = append(sel, s.Cast(s.Rollup())+" AS "+valCol(s.Name))
		}
		if q.hasState(s) {
			sel = append(sel, s.MergeStateExpr(schema.Q(s.StateColumn()))+" AS "+stCol(s.Name))
		}
	}
	sel = append(sel, fmt.Sprintf("'%s' AS src", SourceBatch), fmt.Sprintf("toUInt8(%d) AS ex", b2i(exact)))
	where, fargs := q.filters()
	args = append(args, from.Format("2006-01-02"), to.Format("2006-01-02"), grouping)
	args = append(args, fargs...)
	sql := fmt.Sprintf("SELECT %s\nFROM %s\nWHERE day >= toDate(?) AND day < toDate(?) AND grouping = ?%s",
		strings.Join(sel, ", "), p.g.T(schema.Daily(q.DS.Name)), where)
	if !mode.direct {
		sql += "\nGROUP BY " + strings.Join(append([]string{"b"}, group...), ", ")
	}
	return branch{sql: sql, args: args}
}

func (p *Planner) speedBranch(q *Query, from, to time.Time) branch {
	b, args := q.bucket("minute", false)
	sel := []string{b + " AS b"}
	group := []string{"b"}
	for _, d := range q.Dimensions {
		sel = append(sel, schema.Q(d)+" AS "+dimCol(d))
		group = append(group, dimCol(d))
	}
	for _, s := range q.Specs {
		if q.hasValue(s) {
			sel = append(sel, s.ValueFromStates(schema.Q(s.Name), schema.Q(metric.PresenceColumn(s.Column)))+" AS "+valCol(s.Name))
		}
		if q.hasState(s) {
			sel = append(sel, s.MergeStateExpr(schema.Q(s.Name))+" AS "+stCol(s.Name))
		}
	}
	sel = append(sel, fmt.Sprintf("'%s' AS src", SourceSpeed), "toUInt8(0) AS ex")
	where, fargs := q.filters()
	args = append(args, from.Unix(), to.Unix())
	args = append(args, fargs...)
	return branch{args: args, sql: fmt.Sprintf("SELECT %s\nFROM %s\nWHERE minute >= toDateTime(?) AND minute < toDateTime(?)%s\nGROUP BY %s",
		strings.Join(sel, ", "), p.g.T(schema.Speed(q.DS.Name)), where, strings.Join(group, ", "))}
}

// rawBranch reads deduplicated raw: the first-ingested copy of each id within its day, as the
// batch layer keeps it.
func (p *Planner) rawBranch(q *Query, from, to time.Time) branch {
	cols := []string{"id", "time"}
	for _, d := range q.neededDims() {
		cols = append(cols, schema.Q(d))
	}
	for _, s := range q.Specs {
		if s.Column != "" && !slices.Contains(cols, schema.Q(s.Column)) {
			cols = append(cols, schema.Q(s.Column))
		}
	}
	b, args := q.bucket("time", false)
	sel := []string{b + " AS b"}
	group := []string{"b"}
	for _, d := range q.Dimensions {
		sel = append(sel, schema.Q(d)+" AS "+dimCol(d))
		group = append(group, dimCol(d))
	}
	for _, s := range q.Specs {
		if q.hasValue(s) {
			sel = append(sel, s.Cast(s.ExactExpr())+" AS "+valCol(s.Name))
		}
		if q.hasState(s) {
			sel = append(sel, s.StateExpr()+" AS "+stCol(s.Name))
		}
	}
	sel = append(sel, fmt.Sprintf("'%s' AS src", SourceRaw), "toUInt8(1) AS ex")
	where, fargs := q.filters()
	args = append(args, from.Unix(), to.Unix())
	args = append(args, fargs...)
	inner := fmt.Sprintf("SELECT %s\n    FROM %s\n    WHERE time >= toDateTime(?) AND time < toDateTime(?)\n    ORDER BY _ingested_at, _partition, _offset\n    LIMIT 1 BY toDate(time), id",
		strings.Join(cols, ", "), p.g.T(schema.Raw(q.DS.Name)))
	sql := fmt.Sprintf("SELECT %s\nFROM\n(\n    %s\n)\nWHERE 1%s\nGROUP BY %s", strings.Join(sel, ", "), inner, where, strings.Join(group, ", "))
	return branch{sql: sql, args: args}
}

// outer combines the branches per bucket and dimensions: count and sum add, min and max take
// the extreme, avg merges states; a distinct count or quantile is the value of its one row
// when one row makes the bucket, the merge of the rows' states otherwise (approximate).
func (p *Planner) outer(q *Query, branches []branch) (string, []any) {
	sel := []string{"b AS time"}
	group := []string{"b"}
	for _, d := range q.Dimensions {
		sel = append(sel, dimCol(d)+" AS "+schema.Q(d))
		group = append(group, dimCol(d))
	}
	for _, s := range q.Specs {
		var e string
		switch {
		case s.Combine("x") != "":
			e = s.Cast(s.Combine(valCol(s.Name)))
		case !q.hasValue(s):
			e = s.Cast(s.MergeExpr(stCol(s.Name)))
		case !q.states:
			e = fmt.Sprintf("any(%s)", valCol(s.Name))
		default:
			e = fmt.Sprintf("if(count() = 1, any(%s), %s)", valCol(s.Name), s.Cast(s.MergeExpr(stCol(s.Name))))
		}
		sel = append(sel, e+" AS "+schema.Q(s.Name))
	}
	sel = append(sel, fmt.Sprintf("if(uniqExact(src) = 1, any(src), '%s') AS source", SourceMixed))
	if q.hasSketch() {
		sel = append(sel, "toUInt8(min(ex) = 1 AND count() = 1) AS exact")
	} else {
		sel = append(sel, "toUInt8(min(ex) = 1) AS exact")
	}
	parts := make([]string, len(branches))
	var args []any
	for i, b := range branches {
		parts[i] = b.sql
		args = append(args, b.args...)
	}
	order := []string{}
	dir := ""
	if q.Desc {
		dir = " DESC"
	}
	if q.OrderBy != "time" {
		order = append(order, schema.Q(q.OrderBy)+dir)
		dir = ""
	}
	order = append(order, "time"+dir)
	for _, d := range q.Dimensions {
		if d != q.OrderBy {
			order = append(order, schema.Q(d))
		}
	}
	args = append(args, q.Limit+1)
	return fmt.Sprintf("SELECT %s\nFROM\n(\n%s\n)\nGROUP BY %s\nORDER BY %s\nLIMIT ?",
		strings.Join(sel, ", "), strings.Join(parts, "\nUNION ALL\n"), strings.Join(group, ", "), strings.Join(order, ", ")), args
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
