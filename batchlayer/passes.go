package batchlayer

// The SQL of the passes a run makes over a day (see engine.go for the plan that sequences them).
//
// A run first writes the day's deduplicated rows into plain Log tables (one per id bucket, read
// through a Merge table: the run's "dedup" table, with raw's column names). Every later pass
// reads those rows, never raw again.
//
// The aggregation passes work in two levels. Level 1 groups the rows by hour and every
// dimension (the finest key of any grouping set); level 2 ARRAY JOINs the level-1 rows with the
// grouping sets at both grains (day and hour) and merges them into each set's groups. A row's
// strings are hashed once, at level 1, instead of once per grouping set and grain. A group of
// level 2 is identified by _t (the day's or the hour's start), _g (a mask: bit i for the i-th
// dimension, bit hourBit for the hour grain) and the dimension values _o<i> ('' for dimensions
// outside the set).
//
// Every pass writes its partial results into the run's parts table (_p) with only its own
// columns set; assemble merges them per group into the day's rows and the hour rows:
//
//   - count, sum, min, max: partial values combined with metric.Combine (the aggregate pass may
//     run in time chunks);
//   - avg and every sketch state: states, merged;
//   - uniq (exact): counts over disjoint sets of keys (key-hash buckets), added up;
//   - quantile (exact): one value per group, from the one pass that computed it.

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// hourBit marks the hour grain in a group mask.
const hourBit = 62

// Names of a run's tables, all starting with its staging name (so dropLeftovers finds them).
func dedupTable(stage string, b int) string    { return fmt.Sprintf("%s_s%d", stage, b) }
func dedupMerge(stage string) string           { return stage + "_s" }
func partsTable(stage string) string           { return stage + "_p" }
func exactTable(stage string) string           { return stage + "_x" }
func hourlyStage(stage string) string          { return stage + "_h" }
func speedStage(stage string) string           { return stage + "_m" }
func qCountsTable(stage string, i int) string  { return fmt.Sprintf("%s_qc%d", stage, i) }
func qTargetsTable(stage string, i int) string { return fmt.Sprintf("%s_qt%d", stage, i) }

// dedupColumns are the columns of the run's dedup tables: raw's names and types, without the
// bookkeeping columns.
func (q *queries) dedupColumns() []schema.Column {
	cols := []schema.Column{{Name: "time", Type: "DateTime('UTC')"}}
	for _, n := range q.d.DimensionNames() {
		cols = append(cols, schema.Column{Name: n, Type: "String"})
	}
	for _, c := range q.d.ValueColumns() {
		cols = append(cols, schema.Column{Name: c.Name, Type: c.Type})
	}
	return cols
}

func columnList(cols []schema.Column) string {
	var b strings.Builder
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(schema.Q(c.Name) + " " + c.Type)
		if c.Default != "" {
			b.WriteString(" DEFAULT " + c.Default)
		}
	}
	return b.String()
}

func columnNames(cols []schema.Column) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = c.Name
	}
	return out
}

// createLog creates a plain Log table (no sorting, no merges: written once, read in full).
func (q *queries) createLog(table string, cols []schema.Column) string {
	return fmt.Sprintf("CREATE TABLE %s (%s) ENGINE = Log", q.g.T(table), columnList(cols))
}

// createDedupMerge creates the Merge table over a run's dedup tables.
func (q *queries) createDedupMerge(stage string) string {
	return fmt.Sprintf("CREATE TABLE %s (%s) ENGINE = Merge(%s, %s)", q.g.T(dedupMerge(stage)), columnList(q.dedupColumns()),
		schema.Q(q.db), strLit("^"+stage+"_s[0-9]+$"))
}

// dedupRows reads the day's deduplicated rows of raw (a table) where the extra conditions hold,
// with raw's column names: the first-ingested copy of each id, exactly as the single-query
// recompute keeps it.
func (q *queries) dedupRows(raw string, day time.Time, where ...string) string {
	cols := quoteAll(columnNames(q.dedupColumns()))
	return fmt.Sprintf(`SELECT %s
FROM
(
    SELECT id, %s
    FROM %s
    WHERE %s
    ORDER BY _ingested_at, _partition, _offset
    LIMIT 1 BY id
)`, cols, cols, raw, strings.Join(append([]string{q.rawDayWhere(day)}, where...), " AND "))
}

// The dedup reads raw twice, and sorts only the rows of ids that occur more than once. Most ids
// occur once: first the hashes of ids seen more than once are found (reading only the ids,
// in buckets of hashes: dupHashes), then every row whose id hash is not among them goes to the
// deduplicated rows as it is (dedupUnique), and only the rows whose id hash is (duplicates, and
// ids that merely share a hash with another) are sorted by ingestion and cut to the first copy
// of each id (dedupRepeated), in id buckets when they are many. An id's copies share a hash, so
// the result is exactly the first-ingested copy of every id.

func dupTable(stage string) string { return stage + "_d" }

// idHash is the hash the dedup finds repeated ids by. Raw is sharded by cityHash64(id), so its
// buckets mix it again: on a shard that holds only even hashes, hash % 2 would be one bucket.
const idHash = "cityHash64(id)"

func hashBucket(hash string, n, b int) string {
	return fmt.Sprintf("intHash64(%s) %% %d = %d", hash, n, b)
}

func (q *queries) createDupTable(table string) string {
	return q.createLog(table, []schema.Column{{Name: "h", Type: "UInt64"}, {Name: "c", Type: "UInt64"}})
}

// dupHashes writes, for bucket b of n of the id hashes, those seen more than once and how often.
func (q *queries) dupHashes(table, raw string, day time.Time, n, b int) string {
	where := q.rawDayWhere(day)
	if n > 1 {
		where += " AND " + hashBucket(idHash, n, b)
	}
	return fmt.Sprintf("INSERT INTO %s (h, c)\nSELECT %s AS h, count() AS c\nFROM %s\nWHERE %s\nGROUP BY h\nHAVING c > 1",
		q.g.T(table), idHash, raw, where)
}

// dedupUnique writes the rows of ids whose hash occurs once (their only copy) into table.
func (q *queries) dedupUnique(table, raw, dups string, day time.Time) string {
	cols := quoteAll(columnNames(q.dedupColumns()))
	return fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %s\nFROM %s\nWHERE %s AND %s NOT IN (SELECT h FROM %s)",
		q.g.T(table), cols, cols, raw, q.rawDayWhere(day), idHash, q.g.T(dups))
}

// dedupRepeated writes bucket b of n of the rows whose id hash occurs more than once,
// deduplicated, into table.
func (q *queries) dedupRepeated(table, raw, dups string, day time.Time, n, b int) string {
	where := []string{idHash + " IN (SELECT h FROM " + q.g.T(dups) + ")"}
	if n > 1 {
		where = append(where, hashBucket(idHash, n, b))
	}
	return fmt.Sprintf("INSERT INTO %s (%s)\n%s", q.g.T(table), quoteAll(columnNames(q.dedupColumns())), q.dedupRows(raw, day, where...))
}

// partsColumns are the columns of the parts table: _p (the plan generation that wrote the
// row: a pass retried with more buckets writes a new one), the group (_t, _g, the dimensions by
// name), then per metric i: _v<i> (partial value), _s<i> (state), _n<i> (present values, for
// quantiles) and _e<i> (the sketch's distinct count, for distinct counts: the plan of the exact
// passes reads it without reading the states). _hr (1 for the hour grain) leads the sorting key,
// so that assemble reads the day's rows or a chunk of hours only.
func (q *queries) partsColumns() []schema.Column {
	cols := q.groupColumns()
	for i, s := range q.d.Specs() {
		if s.Type != metric.Avg {
			cols = append(cols, schema.Column{Name: valueCol(i), Type: s.ValueType()})
		}
		if s.HasDailyState() {
			cols = append(cols, schema.Column{Name: stateCol(i), Type: s.StateType()})
		}
		switch s.Type {
		case metric.Quantile:
			cols = append(cols, schema.Column{Name: presentCol(i), Type: "UInt64"})
		case metric.Uniq:
			cols = append(cols, schema.Column{Name: estimateCol(i), Type: "UInt64"})
		}
	}
	return cols
}

// groupColumns are the first columns of the parts and exact tables.
func (q *queries) groupColumns() []schema.Column {
	cols := []schema.Column{{Name: "_p", Type: "UInt32"}, {Name: "_t", Type: "DateTime('UTC')"}, {Name: "_g", Type: "UInt64"},
		{Name: "_hr", Type: "UInt8", Default: fmt.Sprintf("bitTest(_g, %d)", hourBit)}}
	for _, n := range q.d.DimensionNames() {
		cols = append(cols, schema.Column{Name: n, Type: "String"})
	}
	return cols
}

func valueCol(i int) string    { return fmt.Sprintf("_v%d", i) }
func stateCol(i int) string    { return fmt.Sprintf("_s%d", i) }
func presentCol(i int) string  { return fmt.Sprintf("_n%d", i) }
func estimateCol(i int) string { return fmt.Sprintf("_e%d", i) }

// exactColumns are the columns of the exact table, where the exact passes write: the group
// and _v<i> of every distinct count and quantile. Apart from the parts table, whose states
// every row would carry (empty ones cost as much to read as full ones).
func (q *queries) exactColumns() []schema.Column {
	cols := q.groupColumns()
	for i, s := range q.d.Specs() {
		if s.Type == metric.Uniq || s.Type == metric.Quantile {
			cols = append(cols, schema.Column{Name: valueCol(i), Type: s.ValueType()})
		}
	}
	return cols
}

// createParts creates the parts table (exact false) or the exact table: MergeTrees, so that
// passes running at once insert without waiting for each other.
func (q *queries) createParts(table string, exact bool) string {
	cols := q.partsColumns()
	if exact {
		cols = q.exactColumns()
	}
	return fmt.Sprintf("CREATE TABLE %s (%s) ENGINE = MergeTree ORDER BY (_hr, _t, _g) SETTINGS index_granularity = 256", q.g.T(table), columnList(cols))
}

// masks returns the group masks of the grouping sets (in GroupingSets order) and their names.
func (q *queries) masks() ([]uint64, []string) {
	dims := q.d.DimensionNames()
	var masks []uint64
	var names []string
	for _, set := range q.d.GroupingSets() {
		var m uint64
		for _, n := range set {
			for i, d := range dims {
				if d == n {
					m |= 1 << i
				}
			}
		}
		masks = append(masks, m)
		names = append(names, strings.Join(set, ","))
	}
	return masks, names
}

// maskArray is the ARRAY JOIN literal of every grouping set at both grains.
func (q *queries) maskArray() string {
	masks, _ := q.masks()
	parts := []string{}
	for _, hour := range []bool{false, true} {
		for _, m := range masks {
			if hour {
				m |= 1 << hourBit
			}
			parts = append(parts, strconv.FormatUint(m, 10))
		}
	}
	parts[0] = "toUInt64(" + parts[0] + ")"
	return "[" + strings.Join(parts, ", ") + "]"
}

// rollup is a two-level aggregation over deduplicated rows (or the speed minutes rewritten
// from them).
type rollup struct {
	src   string   // table expression of the deduplicated rows
	time  string   // their time column ("time" when empty)
	where []string // conditions on the rows
	// keys are extra grouping keys, aliased, kept by both levels (e.g. a value range).
	keys   []string
	level1 []string // aggregates over rows; their results are _a0, _a1, …
	level2 []string // expressions over _a<i> per group; their results are _b0, _b1, …
	// filter, when set, is a condition on the level-2 group (_t, _g, _o<i>) applied before
	// level 2 aggregates.
	filter string
	// cols are the parts table's columns of the level-2 results, in order (partsInsert).
	cols []string
}

// add appends l1, an aggregate over the rows, and its group's result l2, with %s standing for
// l1's result, into the parts table's column col.
func (r *rollup) add(l1, l2, col string) {
	r.level2 = append(r.level2, strings.ReplaceAll(l2, "%s", fmt.Sprintf("_a%d", len(r.level1))))
	r.level1 = append(r.level1, l1)
	r.cols = append(r.cols, col)
}

// addLevel2 appends l2, an expression over the group's earlier results (_b<i>), into column col.
func (r *rollup) addLevel2(l2, col string) {
	r.level2 = append(r.level2, l2)
	r.cols = append(r.cols, col)
}

// keyAliases returns the alias of every extra key of the rollup.
func (r rollup) keyAliases() []string {
	var out []string
	for _, k := range r.keys {
		i := strings.LastIndex(k, " AS ")
		out = append(out, strings.TrimSpace(k[i+4:]))
	}
	return out
}

// groupCols are the level-2 group columns: _t, _g and _o<i> for every dimension.
func (q *queries) groupCols() []string {
	out := []string{"_t", "_g"}
	for i := range q.d.DimensionNames() {
		out = append(out, fmt.Sprintf("_o%d", i))
	}
	return out
}

// rollupSelect is the SELECT of a rollup: columns _t, _g, _o<i>, the extra keys, _b<i>.
func (q *queries) rollupSelect(r rollup, day time.Time) string {
	dims := q.d.DimensionNames()
	tc := r.time
	if tc == "" {
		tc = "time"
	}
	l1 := []string{q.hourOf(tc) + " AS _h"}
	g1 := []string{"_h"}
	for i, n := range dims {
		l1 = append(l1, fmt.Sprintf("%s AS _d%d", schema.Q(n), i))
		g1 = append(g1, fmt.Sprintf("_d%d", i))
	}
	l1 = append(l1, r.keys...)
	g1 = append(g1, r.keyAliases()...)
	for i, a := range r.level1 {
		l1 = append(l1, fmt.Sprintf("%s AS _a%d", a, i))
	}
	l2 := []string{fmt.Sprintf("if(bitTest(_m, %d), _h, %s) AS _t", hourBit, timeLit(q.start(day))), "_m AS _g"}
	for i := range dims {
		l2 = append(l2, fmt.Sprintf("if(bitTest(_m, %d), _d%d, '') AS _o%d", i, i, i))
	}
	l2 = append(l2, r.keyAliases()...)
	for i, a := range r.level2 {
		l2 = append(l2, fmt.Sprintf("%s AS _b%d", a, i))
	}
	g2 := append(q.groupCols(), r.keyAliases()...)
	where := ""
	if len(r.where) > 0 {
		where = "\n    WHERE " + strings.Join(r.where, " AND ")
	}
	filter := ""
	if r.filter != "" {
		filter = "\nWHERE " + r.filter
	}
	return fmt.Sprintf(`SELECT
    %s
FROM
(
    SELECT
        %s
    FROM %s%s
    GROUP BY %s
)
ARRAY JOIN %s AS _m%s
GROUP BY %s`, strings.Join(l2, ",\n    "), strings.Join(l1, ",\n        "), r.src, where, strings.Join(g1, ", "),
		q.maskArray(), filter, strings.Join(g2, ", "))
}

// partsInsert inserts the rollup's results into the parts table: the group and, per _b<i>, the
// column r.cols[i].
func (q *queries) partsInsert(table string, gen int, r rollup, day time.Time) string {
	into := append([]string{"_p", "_t", "_g"}, q.d.DimensionNames()...)
	into = append(into, r.cols...)
	sel := append([]string{strconv.Itoa(gen)}, q.groupCols()...)
	for i := range r.cols {
		sel = append(sel, fmt.Sprintf("_b%d", i))
	}
	return fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %s\nFROM\n(\n%s\n)", q.g.T(table), quoteAll(into), strings.Join(sel, ", "),
		indent(q.rollupSelect(r, day)))
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// timeChunk selects chunk c of n of the day by minute (n ≤ 1440) of the time column tc: whole
// minutes, so that a speed minute is never split.
func (q *queries) timeChunk(tc string, day time.Time, n, c int) string {
	start := q.start(day)
	minutes := int64(q.end(day).Sub(start) / time.Minute) // 1380 or 1500 when the clocks change
	return fmt.Sprintf("intDiv(intDiv(toUInt32(%s) - %d, 60) * %d, %d) = %d", tc, start.Unix(), n, minutes, c)
}

// keyBucket selects key-hash bucket b of n of a distinct-count key column.
func keyBucket(col string, n, b int) string {
	return fmt.Sprintf("cityHash64(%s) %% %d = %d", schema.Q(col), n, b)
}

// aggregatePass is the main pass (or chunk c of n of it): count, sum, min and max as partial
// values, avg and every sketch as states, the present values of every quantile column; and the
// exact distinct counts and quantiles of the metrics in exact (the plan puts them there when
// they fit).
func (q *queries) aggregatePass(table, src string, gen int, day time.Time, n, c int, exact map[int]bool) string {
	r := rollup{src: src}
	if n > 1 {
		r.where = append(r.where, q.timeChunk("time", day, n, c))
	}
	for i, s := range q.d.Specs() {
		switch s.Type {
		case metric.Count, metric.Sum, metric.Min, metric.Max:
			r.add(s.ExactExpr(), s.Combine("%s"), valueCol(i))
		case metric.Uniq, metric.Quantile:
			if exact[i] {
				r.add(s.ExactStateExpr(), s.ExactMergeExpr("%s"), valueCol(i))
			}
		}
		if s.HasDailyState() {
			r.add(s.StateExpr(), s.MergeStateExpr("%s"), stateCol(i))
		}
		switch s.Type {
		case metric.Quantile:
			r.add("count("+schema.Q(s.Column)+")", "sum(%s)", presentCol(i))
		case metric.Uniq:
			// The count of the merged sketch (the level-2 state just added).
			r.addLevel2(fmt.Sprintf("finalizeAggregation(_b%d)", len(r.level2)-1), estimateCol(i))
		}
	}
	return q.partsInsert(table, gen, r, day)
}

// canAggregateSpeed reports whether the aggregate pass can read the day's rewritten speed
// minutes (speed, a table expression) instead of its deduplicated rows: when the speed view
// keeps every dimension, and every quantile column's present values can be bounded (its
// presence state, or the count).
func (q *queries) canAggregateSpeed() bool {
	if len(q.d.SpeedDimensions()) != len(q.d.DimensionNames()) {
		return false
	}
	for _, s := range q.d.Specs() {
		if s.Type == metric.Quantile && !slices.Contains(q.d.PresenceColumns(), s.Column) && q.countSpec() < 0 {
			return false
		}
	}
	return true
}

func (q *queries) countSpec() int {
	return slices.IndexFunc(q.d.Specs(), func(s metric.Spec) bool { return s.Type == metric.Count })
}

// aggregateSpeedPass is aggregatePass (without exact metrics) over the day's speed minutes just
// rewritten from the deduplicated rows (speed, a table expression): every value and sketch of
// a group is the merge of its minutes' states. It spares reading and hashing the rows again.
func (q *queries) aggregateSpeedPass(table, speed string, gen int, day time.Time, n, c int) string {
	r := rollup{src: speed, time: "minute"}
	if n > 1 {
		r.where = append(r.where, q.timeChunk("minute", day, n, c))
	}
	for i, s := range q.d.Specs() {
		state := schema.Q(s.Name)
		switch s.Type {
		case metric.Count, metric.Sum, metric.Min, metric.Max:
			r.add(s.ValueFromStates(state, schema.Q(metric.PresenceColumn(s.Column))), s.Combine("%s"), valueCol(i))
		}
		if s.HasDailyState() {
			r.add(s.MergeStateExpr(state), s.MergeStateExpr("%s"), stateCol(i))
		}
		switch s.Type {
		case metric.Quantile:
			present := "countMerge(" + schema.Q(q.d.Specs()[max(q.countSpec(), 0)].Name) + ")" // a bound
			if slices.Contains(q.d.PresenceColumns(), s.Column) {
				present = "sumMerge(" + schema.Q(metric.PresenceColumn(s.Column)) + ")"
			}
			r.add(present, "sum(%s)", presentCol(i))
		case metric.Uniq:
			r.addLevel2(fmt.Sprintf("finalizeAggregation(_b%d)", len(r.level2)-1), estimateCol(i))
		}
	}
	return q.partsInsert(table, gen, r, day)
}

// distinctPass computes the exact distinct counts of the uniq metrics reading column col over
// the keys in bucket b of n (n > 1: counts over disjoint key sets add up to the whole).
func (q *queries) distinctPass(table, src string, gen int, day time.Time, col string, n, b int) string {
	r := rollup{src: src}
	if n > 1 {
		r.where = append(r.where, keyBucket(col, n, b))
	}
	for i, s := range q.d.Specs() {
		if s.Type == metric.Uniq && s.Column == col {
			r.add(s.ExactStateExpr(), s.ExactMergeExpr("%s"), valueCol(i))
		}
	}
	return q.partsInsert(table, gen, r, day)
}

// quantilePass computes the exact quantile of metric i over every group at once.
func (q *queries) quantilePass(table, src string, gen int, day time.Time, i int) string {
	s := q.d.Specs()[i]
	r := rollup{src: src}
	r.add(s.ExactStateExpr(), s.ExactMergeExpr("%s"), valueCol(i))
	return q.partsInsert(table, gen, r, day)
}

// Quantiles of groups too large to hold at once are selected by value range: the present values
// of the metric's column are cut into ranges by boundaries; a counting pass counts every group's
// values per range; the rank quantileExact takes (metric.ExactRank) then names, per group, the
// range holding the wanted value and its rank within the range (the targets table); one pass per
// range selects those values. A range whose lower bound repeats among the sampled boundaries (a
// value that alone holds a large share) is a range of that one value, resolved without a pass.

// valueBounds samples boundaries: approximate quantiles of the present values of a column.
func (q *queries) valueBounds(src, col string, levels []float64) string {
	ls := make([]string, len(levels))
	for i, l := range levels {
		ls[i] = strconv.FormatFloat(l, 'g', -1, 64)
	}
	return fmt.Sprintf("SELECT quantiles(%s)(toFloat64(assumeNotNull(%s))) FROM %s WHERE isNotNull(%s)",
		strings.Join(ls, ", "), schema.Q(col), src, schema.Q(col))
}

func floatLit(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// rangeIndex is the range of a present value among bounds (sorted, distinct): the number of
// bounds at or below it, as a sum of comparisons (vectorized; a lambda over a constant array
// would copy the array for every row).
func rangeIndex(col string, bounds []float64) string {
	if len(bounds) == 0 {
		return "toUInt32(0)"
	}
	terms := make([]string, len(bounds))
	for i, b := range bounds {
		terms[i] = fmt.Sprintf("toUInt32(toFloat64(assumeNotNull(%s)) >= %s)", schema.Q(col), floatLit(b))
	}
	return "(" + strings.Join(terms, " + ") + ")"
}

// inRange selects the present values of range k among bounds.
func inRange(col string, bounds []float64, k int) string {
	v := "toFloat64(assumeNotNull(" + schema.Q(col) + "))"
	c := []string{"isNotNull(" + schema.Q(col) + ")"}
	if k > 0 {
		c = append(c, v+" >= "+floatLit(bounds[k-1]))
	}
	if k < len(bounds) {
		c = append(c, v+" < "+floatLit(bounds[k]))
	}
	return strings.Join(c, " AND ")
}

// qTablesColumns are the group columns of the counts and targets tables.
func (q *queries) qGroupColumns() []schema.Column {
	cols := []schema.Column{{Name: "_q", Type: "UInt32"}, {Name: "_t", Type: "DateTime('UTC')"}, {Name: "_g", Type: "UInt64"}}
	for i := range q.d.DimensionNames() {
		cols = append(cols, schema.Column{Name: fmt.Sprintf("_o%d", i), Type: "String"})
	}
	return append(cols, schema.Column{Name: "_k", Type: "UInt32"})
}

func (q *queries) createQCounts(table string) string {
	cols := append(q.qGroupColumns(), schema.Column{Name: "_c", Type: "UInt64"})
	return fmt.Sprintf("CREATE TABLE %s (%s) ENGINE = MergeTree ORDER BY (_q, _t, _g)", q.g.T(table), columnList(cols))
}

func (q *queries) createQTargets(table string) string {
	cols := append(q.qGroupColumns(), schema.Column{Name: "_r", Type: "UInt64"})
	return fmt.Sprintf("CREATE TABLE %s (%s) ENGINE = MergeTree ORDER BY (_q, _k, _t, _g)", q.g.T(table), columnList(cols))
}

// quantileCounts counts the present values of metric i's column per group and range.
func (q *queries) quantileCounts(table, src string, day time.Time, i int, bounds []float64) string {
	s := q.d.Specs()[i]
	r := rollup{src: src, where: []string{"isNotNull(" + schema.Q(s.Column) + ")"},
		keys:   []string{rangeIndex(s.Column, bounds) + " AS _k"},
		level1: []string{"count()"}, level2: []string{"sum(_a0)"}}
	into := append([]string{"_q"}, q.groupCols()...)
	into = append(into, "_k", "_c")
	sel := append([]string{strconv.Itoa(i)}, q.groupCols()...)
	sel = append(sel, "_k", "_b0")
	return fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %s\nFROM\n(\n%s\n)", q.g.T(table), strings.Join(into, ", "), strings.Join(sel, ", "),
		indent(q.rollupSelect(r, day)))
}

// quantileTargets works out, from the counts (a table expression), the range and the rank
// within it of metric i's exact quantile of every group.
func (q *queries) quantileTargets(table, counts string, i int) string {
	s := q.d.Specs()[i]
	g := q.groupCols()
	into := append([]string{"_q"}, g...)
	into = append(into, "_k", "_r")
	return fmt.Sprintf(`INSERT INTO %s (%s)
SELECT _q, %s, arrayElement(_ks, _pos), _rank - if(_pos = 1, 0, arrayElement(_cum, _pos - 1))
FROM
(
    SELECT
        _q, %s,
        arraySort(groupArray((_k, _c))) AS _kc,
        arrayMap(x -> x.1, _kc) AS _ks,
        arrayCumSum(arrayMap(x -> x.2, _kc)) AS _cum,
        %s AS _rank,
        arrayFirstIndex(x -> x > _rank, _cum) AS _pos
    FROM %s
    WHERE _q = %d
    GROUP BY _q, %s
)`, q.g.T(table), strings.Join(into, ", "), strings.Join(g, ", "), strings.Join(g, ", "),
		s.ExactRankExpr("arrayElement(_cum, length(_cum))"), counts, i, strings.Join(g, ", "))
}

// quantileSelect selects, for the groups whose quantile of metric i lies in range k, the value
// at their rank within the range, into the parts table; targets is the targets table (a table
// expression readable where the pass runs).
func (q *queries) quantileSelect(table, src, targets string, gen int, day time.Time, i, k int, bounds []float64) string {
	s := q.d.Specs()[i]
	g := q.groupCols()
	groups := fmt.Sprintf("SELECT %s FROM %s WHERE _q = %d AND _k = %d", strings.Join(g, ", "), targets, i, k)
	r := rollup{src: src, where: []string{inRange(s.Column, bounds, k)},
		level1: []string{"groupArray(toFloat64(assumeNotNull(" + schema.Q(s.Column) + ")))"},
		level2: []string{"groupArrayArray(_a0)"},
		filter: "(" + strings.Join(g, ", ") + ") IN (" + groups + ")"}
	into := append([]string{"_p", "_t", "_g"}, q.d.DimensionNames()...)
	into = append(into, valueCol(i))
	// The value at rank _r of a group's _n values of the range, without sorting them: padded
	// with -inf or +inf so that it is the median quantileExact(0.5) takes (the element at
	// floor(m / 2) of m values), found by selection.
	n := "length(_b0)"
	low := fmt.Sprintf("toUInt64(if(2 * _r + 1 < %s, %s - 2 * _r - 1, 0))", n, n)
	high := fmt.Sprintf("toUInt64(if(2 * _r + 1 < %s, 0, 2 * _r + 1 - %s))", n, n)
	pick := fmt.Sprintf("arrayReduce('quantileExact(0.5)', arrayConcat(arrayResize(emptyArrayFloat64(), %s, -inf), _b0, arrayResize(emptyArrayFloat64(), %s, inf)))", low, high)
	return fmt.Sprintf(`INSERT INTO %s (%s)
SELECT %d, %s, %s
FROM
(
%s
) AS _sel
ALL INNER JOIN
(
    SELECT %s, _r FROM %s WHERE _q = %d AND _k = %d
) AS _tgt USING (%s)`, q.g.T(table), quoteAll(into), gen, strings.Join(g, ", "), pick, indent(q.rollupSelect(r, day)),
		strings.Join(g, ", "), targets, i, k, strings.Join(g, ", "))
}

// quantilePoint writes value v as metric i's quantile of every group whose target is range k,
// a range holding only v.
func (q *queries) quantilePoint(table, targets string, gen int, i, k int, v float64) string {
	into := append([]string{"_p", "_t", "_g"}, q.d.DimensionNames()...)
	into = append(into, valueCol(i))
	return fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %d, %s, %s FROM %s WHERE _q = %d AND _k = %d", q.g.T(table), quoteAll(into), gen,
		strings.Join(q.groupCols(), ", "), floatLit(v), targets, i, k)
}

// assemble merges the parts (of the aggregate pass's generation gen) and the exact values (of
// the exact passes' generations gens) into the day's rows (hour false: into a table shaped like
// <ds>_daily) or the hour rows (into one shaped like <ds>_hourly), those where cond holds when
// it is set. inA are the exact metrics the aggregate pass computed.
func (q *queries) assemble(table, parts, exact string, gen int, gens []int, inA map[int]bool, hour bool, cond, runID string) string {
	masks, names := q.masks()
	ms := make([]string, len(masks))
	ns := make([]string, len(names))
	for i := range masks {
		ms[i] = strconv.FormatUint(masks[i], 10)
		ns[i] = strLit(names[i])
	}
	ms[0] = "toUInt64(" + ms[0] + ")"
	first := "toDate(_t" + schema.Zone(q.d) + ")"
	cols := q.dailyColumns()
	if hour {
		first = "_t"
		cols = append([]string{"hour"}, cols[1:]...)
	}
	dims := quoteAll(q.d.DimensionNames())
	sel := []string{first, fmt.Sprintf("transform(bitAnd(_g, %d), [%s], [%s], '')", uint64(1)<<hourBit-1, strings.Join(ms, ", "), strings.Join(ns, ", ")), dims}
	var fromParts, fromExact []string
	specs := q.d.Specs()
	for i, s := range specs {
		f := fmt.Sprintf("_f%d", i)
		switch {
		case s.Type == metric.Avg:
			fromParts = append(fromParts, s.MergeExpr(stateCol(i))+" AS "+f)
		case s.Type == metric.Uniq && inA[i]:
			fromParts = append(fromParts, "sum("+valueCol(i)+") AS "+f)
		case s.Type == metric.Quantile && inA[i]:
			fromParts = append(fromParts, "any("+valueCol(i)+") AS "+f)
		case s.Type == metric.Uniq:
			fromExact = append(fromExact, "sum("+valueCol(i)+") AS "+f) // counts over disjoint key buckets
		case s.Type == metric.Quantile:
			fromExact = append(fromExact, "any("+valueCol(i)+") AS "+f) // one pass gives a group's value
		default:
			fromParts = append(fromParts, s.Combine(valueCol(i))+" AS "+f)
		}
		sel = append(sel, s.Cast(f))
	}
	for i, s := range specs {
		if s.HasDailyState() {
			fromParts = append(fromParts, s.MergeStateExpr(stateCol(i))+fmt.Sprintf(" AS _z%d", i))
			sel = append(sel, fmt.Sprintf("_z%d", i))
		}
	}
	sel = append(sel, strLit(runID))
	grain := "_hr = 0"
	if hour {
		grain = "_hr = 1"
	}
	if cond != "" {
		grain += " AND " + cond
	}
	keys := "_t, _g, " + dims
	from := fmt.Sprintf("(\n    SELECT %s, %s\n    FROM %s\n    WHERE _p = %d AND %s\n    GROUP BY %s\n)", keys, strings.Join(fromParts, ", "),
		parts, gen, grain, keys)
	if len(fromExact) > 0 {
		gs := make([]string, len(gens))
		for i, g := range gens {
			gs[i] = strconv.Itoa(g)
		}
		// Every group has a row of the aggregate pass; a group without present keys or values
		// has none of the exact passes, and gets the join's defaults: 0 and NULL.
		from += fmt.Sprintf(" AS _a\nANY LEFT JOIN\n(\n    SELECT %s, %s\n    FROM %s\n    WHERE _p IN (%s) AND %s\n    GROUP BY %s\n) AS _x USING (%s)",
			keys, strings.Join(fromExact, ", "), exact, strings.Join(gs, ", "), grain, keys, keys)
	}
	return fmt.Sprintf("INSERT INTO %s (%s)\nSELECT\n    %s\nFROM %s", q.g.T(table), quoteAll(cols), strings.Join(sel, ",\n    "), from)
}

// createHourlyStaging creates a staging table shaped like <ds>_hourly, with engine
// (stagingEngine) when it is not "".
func (q *queries) createHourlyStaging(table, engine string) string {
	return createLike(q.g.T(table), q.g.T(schema.Hourly(q.d.Name)), engine)
}

// createSpeedStaging creates a staging table shaped like <ds>_speed on a node (like its
// <ds>_speed_local in cluster mode), with engine (stagingEngine) when it is not "".
func (q *queries) createSpeedStaging(table, engine string) string {
	return createLike(q.g.T(table), q.g.LocalT(schema.Speed(q.d.Name)), engine)
}

// speedPass rewrites chunk c of n of the day's minutes from the deduplicated rows (every row of
// the day, late ones included) with the speed view's own query.
func (q *queries) speedPass(table, src string, day time.Time, n, c int) string {
	where := "1"
	if n > 1 {
		where = q.timeChunk("time", day, n, c)
	}
	return q.g.SpeedSelect(q.d, fmt.Sprintf("INSERT INTO %s ", q.g.T(table)), where, src)
}

// countRows counts a table's rows.
func (q *queries) countRows(table string) string { return "SELECT count() FROM " + table }

// swapTo replaces a day's partition of target (qualified) with table's.
func (q *queries) swapTo(target, table string, day time.Time) string {
	return fmt.Sprintf("ALTER TABLE %s REPLACE PARTITION %s FROM %s", target, partitionID(day), q.g.T(table))
}
