package serving

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// bucket is the bucket expression over a time column of type t ("DateTime" or "Date"), as
// DateTime('UTC') so that every branch of the UNION ALL has one type. Buckets are in the
// request's zone: a local hour, or a local date at its midnight there (a Date column holds the
// dataset's days, read only when the request is in the dataset's zone). A UTC request's SQL
// names no zone.
func (q *Query) bucket(col string, isDate bool) (string, []any) {
	z := ledger.ZoneArg(q.zone())
	local := func(date string) string { // a local date's midnight
		if z == "" {
			return fmt.Sprintf("toDateTime(%s, 'UTC')", date)
		}
		return fmt.Sprintf("toDateTime(toDateTime(%s%s), 'UTC')", date, z)
	}
	colZ := z
	if isDate {
		colZ = ""
	}
	switch q.Granularity {
	case "minute":
		return fmt.Sprintf("toDateTime(toStartOfMinute(%s), 'UTC')", col), nil
	case "hour":
		return fmt.Sprintf("toDateTime(toStartOfHour(%s%s), 'UTC')", col, z), nil
	case "day":
		if isDate {
			return local(col), nil
		}
		return local(fmt.Sprintf("toDate(%s%s)", col, z)), nil
	case "week":
		return local(fmt.Sprintf("toMonday(%s%s)", col, colZ)), nil
	case "month":
		return local(fmt.Sprintf("toStartOfMonth(%s%s)", col, colZ)), nil
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
		case "prefix":
			parts = append(parts, "startsWith("+c+", ?)")
			args = append(args, f.Values[0])
		case "contains":
			parts = append(parts, "position("+c+", ?) > 0")
			args = append(args, f.Values[0])
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

// shape is what the SQL of a decision needs beyond the query.
type shape struct {
	// states: a bucket combines rows of several parts (Decision.States).
	states bool
	// flat: no bucket combines rows of several parts and nothing filters combined rows
	// (HAVING): each branch's rows are rows of the answer, so the statement is the branches'
	// UNION ALL, each cut to the page itself, and run sorts the rows (SQL.Unsorted). On
	// ClickHouse 18.16 the outer SELECT that would regroup and sort them costs 1.5-2 ms a
	// statement, as much as reading an hour panel's rows.
	flat bool
}

// hasValue and hasState say which columns a branch carries for a metric: count, sum, min and
// max combine values; avg combines states; distinct counts and quantiles carry both, the value
// for a bucket answered by one exact row, the state for buckets several rows make up.
func (sh shape) hasValue(s metric.Spec) bool { return !sh.states || s.Type != metric.Avg }
func (sh shape) hasState(s metric.Spec) bool { return sh.states && s.HasDailyState() }

// value is the value column of a branch that groups its rows per bucket (not direct): expr (of
// the metric's ValueType), or, for a metric that carries both (a distinct count or quantile
// when buckets merge), a placeholder of its type. A bucket of one such row takes the merge of its state (outer reads a
// value only where the branch's dv column says it is one), and finalizing a state beside
// merging it would deserialize it twice.
func (sh shape) value(s metric.Spec, expr string) string {
	switch {
	case !sh.hasState(s):
		return expr
	case s.ValueType() == metric.NumberType:
		// Not Cast's if(isNaN(…), NULL, …): over a constant, 18.16 refuses the Nullable inside.
		return "toNullable(toFloat64(0))"
	}
	return s.Cast("0")
}

// tail is the columns every branch ends with: its source, its exactness, and, where buckets
// merge states, whether its values of distinct counts and quantiles are values (dv: a direct
// part's rows, raw's exact values) or placeholders (sh.value).
func (sh shape) tail(src string, exact, values bool) string {
	t := fmt.Sprintf("'%s' AS src, toUInt8(%d) AS ex", src, b2i(exact))
	if sh.states {
		t += fmt.Sprintf(", toUInt8(%d) AS dv", b2i(values))
	}
	return t
}

// query is the SQL of parts: one branch per part, combined per bucket and dimensions (or, flat,
// side by side). Nil when there are no parts.
func (p *Planner) query(q *Query, sh shape, parts []Part) *SQL {
	if len(parts) == 0 {
		return nil
	}
	parts = q.joinRaw(parts)
	groups := q.groups(parts)
	combines := slices.ContainsFunc(groups, func(g []Part) bool { return len(g) > 1 })
	if len(q.Having) == 0 && len(groups) > 1 && combines {
		// Only some buckets combine parts (a partial first hour of raw seconds and minutes,
		// then whole hours): each run of parts that share buckets is its own statement, the
		// others flat, side by side. States are merged only where buckets combine.
		var texts []string
		var args []any
		for _, g := range groups {
			sql := p.query(q, shape{states: q.combines(g)}, g)
			texts = append(texts, sql.Text)
			args = append(args, sql.Args...)
		}
		return &SQL{Text: strings.Join(texts, "\nUNION ALL\n"), Args: args, Unsorted: true}
	}
	sh.flat = !sh.states && len(q.Having) == 0 && !combines
	var branches []branch
	n := q.Offset + q.Limit + 1
	for _, pt := range parts {
		// Without dimensions a branch has a row per bucket at most: when its range holds no
		// more buckets than the page, it needs no ORDER BY and LIMIT of its own.
		whole := len(q.Dimensions) == 0 && q.buckets(pt.From, pt.To, n) <= n
		switch pt.Table {
		case TableRaw:
			branches = append(branches, p.rawBranch(q, sh, pt.From, pt.To, pt.Exact))
		case TableSpeed, TableSpeedHourly:
			branches = append(branches, p.speedBranch(q, sh, pt))
		case TableDaily, TableHourly, TableHourlyRest:
			branches = append(branches, p.rollupBranch(q, sh, pt))
		default:
			continue
		}
		branches[len(branches)-1].whole = whole
	}
	if sh.flat {
		texts := make([]string, len(branches))
		var args []any
		for i, b := range branches {
			var bargs []any
			texts[i], bargs = b.flat(q)
			args = append(args, bargs...)
		}
		return &SQL{Text: strings.Join(texts, "\nUNION ALL\n"), Args: args, Unsorted: true}
	}
	text, args := p.outer(q, sh, branches)
	return &SQL{Text: text, Args: args}
}

// joinRaw reads adjacent ranges of raw that lie in one bucket with one branch: exact:true splits
// raw at the speed watermark (exact before it, not after), and two branches would merge the
// bucket's distinct counts and quantiles through approximate states, where one branch computes
// them exactly. The bucket is as exact as its least exact part either way, and the plan's
// sources keep both. (Ranges over several buckets stay apart: each bucket keeps its own
// exactness.)
func (q *Query) joinRaw(parts []Part) []Part {
	var out []Part
	for _, pt := range parts {
		if n := len(out); n > 0 && pt.Table == TableRaw && out[n-1].Table == TableRaw && out[n-1].To.Equal(pt.From) &&
			q.bucketOf(out[n-1].From).Equal(q.bucketOf(pt.To.Add(-time.Nanosecond))) {
			out[n-1].To = pt.To
			out[n-1].Exact = out[n-1].Exact && pt.Exact
			continue
		}
		out = append(out, pt)
	}
	return out
}

// branch is one SELECT of the UNION ALL: a source over a range.
type branch struct {
	// head is the bucket (b) and the dimensions (d_…), values the value expression of each
	// metric that has one, states the state columns (s_…), tail the source and exactness.
	head   []string
	values map[string]string
	states []string
	tail   string
	// from is the statement from FROM on; group the GROUP BY columns, none for a direct part.
	from  string
	group []string
	// args are bound in order: the head's, then the rest's.
	args []any
	// whole: the branch's rows fit in the page (flat needs no ORDER BY and LIMIT).
	whole bool
}

// sql is the branch as a SELECT of outer's UNION ALL: its values (v_…) in the order of the
// query's stored metrics, then its states.
func (b branch) sql(q *Query) string {
	sel := slices.Clone(b.head)
	for _, s := range q.Specs {
		if e, ok := b.values[s.Name]; ok {
			sel = append(sel, e+" AS "+valCol(s.Name))
		}
	}
	sel = append(append(sel, b.states...), b.tail)
	return b.text(sel)
}

func (b branch) text(sel []string) string {
	sql := "SELECT " + strings.Join(sel, ", ") + "\nFROM " + b.from
	if len(b.group) > 0 {
		sql += "\nGROUP BY " + strings.Join(b.group, ", ")
	}
	return sql
}

// flat is the branch as rows of the answer: the requested metrics (a ratio divides its parts'
// values), ordered as outer orders and cut to the page, which run completes across branches.
func (b branch) flat(q *Query) (string, []any) {
	sel := slices.Clone(b.head)
	for _, m := range q.Metrics {
		e := b.values[m]
		if r, ok := q.ratio(m); ok {
			e = metric.RatioExpr(b.values[r.Numerator], b.values[r.Denominator])
		}
		sel = append(sel, e+" AS "+valCol(m))
	}
	sel = append(sel, b.tail)
	if b.whole {
		return b.text(sel), b.args
	}
	dir := ""
	if q.Desc {
		dir = " DESC"
	}
	var order []string
	switch {
	case q.OrderBy == "time":
	case slices.Contains(q.Dimensions, q.OrderBy):
		order, dir = append(order, dimCol(q.OrderBy)+dir), ""
	default:
		order, dir = append(order, valCol(q.OrderBy)+dir), ""
	}
	order = append(order, "b"+dir)
	for _, d := range q.Dimensions {
		if d != q.OrderBy {
			order = append(order, dimCol(d))
		}
	}
	return b.text(sel) + "\nORDER BY " + strings.Join(order, ", ") + "\nLIMIT ?", append(slices.Clone(b.args), q.Offset+q.Limit+1)
}

// rollupBranch reads <ds>_daily or <ds>_hourly: one stored grouping set, directly (one row
// per bucket and dimensions) or rolled up per bucket; or <ds>_hourly_rest: one set's rows of
// the rest of the day from the part's start, rolled up like <ds>_hourly's.
func (p *Planner) rollupBranch(q *Query, sh shape, pt Part) branch {
	table, col, isDate := schema.Daily(q.DS.Name), "day", true
	loc := q.DS.Location()
	lo, hi := "toDate(?)", any(ledger.DayIn(pt.From, loc).Format(time.DateOnly))
	hiArg := any(ledger.DayIn(pt.To, loc).Format(time.DateOnly))
	rng := "%[1]s >= %[2]s AND %[1]s < %[2]s"
	switch pt.Table {
	case TableHourly:
		table, col, isDate = schema.Hourly(q.DS.Name), "hour", false
		lo, hi, hiArg = "toDateTime(?)", pt.From.Unix(), pt.To.Unix()
	case TableHourlyRest:
		table, col, isDate = schema.HourlyRest(q.DS.Name), "hour", false
		lo, hi, hiArg, rng = "toDateTime(?)", pt.From.Unix(), nil, "%[1]s = %[2]s"
	}
	b, args := q.bucket(col, isDate)
	br := branch{head: []string{b + " AS b"}, values: map[string]string{}}
	for _, d := range q.Dimensions {
		br.head = append(br.head, schema.Q(d)+" AS "+dimCol(d))
	}
	for _, s := range q.Specs {
		if pt.direct {
			if sh.hasValue(s) {
				br.values[s.Name] = s.Cast(schema.Q(s.Name))
			}
			// A direct part's rows are alone in their buckets (its range is aligned to its
			// grain, the buckets' grain), and a bucket of one row takes a distinct count's or
			// a quantile's value, not its state (outer): an empty state stands in, and the
			// stored one (the largest column) is not read. An avg has only its state then.
			switch {
			case !sh.hasState(s):
			case s.Type == metric.Uniq || s.Type == metric.Quantile:
				br.states = append(br.states, s.EmptyStateExpr()+" AS "+stCol(s.Name))
			default:
				br.states = append(br.states, schema.Q(s.StateColumn())+" AS "+stCol(s.Name))
			}
			continue
		}
		if sh.hasValue(s) {
			br.values[s.Name] = sh.value(s, s.Cast(s.Rollup()))
		}
		if sh.hasState(s) {
			br.states = append(br.states, s.MergeStateExpr(schema.Q(s.StateColumn()))+" AS "+stCol(s.Name))
		}
	}
	br.tail = sh.tail(pt.Source, pt.Exact, pt.direct)
	where, fargs := q.filters()
	args = append(args, hi)
	if hiArg != nil {
		args = append(args, hiArg)
	}
	args = append(args, pt.grouping)
	br.args = append(args, fargs...)
	br.from = fmt.Sprintf("%s\nWHERE %s AND grouping = ?%s", p.g.T(table), fmt.Sprintf(rng, col, lo), where)
	if !pt.direct {
		br.group = append([]string{"b"}, dimCols(q)...)
	}
	return br
}

// dimCols are the branches' dimension columns.
func dimCols(q *Query) []string {
	out := make([]string, len(q.Dimensions))
	for i, d := range q.Dimensions {
		out[i] = dimCol(d)
	}
	return out
}

// speedBranch reads <ds>_speed: per-minute states, as the speed layer wrote them after the
// boundary, or as the batch layer rewrote them from deduplicated raw before it; or
// <ds>_speed_hourly: one grouping set's states per hour, rolled up from the minutes after the
// boundary (directly: the values beside them), or its one state of the day so far per
// combination.
func (p *Planner) speedBranch(q *Query, sh shape, pt Part) branch {
	table, col, cond := schema.Speed(q.DS.Name), "minute", ""
	from, to := pt.From, pt.To
	if pt.Table == TableSpeedHourly {
		table, col, cond = schema.SpeedHourly(q.DS.Name), "hour", " AND prefix = 0 AND grouping = ?"
		if pt.prefix {
			// The one row of the day so far per combination, at its last hour.
			from, cond = to.Add(-time.Hour), " AND prefix = 1 AND grouping = ?"
		}
	}
	b, args := q.bucket(col, false)
	br := branch{head: []string{b + " AS b"}, values: map[string]string{}}
	for _, d := range q.Dimensions {
		br.head = append(br.head, schema.Q(d)+" AS "+dimCol(d))
	}
	for _, s := range q.Specs {
		if pt.direct {
			// One row per bucket and dimensions (an hour row of the set asked for): its value,
			// and in place of a distinct count's or quantile's state an empty one, as
			// rollupBranch reads a direct part.
			if sh.hasValue(s) {
				br.values[s.Name] = s.Cast(schema.Q(metric.ValueColumn(s.Name)))
			}
			switch {
			case !sh.hasState(s):
			case s.Type == metric.Uniq || s.Type == metric.Quantile:
				br.states = append(br.states, s.EmptyStateExpr()+" AS "+stCol(s.Name))
			default:
				br.states = append(br.states, schema.Q(s.Name)+" AS "+stCol(s.Name))
			}
			continue
		}
		if sh.hasValue(s) {
			br.values[s.Name] = sh.value(s, s.ValueFromStates(schema.Q(s.Name), schema.Q(metric.PresenceColumn(s.Column))))
		}
		if sh.hasState(s) {
			br.states = append(br.states, s.MergeStateExpr(schema.Q(s.Name))+" AS "+stCol(s.Name))
		}
	}
	br.tail = sh.tail(pt.Source, pt.Exact, pt.direct)
	where, fargs := q.filters()
	args = append(args, from.Unix(), to.Unix())
	if cond != "" {
		args = append(args, pt.grouping)
	}
	br.args = append(args, fargs...)
	br.from = fmt.Sprintf("%s\nWHERE %s >= toDateTime(?) AND %s < toDateTime(?)%s%s", p.g.T(table), col, col, cond, where)
	if !pt.direct {
		br.group = append([]string{"b"}, dimCols(q)...)
	}
	return br
}

// rawBranch reads deduplicated raw: the first-ingested copy of each id within its day, as the
// batch layer keeps it.
func (p *Planner) rawBranch(q *Query, sh shape, from, to time.Time, exact bool) branch {
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
	br := branch{head: []string{b + " AS b"}, values: map[string]string{}}
	for _, d := range q.Dimensions {
		br.head = append(br.head, schema.Q(d)+" AS "+dimCol(d))
	}
	for _, s := range q.Specs {
		if sh.hasValue(s) {
			br.values[s.Name] = s.Cast(s.ExactExpr())
		}
		if sh.hasState(s) {
			br.states = append(br.states, s.StateExpr()+" AS "+stCol(s.Name))
		}
	}
	br.tail = sh.tail(SourceRaw, exact, true)
	where, fargs := q.filters()
	args = append(args, from.Unix(), to.Unix())
	br.args = append(args, fargs...)
	inner := "    " + strings.ReplaceAll(schema.DedupRaw(cols, p.g.T(schema.Raw(q.DS.Name)), "time >= toDateTime(?) AND time < toDateTime(?)", q.DS.Location()), "\n", "\n    ")
	br.from = fmt.Sprintf("(\n%s\n)\nWHERE 1%s", inner, where)
	br.group = append([]string{"b"}, dimCols(q)...)
	return br
}

// outer combines the branches per bucket and dimensions: count and sum add, min and max take
// the extreme, avg merges states; a distinct count or quantile is the value of its one row
// when one row that carries a value (dv: a direct part's, raw's) makes the bucket, the merge
// of the rows' states otherwise (approximate). A
// ratio divides its parts' combined values. having filters the combined rows. NULLs sort last
// in either direction (ClickHouse's default, which merged results follow). The statement
// returns up to offset+limit+1 rows: the caller pages, after merging the two statements of a
// split plan, and learns from the extra row that there is more.
func (p *Planner) outer(q *Query, sh shape, branches []branch) (string, []any) {
	sel := []string{"b AS time"}
	group := []string{"b"}
	for _, d := range q.Dimensions {
		sel = append(sel, dimCol(d)+" AS "+schema.Q(d))
		group = append(group, dimCol(d))
	}
	exprs := map[string]string{}
	for _, s := range q.Specs {
		var e string
		switch {
		case s.Combine("x") != "":
			e = s.Cast(s.Combine(valCol(s.Name)))
		case !sh.hasValue(s):
			e = s.Cast(s.MergeExpr(stCol(s.Name)))
		case !sh.states:
			e = fmt.Sprintf("any(%s)", valCol(s.Name))
		default:
			e = fmt.Sprintf("if(count() = 1 AND min(dv) = 1, any(%s), %s)", valCol(s.Name), s.Cast(s.MergeExpr(stCol(s.Name))))
		}
		exprs[s.Name] = e
	}
	value := func(name string) string {
		if r, ok := q.ratio(name); ok {
			return metric.RatioExpr(exprs[r.Numerator], exprs[r.Denominator])
		}
		return exprs[name]
	}
	for _, m := range q.Metrics {
		sel = append(sel, value(m)+" AS "+schema.Q(m))
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
		parts[i] = b.sql(q)
		args = append(args, b.args...)
	}
	having := ""
	if len(q.Having) > 0 {
		conds := make([]string, len(q.Having))
		for i, h := range q.Having {
			// toFloat64: a decimal sum does not compare with a Float64 value on every version.
			conds[i] = fmt.Sprintf("toFloat64(%s) %s ?", value(h.Metric), havingSQL[h.Op])
			args = append(args, *h.Value)
		}
		having = "\nHAVING " + strings.Join(conds, " AND ")
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
	args = append(args, q.Offset+q.Limit+1)
	return fmt.Sprintf("SELECT %s\nFROM\n(\n%s\n)\nGROUP BY %s%s\nORDER BY %s\nLIMIT ?",
		strings.Join(sel, ", "), strings.Join(parts, "\nUNION ALL\n"), strings.Join(group, ", "), having, strings.Join(order, ", ")), args
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
