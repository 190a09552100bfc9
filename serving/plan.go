package serving

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
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
	// Watermark is the last exact day as persisted by the batch layer (zero: none).
	Watermark time.Time
	// Effective is Watermark lowered to the day before the first dirty day (zero: none).
	Effective time.Time
	// Dirty lists days waiting for a recomputation, within the dataset's lookback.
	Dirty []time.Time
	// Runs maps a day to its newest successful run id.
	Runs map[time.Time]string
	// SpeedOldest is the oldest minute held by <ds>_speed (zero: empty).
	SpeedOldest time.Time
}

// Plan is the SQL of one query and what it reads.
type Plan struct {
	SQL      string
	Args     []any
	Sources  []SourceRange
	Complete bool
	// DailyOnly is true when every part is read from <ds>_daily: the result may be cached.
	DailyOnly bool
	// DailyFrom and DailyTo are the days read from <ds>_daily.
	DailyFrom, DailyTo time.Time
}

// Planner turns checked queries into SQL.
type Planner struct {
	g   *schema.Generator
	cfg *config.Config
}

// NewPlanner returns a planner for the configuration's database.
func NewPlanner(cfg *config.Config) *Planner { return &Planner{g: schema.NewGenerator(cfg), cfg: cfg} }

func dayOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func ceilDay(t time.Time) time.Time {
	d := dayOf(t)
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

// Plan applies the merge rule to q: [from, to) splits at the batch boundary (the end of the
// effective watermark day). Before it, whole days come from <ds>_daily and sub-day buckets
// from deduplicated raw; after it, <ds>_speed; exact:true answers from raw whatever would
// otherwise be approximate.
func (p *Planner) Plan(q *Query, st *State, now time.Time) (*Plan, *APIError) {
	ds := q.DS
	pl := &Plan{Complete: true, DailyOnly: true}
	var branches []branch
	// Only week, month and all buckets can span two sources (the batch boundary and the
	// edges of partial days fall on midnight); other plans never combine rows of one bucket,
	// so they skip reading sketch states, the costliest columns of <ds>_daily.
	q.states = q.Granularity == "week" || q.Granularity == "month" || q.Granularity == "all"
	var boundary time.Time // zero: nothing is exact
	if !st.Effective.IsZero() {
		boundary = st.Effective.AddDate(0, 0, 1)
	}
	oldestRaw := dayOf(now.Add(-ds.RawRetention.D()))
	addRaw := func(from, to time.Time) *APIError {
		if from.Before(oldestRaw) {
			return badRequest("from", "the range needs raw events from %s, but raw keeps events from %s on only (raw_retention)", from.Format(time.RFC3339), oldestRaw.Format("2006-01-02"))
		}
		branches = append(branches, p.rawBranch(q, from, to))
		pl.Sources = append(pl.Sources, SourceRange{From: from, To: to, Source: SourceRaw, Exact: true})
		pl.DailyOnly = false
		return nil
	}

	// The batch side.
	if batchEnd := minT(q.To, boundary); q.From.Before(batchEnd) {
		if q.Granularity == "minute" || q.Granularity == "hour" {
			if err := addRaw(q.From, batchEnd); err != nil {
				return nil, err
			}
		} else {
			d0, d1 := ceilDay(q.From), dayOf(batchEnd)
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
				set, mode := p.chooseSet(q)
				if q.Exact && !mode.exact {
					if err := addRaw(d0, d1); err != nil {
						return nil, err
					}
				} else {
					branches = append(branches, p.dailyBranch(q, d0, d1, set, mode))
					name := config.GroupingName(set)
					pl.Sources = append(pl.Sources, SourceRange{From: d0, To: d1, Source: SourceBatch, Grouping: &name, Exact: mode.exact})
					pl.DailyFrom, pl.DailyTo = d0, d1
				}
				if d1.Before(batchEnd) {
					if err := addRaw(d1, batchEnd); err != nil {
						return nil, err
					}
				}
			}
		}
	}

	// The speed side.
	if speedFrom := maxT(q.From, boundary); speedFrom.Before(q.To) {
		pl.DailyOnly = false
		if q.Exact || !p.speedHasDims(q) {
			if err := addRaw(speedFrom, q.To); err != nil {
				return nil, err
			}
		} else {
			cover := dayOf(now.Add(-ds.SpeedConf.Retention.D()))
			if !st.SpeedOldest.IsZero() && st.SpeedOldest.Before(cover) {
				cover = st.SpeedOldest
			}
			if speedFrom.Before(cover) {
				gapEnd := minT(cover, q.To)
				pl.Sources = append(pl.Sources, SourceRange{From: speedFrom, To: gapEnd, Source: SourceNone})
				pl.Complete = false
				speedFrom = gapEnd
			}
			if speedFrom.Before(q.To) {
				branches = append(branches, p.speedBranch(q, speedFrom, q.To))
				pl.Sources = append(pl.Sources, SourceRange{From: speedFrom, To: q.To, Source: SourceSpeed})
			}
		}
	}
	if len(branches) < 2 {
		q.states = false
	}
	if len(branches) == 0 {
		pl.DailyOnly = false
		pl.SQL = ""
		return pl, nil
	}
	if !q.states {
		// Built assuming states; rebuild the branches without them.
		branches = nil
		for _, src := range pl.Sources {
			switch src.Source {
			case SourceRaw:
				branches = append(branches, p.rawBranch(q, src.From, src.To))
			case SourceSpeed:
				branches = append(branches, p.speedBranch(q, src.From, src.To))
			case SourceBatch:
				set, mode := p.chooseSet(q)
				branches = append(branches, p.dailyBranch(q, src.From, src.To, set, mode))
			}
		}
	}
	pl.SQL, pl.Args = p.outer(q, branches)
	return pl, nil
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

// chooseSet picks the grouping set of <ds>_daily to read. A set equal to the requested
// dimensions plus the dimensions filtered by one eq value, with every other filter on a
// requested dimension, gives one row per day and dimensions: exact for every metric. Otherwise
// the smallest stored set holding every needed dimension is rolled up, and distinct counts and
// quantiles merge their states (approximate).
func (p *Planner) chooseSet(q *Query) ([]string, dailyMode) {
	ds := q.DS
	sets := ds.GroupingSets()
	need := slices.Clone(q.Dimensions)
	ok := true
	for _, f := range q.Filters {
		switch {
		case f.Op == "eq" || (f.Op == "in" && len(f.Values) == 1):
			if !slices.Contains(need, f.Dimension) {
				need = append(need, f.Dimension)
			}
		case !slices.Contains(q.Dimensions, f.Dimension):
			ok = false
		}
	}
	want := config.GroupingName(ds.Ordered(need))
	if ok {
		for _, s := range sets {
			if config.GroupingName(s) == want {
				direct := q.Granularity == "day"
				return s, dailyMode{direct: direct, exact: direct || !q.hasSketch()}
			}
		}
	}
	all := q.neededDims()
	var best []string
	for _, s := range sets {
		covers := true
		for _, d := range all {
			if !slices.Contains(s, d) {
				covers = false
			}
		}
		if covers && (best == nil || len(s) < len(best)) {
			best = s
		}
	}
	return best, dailyMode{exact: !q.hasSketch()}
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

func (p *Planner) dailyBranch(q *Query, from, to time.Time, set []string, mode dailyMode) branch {
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
	sel = append(sel, fmt.Sprintf("'%s' AS src", SourceBatch), fmt.Sprintf("toUInt8(%d) AS ex", b2i(mode.exact)))
	where, fargs := q.filters()
	args = append(args, from.Format("2006-01-02"), to.Format("2006-01-02"), config.GroupingName(set))
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
			sel = append(sel, s.Cast(s.MergeExpr(schema.Q(s.Name)))+" AS "+valCol(s.Name))
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
